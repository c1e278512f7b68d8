"""The run's pixel store: every image a check, the explanations or the thumbnails look at is
decoded once, the model's way, and its white-cell mask computed once.

The per-image pass streams every file once (engines/, inference.py) and keeps only numbers.
What comes after it works on samples of a few hundred images (robustness, gap factors,
explanations, the report's thumbnails) and these samples overlap: the reference images of
the robustness subsample are also in gap factors' samples and the explanations. The store
keeps their decoded pixels (and masks) for the rest of the run, within a memory budget;
beyond it the least recently used images are dropped and decoded again when asked for
(counted, so the bench can show what was decoded twice).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np

from audit.data import Dataset, read_images

__all__ = ["PixelStore", "DEFAULT_BUDGET_MB", "shrink"]

DEFAULT_BUDGET_MB = 512  # ~3,400 images at 224 px: every sample of a default audit fits


class PixelStore:
    """Decoded images (uint8, size x size x 3) and their white-cell masks, keyed by file path."""

    def __init__(self, image_size: int, resize: str, *, budget_mb: float = DEFAULT_BUDGET_MB):
        self.image_size = int(image_size)
        self.resize = resize
        self.budget_bytes = int(budget_mb * 2 ** 20)
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()
        self._masks: dict[str, np.ndarray] = {}
        self._bytes = 0
        self.decoded = 0     # files decoded (a file decoded again after eviction counts twice)
        self.requested = 0   # images asked for
        self.masked = 0      # masks computed

    def images(self, paths: Sequence[str]) -> np.ndarray:
        """(N, S, S, 3) uint8 for `paths`, in order; only files not held are decoded."""
        paths = [str(p) for p in paths]
        self.requested += len(paths)
        found = {}
        for path in dict.fromkeys(paths):
            if path in self._images:
                self._images.move_to_end(path)
                found[path] = self._images[path]
        missing = [p for p in dict.fromkeys(paths) if p not in found]
        if missing:
            decoded = read_images(missing, self.image_size, resize=self.resize)
            for path, image in zip(missing, decoded, strict=True):
                found[path] = image
                self._keep(path, image)
            self.decoded += len(missing)
        out = np.empty((len(paths), self.image_size, self.image_size, 3), np.uint8)
        for i, path in enumerate(paths):
            out[i] = found[path]
        return out

    def masks(self, paths: Sequence[str]) -> np.ndarray:
        """(N, S, S) bool white-cell masks of `paths` (`cell_mask.white_cell_mask` of the stored
        pixels), each computed once."""
        from audit.cell_mask import white_cell_mask

        paths = [str(p) for p in paths]
        found = {p: self._masks[p] for p in dict.fromkeys(paths) if p in self._masks}
        todo = [p for p in dict.fromkeys(paths) if p not in found]
        if todo:
            for path, mask in zip(todo, white_cell_mask(self.images(todo)), strict=True):
                found[path] = mask
                if path in self._images:  # kept only beside its image, so both are evicted
                    self._masks[path] = mask
                    self._bytes += mask.nbytes
            self.masked += len(todo)
            self._evict()
        if not paths:
            return np.zeros((0, self.image_size, self.image_size), bool)
        return np.stack([found[p] for p in paths])

    def batches(self, dataset: Dataset, *, batch_size: int
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(images, indices) over `dataset` in order, like `data.iter_batches`, from the store."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, received {batch_size}")
        for start in range(0, len(dataset), batch_size):
            indices = np.arange(start, min(start + batch_size, len(dataset)))
            yield self.images([dataset.paths[i] for i in indices]), indices

    def summary(self) -> dict:
        """What the run asked of the store (recorded in the timings for the bench)."""
        return {"requested": self.requested, "decoded": self.decoded, "masks": self.masked,
                "held": len(self._images), "held_mb": round(self._bytes / 2 ** 20, 1)}

    def _keep(self, path: str, image: np.ndarray) -> None:
        self._images[path] = image
        self._bytes += image.nbytes
        self._evict()

    def _evict(self) -> None:
        while self._bytes > self.budget_bytes and len(self._images) > 1:
            old_path, old = self._images.popitem(last=False)
            self._bytes -= old.nbytes
            mask = self._masks.pop(old_path, None)
            if mask is not None:
                self._bytes -= mask.nbytes


def shrink(images: np.ndarray, side: int) -> np.ndarray:
    """uint8 (N, side, side, 3) copies of a batch (bilinear): thumbnails and example pictures."""
    from PIL import Image

    if images.shape[1] == side:
        return images
    out = np.empty((len(images), side, side, 3), np.uint8)
    for i, image in enumerate(images):
        out[i] = np.asarray(Image.fromarray(image).resize((side, side),
                                                          Image.Resampling.BILINEAR))
    return out
