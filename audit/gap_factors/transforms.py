"""The factor transforms: each changes one property of a batch of images (uint8 in, uint8
out) toward another set, and how they compose (`FactorSet`, `step`, `apply_factors`)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from PIL import Image
from scipy import ndimage

from audit import seeds
from audit.cell_mask import white_cell_mask
from audit.gap_factors.stain import (
    MacenkoStains,
    ReinhardStats,
    macenko_normalize,
    reinhard_transfer,
    rgb_to_lab,
)

IMAGE_FACTORS: tuple[str, ...] = ("scale", "background", "color", "sharpness", "resolution")
FACTORS: tuple[str, ...] = ("color", "scale", "sharpness", "resolution", "background", "priors")
COLOR_METHODS = ("reinhard", "macenko")

_UNSHARP_SIGMA = 1.0    # pixels; the unsharp mask's blur


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)



# ---- the transforms -----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Factor:
    """A fitted transform toward a target set; `details` records what was measured."""

    name: ClassVar[str] = ""
    details: dict = field(default_factory=dict, compare=False)

    @property
    def identity(self) -> bool:
        return False

    def apply(self, images: np.ndarray, *, masks: np.ndarray | None = None,
              seed: int = 0) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover - interface

    def warp_masks(self, masks: np.ndarray) -> np.ndarray:
        """Cell masks after `apply` (only geometric factors move them)."""
        return masks

    def describe(self) -> dict:
        return {"identity": self.identity, **self.details}


@dataclass(frozen=True, eq=False)
class ColorFactor(Factor):
    name: ClassVar[str] = "color"
    method: str = "reinhard"
    source: ReinhardStats | MacenkoStains | None = None
    target: ReinhardStats | MacenkoStains | None = None

    def apply(self, images, *, masks=None, seed=0):
        if self.method == "macenko":
            return macenko_normalize(images, self.source, self.target)
        return reinhard_transfer(images, self.source, self.target)

    def describe(self) -> dict:
        return {**super().describe(), "method": self.method, "source": self.source.to_dict(),
                "target": self.target.to_dict()}


def _border_colour(image: np.ndarray) -> np.ndarray:
    ring = np.concatenate([image[:2].reshape(-1, *image.shape[2:]),
                           image[-2:].reshape(-1, *image.shape[2:]),
                           image[:, :2].reshape(-1, *image.shape[2:]),
                           image[:, -2:].reshape(-1, *image.shape[2:])])
    return np.median(ring, axis=0).astype(image.dtype)


def zoom_images(images: np.ndarray, zoom: float, *, fill: bool = True) -> np.ndarray:
    """Images (N, H, W[, C]) magnified `zoom` times about their centre, same size. Zooming out
    fills the new border with each image's median border colour (`fill`; mirroring would copy
    the cell into it when it fills the crop) or with zeros."""
    if abs(zoom - 1.0) < 1e-9:
        return images.copy()
    n, h, w = images.shape[:3]
    bh, bw = h / zoom, w / zoom
    pad = int(np.ceil(max(bh - h, bw - w) / 2)) + 1 if zoom < 1 else 0
    out = np.empty_like(images)
    for i, image in enumerate(images):
        src = image
        if pad:
            src = np.empty((h + 2 * pad, w + 2 * pad, *image.shape[2:]), image.dtype)
            src[...] = _border_colour(image) if fill else 0
            src[pad:pad + h, pad:pad + w] = image
        cy, cx = pad + h / 2, pad + w / 2
        box = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
        out[i] = np.asarray(Image.fromarray(src).resize((w, h), Image.Resampling.BILINEAR,
                                                        box=box))
    return out


@dataclass(frozen=True, eq=False)
class ScaleFactor(Factor):
    name: ClassVar[str] = "scale"
    zoom: float = 1.0

    @property
    def identity(self) -> bool:
        return abs(self.zoom - 1.0) < 0.02

    def apply(self, images, *, masks=None, seed=0):
        return images.copy() if self.identity else zoom_images(images, self.zoom)

    def warp_masks(self, masks):
        if self.identity:
            return masks
        scaled = zoom_images(masks.astype(np.uint8) * 255, self.zoom, fill=False)
        return scaled >= 128

    def describe(self) -> dict:
        return {**super().describe(), "zoom": self.zoom}


def _gaussian(images: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(images.astype(np.float32), (0, sigma, sigma, 0), mode="reflect")


@dataclass(frozen=True, eq=False)
class SharpnessFactor(Factor):
    """mode "blur": Gaussian blur of `amount` sigma px; "sharpen": unsharp mask of weight
    `amount`; "identity"."""

    name: ClassVar[str] = "sharpness"
    mode: str = "identity"
    amount: float = 0.0

    @property
    def identity(self) -> bool:
        return self.mode == "identity" or self.amount <= 0

    def apply(self, images, *, masks=None, seed=0):
        if self.identity:
            return images.copy()
        if self.mode == "blur":
            return _to_uint8(_gaussian(images, self.amount))
        x = images.astype(np.float32)
        return _to_uint8(x + self.amount * (x - _gaussian(images, _UNSHARP_SIGMA)))

    def describe(self) -> dict:
        return {**super().describe(), "mode": self.mode, "amount": self.amount}


def _round_trip(image: np.ndarray, side: int, quality: int | None) -> np.ndarray:
    h, w = image.shape[:2]
    im = Image.fromarray(image)
    if side != w or side != h:
        im = im.resize((side, side), Image.Resampling.BILINEAR)
    if quality is not None:
        buffer = io.BytesIO()
        im.save(buffer, format="JPEG", quality=int(quality))
        im = Image.open(buffer).convert("RGB")
    if im.size != (w, h):
        im = im.resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(im)


@dataclass(frozen=True, eq=False)
class ResolutionFactor(Factor):
    """Round trip through `side` px (the target's native crop side) and JPEG `quality`."""

    name: ClassVar[str] = "resolution"
    side: int | None = None
    quality: int | None = None

    @property
    def identity(self) -> bool:
        return self.side is None and self.quality is None

    def apply(self, images, *, masks=None, seed=0):
        if self.identity:
            return images.copy()
        side = self.side or images.shape[1]
        return np.stack([_round_trip(im, side, self.quality) for im in images])

    def describe(self) -> dict:
        return {**super().describe(), "side": self.side, "quality": self.quality}


def _margin(mask: np.ndarray) -> int:
    """Pixels a cell mask is grown by before compositing: 3% of the image side, at least 1 (the
    mask follows the stain edge; a blurred rim of the cell lies just outside it)."""
    return max(1, round(0.03 * max(mask.shape)))


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    return ndimage.binary_dilation(mask, iterations=pixels) if mask.any() else mask


def _feather(mask: np.ndarray) -> np.ndarray:
    """Alpha of a cell mask: 1 on the grown cell, a soft edge of about 2 px outside it."""
    grown = _grow(mask, _margin(mask))
    edge = ndimage.gaussian_filter(_grow(grown, 1).astype(np.float32), 1.0)
    return np.maximum(edge, grown)


def background_stats(images: np.ndarray, masks: np.ndarray) -> ReinhardStats | None:
    """Lab statistics of the pixels outside the grown cell masks (None when there are none)."""
    outside = np.concatenate([im[~_grow(m, _margin(m) + 1)][::4] for im, m in
                              zip(images, masks, strict=True)])
    if len(outside) < 16:
        return None
    lab = rgb_to_lab(outside).astype(np.float64)
    return ReinhardStats(lab.mean(axis=0), np.maximum(lab.std(axis=0), 1e-3))


def fill_cell(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`image` with the (grown) cell replaced by the surrounding background, by normalised
    Gaussian averaging of the pixels outside it."""
    hole = _grow(mask, _margin(mask) + 1)
    valid = (~hole).astype(np.float32)
    sigma = max(2.0, image.shape[0] / 8)
    num = ndimage.gaussian_filter(image.astype(np.float32) * valid[..., None], (sigma, sigma, 0))
    den = ndimage.gaussian_filter(valid, sigma)[..., None]
    outside = image[~hole]
    median = np.median(outside, axis=0) if len(outside) else np.full(3, 255.0)
    fill = np.where(den > 1e-4, num / np.maximum(den, 1e-4), median)
    return _to_uint8(np.where(hole[..., None], fill, image))


@dataclass(frozen=True, eq=False)
class BackgroundFactor(Factor):
    """Everything outside each image's cell replaced by one of `donors` (target backgrounds,
    drawn per image from the seed); images without a segmented cell are left unchanged."""

    name: ClassVar[str] = "background"
    donors: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1, 3), np.uint8))

    @property
    def identity(self) -> bool:
        return len(self.donors) == 0 or not self.details.get("n_source_cells", 1)

    def apply(self, images, *, masks=None, seed=0):
        if self.identity:
            return images.copy()
        if masks is None:
            masks = white_cell_mask(images)
        donors = self.donors
        if donors.shape[1:3] != images.shape[1:3]:
            size = (images.shape[2], images.shape[1])
            donors = np.stack([np.asarray(Image.fromarray(d).resize(size, Image.Resampling.BILINEAR))
                               for d in donors])
        picks = np.random.default_rng(seed).integers(len(donors), size=len(images))
        out = images.copy()
        for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
            if mask.any():
                alpha = _feather(mask)[..., None]
                out[i] = _to_uint8(alpha * image + (1 - alpha) * donors[picks[i]])
        return out

    def describe(self) -> dict:
        return {**super().describe(), "n_donors": len(self.donors)}




# ---- applying -----------------------------------------------------------------------------------

def step(factor: Factor, images: np.ndarray, masks: np.ndarray | None, *, seed: int = 0
         ) -> tuple[np.ndarray, np.ndarray | None]:
    """(images, masks) after one factor; the factor's randomness comes from (seed, factor)."""
    out = factor.apply(images, masks=masks, seed=seeds.child_seed(seed, "factor", factor.name))
    return out, (None if masks is None else factor.warp_masks(masks))


@dataclass(frozen=True, eq=False)
class FactorSet:
    """Fitted factors in application order, and the colour match used to segment the source's
    cells (`masks`) the way they were segmented when fitting."""

    factors: tuple[Factor, ...]
    segment_color: ColorFactor | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.factors)

    def __getitem__(self, name: str) -> Factor:
        return self.factors[self.names.index(name)]

    def masks(self, images: np.ndarray) -> np.ndarray:
        matched = images if self.segment_color is None else self.segment_color.apply(images)
        return white_cell_mask(matched)

    @property
    def needs_masks(self) -> bool:
        return any(f.name == "background" and not f.identity for f in self.factors)

    def apply(self, images: np.ndarray, names: Sequence[str] | None = None, *,
              masks: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
        """`images` after the factors in `names` (default all), in application order."""
        chosen = [f for f in self.factors if names is None or f.name in names]
        if masks is None and any(f.name == "background" and not f.identity for f in chosen):
            masks = self.masks(images)
        return apply_factors(images, chosen, masks=masks, seed=seed)

    def describe(self) -> dict[str, dict]:
        return {f.name: f.describe() for f in self.factors}


def apply_factors(images: np.ndarray, factors: Sequence[Factor], *,
                  masks: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """`images` after every factor in `factors`, composed in `IMAGE_FACTORS` order."""
    ordered = sorted(factors, key=lambda f: IMAGE_FACTORS.index(f.name))
    if masks is None and any(f.name == "background" and not f.identity for f in ordered):
        masks = white_cell_mask(images)
    out = images
    for factor in ordered:
        out, masks = step(factor, out, masks, seed=seed)
    return out.copy() if out is images else out

