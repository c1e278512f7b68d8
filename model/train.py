"""Training: streamed tf.data input, class-imbalance handling, two-phase transfer learning.

Phase 1 trains the head on a frozen backbone; phase 2 unfreezes the top of the backbone and
fine-tunes at a lower learning rate. Both stop early on validation loss and restore the best
weights. Images are decoded batch by batch (never the whole set in memory).

Determinism: with a seed, Python, NumPy and TensorFlow are seeded and TensorFlow's op
determinism is switched on. On CPU this makes a run repeatable on the same machine and
library versions; different CPUs (oneDNN kernels chosen per instruction set) or thread
counts can still change the last digits of the weights.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from audit.data import Dataset, load_image
from model.augment import AugmentConfig, make_augmenter

__all__ = ["TrainConfig", "TrainResult", "make_input_pipeline", "train_classifier",
           "seed_everything"]

IMBALANCE_MODES = ("class_weight", "balanced_sampling", "none")


@dataclass(frozen=True)
class TrainConfig:
    input_size: int = 224
    alpha: float = 1.0
    weights: str | None = None
    dropout: float = 0.2
    batch_size: int = 32
    head_epochs: int = 5
    finetune_epochs: int = 5
    head_learning_rate: float = 1e-3
    finetune_learning_rate: float = 1e-4
    # Backbone layers from the first one whose name starts with this are fine-tuned.
    finetune_from: str = "block_13"
    imbalance: str = "class_weight"
    patience: int = 3
    seed: int = 0
    stain_normalize: str = "none"   # "reinhard": stain normalisation inside the model
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["augment"] = self.augment.to_dict()
        return data


@dataclass
class TrainResult:
    model: object
    history: dict[str, list[float]]
    phases: list[dict]
    seconds: float


def seed_everything(seed: int) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def make_input_pipeline(
    dataset: Dataset,
    indices: np.ndarray,
    *,
    image_size: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    augment: AugmentConfig | None = None,
    balanced: bool = False,
):
    """A tf.data pipeline of (float32 images 0-255, int labels); decodes lazily in parallel."""
    import tensorflow as tf

    paths = np.array([dataset.paths[i] for i in indices])
    labels = dataset.labels[indices].astype(np.int32)

    def decode(path, label):
        image = tf.numpy_function(lambda p: load_image(p.decode(), image_size, resize="crop"),
                                  [path], tf.uint8)
        image.set_shape((image_size, image_size, 3))
        return tf.cast(image, tf.float32), label

    if balanced:
        # Equal chance per class at every draw: each class's stream repeats independently.
        streams = []
        for c in np.unique(labels):
            sel = labels == c
            ds = tf.data.Dataset.from_tensor_slices((paths[sel], labels[sel]))
            streams.append(ds.shuffle(int(sel.sum()), seed=seed + int(c)).repeat())
        ds = tf.data.Dataset.sample_from_datasets(streams, seed=seed).take(len(labels))
    else:
        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        if shuffle:
            ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size)
    if augment is not None and augment.enabled:
        augment_fn = make_augmenter(augment, seed=seed)
        ds = ds.enumerate().map(lambda step, batch: (augment_fn(batch[0], step), batch[1]),
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def _class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = labels.size / (present.sum() * counts[present])
    return {i: float(w) for i, w in enumerate(weights)}


def _stain_target(dataset: Dataset, indices: np.ndarray, config: TrainConfig,
                  max_images: int = 256) -> dict:
    """Reinhard target: mean Lab statistics of a seeded sample of the training images."""
    from audit.data import read_images
    from model.layers import lab_statistics

    rng = np.random.default_rng(config.seed)
    sample = rng.choice(indices, size=min(max_images, len(indices)), replace=False)
    mean, std = lab_statistics(read_images([dataset.paths[i] for i in np.sort(sample)],
                                           config.input_size, resize="crop"))
    return {"mean": mean, "std": std}


def _unfreeze_top(backbone, first_layer_prefix: str) -> int:
    names = [layer.name for layer in backbone.layers]
    start = next((i for i, n in enumerate(names) if n.startswith(first_layer_prefix)), None)
    if start is None:
        raise ValueError(f"finetune_from={first_layer_prefix!r} matches no backbone layer")
    backbone.trainable = True
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= start
    return len(backbone.layers) - start


def train_classifier(
    train_set: Dataset,
    train_idx: np.ndarray,
    val_set: Dataset,
    val_idx: np.ndarray,
    *,
    config: TrainConfig,
    verbose: int = 2,
) -> TrainResult:
    """Build and train the classifier; returns the model with the best validation weights."""
    import keras

    from model.build import backbone_of, build_classifier

    seed_everything(config.seed)
    started = time.perf_counter()
    n_classes = len(train_set.class_names)
    stain_target = (_stain_target(train_set, train_idx, config)
                    if config.stain_normalize == "reinhard" else None)
    model = build_classifier(n_classes, input_size=config.input_size, alpha=config.alpha,
                             weights=config.weights, dropout=config.dropout,
                             stain_target=stain_target)
    train_labels = train_set.labels[train_idx]
    balanced = config.imbalance == "balanced_sampling"
    train_ds = make_input_pipeline(train_set, train_idx, image_size=config.input_size,
                                   batch_size=config.batch_size, shuffle=True, seed=config.seed,
                                   augment=config.augment, balanced=balanced)
    val_ds = make_input_pipeline(val_set, val_idx, image_size=config.input_size,
                                 batch_size=config.batch_size, shuffle=False, seed=config.seed)
    class_weight = (_class_weights(train_labels, n_classes)
                    if config.imbalance == "class_weight" else None)

    history: dict[str, list[float]] = {}
    phases = []
    backbone = backbone_of(model)
    plan = [("head", config.head_epochs, config.head_learning_rate),
            ("finetune", config.finetune_epochs, config.finetune_learning_rate)]
    best = None  # (val_loss, weights, phase): the best model over both phases
    for phase, epochs, learning_rate in plan:
        if epochs <= 0:
            continue
        if phase == "head":
            backbone.trainable = False
            trainable = 0
        else:
            trainable = _unfreeze_top(backbone, config.finetune_from)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                             restore_best_weights=True)
        phase_start = time.perf_counter()
        fit = model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=[stop],
                        class_weight=class_weight, verbose=verbose, shuffle=False)
        for key, values in fit.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        phases.append({"phase": phase, "epochs_run": len(fit.history.get("loss", [])),
                       "learning_rate": learning_rate, "trainable_backbone_layers": trainable,
                       "best_epoch": int(np.argmin(fit.history["val_loss"])) + 1,
                       "seconds": round(time.perf_counter() - phase_start, 2)})
        phase_best = float(np.min(fit.history["val_loss"]))
        if best is None or phase_best < best[0]:
            best = (phase_best, model.get_weights(), phase)
        elif best is not None:
            # Fine-tuning did not beat the frozen-backbone head: keep the better model.
            model.set_weights(best[1])
    backbone.trainable = False
    if best is not None:
        phases.append({"phase": "selected", "from_phase": best[2], "val_loss": best[0]})
    return TrainResult(model=model, history=history, phases=phases,
                       seconds=time.perf_counter() - started)
