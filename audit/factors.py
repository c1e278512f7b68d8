"""Factor transforms: each changes one property of a set of images toward another set's
statistics, fitted on seeded samples of the two sets (no labels).

| factor     | fitted on the two samples                        | transform                          |
|------------|--------------------------------------------------|------------------------------------|
| scale      | median white-cell area (`white_cell_mask`)       | zoom about the centre by sqrt(area ratio), within 0.5-2; a zoom-out fills the border with the image's border colour |
| background | the target's images with their cell filled in    | everything outside the (grown, feathered) cell mask replaced by a target background, recoloured into the source's colours and blurred to its focus |
| color      | Macenko stain vectors or Reinhard Lab statistics, at equal focus | `audit.stain` transfer, set level |
| sharpness  | median half-resolution Laplacian-variance sharpness | Gaussian blur of the sharper set to the other's sharpness; a blurrier set is left as is, or unsharp-masked up to it with `allow_sharpen` |
| resolution | median native crop side and JPEG quality (files) | round trip through the target's pixel size and JPEG quality, when it has fewer pixels across the crop (below the model input) or stronger compression |

Transforms compose in that order (`IMAGE_FACTORS`): magnification and slide content, then
stain, focus and digitisation, the order of acquisition. Each is deterministic for a given
`seed` (only the background draws at random: which target background goes with which image),
uint8 in, uint8 out, batched. A factor that finds nothing to change is `identity` and returns
the images unchanged: scale and sharpness when the two samples do not differ (Mann-Whitney p >= 0.01 on cell area
or sharpness), resolution at the same pixel size and quality, background with no segmented
cells, sharpness on the blurrier side unless `allow_sharpen`.
"""

from __future__ import annotations

import io
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.stats import mannwhitneyu

from audit import seeds
from audit.imaging import white_cell_mask
from audit.stain import (
    MacenkoStains,
    ReinhardStats,
    macenko_normalize,
    reinhard_transfer,
    rgb_to_lab,
)

__all__ = ["IMAGE_FACTORS", "FACTORS", "COLOR_METHODS", "SetSample", "Factor", "ColorFactor",
           "ScaleFactor", "SharpnessFactor", "ResolutionFactor", "BackgroundFactor",
           "FactorSet", "fit_factors", "apply_factors", "step", "sharpness", "zoom_images",
           "estimate_jpeg_quality", "native_side"]

IMAGE_FACTORS: tuple[str, ...] = ("scale", "background", "color", "sharpness", "resolution")
FACTORS: tuple[str, ...] = ("color", "scale", "sharpness", "resolution", "background", "priors")
COLOR_METHODS = ("reinhard", "macenko")

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_MIN_CELLS = 3          # segmented cells a sample needs before its cell size is trusted
_ALPHA = 0.01           # a property drives a transform only if the two samples differ (Mann-Whitney)
_ZOOM_RANGE = (0.5, 2.0)
_TOLERANCE = 0.05       # relative difference below which sharpness / pixel size count as equal
_UNSHARP_SIGMA = 1.0    # pixels; the unsharp mask's blur
# IJG's standard luminance quantisation table (quality 50), natural order.
_IJG_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
                      14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
                      18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
                      49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


# ---- measurements -------------------------------------------------------------------------------

def sharpness(images: np.ndarray) -> np.ndarray:
    """Per image: `audit.imaging.image_properties`'s sharpness (variance of the 4-neighbour
    Laplacian of luminance over the variance of luminance, + (1/255)^2) measured at half
    resolution (2x2 means), where sensor noise weighs much less than edges: at full resolution
    the Laplacian of a noisy, blurred crop is mostly noise, and blurring a clean crop to match
    it would undershoot the real blur (on `audit.synthetic` sites, a 1.5 px blur is matched
    by sigma 1.46 at half resolution against 0.96 at full)."""
    return _luminance_sharpness(images.astype(np.float32) @ (_LUMA / 255.0))


