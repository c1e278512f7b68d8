"""Colour and stain normalisation of uint8 RGB images: Reinhard transfer in CIE Lab and Macenko
stain normalisation in optical-density space (pure numpy).

Both follow one pattern: statistics are fitted on a *set* of images (a list, an array or any
iterable of uint8 (N, H, W, 3) batches, subsampled per image so sets of any size stream), then
`reinhard_transfer` / `macenko_normalize` map images described by `source` statistics onto
`target` statistics. `source=None` fits each image on its own: per-image normalisation at the
input of a model (a training or inference remedy). With set-level `source` statistics every
image gets the same mapping, so differences between images of one set are kept: the mapping
changes only what differs between the two sets (the gap-factors check's colour factor).

Reinhard (Reinhard et al., 2001): per channel of CIE Lab (D65), (x - mean_s) / std_s * std_t +
mean_t. Macenko (Macenko et al., 2009): optical density OD = -log((I + 1) / (I0 + 1)), with I0,
the light through empty slide, estimated per channel as the 90th percentile of the pixels (a
smear's background is tinted: PBC's is about (237, 208, 188), BCCD's (205, 206, 213); against
white, 40% of PBC and 96% of BCCD pixels would pass as stained); pixels whose OD norm exceeds
`beta` are stained; the plane of the two main eigenvectors of their OD
covariance holds the stains, whose directions are the robust extremes (alpha-th and
(100 - alpha)-th percentile) of the pixels' angles in that plane, listed with the one that
absorbs more red light first (haematoxylin-like; in Wright/Giemsa smears the azure/methylene
blue of nuclei). Concentrations are unmixed by least squares; each source stain is paired with
the most similar target stain (two sets' extremes need not come out in the same order: PBC's
and BCCD's do not), its 99th percentile scaled to the target's, and remixed with the target's
stains on the target's background light; the part of OD outside the stain plane is kept, so
only stain colour, amount and background change. Images or sets with too few stained
pixels (blank, washed-out crops) fall back to the standard reference stains (`fallback=True`),
and per-image normalisation leaves such an image unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from audit import seeds

__all__ = ["rgb_to_lab", "lab_to_rgb", "ReinhardStats", "reinhard_transfer", "MacenkoStains",
           "macenko_normalize", "optical_density", "REFERENCE_STAINS",
           "REFERENCE_MAX_CONCENTRATIONS"]

# Macenko et al.'s reference H&E stain vectors (rows, unit OD) and 99th-percentile amounts.
REFERENCE_STAINS = np.array([[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]])
REFERENCE_STAINS /= np.linalg.norm(REFERENCE_STAINS, axis=1, keepdims=True)
REFERENCE_MAX_CONCENTRATIONS = np.array([1.9705, 1.0308])

_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE = np.array([0.95047, 1.0, 1.08883])  # D65
_AMOUNT_PERCENTILE = 99.0  # the "maximum" stain amount of a set (Macenko)
_EPS, _KAPPA = 216 / 24389, 24389 / 27
_SRGB_TO_LINEAR = np.where(np.arange(256) / 255 <= 0.04045, np.arange(256) / 255 / 12.92,
                           ((np.arange(256) / 255 + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _check(images: np.ndarray) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[-1] != 3:
        got = (f"{images.dtype} array of shape {images.shape}" if isinstance(images, np.ndarray)
               else type(images).__name__)
        raise ValueError(f"images must be a uint8 array of shape (N, H, W, 3), got {got}")
    return images


def _batches(images: np.ndarray | Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    if isinstance(images, np.ndarray):
        images = [images]
    for batch in images:
        yield _check(batch)


def _pixel_sample(image: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(<= n, 3) pixels of one (H, W, 3) image, a seeded subsample when it has more."""
    flat = image.reshape(-1, 3)
    return flat if len(flat) <= n else flat[rng.choice(len(flat), n, replace=False)]


def _pooled_pixels(images, pixels_per_image: int, seed: int) -> np.ndarray:
    rng = seeds.rng(seed, "stain_pixels")
    parts = [_pixel_sample(im, pixels_per_image, rng) for batch in _batches(images) for im in batch]
    return np.concatenate(parts) if parts else np.zeros((0, 3), np.uint8)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


# ---- CIE Lab ------------------------------------------------------------------------------------

