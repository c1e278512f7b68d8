"""Keypoints of every image, as is and mirrored, streamed from the project's decoder.

SIFT keypoints and descriptors are invariant to rotation, zoom and (in grey) small colour
changes, and an affine fit between matched keypoints absorbs shift and shear; they are not
reflection invariant, so each image is also described mirrored (a flipped copy matches the
mirrored description of its source). Pixels of a constant edge fill (the black wedges that
rotation and shear leave) are masked out: their corners would match between unrelated images.
Only keypoints and descriptors are kept, never pixels: about 2 x 500 x 136 bytes per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from audit.data import Dataset, iter_batches
from audit.parallel import map_chunks
from audit.progress import progress

__all__ = ["Keypoints", "describe_image", "extract_keypoints"]

FILL_LEVEL = 8       # a pixel whose brightest channel is below this is taken for edge fill
FILL_MARGIN = 0.02   # ... and keypoints within this share of the image size of the fill dropped


@dataclass(frozen=True)
class Keypoints:
    """Per image and orientation (0 as is, 1 mirrored): positions and SIFT descriptors."""

    points: tuple[tuple[np.ndarray, np.ndarray], ...]       # (k, 2) float32 x, y per image
    descriptors: tuple[tuple[np.ndarray, np.ndarray], ...]  # (k, 128) uint8 per image
    image_size: int

    def __len__(self) -> int:
        return len(self.points)

    def subset(self, indices) -> Keypoints:
        picked = [int(i) for i in indices]
        return Keypoints(tuple(self.points[i] for i in picked),
                         tuple(self.descriptors[i] for i in picked), self.image_size)

    def counts(self) -> np.ndarray:
        """Keypoints per image (as is)."""
        return np.array([len(p[0]) for p in self.points], dtype=np.int64)


def _fill_mask(image: np.ndarray) -> np.ndarray:
    """uint8 mask, 255 where keypoints may lie: away from constant black edge fill."""
    fill = (image.max(axis=2) < FILL_LEVEL).astype(np.uint8)
    if not fill.any():
        return np.full(fill.shape, 255, np.uint8)
    margin = max(1, round(FILL_MARGIN * image.shape[0]))
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    return np.where(cv2.dilate(fill, kernel) > 0, 0, 255).astype(np.uint8)


def describe_image(image: np.ndarray, sift: cv2.SIFT) -> tuple[tuple[np.ndarray, np.ndarray],
                                                                tuple[np.ndarray, np.ndarray]]:
    """((points, descriptors) as is, (points, descriptors) mirrored) of one RGB uint8 image."""
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    mask = _fill_mask(image)
    out = []
    for g, m in ((grey, mask), (np.ascontiguousarray(grey[:, ::-1]),
                                np.ascontiguousarray(mask[:, ::-1]))):
        found, desc = sift.detectAndCompute(g, m)
        if desc is None or not found:
            out.append((np.empty((0, 2), np.float32), np.empty((0, 128), np.uint8)))
            continue
        points = np.array([k.pt for k in found], dtype=np.float32)
        # OpenCV's SIFT descriptors are whole numbers 0-255 stored as float: no loss as uint8
        out.append((points, np.clip(np.rint(desc), 0, 255).astype(np.uint8)))
    return out[0], out[1]


def _sift(max_keypoints: int, contrast_threshold: float) -> cv2.SIFT:
    return cv2.SIFT_create(nfeatures=max_keypoints, contrastThreshold=contrast_threshold)


def extract_keypoints(dataset: Dataset, *, image_size: int, max_keypoints: int,
                      contrast_threshold: float, batch_size: int = 64,
                      desc: str = "keypoints") -> Keypoints:
    """Keypoints of every image of `dataset`, decoded batch by batch at `image_size` px by
    `audit.data.iter_batches` (centre square crop, as training and audit see the images)."""
    points: list = []
    descriptors: list = []

    def describe(images: Sequence[np.ndarray]) -> list:
        sift = _sift(max_keypoints, contrast_threshold)  # one detector per worker thread
        return [describe_image(im, sift) for im in images]

    batches = iter_batches(dataset, image_size=image_size, resize="crop", batch_size=batch_size)
    total = -(-len(dataset) // batch_size)
    for images, _ in progress(batches, desc=desc, total=total, unit="batch"):
        for part in map_chunks(describe, list(images), chunk=16):
            for plain, mirrored in part:
                points.append((plain[0], mirrored[0]))
                descriptors.append((plain[1], mirrored[1]))
    return Keypoints(tuple(points), tuple(descriptors), image_size)
