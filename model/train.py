"""Training: streamed tf.data input, class-imbalance handling, two-phase transfer learning.

Phase 1 ("head") fits the linear head on the frozen backbone. By default it is fitted on the
pooled backbone features of the un-augmented training images, computed once: a converged
linear probe (the study's recipe) in seconds instead of epochs of forward passes. Phase 2
("finetune") unfreezes the top blocks and trains them on augmented images at a lower learning
rate with cosine decay. Starting fine-tuning from a converged head keeps the pretrained
features from being pulled around by a random head's gradients (linear probe, then fine-tune:
Kumar et al., ICLR 2022).

BatchNorm of the fine-tuned blocks. Keras 3 passes `fit`'s training=True to every layer of a
nested model, overriding the training=False the backbone was called with (model.build), so an
unfrozen BatchNorm layer normalises with batch statistics while training and with its moving
statistics at validation. With MobileNetV2's momentum 0.999 those moving statistics lag hundreds of
steps behind what the weights learn: that mismatch was the collapse of issue 20 (validation
87% -> 60% after the first fine-tuning epoch). The default, `batchnorm="adapt"`, trains them
with momentum 0.9, so they follow within an epoch. `"frozen"` (trainable=False: inference mode
whatever `training` says, ImageNet statistics throughout) avoids the mismatch too, but the
first Adam steps then move the high-gain linear bottlenecks far enough that validation dips
for an epoch (PBC: 95.3% -> 82.3%, against 94.0% with "adapt"), and on another laboratory's
images it did much worse (bench/README.md, "Training recipes").

The model kept is the better of the two phases on validation accuracy (ties: lower loss), so
fine-tuning never leaves a model worse on validation than the head it began from.

Determinism: with a seed, Python, NumPy and TensorFlow are seeded and TensorFlow's op
determinism is switched on. On CPU this makes a run repeatable on the same machine and
library versions; different CPUs (oneDNN kernels chosen per instruction set) or thread
counts can still change the last digits of the weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import keras
import numpy as np

from audit.data import Dataset
from model.augment import make_augmenter
from model.config import AugmentConfig, TrainConfig
from model.pipeline import make_input_pipeline

__all__ = ["TrainConfig", "AugmentConfig", "TrainResult",
           "train_classifier", "finetune_on_target", "seed_everything", "validation_augment"]

# The head on cached features: early stopping on validation loss with this patience (epochs
# over a few thousand feature vectors cost milliseconds, so patience is cheap).
HEAD_FEATURE_PATIENCE = 10
# Validation augmentation draws from its own stream, not the training images' first batches'.
_VALIDATION_SEED_OFFSET = 7919


@dataclass
class TrainResult:
    model: object
    history: dict[str, list[float]]
    phases: list[dict]
    seconds: float
    val_accuracy: float = float("nan")


def seed_everything(seed: int) -> None:
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


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


def _unfreeze_top(backbone, first_layer_prefix: str, *, batchnorm: str = "frozen") -> int:
    """Make the backbone trainable from the first layer named `first_layer_prefix*` on.

    batchnorm "frozen": BatchNorm layers stay non-trainable, which in Keras 3 also keeps them
    in inference mode during `fit` (moving statistics, fixed scale and offset). "train" and
    "adapt": they train (batch statistics in `fit`), with moving-average momentum 0.999
    (MobileNetV2's own) or 0.9.
    """
    names = [layer.name for layer in backbone.layers]
    start = next((i for i, n in enumerate(names) if n.startswith(first_layer_prefix)), None)
    if start is None:
        raise ValueError(f"finetune_from={first_layer_prefix!r} matches no backbone layer")
    backbone.trainable = True
    for i, layer in enumerate(backbone.layers):
        is_norm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = i >= start and not (batchnorm == "frozen" and is_norm)
        if is_norm and layer.trainable and batchnorm == "adapt":
            layer.momentum = 0.9
    return len(backbone.layers) - start


def _batchnorm_mode(config: TrainConfig) -> str:
    # From random weights there are no pretrained statistics to keep or to follow.
    return config.batchnorm if config.weights is not None else "train"


def _compile(model, learning_rate, config: TrainConfig) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


def _finetune_learning_rate(config: TrainConfig, steps: int, steps_per_epoch: int):
    if config.schedule == "constant" or steps <= 0:
        return config.finetune_learning_rate
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), steps - 1)
    if warmup <= 0:
        return keras.optimizers.schedules.CosineDecay(config.finetune_learning_rate, steps)
    return keras.optimizers.schedules.CosineDecay(
        0.0, steps - warmup, warmup_target=config.finetune_learning_rate, warmup_steps=warmup)


class _KeepBest(keras.callbacks.Callback):
    """Keep the weights of the epoch with the best validation accuracy (ties: lower validation
    loss); stop after `patience` epochs without improvement; restore them at the end."""

    def __init__(self, patience: int):
        super().__init__()
        self.patience = patience
        self.best = None
        self.best_epoch = -1
        self.weights = None
        self.wait = 0

    def on_epoch_end(self, epoch, logs=None):
        key = (float(logs["val_accuracy"]), -float(logs["val_loss"]))
        if self.best is None or key > self.best:
            self.best, self.best_epoch, self.wait = key, epoch, 0
            self.weights = self.model.get_weights()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.weights is not None:
            self.model.set_weights(self.weights)


def validation_augment(config: TrainConfig) -> AugmentConfig | None:
    """The fixed perturbation of validation images under `validate_augmented`: the training
    augmentation without its geometric draws (flips, rotation, shift: a cell has no
    orientation, and Keras' geometric layers draw anew each epoch), so every epoch is scored
    on the same images."""
    if not config.validate_augmented:
        return None
    return replace(config.augment, flips=False, rotation_deg=0.0, zoom=0.0, shift=0.0)


def _pooled_features(model, dataset: Dataset, indices: np.ndarray, config: TrainConfig,
                     augment: AugmentConfig | None = None):
    """Pooled backbone features of the images (one batched inference pass)."""
    from model.build import EMBEDDING

    embed = keras.Model(model.inputs, model.get_layer(EMBEDDING).output)
    ds = make_input_pipeline(dataset, indices, image_size=config.input_size,
                             batch_size=config.batch_size, shuffle=False,
                             seed=config.seed + _VALIDATION_SEED_OFFSET, augment=augment)
    return embed.predict(ds.map(lambda x, y: x), verbose=0)


def _fit_head_on_features(model, train_set, train_idx, val_set, val_idx, *, config,
                          class_weight, verbose) -> dict:
    """Fit the model's dense head on cached frozen-backbone features; returns the history."""
    from model.build import LOGITS

    n_classes = len(train_set.class_names)
    features = _pooled_features(model, train_set, train_idx, config)
    val_features = _pooled_features(model, val_set, val_idx, config,
                                    augment=validation_augment(config))
    onehot = np.eye(n_classes, dtype=np.float32)
    head = keras.Sequential([
        keras.Input((features.shape[1],)),
        keras.layers.Dropout(config.dropout),
        keras.layers.Dense(n_classes, activation="softmax"),
    ])
    dense = model.get_layer(LOGITS)
    head.layers[-1].set_weights(dense.get_weights())
    _compile(head, config.head_learning_rate, config)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=HEAD_FEATURE_PATIENCE,
                                         restore_best_weights=True)
    fit = head.fit(features, onehot[train_set.labels[train_idx]],
                   validation_data=(val_features, onehot[val_set.labels[val_idx]]),
                   epochs=config.head_epochs, batch_size=config.batch_size, callbacks=[stop],
                   class_weight=class_weight, verbose=0, shuffle=True)
    dense.set_weights(head.layers[-1].get_weights())
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    if verbose:
        best = int(np.argmin(history["val_loss"]))
        print(f"head on features: {len(history['loss'])} epochs, best {best + 1}: "
              f"val_loss {history['val_loss'][best]:.4f}, "
              f"val_accuracy {history['val_accuracy'][best]:.4f}", flush=True)
    return history


def train_classifier(
    train_set: Dataset,
    train_idx: np.ndarray,
    val_set: Dataset,
    val_idx: np.ndarray,
    *,
    config: TrainConfig,
    verbose: int = 2,
    callbacks: tuple = (),
) -> TrainResult:
    """Build and train the classifier; returns the model with the best validation weights.

    `callbacks`: extra Keras callbacks for the phases that train on images (diagnostics).
    """
    from model.build import backbone_of, build_classifier

    config.check()
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
                                   augment=config.augment, balanced=balanced,
                                   n_classes=n_classes)
    val_ds = make_input_pipeline(val_set, val_idx, image_size=config.input_size,
                                 batch_size=config.batch_size, shuffle=False,
                                 seed=config.seed + _VALIDATION_SEED_OFFSET,
                                 augment=validation_augment(config), n_classes=n_classes)
    class_weight = (_class_weights(train_labels, n_classes)
                    if config.imbalance == "class_weight" else None)
    steps_per_epoch = -(-len(train_idx) // config.batch_size)

    history: dict[str, list[float]] = {}
    phases = []
    backbone = backbone_of(model)
    best = None  # ((val_accuracy, -val_loss), weights, phase): the best over both phases
    for phase in ("head", "finetune"):
        epochs = config.head_epochs if phase == "head" else config.finetune_epochs
        if epochs <= 0:
            continue
        phase_start = time.perf_counter()
        if phase == "head":
            backbone.trainable = False
            trainable = 0
            if not config.head_augment:
                phase_history = _fit_head_on_features(
                    model, train_set, train_idx, val_set, val_idx, config=config,
                    class_weight=class_weight, verbose=verbose)
                pick = int(np.argmin(phase_history["val_loss"]))
            learning_rate = config.head_learning_rate
        else:
            trainable = _unfreeze_top(backbone, config.finetune_from,
                                      batchnorm=_batchnorm_mode(config))
            learning_rate = _finetune_learning_rate(config, epochs * steps_per_epoch,
                                                   steps_per_epoch)
        if phase == "finetune" or config.head_augment:
            _compile(model, learning_rate, config)
            keep = _KeepBest(config.patience)
            fit = model.fit(train_ds, validation_data=val_ds, epochs=epochs,
                            callbacks=[keep, *callbacks],
                            class_weight=class_weight, verbose=verbose, shuffle=False)
            phase_history = {k: [float(v) for v in values] for k, values in fit.history.items()}
            pick = keep.best_epoch
        for key, values in phase_history.items():
            history.setdefault(key, []).extend(values)
        score = (phase_history["val_accuracy"][pick], -phase_history["val_loss"][pick])
        phases.append({
            "phase": phase, "epochs_run": len(phase_history["loss"]),
            "on": "images" if phase == "finetune" or config.head_augment else "features",
            "learning_rate": config.head_learning_rate if phase == "head"
            else config.finetune_learning_rate,
            "schedule": config.schedule if phase == "finetune" else "constant",
            "trainable_backbone_layers": trainable, "best_epoch": pick + 1,
            "validation": "augmented" if config.validate_augmented else "clean",
            "val_accuracy": score[0], "val_loss": -score[1],
            "seconds": round(time.perf_counter() - phase_start, 2)})
        if best is None or score > best[0]:
            best = (score, model.get_weights(), phase)
        else:
            # Fine-tuning did not beat the frozen-backbone head on validation: keep the head.
            model.set_weights(best[1])
    backbone.trainable = False
    val_accuracy = float("nan")
    if best is not None:
        val_accuracy = best[0][0]
        phases.append({"phase": "selected", "from_phase": best[2], "val_accuracy": best[0][0],
                       "val_loss": -best[0][1]})
    return TrainResult(model=model, history=history, phases=phases,
                       seconds=time.perf_counter() - started, val_accuracy=val_accuracy)


def finetune_on_target(
    model,
    target_set: Dataset,
    target_idx: np.ndarray,
    *,
    config: TrainConfig,
    epochs: int,
    source: tuple[Dataset, np.ndarray] | None = None,
    verbose: int = 2,
) -> dict:
    """Few-label adaptation: fine-tune `model` (already trained) on labelled target images.

    Each batch draws half from the target images and half from `source` (the source training
    images, if given), so the few target labels move the model towards the new site without
    it forgetting the source classes it has few or no target examples of. A fixed number of
    epochs (over the target images) at the fine-tuning learning rate with cosine decay: there
    are no spare target labels to stop on. Returns a record for the model's metadata.
    """
    import tensorflow as tf

    from model.build import backbone_of

    started = time.perf_counter()
    n_classes = len(target_set.class_names)
    backbone = backbone_of(model)
    trainable = _unfreeze_top(backbone, config.finetune_from, batchnorm=_batchnorm_mode(config))

    def stream(dataset, indices, seed):
        ds = make_input_pipeline(dataset, indices, image_size=config.input_size, batch_size=1,
                                 shuffle=True, seed=seed, n_classes=n_classes)
        return ds.unbatch().repeat()

    streams = [stream(target_set, target_idx, config.seed)]
    if source is not None:
        streams.append(stream(source[0], source[1], config.seed + 1))
    ds = tf.data.Dataset.sample_from_datasets(streams, seed=config.seed) if len(streams) > 1 \
        else streams[0]
    # Augment after mixing so both halves get the same augmentation, batch by batch.
    steps = max(1, -(-len(target_idx) * len(streams) // config.batch_size))
    ds = ds.batch(config.batch_size)
    if config.augment.enabled:
        augment_fn = make_augmenter(config.augment, seed=config.seed + 2)
        ds = ds.enumerate().map(lambda step, batch: (augment_fn(batch[0], step), batch[1]),
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    _compile(model, _finetune_learning_rate(config, epochs * steps, steps), config)
    fit = model.fit(ds, epochs=epochs, steps_per_epoch=steps, verbose=verbose, shuffle=False)
    backbone.trainable = False
    return {"phase": "target", "epochs_run": epochs, "steps_per_epoch": steps,
            "target_images": int(len(target_idx)),
            "source_images": int(len(source[1])) if source is not None else 0,
            "trainable_backbone_layers": trainable,
            "loss": [float(v) for v in fit.history["loss"]],
            "accuracy": [float(v) for v in fit.history["accuracy"]],
            "seconds": round(time.perf_counter() - started, 2)}