def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """float32 CIE Lab (D65) of uint8 sRGB (..., 3): L in [0, 100], a and b about [-128, 127]."""
    xyz = _SRGB_TO_LINEAR[rgb] @ (_RGB_TO_XYZ / _WHITE[:, None]).T.astype(np.float32)
    f = np.where(xyz > _EPS, np.cbrt(xyz), (_KAPPA * xyz + 16) / 116)
    lab = np.empty_like(f)
    lab[..., 0] = 116 * f[..., 1] - 16
    lab[..., 1] = 500 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200 * (f[..., 1] - f[..., 2])
    return lab


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """uint8 sRGB of CIE Lab (..., 3), out-of-gamut colours clipped."""
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f ** 3 > _EPS, f ** 3, (116 * f - 16) / _KAPPA)
    linear = np.clip(xyz @ (_XYZ_TO_RGB * _WHITE[None, :]).T.astype(np.float32), 0, 1)
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return _to_uint8(srgb * 255)


# ---- Reinhard -----------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ReinhardStats:
    """Per-channel mean and standard deviation of CIE Lab over a set's pixels."""

    mean: np.ndarray  # (3,)
    std: np.ndarray   # (3,)

    @classmethod
    def fit(cls, images: np.ndarray | Iterable[np.ndarray], *, pixels_per_image: int = 4096,
            seed: int = 0) -> ReinhardStats:
        """Pooled Lab statistics of (a seeded subsample of the pixels of) every image."""
        lab = rgb_to_lab(_pooled_pixels(images, pixels_per_image, seed)).astype(np.float64)
        if len(lab) == 0:
            raise ValueError("ReinhardStats.fit needs at least one image")
        return cls(lab.mean(axis=0), np.maximum(lab.std(axis=0), 1e-3))

    def to_dict(self) -> dict:
        return {"lab_mean": self.mean.tolist(), "lab_std": self.std.tolist()}


def reinhard_transfer(images: np.ndarray, source: ReinhardStats | None,
                      target: ReinhardStats) -> np.ndarray:
    """uint8 images whose Lab statistics move from `source` (None: each image's own) to
    `target`."""
    images = _check(images)
    lab = rgb_to_lab(images)
    if source is None:
        axes = tuple(range(1, lab.ndim - 1))
        mean = lab.mean(axis=axes, keepdims=True)
        std = np.maximum(lab.std(axis=axes, keepdims=True), 1e-3)
    else:
        mean, std = source.mean.astype(np.float32), source.std.astype(np.float32)
    gain = (target.std / std).astype(np.float32)
    return lab_to_rgb((lab - mean) * gain + target.mean.astype(np.float32))


# ---- Macenko ------------------------------------------------------------------------------------

