"""Augmented copies of synthetic cells with known sources: test and benchmark truth.

Each source is a procedural smear crop (`audit.synthetic.render_cell`); each copy applies the
augmentations public blood-cell sets were built with: a rotation by any angle, horizontal and
vertical flips, a shift with constant (black) edge fill, shear, zoom and a small colour
change. `write_copies` lays them out class-per-folder with a manifest whose `group` column is
the true source, so `discover_groups` can be scored against it.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from audit import seeds
from audit.synthetic import CLASSES, render_cell

__all__ = ["CopyAugmentation", "augmented_copy", "write_copies"]


@dataclass(frozen=True)
class CopyAugmentation:
    max_rotation: float = 180.0   # degrees, either way
    max_shift: float = 0.15       # share of the image size, each axis
    max_shear: float = 0.2        # shear factor
    zoom: tuple[float, float] = (0.85, 1.2)
    max_brightness: float = 0.08  # relative, and per channel half of it
    flips: bool = True


def augmented_copy(image: np.ndarray, rng: np.random.Generator,
                   augmentation: CopyAugmentation = CopyAugmentation()) -> np.ndarray:
    """One augmented copy of a uint8 (S, S, 3) image, same size, black edge fill."""
    size = image.shape[0]
    a = augmentation
    angle = math.radians(rng.uniform(-a.max_rotation, a.max_rotation))
    zoom = rng.uniform(*a.zoom)
    shear = rng.uniform(-a.max_shear, a.max_shear)
    shift = rng.uniform(-a.max_shift, a.max_shift, 2) * size
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    linear = zoom * rotation @ np.array([[1.0, shear], [0.0, 1.0]])
    centre = np.array([size / 2, size / 2])
    matrix = np.hstack([linear, (centre - linear @ centre + shift)[:, None]])
    out = image
    if a.flips and rng.random() < 0.5:
        out = out[:, ::-1]
    if a.flips and rng.random() < 0.5:
        out = out[::-1]
    out = cv2.warpAffine(np.ascontiguousarray(out), matrix, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    gain = (1 + rng.uniform(-a.max_brightness, a.max_brightness)) * \
        (1 + rng.uniform(-a.max_brightness / 2, a.max_brightness / 2, 3))
    return np.clip(out.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def write_copies(out: str | Path, *, n_sources: int, copies: int, size: int = 128,
                 seed: int = 0, classes: tuple[str, ...] = CLASSES,
                 augmentation: CopyAugmentation = CopyAugmentation()) -> Path:
    """`copies` augmented copies of each of `n_sources` synthetic cells under `out`/<class>/,
    and `out`/truth.csv (path,label,group = source id). Returns the truth manifest's path."""
    out = Path(out)
    rows = []
    for source in range(n_sources):
        rng = seeds.rng(seed, "copies", source)
        cls = classes[source % len(classes)]
        image, _ = render_cell(cls, size=size, rng=rng)
        folder = out / cls
        folder.mkdir(parents=True, exist_ok=True)
        for c in range(copies):
            path = folder / f"s{source:04d}_c{c}.png"
            Image.fromarray(augmented_copy(image, rng, augmentation)).save(path)
            rows.append((f"{cls}/{path.name}", cls, f"source-{source}"))
    truth = out / "truth.csv"
    with truth.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "group"])
        writer.writerows(rows)
    return truth
