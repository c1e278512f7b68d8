"""Stratified (and optionally group-aware) train/validation split of a Dataset."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedShuffleSplit

from audit.atomic import atomic_path
from audit.data import Dataset
from audit.errors import UsageError

__all__ = ["split_dataset", "write_split_manifest", "write_manifest"]


def split_dataset(
    dataset: Dataset, *, val_fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation), stratified by class.

    With `groups` (patient, slide, source image or near-duplicate cluster ids), no group is
    on both sides: copies of one cell cannot leak from training into validation.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"--val-split must be between 0 and 1, received {val_fraction}")
    labels = dataset.labels
    if groups is None:
        counts = np.bincount(labels)
        if counts[counts > 0].min() < 2:
            raise UsageError(f"dataset '{dataset.name}': every class needs >= 2 images to split")
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
        train, val = next(splitter.split(np.zeros(len(labels)), labels))
    else:
        n_groups = len(np.unique(groups))
        n_splits = max(2, round(1.0 / val_fraction))
        if n_groups < n_splits:
            raise UsageError(f"dataset '{dataset.name}' has {n_groups} groups; a group-aware "
                             f"split at {val_fraction} needs at least {n_splits}")
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        train, val = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return np.sort(train), np.sort(val)


def _relative_to(base: Path):
    def where(path: str) -> str:
        absolute = Path(path).resolve()
        try:
            return str(absolute.relative_to(base))
        except ValueError:
            return str(absolute)
    return where


def _group_of(dataset: Dataset, groups: np.ndarray | None):
    """Image i's group column: the groups a split kept apart when given, else the dataset's."""
    def group(i: int) -> str:
        if groups is not None:
            return str(groups[i])
        return dataset.groups[i] if dataset.groups is not None else ""
    return group


def write_manifest(path: str | os.PathLike, dataset: Dataset, indices: np.ndarray, *,
                   groups: np.ndarray | None = None) -> Path:
    """Write the images `indices` of `dataset` as a manifest (path,label,group) that
    `audit run --data` and `audit train` read; paths relative to the manifest's folder when the
    data lies below it, else absolute."""
    path = Path(path)
    where = _relative_to(path.parent.resolve())
    group = _group_of(dataset, groups)
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "group"])
        for i in indices:
            writer.writerow([where(dataset.paths[i]), dataset.class_names[dataset.labels[i]],
                             group(i)])
    return path


def write_split_manifest(path: str | os.PathLike, dataset: Dataset, train: np.ndarray,
                         val: np.ndarray, *, groups: np.ndarray | None = None) -> list[Path]:
    """Write `path` (path,label,group,split) and one manifest per split beside it.

    `<stem>.train.csv` and `<stem>.validation.csv` (path,label,group) can be passed straight to
    `audit run --data train=... --data heldout=...`. Paths are relative to the manifest's folder
    when the data lies below it, else absolute.
    """
    path = Path(path)
    where = _relative_to(path.parent.resolve())
    group = _group_of(dataset, groups)
    stem = path.name[: -len(".split.csv")] if path.name.endswith(".split.csv") else path.stem
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "group", "split"])
        for split, indices in (("train", train), ("validation", val)):
            for i in indices:
                writer.writerow([where(dataset.paths[i]), dataset.class_names[dataset.labels[i]],
                                 group(i), split])
    written = [path]
    for split, indices in (("train", train), ("validation", val)):
        written.append(write_manifest(path.with_name(f"{stem}.{split}.csv"), dataset, indices,
                                      groups=groups))
    return written
