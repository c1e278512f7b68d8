"""Image properties and perceptual hashes for blood-smear crops (the white-cell mask behind
the cell-size property: `audit.cell_mask`).

Every function takes a batch of uint8 RGB images of shape (N, H, W, 3); numpy, scipy, Pillow and
scikit-image only, nothing here needs TensorFlow.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import fft, ndimage
from skimage.filters import threshold_multiotsu, threshold_otsu

from audit.parallel import map_chunks

__all__ = [
    "PROPERTIES",
    "image_properties",
    "perceptual_hash",
    "hash_thumbnail",
    "hash_thumbnails",
    "hamming_distance_matrix",
    "USABILITY_PROPERTIES",
    "image_usability",
    "source_sizes",
    "rms_contrast",
]

PROPERTIES: tuple[str, ...] = ("brightness", "contrast", "saturation", "hue", "sharpness", "cell_size")

_CHUNK = 4  # images per task on the worker threads (`audit.parallel`)
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, the weights of Pillow's "L" mode
_HAMMING_BLOCK = 2**22  # hash pairs per block of the distance matrix (32 MB of XOR bytes)
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _check(images: np.ndarray) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        got = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be a uint8 numpy array, got {got}")
    if images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape[1:3]:
        raise ValueError(f"images must have shape (N, H, W, 3) with H, W >= 1, got {images.shape}")
    return images


def _luminance(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) @ (_LUMA / 255.0).astype(np.float32)


def _hsv_hue_saturation(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV hue in degrees [0, 360) and saturation [0, 1] of float RGB (..., 3)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    delta = mx - mn
    sat = np.divide(delta, mx, out=np.zeros_like(mx), where=mx > 0)
    d = np.where(delta > 0, delta, 1)
    hue = np.where(mx == r, (g - b) / d, np.where(mx == g, 2 + (b - r) / d, 4 + (r - g) / d))
    return (hue * 60.0) % 360.0, sat


def image_properties(images: np.ndarray, *, cell_size: bool | np.ndarray = True
                     ) -> dict[str, np.ndarray]:
    """One float64 value per image for each name in `PROPERTIES`.

    `cell_size` (a bool, or one bool per image) selects the images whose white cell is
    segmented; the others get NaN cell_size. The mask costs about twice a MobileNetV2 forward
    pass at 224 px, everything else here a third of one.

    - brightness: mean BT.601 luminance, 0 (black) to 1 (white).
    - contrast: RMS contrast, the standard deviation of that luminance.
    - saturation: mean HSV saturation, 0 to 1.
    - hue: circular mean HSV hue in degrees [0, 360) of the *stained* pixels (HSV saturation
      above the image's Otsu threshold of saturation), each weighted by its saturation.
      Selection and weights depend on saturation only, so rotating every hue of an image by
      d degrees moves this value by d (mod 360), including across 0/360; NaN for an image
      without any saturation (grey), whose hue is undefined.
    - sharpness: variance of the 4-neighbour Laplacian of luminance divided by the variance of
      luminance (plus (1/255)^2), so it measures focus independently of brightness and contrast;
      0 for a uniform image. Comparable between images of the same pixel size.
    - cell_size: fraction of the image covered by `white_cell_mask`; NaN where not measured.
    """
    images = _check(images)
    n = images.shape[0]
    if n == 0:
        return {name: np.zeros(0) for name in PROPERTIES}
    parts = map_chunks(_colour_and_focus, images, chunk=_CHUNK)
    out = {name: np.concatenate([p[name] for p in parts]) for name in PROPERTIES[:-1]}
    out["cell_size"] = _cell_size(images, np.broadcast_to(np.asarray(cell_size, bool), (n,)))
    return out


def _colour_and_focus(images: np.ndarray) -> dict[str, np.ndarray]:
    n = images.shape[0]
    lum = _luminance(images).astype(np.float64)
    hue, sat = _hsv_hue_saturation(images.astype(np.float32) / 255.0)
    lap = ndimage.correlate1d(lum, [1.0, -2.0, 1.0], axis=1, mode="reflect")
    lap += ndimage.correlate1d(lum, [1.0, -2.0, 1.0], axis=2, mode="reflect")
    lum_var = lum.reshape(n, -1).var(axis=1)
    mean_hue = np.full(n, np.nan)
    for i in range(n):
        s = sat[i]
        w = s * (s > threshold_otsu(s)) if np.ptp(s) > 0 else s
        total = float(w.sum())
        if total > 0:
            angle = np.deg2rad(hue[i])
            z = complex(float((w * np.cos(angle)).sum()), float((w * np.sin(angle)).sum()))
            mean_hue[i] = np.rad2deg(np.angle(z)) % 360.0
    return {
        "brightness": lum.reshape(n, -1).mean(axis=1),
        "contrast": np.sqrt(lum_var),
        "saturation": sat.reshape(n, -1).mean(axis=1, dtype=np.float64),
        "hue": mean_hue,
        "sharpness": lap.reshape(n, -1).var(axis=1) / (lum_var + (1.0 / 255.0) ** 2),
    }


def _cell_size(images: np.ndarray, selected: np.ndarray) -> np.ndarray:
    out = np.full(len(images), np.nan)
    if selected.any():
        from audit.cell_mask import white_cell_mask  # (it imports this module's helpers)

        masks = white_cell_mask(images[selected])
        out[selected] = masks.reshape(len(masks), -1).mean(axis=1, dtype=np.float64)
    return out


# ---- usability: cheap per-image signs that an input is not a cell crop --------------------------

USABILITY_PROPERTIES: tuple[str, ...] = ("dark_fraction", "nucleus_contrast",
                                         "nucleus_concentration")
_THUMB = 32  # usability is judged on a box-filtered thumbnail: ~0.3 ms per 224-px image


def image_usability(images: np.ndarray) -> dict[str, np.ndarray]:
    """One float64 value per image for each name in `USABILITY_PROPERTIES`, from a 32-px
    box-filtered thumbnail (cheap enough for every image; the full `white_cell_mask` is not).

    - dark_fraction: share of the thumbnail darker than 6% luminance (black padding, a dark
      frame); a stained smear has none.
    - nucleus_contrast, nucleus_concentration: the first test of `white_cell_mask`. The stain
      channel log(B/G) is split into three classes (multi-level Otsu); the contrast is the mean
      of the top class minus the median of the rest (a Romanowsky nucleus: > 0.15), the
      concentration the share of the top class in its largest connected piece (one nucleus:
      high; noise or texture: scattered specks). Both 0 for an image without stain variation.
    """
    images = _check(images)
    if images.shape[0] == 0:
        return {name: np.zeros(0) for name in USABILITY_PROPERTIES}
    parts = map_chunks(_usability, images, chunk=_CHUNK * 4)
    return {name: np.concatenate([p[name] for p in parts]) for name in USABILITY_PROPERTIES}


def _usability(images: np.ndarray) -> dict[str, np.ndarray]:
    n = images.shape[0]
    out = {name: np.zeros(n) for name in USABILITY_PROPERTIES}
    for i in range(n):
        im = Image.fromarray(images[i])
        factor = min(im.size) // _THUMB
        if factor > 1:
            im = im.reduce(factor)
        small = np.asarray(im.resize((_THUMB, _THUMB), Image.Resampling.BOX) if im.size != (
            _THUMB, _THUMB) else im, dtype=np.float32)
        out["dark_fraction"][i] = np.mean(small @ (_LUMA / 255.0).astype(np.float32) < 0.06)
        blue = np.log((small[..., 2] + 1) / (small[..., 1] + 1))
        if np.ptp(blue) < 0.1:
            continue
        try:
            top = blue > threshold_multiotsu(blue, classes=3, nbins=32)[1]
        except ValueError:  # too few distinct values
            continue
        if not top.any() or top.all():
            continue
        out["nucleus_contrast"][i] = float(blue[top].mean() - np.median(blue[~top]))
        labels, _ = ndimage.label(top)
        out["nucleus_concentration"][i] = float(np.bincount(labels.ravel())[1:].max() / top.sum())
    return out


def rms_contrast(images: np.ndarray) -> np.ndarray:
    """The `contrast` property alone: standard deviation of BT.601 luminance (0-1)."""
    images = _check(images)
    return _luminance(images).reshape(len(images), -1).std(axis=1, dtype=np.float64)


def source_sizes(paths) -> tuple[np.ndarray, np.ndarray]:
    """(width, height) of each image file as stored, read from its header without decoding
    (-1 where the file cannot be opened): whether an image is far smaller than the model input
    is lost once it has been resized."""
    sizes = np.full((len(paths), 2), -1, dtype=np.int64)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                sizes[i] = im.size
        except (OSError, ValueError):
            pass
    return sizes[:, 0], sizes[:, 1]


# ---- perceptual hash ---------------------------------------------------------------------------


def perceptual_hash(images: np.ndarray) -> np.ndarray:
    """64-bit DCT perceptual hash (pHash) per image, as uint64.

    The standard algorithm (as in the `imagehash` package): Pillow "L" grayscale, Lanczos
    resize to 32x32, 2-D DCT-II, the top-left 8x8 coefficients compared with their median;
    bit 63 (the most significant) is coefficient (0, 0), then row by row.
    """
    return hash_thumbnails(hash_thumbnail(_check(images)))


def hash_thumbnail(images: np.ndarray) -> np.ndarray:
    """float64 (N, 32, 32): the grayscale Lanczos thumbnails `perceptual_hash` transforms."""
    return np.stack([
        np.asarray(Image.fromarray(im).convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
        for im in images
    ]) if len(images) else np.zeros((0, 32, 32))


def hash_thumbnails(small: np.ndarray) -> np.ndarray:
    """pHash (uint64 per image) of 32x32 thumbnails from `hash_thumbnail`."""
    coeffs = fft.dct(fft.dct(small, axis=1), axis=2)[:, :8, :8].reshape(-1, 64)
    bits = coeffs > np.median(coeffs, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def _as_hashes(hashes: object, name: str) -> np.ndarray:
    arr = np.asarray(hashes)
    if arr.ndim != 1 or not (arr.dtype.kind in "ui" or arr.size == 0):
        raise ValueError(f"{name} must be a 1-D array of uint64 hashes, got dtype {arr.dtype} shape {arr.shape}")
    if arr.dtype.kind == "i" and (arr < 0).any():
        raise ValueError(f"{name} must hold non-negative hashes, got {arr[arr < 0][0]}")
    return arr.astype(np.uint64)


def hamming_distance_matrix(hashes_a: np.ndarray, hashes_b: np.ndarray) -> np.ndarray:
    """int32 (len(a), len(b)) matrix of bit differences between 64-bit hashes (0 to 64)."""
    a, b = _as_hashes(hashes_a, "hashes_a"), _as_hashes(hashes_b, "hashes_b")
    out = np.empty((len(a), len(b)), dtype=np.int32)
    step = max(1, _HAMMING_BLOCK // max(1, len(b)))  # rows per block
    for start in range(0, len(a), step):
        xor = a[start:start + step, None] ^ b[None, :]
        out[start:start + step] = _POPCOUNT[xor.view(np.uint8)].reshape(*xor.shape, 8).sum(axis=-1)
    return out
