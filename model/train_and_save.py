"""Split, train, evaluate and save: what `audit train` (and the demo) run end to end."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from audit.data import Dataset
from audit.errors import UsageError
from model.io import library_versions, save_model
from model.split import split_dataset, write_manifest, write_split_manifest
from model.train import TrainConfig, finetune_on_target, train_classifier

__all__ = ["fit_and_save", "PREPROCESSING", "INPUT_CONTRACT"]

# How `audit train` models take images (see model.contract): raw 0-255 RGB, centre crop; the
# model scales its own input.
INPUT_CONTRACT = {"preprocess": "none", "resize": "crop", "channel_order": "RGB"}

PREPROCESSING = {
    "input": "RGB uint8 pixels 0-255, (size, size, 3)",
    "resize": "audit.data.load_image: RGB (alpha composited on white), centre square crop, "
              "bilinear antialiased resize",
    "in_model": "Rescaling(1/127.5, offset=-1) to [-1, 1] (MobileNetV2 convention)",
}


GROUP_SPLIT_MODES = ("manifest", "near-duplicates", "discovered")


def _split_groups(dataset: Dataset, mode: str | None, config: TrainConfig
                  ) -> tuple[np.ndarray | None, dict | None]:
    """(group per image or None, summary of how the groups were found or None)."""
    if mode is None:
        return None, None
    if mode not in GROUP_SPLIT_MODES:
        raise UsageError(f"--group-split: expected one of {', '.join(GROUP_SPLIT_MODES)}, "
                         f"received '{mode}'")
    if mode == "manifest":
        if dataset.groups is None:
            raise UsageError(f"--group-split: dataset '{dataset.root}' has no group column; use a "
                             "CSV manifest with path,label,group or --group-split discovered")
        return np.asarray(dataset.groups), None
    if mode == "discovered":
        from audit.groups import GroupConfig, discover_groups
        from audit.progress import status

        found = discover_groups(dataset, config=GroupConfig(seed=config.seed))
        status(f"discovered {found.n_groups} source groups in {len(dataset)} images "
               f"(threshold {found.threshold} inliers)")
        summary = {key: value for key, value in found.to_dict().items()
                   if key in ("n_groups", "sizes", "threshold", "null", "graph",
                              "pairs_examined", "timings")}
        return found.labels(), summary
    from audit.leakage.duplicates import near_duplicate_groups

    # Perceptual hashes miss augmented copies (shifted, sheared, rotated by a few degrees);
    # pretrained features link many of them, so use them whenever there are weights.
    embeddings = _pretrained_embeddings(dataset, config) if config.weights else None
    return near_duplicate_groups(dataset, embeddings=embeddings,
                                 cosine_min=NEAR_DUPLICATE_COSINE), None


# Nearest-neighbour cosine of ImageNet MobileNetV2 features above which two cell crops are
# taken for copies: about 1% of unrelated kaggle/PBC cells reach it, while most augmented
# copies do (measured in audit/leakage/duplicates.py).
NEAR_DUPLICATE_COSINE = 0.92


def _pretrained_embeddings(dataset: Dataset, config: TrainConfig) -> np.ndarray:
    import keras
    import tensorflow as tf

    from audit.data import iter_batches
    from audit.progress import progress

    backbone = keras.applications.MobileNetV2(
        input_shape=(config.input_size, config.input_size, 3), alpha=config.alpha,
        include_top=False, pooling="avg", weights=config.weights)
    embed = tf.function(lambda x: backbone(x / 127.5 - 1.0, training=False))
    batches = iter_batches(dataset, image_size=config.input_size, resize="crop", batch_size=64)
    total = -(-len(dataset) // 64)
    return np.concatenate([embed(tf.constant(images, tf.float32)).numpy()
                           for images, _ in progress(batches, desc="embed for grouping",
                                                     total=total, unit="batch")])


def fit_and_save(
    dataset: Dataset,
    out: str | os.PathLike,
    *,
    config: TrainConfig,
    val_set: Dataset | None = None,
    val_fraction: float = 0.2,
    group_split: str | None = None,
    target: Dataset | None = None,
    n_per_class: int = 50,
    target_epochs: int = 10,
    verbose: int | None = None,
) -> dict:
    """Train on `dataset` (split off validation unless `val_set`), save model + metadata.

    With `target` (labelled images of another site): the few-label recipe. After the usual
    training, fine-tune on up to `n_per_class` target images per class (never more than half
    of a class, so every class keeps images to evaluate on), then write the target images used
    and the rest beside the model (`<stem>.target_train.csv`, `<stem>.target_heldout.csv`):
    the model may only be evaluated on the held-out ones.
    """
    import sys

    out = Path(out)
    groups, discovery = None, None
    if val_set is None:
        groups, discovery = _split_groups(dataset, group_split, config)
        train_idx, val_idx = split_dataset(dataset, val_fraction=val_fraction, seed=config.seed,
                                           groups=groups)
        val_source = dataset
    else:
        train_idx, val_idx = np.arange(len(dataset)), np.arange(len(val_set))
        val_source = val_set
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    result = train_classifier(dataset, train_idx, val_source, val_idx, config=config,
                              verbose=verbose)
    # The saved weights are the better phase's best epoch on validation accuracy.
    val_accuracy = result.val_accuracy
    target_record = None
    if target is not None:
        target_record, target_idx, target_rest = _finetune_on_target(
            result.model, dataset, train_idx, val_source, val_idx, target,
            config=config, n_per_class=n_per_class, epochs=target_epochs, verbose=verbose)

    split_path = out.with_name(out.stem + ".split.csv")  # + .train.csv, .validation.csv
    metadata = {
        "class_names": list(dataset.class_names),
        "input_size": config.input_size,
        "architecture": {"backbone": "MobileNetV2", "alpha": config.alpha,
                         "weights": config.weights, "head": "global average pool, dropout, dense"},
        "preprocessing": PREPROCESSING,
        "input_contract": dict(INPUT_CONTRACT) | {"views": config.views},
        "outputs": "probabilities (softmax); logits at layer 'logits', embedding at layer 'pool'",
        "training_data": dataset.describe() | {"skipped": len(dataset.skipped)},
        "validation_data": (val_set.describe() | {"skipped": len(val_set.skipped)})
        if val_set is not None else {"split_from_training": True, "fraction": val_fraction,
                                     "group_split": group_split},
        "split": {"train": len(train_idx), "validation": len(val_idx),
                  "n_groups": int(len(np.unique(groups))) if groups is not None else None,
                  "group_discovery": discovery,
                  "manifest": split_path.name if val_set is None else None},
        "hyperparameters": config.to_dict(),
        "seed": config.seed,
        "versions": library_versions(),
        "history": result.history,
        "phases": result.phases,
        "validation_accuracy": val_accuracy if np.isfinite(val_accuracy) else None,
        "training_seconds": round(result.seconds, 1),
    }
    if target_record is not None:
        metadata["target_finetuning"] = target_record
        metadata["training_seconds"] = round(result.seconds + target_record["seconds"], 1)
    save_model(result.model, out, metadata)
    if val_set is None:
        write_split_manifest(split_path, dataset, train_idx, val_idx, groups=groups)
    if target is not None:
        for suffix, indices in (("target_train", target_idx), ("target_heldout", target_rest)):
            write_manifest(out.with_name(f"{out.stem}.{suffix}.csv"), target, indices)
    return {"model": result.model, "metadata": metadata, "val_accuracy": val_accuracy,
            "train_idx": train_idx, "val_idx": val_idx}


def target_sample(target: Dataset, n_per_class: int, *, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Seeded (fine-tune, held-out) indices of `target`: up to `n_per_class` per class, never
    more than half of a class. Returns the per-class count taken."""
    if n_per_class < 1:
        raise UsageError(f"--n-per-class must be >= 1, received {n_per_class}")
    rng = np.random.default_rng(seed)
    taken, counts = [], {}
    for c, name in enumerate(target.class_names):
        members = np.flatnonzero(target.labels == c)
        k = min(n_per_class, len(members) // 2)
        counts[name] = int(k)
        taken.extend(rng.choice(members, k, replace=False).tolist())
    if not taken:
        raise UsageError(f"--finetune-on '{target.root}': no class has 2 or more images, so "
                         "none can be split between fine-tuning and evaluation")
    chosen = np.sort(np.array(taken, dtype=int))
    return chosen, np.setdiff1d(np.arange(len(target)), chosen), counts


def _finetune_on_target(model, dataset, train_idx, val_source, val_idx, target, *, config,
                        n_per_class, epochs, verbose):
    from audit.progress import status
    from model.pipeline import make_input_pipeline

    if tuple(target.class_names) != tuple(dataset.class_names):
        raise UsageError(f"--finetune-on '{target.root}' has classes "
                         f"{', '.join(target.class_names)}; the training data has "
                         f"{', '.join(dataset.class_names)}")
    chosen, rest, counts = target_sample(target, n_per_class, seed=config.seed)
    capped = {k: v for k, v in counts.items() if v < n_per_class}
    if capped:
        status("few-label fine-tuning: classes with fewer than "
               f"{2 * n_per_class} target images give half to fine-tuning: "
               + ", ".join(f"{k} {v}" for k, v in capped.items()))
    record = finetune_on_target(model, target, chosen, config=config, epochs=epochs,
                                source=(dataset, train_idx), verbose=verbose)
    val_ds = make_input_pipeline(val_source, val_idx, image_size=config.input_size,
                                 batch_size=config.batch_size, shuffle=False, seed=config.seed)
    probs = model.predict(val_ds.map(lambda x, y: x), verbose=0)
    record.update({
        "data": target.describe() | {"skipped": len(target.skipped)},
        "n_per_class": n_per_class, "per_class": counts,
        "heldout_images": int(len(rest)),
        "source_validation_accuracy_after": float(np.mean(
            probs.argmax(1) == val_source.labels[val_idx])),
    })
    return record, chosen, rest