def _luminance_sharpness(lum: np.ndarray) -> np.ndarray:
    n, h, w = lum.shape
    if min(h, w) >= 16:
        lum = lum[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    lap = ndimage.correlate1d(lum, [1.0, -2.0, 1.0], axis=1, mode="reflect")
    lap += ndimage.correlate1d(lum, [1.0, -2.0, 1.0], axis=2, mode="reflect")
    lum_var = lum.reshape(n, -1).astype(np.float64).var(axis=1)
    return lap.reshape(n, -1).astype(np.float64).var(axis=1) / (lum_var + (1.0 / 255.0) ** 2)


def estimate_jpeg_quality(path: str) -> int:
    """IJG quality (1-100) of a JPEG from its luminance quantisation table; 100 for other
    formats (lossless) and for files that cannot be read."""
    try:
        with Image.open(path) as im:
            tables = getattr(im, "quantization", None) if im.format == "JPEG" else None
    except OSError:
        return 100
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return 100
    scale = 100.0 * float(np.mean(np.asarray(tables[0], float) / _IJG_LUMA))
    quality = (200.0 - scale) / 2.0 if scale <= 100 else 5000.0 / scale
    return int(np.clip(round(quality), 1, 100))


def native_side(path: str) -> int:
    """The side of the centre square `audit.data.load_image` crops from a file (0 if
    unreadable)."""
    try:
        with Image.open(path) as im:
            return int(min(im.size))
    except OSError:
        return 0


@dataclass(frozen=True, eq=False)
class SetSample:
    """A seeded sample of one set at the model's input size: images, their cell masks and what
    the files say about acquisition (native crop side, JPEG quality; empty when unknown)."""

    images: np.ndarray
    masks: np.ndarray
    native_sides: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    jpeg_qualities: np.ndarray = field(default_factory=lambda: np.zeros(0, int))

    @classmethod
    def from_images(cls, images: np.ndarray, *, paths: Sequence[str] = (),
                    masks: np.ndarray | None = None) -> SetSample:
        """`masks`: the images' white-cell masks when already computed (the pixel store)."""
        return cls(images, white_cell_mask(images) if masks is None else masks,
                   np.array([native_side(p) for p in paths], int),
                   np.array([estimate_jpeg_quality(p) for p in paths], int))

    @property
    def size(self) -> int:
        return int(self.images.shape[1])


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


def _background_stats(images: np.ndarray, masks: np.ndarray) -> ReinhardStats | None:
    """Lab statistics of the pixels outside the grown cell masks (None when there are none)."""
    outside = np.concatenate([im[~_grow(m, _margin(m) + 1)][::4] for im, m in
                              zip(images, masks, strict=True)])
    if len(outside) < 16:
        return None
    lab = rgb_to_lab(outside).astype(np.float64)
    return ReinhardStats(lab.mean(axis=0), np.maximum(lab.std(axis=0), 1e-3))


def _fill_cell(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
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


# ---- fitting ------------------------------------------------------------------------------------

def _fit_color(source: np.ndarray, target: np.ndarray, method: str, seed: int) -> ColorFactor:
    if method not in COLOR_METHODS:
        raise ValueError(f"color method must be one of {COLOR_METHODS}, received {method!r}")
    stats = ReinhardStats if method == "reinhard" else MacenkoStains
    return ColorFactor(method=method, source=stats.fit(source, seed=seed),
                       target=stats.fit(target, seed=seed))


def _differ(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Mann-Whitney p-value of two samples (1 when either is too small)."""
    if min(len(a), len(b)) < _MIN_CELLS:
        return 1.0
    return float(mannwhitneyu(a, b).pvalue)


def _cell_areas(sample: SetSample) -> np.ndarray:
    areas = sample.masks.reshape(len(sample.masks), -1).mean(axis=1)
    return areas[areas > 0]


def _fit_scale(source: SetSample, target: SetSample) -> ScaleFactor:
    a_s, a_t = _cell_areas(source), _cell_areas(target)
    p = _differ(a_s, a_t)
    details = {"source_cell_area": float(np.median(a_s)) if len(a_s) else None,
               "target_cell_area": float(np.median(a_t)) if len(a_t) else None,
               "n_source_cells": len(a_s), "n_target_cells": len(a_t), "p_value": p}
    if p >= _ALPHA:
        return ScaleFactor(details=details, zoom=1.0)
    zoom = np.sqrt(np.median(a_t) / np.median(a_s))
    return ScaleFactor(details=details, zoom=float(np.clip(zoom, *_ZOOM_RANGE)))


def _solve_monotone(measure, low: float, high: float, goal: float, *, increasing: bool,
                    steps: int = 12) -> float:
    """The parameter in [low, high] where the monotone `measure` meets `goal` (bisection)."""
    for _ in range(steps):
        mid = (low + high) / 2
        if (measure(mid) < goal) == increasing:
            low = mid
        else:
            high = mid
    return (low + high) / 2


# fit_factors needs the sharpness fit of a pair of samples in both directions, for colour at
# equal focus, background donors and the factor itself; the gap-factors check fits both
# directions of each pair. One bisection per (source, target) pair: keyed by the image
# arrays' identity, held only while both arrays live.
_SHARPNESS_FITS: dict[tuple[int, int, bool], tuple] = {}


def _fit_sharpness(source: SetSample, target: SetSample, *, allow_sharpen: bool
                   ) -> SharpnessFactor:
    key = (id(source.images), id(target.images), allow_sharpen)
    hit = _SHARPNESS_FITS.get(key)
    if hit is not None and hit[0]() is source.images and hit[1]() is target.images:
        return hit[2]
    fit = _fit_sharpness_once(source, target, allow_sharpen=allow_sharpen)
    for stale in [k for k, (a, b, _) in _SHARPNESS_FITS.items() if a() is None or b() is None]:
        del _SHARPNESS_FITS[stale]
    _SHARPNESS_FITS[key] = (weakref.ref(source.images), weakref.ref(target.images), fit)
    return fit


def _fit_sharpness_once(source: SetSample, target: SetSample, *, allow_sharpen: bool
                        ) -> SharpnessFactor:
    images = source.images
    own, other = sharpness(images), sharpness(target.images)
    s_s, s_t = float(np.median(own)), float(np.median(other))
    p = _differ(own, other)
    details = {"source_sharpness": s_s, "target_sharpness": s_t, "p_value": p}
    if p >= _ALPHA or abs(s_s - s_t) <= _TOLERANCE * max(s_s, s_t):
        return SharpnessFactor(details=details)
    if s_s > s_t:
        # A Gaussian blur commutes with the luminance sum, so the search blurs one float
        # channel instead of three and skips the uint8 round trip (3x faster); `reached`
        # below is measured on the real transform.
        lum = images.astype(np.float32) @ (_LUMA / 255.0)

        def measure(amount: float) -> float:
            blurred = ndimage.gaussian_filter(lum, (0, amount, amount), mode="reflect")
            return float(np.median(_luminance_sharpness(blurred)))

        amount = _solve_monotone(measure, 0.0, max(2.0, images.shape[1] / 16), s_t,
                                 increasing=False)
        mode = "blur"
    elif allow_sharpen:
        def measure(amount: float) -> float:
            sharpened = SharpnessFactor(mode="sharpen", amount=amount).apply(images)
            return float(np.median(sharpness(sharpened)))

        amount, mode = _solve_monotone(measure, 0.0, 8.0, s_t, increasing=True), "sharpen"
    else:
        return SharpnessFactor(details={**details, "note": "source is blurrier; not sharpened"})
    fitted = SharpnessFactor(mode=mode, amount=round(amount, 4))
    reached = float(np.median(sharpness(fitted.apply(images))))
    return SharpnessFactor(details={**details, "reached": reached}, mode=mode,
                           amount=fitted.amount)


def _fit_resolution(source: SetSample, target: SetSample) -> ResolutionFactor:
    if not len(source.native_sides) or not len(target.native_sides):
        return ResolutionFactor(details={"note": "native image sizes unknown"})
    s_s, s_t = (int(np.median(s.native_sides)) for s in (source, target))
    q_s, q_t = (int(np.median(s.jpeg_qualities)) for s in (source, target))
    details = {"source_side": s_s, "target_side": s_t, "source_quality": q_s,
               "target_quality": q_t}
    lose_detail = s_t < (1 - _TOLERANCE) * min(s_s, source.size)
    compress = q_t < q_s - 2
    if not (lose_detail or compress) or s_t < 8:
        return ResolutionFactor(details=details)
    return ResolutionFactor(details=details, side=s_t, quality=q_t if compress else None)


def _fit_background(source: SetSample, target: SetSample, *, recolor: ColorFactor | None,
                    n_donors: int, seed: int) -> BackgroundFactor:
    with_cell = np.flatnonzero(target.masks.reshape(len(target.masks), -1).any(axis=1))
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(with_cell, min(n_donors, len(with_cell)), replace=False))
    donors = np.stack([_fill_cell(target.images[i], target.masks[i]) for i in picked]) \
        if len(picked) else np.zeros((0, *target.images.shape[1:]), np.uint8)
    if recolor is not None:
        recolored = "inverse colour factor"
        donors = recolor.apply(donors) if len(donors) else donors
    else:
        own, other = _background_stats(*_unpack(source)), _background_stats(*_unpack(target))
        recolored = "background Lab statistics" if own is not None and other is not None \
            else "no"
        if own is not None and other is not None and len(donors):
            donors = reinhard_transfer(donors, other, own)
    focus = _fit_sharpness(target, source, allow_sharpen=False)
    if len(donors) and not focus.identity:
        donors = focus.apply(donors)
    n_cells = int(source.masks.reshape(len(source.masks), -1).any(axis=1).sum())
    return BackgroundFactor(details={"n_source_cells": n_cells, "recolored": recolored,
                                     "donor_blur": focus.amount if focus.mode == "blur" else 0.0},
                            donors=donors)


def _unpack(sample: SetSample) -> tuple[np.ndarray, np.ndarray]:
    return sample.images, sample.masks


def _equal_focus(source: SetSample, target: SetSample, blur: SharpnessFactor
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The two samples' images, the sharper one blurred to the other's sharpness (`blur`:
    source toward target, without sharpening)."""
    if not blur.identity:
        return blur.apply(source.images), target.images
    back = _fit_sharpness(target, source, allow_sharpen=False)
    if not back.identity:
        return source.images, back.apply(target.images)
    return source.images, target.images


def _with_masks(sample: SetSample, matcher: ColorFactor | None) -> SetSample:
    if matcher is None:
        return sample
    return SetSample(sample.images, white_cell_mask(matcher.apply(sample.images)),
                     sample.native_sides, sample.jpeg_qualities)


def fit_factors(source: SetSample, target: SetSample, names: Sequence[str], *,
                color_method: str = "macenko", allow_sharpen: bool = False, n_donors: int = 16,
                segment_in: str = "target", seed: int = 0) -> FactorSet:
    """The image factors among `names` fitted to move `source` toward `target`.

    Colour statistics are fitted with the sharper sample blurred to the other's sharpness
    (on a synthetic site blurred by 1.5 px and nothing else, a raw Macenko fit would scale stain
    amounts by 1.6 and "recover" 25 points by sharpening contrast). Cells of both sets are
    segmented in one set's colours, `segment_in` ("target" or
    "source"; the gap-factors check uses the reference's): the other set is first Macenko
    stain-matched to it. The mask reads stain colour, so a colour shift would otherwise pass for
    a size change (on a synthetic site with a 60-degree hue shift, 38 of 64 cells are found
    unmatched or Reinhard-matched, all 64 Macenko-matched, IoU 0.86 with the true masks).
    Background donors are recoloured into the source's colours, by the inverse of the colour
    factor when colour is among `names` (so background and colour together give back the
    target's own backgrounds), else by Reinhard transfer of the statistics of the pixels outside
    the cells; and blurred to the source's sharpness when it is blurrier. So the background
    factor changes content (red cells, debris, illumination), not colour or focus.
    """
    unknown = sorted(set(names) - set(FACTORS))
    if unknown:
        raise ValueError(f"unknown factor(s) {unknown}; known: {', '.join(FACTORS)}")
    if segment_in not in ("target", "source"):
        raise ValueError(f"segment_in must be 'target' or 'source', received {segment_in!r}")
    # Colour statistics at equal focus: blur lowers peak stain amounts and contrast, which a
    # colour transform fitted on raw images would then undo or imitate.
    blur = _fit_sharpness(source, target, allow_sharpen=False)
    own, other = _equal_focus(source, target, blur) \
        if {"color", "scale", "background"} & set(names) else (source.images, target.images)
    matcher = None
    if {"scale", "background"} & set(names):
        if segment_in == "target":
            matcher = _fit_color(own, other, "macenko", seed)
            source = _with_masks(source, matcher)
        else:
            target = _with_masks(target, _fit_color(other, own, "macenko", seed))
    out = []
    for name in IMAGE_FACTORS:
        if name not in names:
            continue
        if name == "scale":
            out.append(_fit_scale(source, target))
        elif name == "background":
            recolor = _fit_color(other, own, color_method, seed) if "color" in names else None
            out.append(_fit_background(source, target, recolor=recolor, n_donors=n_donors,
                                       seed=seed))
        elif name == "color":
            out.append(_fit_color(own, other, color_method, seed))
        elif name == "sharpness":
            out.append(_fit_sharpness(source, target, allow_sharpen=True) if allow_sharpen
                       else blur)
        else:
            out.append(_fit_resolution(source, target))
    return FactorSet(tuple(out), matcher)


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
