"""Seeded image corruptions for blood-smear crops, five severities each (pure numpy/scipy/Pillow).

The suite follows MedMNIST-C's BloodMNIST corruptions (Di Salvo et al., 2024) and adds a stain
shift. `SEVERITY_PARAMS` holds every parameter; pixel sizes are for 224x224 inputs, the model's
input size. Only one direction is kept for brightness and contrast: darker and flatter
(under-exposure, a faded stain); brightening mostly clips a smear's already near-white background.

| name           | parameter per severity 1..5                 | source                           |
|----------------|---------------------------------------------|----------------------------------|
| stain_shift    | (stain-vector rotation deg, amount scale)   | own; HED optical-density space   |
| saturation     | + HSV saturation                            | MedMNIST-C blood `saturate`      |
| brightness     | intensity factor                            | MedMNIST-C blood `brightness_down` |
| contrast       | contrast factor around the mean luminance   | MedMNIST-C blood `contrast_down` |
| defocus_blur   | disk radius, px                             | MedMNIST-C blood `defocus_blur`  |
| motion_blur    | (radius, sigma) px, ImageMagick-style       | MedMNIST-C blood `motion_blur`   |
| gaussian_noise | noise std on the 0-1 scale                  | MedMNIST-C derma `gaussian_noise` |
| jpeg           | JPEG quality                                | MedMNIST-C blood `jpeg_compression` |
| pixelate       | downscale factor (box filter)               | MedMNIST-C blood `pixelate`      |
"""

from __future__ import annotations

import io
import numbers
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy.signal import fftconvolve

from audit import seeds

__all__ = ["CORRUPTIONS", "SEVERITIES", "SEVERITY_PARAMS", "corrupt"]

