"""Many crops: `generate` returns them as arrays, `write_site` writes them as a
class-per-folder dataset with a manifest, renamed into place so a failed run leaves nothing
half-written."""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from audit.progress import progress
from audit.synthetic.cell import MIN_SIZE, render_cell
from audit.synthetic.domain import CLASSES, REFERENCE_SITE, SiteDomain, check_integer

__all__ = ["GENERATOR_ID", "generate", "write_site"]

GENERATOR_ID = "cellaudit.synthetic"  # in site.json; marks a directory write_site may replace


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    classes = tuple(classes)
    unknown = [c for c in classes if c not in CLASSES]
    if not classes or unknown or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names from {', '.join(CLASSES)}, "
                         f"got {classes!r}")
    return classes


def _class_probabilities(domain: SiteDomain, classes: tuple[str, ...]) -> np.ndarray:
    if domain.class_priors is None:
        return np.full(len(classes), 1 / len(classes))
    weights = np.array([domain.class_priors.get(c, 0.0) for c in classes])
    if weights.sum() <= 0:
        raise ValueError(f"class_priors give no weight to any of classes {classes!r}")
    return weights / weights.sum()


def _render_indexed(index: int, *, seed: int, size: int, domain: SiteDomain,
                    classes: tuple[str, ...], probabilities: np.ndarray):
    # own seed derivation: image `index` of seed `seed` is default_rng([seed, index]), the
    # generator's documented property (audit.synthetic): an image does not depend on the others
    rng = np.random.default_rng([seed, index])
    label = int(rng.choice(len(classes), p=probabilities))
    image, mask = render_cell(classes[label], size=size, domain=domain, rng=rng)
    return label, image, mask


def generate(
    n: int, *, size: int = 64, domain: SiteDomain = REFERENCE_SITE, seed: int = 0,
    classes: Sequence[str] = CLASSES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` images: uint8 (n, size, size, 3), int64 labels indexing `classes`, bool masks.

    Masks are (n, size, size), the ground-truth white-cell regions.
    """
    check_integer("n", n, 0)
    check_integer("size", size, MIN_SIZE)
    check_integer("seed", seed, 0)
    classes = _check_classes(classes)
    probabilities = _class_probabilities(domain, classes)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    masks = np.empty((n, size, size), bool)
    for i in range(n):
        labels[i], images[i], masks[i] = _render_indexed(
            i, seed=seed, size=size, domain=domain, classes=classes, probabilities=probabilities)
    return images, labels, masks


def _is_synth_output(directory: Path) -> bool:
    try:
        return json.loads((directory / "site.json").read_text()).get("generator") == GENERATOR_ID
    except (OSError, ValueError, AttributeError):
        return False


def write_site(
    out_dir: str | Path, *, n_images: int, size: int = 64, domain: SiteDomain = REFERENCE_SITE,
    seed: int = 0, classes: Sequence[str] = CLASSES, site_name: str = "site",
    overwrite: bool = False,
) -> Path:
    """Write a class-per-folder dataset and return the path of its manifest.csv.

    Layout: `out_dir/<class>/<site_name>_<index:05d>.png`, `out_dir/manifest.csv` (path relative
    to out_dir, label = class name, group = one id per image) and `out_dir/site.json` (domain,
    seed, size, class counts). Images match `generate(n_images, ...)` with the same arguments.
    The set is built in a sibling temp directory and renamed into place, so a failed run leaves
    nothing half-written. An existing non-empty out_dir is replaced only if it is a previous
    synth output or `overwrite` is true.
    """
    check_integer("n_images", n_images, 0)
    check_integer("size", size, MIN_SIZE)
    check_integer("seed", seed, 0)
    classes = _check_classes(classes)
    probabilities = _class_probabilities(domain, classes)
    if not site_name or not all(ch.isalnum() or ch in "-_." for ch in site_name):
        raise ValueError(f"site_name must be non-empty letters, digits, '-', '_' or '.', "
                         f"got {site_name!r}")
    out = Path(out_dir).resolve()
    if out.parent == out:
        raise ValueError(f"out_dir cannot be the filesystem root, got {str(out_dir)!r}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite and not _is_synth_output(out):
        raise ValueError(f"out_dir {str(out)!r} is not empty and not a previous synth output; "
                         "overwrite=True (--overwrite) replaces it")

    out.parent.mkdir(parents=True, exist_ok=True)
    # not tempfile.mkdtemp: its 0700 mode would stick to the finished dataset
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir()
    try:
        for cls in classes:
            (staging / cls).mkdir()
        rows, counts = [], dict.fromkeys(classes, 0)
        for i in progress(range(n_images), desc="synth", total=n_images, unit="img"):
            label, image, _ = _render_indexed(i, seed=seed, size=size, domain=domain,
                                              classes=classes, probabilities=probabilities)
            name = f"{site_name}_{i:05d}"
            path = f"{classes[label]}/{name}.png"
            Image.fromarray(image).save(staging / path, compress_level=1)
            rows.append((path, classes[label], name))
            counts[classes[label]] += 1
        with open(staging / "manifest.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("path", "label", "group"))
            writer.writerows(rows)
        record = {"generator": GENERATOR_ID, "site_name": site_name, "seed": seed, "size": size,
                  "n_images": n_images, "classes": list(classes), "class_counts": counts,
                  "domain": domain.to_dict()}
        (staging / "site.json").write_text(json.dumps(record, indent=2) + "\n")
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out / "manifest.csv"


def _swap_into_place(staging: Path, out: Path) -> None:
    if not out.exists():
        staging.rename(out)
        return
    # move the old set aside first: rename cannot replace a non-empty directory
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    out.rename(trash / out.name)
    staging.rename(out)
    shutil.rmtree(trash, ignore_errors=True)
