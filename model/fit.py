"""Split, train, evaluate and save: what `audit train` (and the demo) run end to end."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from audit.data import Dataset
from audit.errors import UsageError
from model.io import library_versions, save_model
from model.split import split_dataset, write_split_manifest
from model.train import TrainConfig, train_classifier

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


def _split_groups(dataset: Dataset, mode: str | None, config: TrainConfig) -> np.ndarray | None:
    if mode is None:
        return None
    if mode == "manifest":
        if dataset.groups is None:
            raise UsageError(f"--group-split: dataset '{dataset.root}' has no group column; use a "
                             "CSV manifest with path,label,group or --group-split near-duplicates")
        return np.asarray(dataset.groups)
    from audit.duplicates import near_duplicate_groups

    # Perceptual hashes miss augmented copies (shifted, sheared, rotated by a few degrees);
    # pretrained features link many of them, so use them whenever there are weights.
    embeddings = _pretrained_embeddings(dataset, config) if config.weights else None
    return near_duplicate_groups(dataset, embeddings=embeddings,
                                 cosine_min=NEAR_DUPLICATE_COSINE)


# Nearest-neighbour cosine of ImageNet MobileNetV2 features above which two cell crops are
# taken for copies: about 1% of unrelated kaggle/PBC cells reach it, while most augmented
# copies do (measured in audit/duplicates.py).
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
    verbose: int | None = None,
) -> dict:
    """Train on `dataset` (split off validation unless `val_set`), save model + metadata."""
    import sys

    out = Path(out)
    groups = None
    if val_set is None:
        groups = _split_groups(dataset, group_split, config)
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
    # The saved weights are those of the epoch with the lowest validation loss over both phases.
    val_accuracy = float(result.history["val_accuracy"][int(np.argmin(result.history["val_loss"]))]) \
        if result.history.get("val_loss") else float("nan")

    split_path = out.with_name(out.stem + ".split.csv")  # + .train.csv, .validation.csv
    metadata = {
        "class_names": list(dataset.class_names),
        "input_size": config.input_size,
        "architecture": {"backbone": "MobileNetV2", "alpha": config.alpha,
                         "weights": config.weights, "head": "global average pool, dropout, dense"},
        "preprocessing": PREPROCESSING,
        "input_contract": dict(INPUT_CONTRACT),
        "outputs": "probabilities (softmax); logits at layer 'logits', embedding at layer 'pool'",
        "training_data": dataset.describe() | {"skipped": len(dataset.skipped)},
        "validation_data": (val_set.describe() | {"skipped": len(val_set.skipped)})
        if val_set is not None else {"split_from_training": True, "fraction": val_fraction,
                                     "group_split": group_split},
        "split": {"train": len(train_idx), "validation": len(val_idx),
                  "n_groups": int(len(np.unique(groups))) if groups is not None else None,
                  "manifest": split_path.name if val_set is None else None},
        "hyperparameters": config.to_dict(),
        "seed": config.seed,
        "versions": library_versions(),
        "history": result.history,
        "phases": result.phases,
        "validation_accuracy": val_accuracy if np.isfinite(val_accuracy) else None,
        "training_seconds": round(result.seconds, 1),
    }
    save_model(result.model, out, metadata)
    if val_set is None:
        write_split_manifest(split_path, dataset, train_idx, val_idx, groups=groups)
    return {"model": result.model, "metadata": metadata, "val_accuracy": val_accuracy,
            "train_idx": train_idx, "val_idx": val_idx}
