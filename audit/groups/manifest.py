"""The groups as a CSV manifest (path,label,group) that `audit.data.load_dataset` and any
other tool can read; written atomically."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from audit.atomic import atomic_path
from audit.data import Dataset

__all__ = ["write_groups_manifest"]


def write_groups_manifest(path: str | os.PathLike, dataset: Dataset, groups: Sequence[str]
                          ) -> Path:
    """One row per image: its path (relative to the manifest's folder when below it, else
    absolute), its class name and its group."""
    path = Path(path)
    if len(groups) != len(dataset):
        raise ValueError(f"{len(groups)} groups for {len(dataset)} images")
    base = path.parent.resolve()
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "group"])
        for image, label, group in zip(dataset.paths, dataset.labels, groups, strict=True):
            absolute = Path(image).resolve()
            try:
                where = str(absolute.relative_to(base))
            except ValueError:
                where = str(absolute)
            writer.writerow([where, dataset.class_names[int(label)], group])
    return path