def optical_density(rgb: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    """float32 OD = -log((I + 1) / (I0 + 1)) of uint8 RGB, I0 the light through an empty part
    of the slide (`background`, per channel; default white): 0 there, larger for more stain."""
    light = np.full(3, 255.0) if background is None else np.asarray(background, float)
    return -np.log((rgb.astype(np.float32) + 1) / (light.astype(np.float32) + 1))


def _background(pixels: np.ndarray, percentile: float) -> np.ndarray:
    """I0 per channel: a high percentile of the pixels (a smear is mostly background), at least
    64 so a dark crop cannot make everything 'unstained'."""
    if len(pixels) == 0:
        return np.full(3, 255.0)
    return np.maximum(np.percentile(pixels, percentile, axis=0), 64.0)


@dataclass(frozen=True, eq=False)
class MacenkoStains:
    """Two unit stain vectors in OD (rows: haematoxylin-like first), the 99th-percentile stain
    amounts and the background light I0 of a set; `fallback` when the set had too few stained
    pixels to fit the stains (the reference stains stand in)."""

    vectors: np.ndarray             # (2, 3)
    max_concentrations: np.ndarray  # (2,)
    background: np.ndarray = field(default_factory=lambda: np.full(3, 255.0))
    n_pixels: int = 0
    fallback: bool = False

    @classmethod
    def fit(cls, images: np.ndarray | Iterable[np.ndarray], *, beta: float = 0.15,
            alpha: float = 1.0, background_percentile: float = 90.0,
            pixels_per_image: int = 4096, min_pixels: int = 100, seed: int = 0
            ) -> MacenkoStains:
        """Stain vectors of the pooled stained pixels of every image (subsampled per image)."""
        pixels = _pooled_pixels(images, pixels_per_image, seed)
        return _fit_pixels(pixels, beta=beta, alpha=alpha, min_pixels=min_pixels,
                           background_percentile=background_percentile)

    def to_dict(self) -> dict:
        return {"vectors": self.vectors.tolist(),
                "max_concentrations": self.max_concentrations.tolist(),
                "background": self.background.tolist(), "n_pixels": self.n_pixels,
                "fallback": self.fallback}


def _fit_pixels(pixels: np.ndarray, *, beta: float, alpha: float, min_pixels: int,
                background_percentile: float) -> MacenkoStains:
    """Macenko on (M, 3) uint8 pixels: stained = OD norm above `beta` (relative to the
    background, so a tinted smear background is not a stain)."""
    background = _background(pixels, background_percentile)
    od = np.maximum(optical_density(pixels, background).astype(np.float64), 0.0)
    stained = od[np.linalg.norm(od, axis=1) > beta]
    fallback = MacenkoStains(REFERENCE_STAINS.copy(), REFERENCE_MAX_CONCENTRATIONS.copy(),
                             background, len(stained), True)
    if len(stained) < min_pixels:
        return fallback
    _, eigvecs = np.linalg.eigh(np.cov(stained.T))
    plane = eigvecs[:, [2, 1]]  # the two largest
    plane *= np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # OD is positive: face that way
    angles = np.arctan2(stained @ plane[:, 1], stained @ plane[:, 0])
    extremes = np.percentile(angles, [alpha, 100 - alpha])
    vectors = np.stack([plane @ np.array([np.cos(a), np.sin(a)]) for a in extremes])
    vectors *= np.where(vectors.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    if abs(vectors[0] @ vectors[1]) > 0.9995:  # one colour only: no second stain to separate
        return fallback
    vectors = vectors[np.argsort(-vectors[:, 0], kind="stable")]  # more red absorbed: nuclear
    concentrations = _unmix(stained, vectors)
    max_c = np.maximum(np.percentile(concentrations, _AMOUNT_PERCENTILE, axis=0), 1e-3)
    return MacenkoStains(vectors, max_c, background, len(stained), False)


def _unmix(od: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Least-squares stain amounts (M, 2) of OD pixels (M, 3)."""
    return od @ np.linalg.pinv(vectors)


def _paired(source: MacenkoStains, target: MacenkoStains) -> tuple[np.ndarray, np.ndarray]:
    """The target's stain vectors and amounts in the order that pairs each with the source stain
    it is most like (two sets' Macenko extremes need not come out in the same order)."""
    cos = source.vectors @ target.vectors.T
    order = [1, 0] if cos[0, 1] + cos[1, 0] > cos[0, 0] + cos[1, 1] else [0, 1]
    return target.vectors[order], target.max_concentrations[order]


def _normalize_od(od: np.ndarray, source: MacenkoStains, target: MacenkoStains) -> np.ndarray:
    vectors, max_c = _paired(source, target)
    concentrations = _unmix(np.maximum(od, 0.0), source.vectors)  # brighter than I0: no stain
    residual = od - concentrations @ source.vectors
    return concentrations * (max_c / source.max_concentrations) @ vectors + residual


def macenko_normalize(images: np.ndarray, source: MacenkoStains | None,
                      target: MacenkoStains, *, beta: float = 0.15, alpha: float = 1.0,
                      background_percentile: float = 90.0, min_pixels: int = 100
                      ) -> np.ndarray:
    """uint8 images with `source` stains and background (None: fitted per image) remixed as
    `target` stains on the target's background.

    Per image, an image whose own fit falls back (too few stained pixels) is returned as is.
    """
    images = _check(images)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        pixels = image.reshape(-1, 3)
        own = source if source is not None else _fit_pixels(
            pixels, beta=beta, alpha=alpha, min_pixels=min_pixels,
            background_percentile=background_percentile)
        if source is None and own.fallback:
            out[i] = image
            continue
        od = optical_density(pixels, own.background).astype(np.float64)
        mapped = _normalize_od(od, own, target)
        light = target.background + 1.0
        out[i] = _to_uint8(light * np.exp(-mapped) - 1).reshape(image.shape)
    return out