SEVERITY_PARAMS: dict[str, tuple] = {
    "stain_shift": ((4, 0.05), (8, 0.10), (12, 0.15), (16, 0.20), (20, 0.25)),
    "saturation": (0.05, 0.10, 0.15, 0.17, 0.20),
    "brightness": (0.9, 0.8, 0.7, 0.6, 0.5),
    "contrast": (0.9, 0.8, 0.7, 0.6, 0.5),
    "defocus_blur": (2, 3, 4, 5, 6),
    "motion_blur": ((3, 3), (5, 5), (10, 5), (10, 7), (10, 9)),
    "gaussian_noise": (0.04, 0.08, 0.12, 0.18, 0.26),
    "jpeg": (50, 30, 15, 10, 7),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
}
CORRUPTIONS: tuple[str, ...] = tuple(SEVERITY_PARAMS)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# Ruifrok & Johnston's haematoxylin, eosin and DAB optical-density vectors (rows), as in
# skimage.color.rgb_from_hed; a basis of OD space, so the stain amounts of any colour are defined.
_STAINS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_STAINS /= np.linalg.norm(_STAINS, axis=1, keepdims=True)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _stain_shift(x: np.ndarray, param: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Per image, turn each stain's colour by a fixed angle in a random direction and scale
    its amount by 1 +/- the amount parameter (random sign): another lab's stain batch."""
    degrees, amount = param
    n = len(x)
    other = rng.standard_normal((n, 3, 3))
    other -= np.sum(other * _STAINS, axis=-1, keepdims=True) * _STAINS  # perpendicular to each stain
    other /= np.linalg.norm(other, axis=-1, keepdims=True)
    t = np.deg2rad(degrees)
    stains = np.cos(t) * _STAINS + np.sin(t) * other
    scale = 1 + amount * rng.choice([-1.0, 1.0], size=(n, 3, 1))
    # OD -> stain amounts -> scaled -> OD with the turned stains, as one 3x3 matrix per image
    matrix = (np.linalg.inv(_STAINS) @ (scale * stains)).astype(np.float32)
    od = -np.log((x.reshape(n, -1, 3).astype(np.float32) + 1) / 256)
    return (256 * np.exp(-(od @ matrix)) - 1).reshape(x.shape)


def _saturation(x: np.ndarray, delta: float, rng: np.random.Generator) -> np.ndarray:
    """Add `delta` to HSV saturation, keeping hue and value (grey pixels stay grey)."""
    r, g, b = (x[..., c : c + 1] for c in range(3))  # channel-wise max/min: faster than axis=-1
    v = np.maximum(np.maximum(r, g), b).astype(np.float32)
    sat = np.divide(v - np.minimum(np.minimum(r, g), b), v, out=np.zeros_like(v), where=v > 0)
    gain = np.divide(np.minimum(sat + delta, 1.0), sat, out=np.ones_like(sat), where=sat > 0)
    return v - (v - x) * gain


def _brightness(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    return x.astype(np.float32) * factor  # as PIL ImageEnhance.Brightness


def _contrast(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    x = x.astype(np.float32)  # as PIL ImageEnhance.Contrast: blend with the mean grey level
    mean = (x @ _LUMA).mean(axis=(1, 2))[:, None, None, None]
    return mean + factor * (x - mean)


def _convolve(x: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Convolve every image and channel with its (k, k) kernel, (1|N, k, k), reflecting edges."""
    r = kernels.shape[-1] // 2
    padded = np.pad(x.astype(np.float32), ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
    return fftconvolve(padded, kernels[..., None].astype(np.float32), mode="valid", axes=(1, 2))


def _defocus_blur(x: np.ndarray, radius: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[-radius - 1 : radius + 2, -radius - 1 : radius + 2]
    disk = np.clip(radius + 0.5 - np.hypot(yy, xx), 0, 1)  # disk with an anti-aliased rim
    return _convolve(x, (disk / disk.sum())[None])


def _motion_blur(x: np.ndarray, param: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """One-sided blur trail like ImageMagick's -motion-blur: taps 0..2*radius px along a
    random angle in [-45, 45] degrees per image, weighted exp(-d^2 / (2 sigma^2))."""
    radius, sigma = param
    reach = 2 * radius
    d = np.arange(reach + 1, dtype=np.float64)
    angle = np.deg2rad(rng.uniform(-45, 45, size=len(x)))[:, None]
    ty, tx = reach - d * np.sin(angle), reach + d * np.cos(angle)  # (N, taps), centre at reach
    kernels = np.zeros((len(x), 2 * reach + 1, 2 * reach + 1))
    y0, x0 = np.floor(ty).astype(int), np.floor(tx).astype(int)
    weight = np.broadcast_to(np.exp(-(d**2) / (2 * sigma**2)), ty.shape)
    images = np.broadcast_to(np.arange(len(x))[:, None], ty.shape)
    for dy in (0, 1):  # bilinear splat of each tap onto the pixel grid
        for dx in (0, 1):
            share = (1 - np.abs(ty - y0 - dy)) * (1 - np.abs(tx - x0 - dx))
            np.add.at(kernels, (images, np.minimum(y0 + dy, 2 * reach), np.minimum(x0 + dx, 2 * reach)), weight * share)
    return _convolve(x, kernels / kernels.sum(axis=(1, 2), keepdims=True))


def _gaussian_noise(x: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(std * 255)


def _jpeg(x: np.ndarray, quality: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty_like(x)
    for i, image in enumerate(x):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def _pixelate(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    out = np.empty_like(x)
    h, w = x.shape[1:3]
    small = (max(1, int(w * factor)), max(1, int(h * factor)))
    for i, image in enumerate(x):
        blocky = Image.fromarray(image).resize(small, Image.Resampling.BOX)
        out[i] = np.asarray(blocky.resize((w, h), Image.Resampling.NEAREST))
    return out


_FUNCTIONS: dict[str, Callable[[np.ndarray, object, np.random.Generator], np.ndarray]] = {
    "stain_shift": _stain_shift, "saturation": _saturation, "brightness": _brightness,
    "contrast": _contrast, "defocus_blur": _defocus_blur, "motion_blur": _motion_blur,
    "gaussian_noise": _gaussian_noise, "jpeg": _jpeg, "pixelate": _pixelate,
}


def corrupt(images: np.ndarray, name: str, severity: int, *, seed: int) -> np.ndarray:
    """A corrupted uint8 copy of `images` (N, H, W, 3) with corruption `name` at `severity` 1-5.

    Deterministic: the random draws (noise, stain direction, blur angle) come from
    `audit.seeds.rng(seed, "corruption", name, severity)`, so corruptions never share noise.
    """
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r}; expected one of: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        got = f"{images.dtype} array of shape {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be a uint8 array of shape (N, H, W, 3), got {got}")
    if images.size == 0:
        return images.copy()
    rng = seeds.rng(int(seed), "corruption", name, int(severity))
    out = _FUNCTIONS[name](images, SEVERITY_PARAMS[name][int(severity) - 1], rng)
    return out if out.dtype == np.uint8 else np.clip(np.rint(out), 0, 255).astype(np.uint8)
