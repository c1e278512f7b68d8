"""Datasets given to the Python API: a folder or manifest path, `(images, labels)` arrays, or a
`tf.data.Dataset` of `(image, label)`.

Arrays and tf.data datasets are written once, batch by batch, to lossless PNG files with a
`manifest.csv` in a temporary folder, so that they go through exactly the pipeline files go
through (the same decoder and input contract, fingerprint, cache and thumbnails): one code
path, and never more than one batch of pixels held here. The PNG encoder is deterministic, so
the same arrays give the same fingerprint, hence cache hits, on a second run.

Pixels must be RGB, as the images were before the model's own preprocessing: uint8 0-255, or
float in [0, 255]; float arrays whose values all lie in [0, 1] are taken as [0, 1] and scaled
by 255 (a real cell image is never that dark on a 0-255 scale), and the conversion is
recorded. Negative values mean already-preprocessed pixels and are refused.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from audit.errors import UsageError

__all__ = ["materialise", "is_path_source"]


def is_path_source(source: object) -> bool:
    return isinstance(source, (str, os.PathLike))


def _batches(source: object, argument: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images (B, H, W, 3), labels (B,)) batches from arrays or a tf.data.Dataset."""
    if isinstance(source, tuple) and len(source) == 2:
        images, labels = source
        labels = np.asarray(labels)
        if len(images) != len(labels):
            raise UsageError(f"{argument}: {len(images)} images but {len(labels)} labels")
        for start in range(0, len(images), 256):
            chunk = images[start:start + 256]
            if isinstance(chunk, (list, tuple)):  # a list of arrays: check sizes one by one
                shapes = {np.shape(image) for image in chunk}
                if len(shapes) > 1:
                    raise UsageError(f"{argument}: images have mixed sizes "
                                     f"({', '.join(map(str, sorted(shapes)[:3]))}); resize "
                                     "them the way the model was trained or save them as "
                                     "files and pass the folder")
                chunk = np.stack([np.asarray(image) for image in chunk]) if chunk else \
                    np.empty((0, 1, 1, 3), np.uint8)
            yield np.asarray(chunk), labels[start:start + 256]
        return
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover - TensorFlow is a dependency
        tf = None
    if tf is not None and isinstance(source, tf.data.Dataset):
        spec = source.element_spec
        if not (isinstance(spec, tuple) and len(spec) == 2):
            raise UsageError(f"{argument}: a tf.data.Dataset must yield (image, label) pairs, "
                             f"its elements are {spec}")
        batched = len(spec[0].shape) == 4
        dataset = source if batched else source.batch(256)
        for images, labels in dataset.as_numpy_iterator():
            yield np.asarray(images), np.asarray(labels)
        return
    raise UsageError(
        f"{argument}: expected a folder or CSV manifest path, an (images, labels) pair of "
        f"arrays or a tf.data.Dataset of (image, label); received {type(source).__name__}")


def _to_uint8(images: np.ndarray, argument: str, state: dict) -> np.ndarray:
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UsageError(f"{argument}: images must have shape (N, height, width, 3) (or 1 "
                         f"channel), received {images.shape}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    if images.dtype == np.uint8:
        state.setdefault("pixels", "uint8 0-255")
        return images
    if images.dtype == bool or not np.issubdtype(images.dtype, np.number):
        raise UsageError(f"{argument}: images must be uint8 or float pixels, received dtype "
                         f"{images.dtype}")
    values = images.astype(np.float64)
    if not np.isfinite(values).all():
        raise UsageError(f"{argument}: images hold NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 255:
        raise UsageError(f"{argument}: float pixels must lie in [0, 255] or [0, 1] (the image "
                         f"before the model's preprocessing); received values from {low:g} to "
                         f"{high:g}")
    unit = state.setdefault("unit", high <= 1.0)
    if unit and high > 1.0:
        raise UsageError(f"{argument}: the first images were in [0, 1] but a later batch reaches "
                         f"{high:g}; give all images on one scale")
    state.setdefault("pixels", "float [0, 1], scaled by 255" if unit else "float 0-255")
    return np.clip(np.rint(values * (255.0 if unit else 1.0)), 0, 255).astype(np.uint8)


def _label_names(labels: np.ndarray, class_names: Sequence[str], argument: str) -> list[str]:
    labels = np.asarray(labels).reshape(len(labels), -1)
    if labels.shape[1] > 1:  # one-hot, as Keras' loaders give with label_mode="categorical"
        labels = labels.argmax(axis=1)
    labels = labels.reshape(-1)
    if labels.dtype.kind in "iu":
        bad = labels[(labels < 0) | (labels >= len(class_names))]
        if bad.size:
            raise UsageError(f"{argument}: label {int(bad[0])} is outside the model's "
                             f"{len(class_names)} classes (0-{len(class_names) - 1})")
        return [class_names[int(i)] for i in labels]
    if labels.dtype.kind in "fc" or labels.dtype == bool:
        raise UsageError(f"{argument}: labels must be class indices or class names, received "
                         f"dtype {labels.dtype}")
    names = [v.decode() if isinstance(v, bytes) else str(v) for v in labels]
    unknown = sorted(set(names) - set(class_names))
    if unknown:
        raise UsageError(f"{argument}: labels {unknown[:5]} are not among the model's classes "
                         f"({', '.join(class_names)})")
    return names


def materialise(source: object, folder: Path, *, class_names: Sequence[str],
                argument: str) -> tuple[str, dict]:
    """A path the dataset loader reads, and a description of the conversion."""
    if is_path_source(source):
        return os.fspath(source), {}
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows, shape, state, index = [], None, {}, 0
    for images, labels in _batches(source, argument):
        names = _label_names(labels, class_names, argument)
        pixels = _to_uint8(np.asarray(images), argument, state)
        if len(pixels) != len(names):
            raise UsageError(f"{argument}: a batch holds {len(pixels)} images but "
                             f"{len(names)} labels")
        for image, label in zip(pixels, names, strict=True):
            if shape is None:
                shape = image.shape
            elif image.shape != shape:
                raise UsageError(f"{argument}: images have mixed sizes (the first is "
                                 f"{shape[1]}x{shape[0]}, image {index} is {image.shape[1]}x"
                                 f"{image.shape[0]}); resize them the way the model was trained "
                                 "or save them as files and pass the folder")
            name = f"{index:07d}.png"
            Image.fromarray(image).save(folder / name, compress_level=1)
            rows.append((name, label))
            index += 1
    if not rows:
        raise UsageError(f"{argument}: the dataset is empty")
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return str(manifest), {"from": "arrays" if isinstance(source, tuple) else "tf.data",
                           "images": len(rows), "size": list(shape[:2]),
                           "pixels": state.get("pixels")}
