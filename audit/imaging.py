"""Image properties, a stain-based white-cell mask and perceptual hashes for blood-smear crops.

Every function takes a batch of uint8 RGB images of shape (N, H, W, 3); numpy, scipy, Pillow and
scikit-image only, nothing here needs TensorFlow.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import fft, ndimage
from skimage.filters import threshold_multiotsu, threshold_otsu
from skimage.morphology import convex_hull_image
from skimage.segmentation import watershed

from audit.parallel import map_chunks

__all__ = [
    "PROPERTIES",
    "image_properties",
    "white_cell_mask",
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


# ---- white-cell mask -------------------------------------------------------------------------

_WORK_SIZE = 160  # the mask is computed at most at this size (shorter side), then scaled back
_MIN_NUCLEUS_CONTRAST = 0.15  # nucleus minus rest in log(B/G); below it there is no stained nucleus
_MIN_NUCLEUS_SHARE = 0.3  # of the nucleus-class pixels in the chosen nucleus: real >= 0.44, noise ~0.1
_CELL_REACH = 1.2  # cytoplasm reaches at most this many nucleus radii beyond the nucleus hull
_STAIN_ANGLE = np.cos(np.deg2rad(15.0))  # cytoplasm and red cells differ in stain colour if wider
_N_RAYS = 96


def white_cell_mask(images: np.ndarray, *, work_size: int = _WORK_SIZE) -> np.ndarray:
    """Bool (N, H, W) mask of the white cell (nucleus and cytoplasm) nearest each image's centre.

    Segmentation by colour and shape, tuned on Wright/Giemsa smears (PBC, BCCD) and checked
    against the ground truth of `audit.synthetic`:

    1. Nucleus: the stain channel log(B/G) (Romanowsky nuclei are blue-purple, red cells and
       background have B ~ G), smoothed and split into three classes by multi-level Otsu; the
       top class is nucleus. The component with the largest area weighted by closeness to the
       centre is kept, with nearby lobes (neutrophils), and their convex hull seeds the cell.
    2. Cell: stained matter (darker than the pale background class of luminance, or bluer than
       the commonest colour) is split into blobs by a watershed of its distance transform, so
       red cells touching the white cell on a neck are cut off; the nucleus hull's blob is kept
       up to `_CELL_REACH` nucleus radii from the hull.
    3. Clean-up: if the cytoplasm next to the nucleus and the stained matter far from it differ
       in stain colour (optical-density direction), pixels closer to the latter are dropped;
       rays from the nucleus centre that run much further than their neighbours are cut back;
       a small opening smooths the outline and holes are filled.

    Images without a distinct stained nucleus (blank, uniform, grey) give an all-False mask.
    It is computed at most at `work_size` pixels (shorter side) and resized back.
    """
    images = _check(images)
    n, h, w, _ = images.shape
    if n == 0:
        return np.zeros((0, h, w), dtype=bool)
    return np.concatenate(map_chunks(lambda part: _masks(part, work_size), images, chunk=_CHUNK))


def _masks(images: np.ndarray, work_size: int) -> np.ndarray:
    n, h, w, _ = images.shape
    out = np.zeros((n, h, w), dtype=bool)
    scale = min(1.0, work_size / min(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    for i in range(n):
        small = images[i] if scale == 1.0 else np.asarray(Image.fromarray(images[i]).resize(size, Image.Resampling.BOX))
        mask = _mask_one(small)
        if mask is not None:
            if scale != 1.0:
                up = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.BILINEAR)
                mask = np.asarray(up) >= 128
            out[i] = mask
    return out


def _mask_one(image: np.ndarray) -> np.ndarray | None:
    h, w, _ = image.shape
    f = image.astype(np.float32)
    blue = ndimage.gaussian_filter(np.log((f[..., 2] + 1) / (f[..., 1] + 1)), 1.0)
    if min(h, w) < 8 or np.ptp(blue) < 0.1:
        return None
    lum = ndimage.gaussian_filter(f @ _LUMA.astype(np.float32), 1.0)
    t_blue, t_lum = _three_classes(blue), _three_classes(lum)
    if t_blue is None:
        return None
    nucleus = blue > t_blue[1]
    if blue[nucleus].mean() - np.median(blue[~nucleus]) < _MIN_NUCLEUS_CONTRAST:
        return None
    hull = _nucleus_hull(nucleus)
    if (nucleus & hull).sum() < _MIN_NUCLEUS_SHARE * nucleus.sum():  # scattered specks, e.g. noise
        return None
    r_hull = np.sqrt(hull.sum() / np.pi)
    dist_hull = ndimage.distance_transform_edt(~hull)

    hist, edges = np.histogram(blue, bins=64)
    commonest = edges[np.argmax(hist)] + 0.5 * (edges[1] - edges[0])
    darker = lum < t_lum[1] if t_lum is not None else np.ones_like(hull)  # else no pale background
    stained = darker | (blue > commonest + 0.04) | hull
    stained = ndimage.binary_fill_holes(ndimage.binary_closing(stained, iterations=2) | hull)
    dist = ndimage.distance_transform_edt(stained)
    r_min = max(2.0, 0.2 * r_hull)
    peaks = (dist == ndimage.maximum_filter(dist, size=2 * int(r_min) + 1)) & (dist >= r_min)
    markers, _ = ndimage.label(peaks & (dist_hull > dist))  # blobs whose core is off the nucleus
    markers[markers > 0] += 1
    markers[hull] = 1
    cell = (watershed(-dist, markers, mask=stained) == 1) & (dist_hull <= _CELL_REACH * r_hull)

    od = ndimage.gaussian_filter(-np.log((f + 1) / 256), (2, 2, 0))
    od /= np.linalg.norm(od, axis=-1, keepdims=True) + 1e-6
    ring = cell & (dist_hull > 0.1 * r_hull) & (dist_hull <= max(3.0, 0.3 * r_hull))
    far = stained & (dist_hull > 1.5 * r_hull)
    if ring.sum() >= 20 and far.sum() >= 20:
        own, other = (np.median(od[m], axis=0) for m in (ring, far))
        own, other = own / np.linalg.norm(own), other / np.linalg.norm(other)
        if own @ other < _STAIN_ANGLE:
            labels, _ = ndimage.label(cell & ((od @ own >= od @ other) | hull))
            cell = np.isin(labels, np.unique(labels[hull]))

    return _open_and_fill(_cut_long_rays(cell, hull) | hull, hull, max(1.5, 0.2 * r_hull))


def _open_and_fill(mask: np.ndarray, hull: np.ndarray, rho: float) -> np.ndarray:
    """`mask` opened by a disc of radius `rho` (Euclidean distances), with `hull` kept and
    holes filled; computed on the mask's bounding box grown by more than `rho`, which gives
    the whole image's result: the box's inner edge is background, closer than anything
    outside it."""
    box = _bounding_box(mask, pad=int(np.ceil(rho)) + 2)
    core = ndimage.distance_transform_edt(mask[box]) >= rho
    # With no core the opening is empty (the distance transform of an array without zeros
    # measures from outside its corner instead).
    opened = (ndimage.distance_transform_edt(~core) < rho) if core.any() else np.zeros_like(core)
    out = np.zeros_like(mask)
    out[box] = ndimage.binary_fill_holes(opened | hull[box])
    return out


def _bounding_box(mask: np.ndarray, *, pad: int = 0) -> tuple[slice, slice] | None:
    """Row and column slices of the True pixels of a 2-D mask, grown by `pad` within the
    image; None for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    h, w = mask.shape
    return (slice(max(0, rows[0] - pad), min(h, rows[-1] + 1 + pad)),
            slice(max(0, cols[0] - pad), min(w, cols[-1] + 1 + pad)))


def _three_classes(values: np.ndarray) -> np.ndarray | None:
    """The two multi-Otsu thresholds of `values`, or None if it has too few distinct values."""
    try:
        return threshold_multiotsu(values, classes=3)
    except ValueError:
        return None


def _nucleus_hull(nucleus: np.ndarray) -> np.ndarray:
    """Convex hull of the main nucleus (large and central) and the lobes close to it."""
    h, w = nucleus.shape
    labels, n = ndimage.label(nucleus)
    idx = np.arange(1, n + 1)
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(float)
    cy, cx = np.array(ndimage.center_of_mass(nucleus, labels, idx)).reshape(-1, 2).T
    off_centre = np.hypot(cy / h - 0.5, cx / w - 0.5)
    main = labels == 1 + np.argmax(area * np.exp(-((off_centre / 0.25) ** 2)))
    gap = ndimage.minimum(ndimage.distance_transform_edt(~main), labels, idx)
    keep = (gap <= 0.75 * np.sqrt(main.sum() / np.pi)) & (area >= 0.02 * main.sum())
    kept = np.isin(labels, idx[keep])
    box = _bounding_box(kept)  # the hull lies within (it always holds the main nucleus)
    out = np.zeros_like(kept)
    out[box] = convex_hull_image(kept[box])
    return out


def _cut_long_rays(cell: np.ndarray, hull: np.ndarray) -> np.ndarray:
    """Star-shaped part of `cell` seen from the hull centre, each ray cut at 1.15x the median
    length of the rays within 45 degrees (a touching red cell makes a few rays much longer)."""
    h, w = cell.shape
    cy, cx = ndimage.center_of_mass(hull)
    angles = np.linspace(0, 2 * np.pi, _N_RAYS, endpoint=False)
    radii = np.arange(0, np.hypot(h, w), 0.5)
    ys = cy + np.sin(angles)[:, None] * radii
    xs = cx + np.cos(angles)[:, None] * radii
    inside = (ys > -0.5) & (ys < h - 0.5) & (xs > -0.5) & (xs < w - 0.5)
    hit = cell[np.clip(np.rint(ys), 0, h - 1).astype(int), np.clip(np.rint(xs), 0, w - 1).astype(int)]
    length = radii[np.argmax(~hit | ~inside, axis=1)]
    length = np.minimum(length, 1.15 * ndimage.median_filter(length, size=_N_RAYS // 4 + 1, mode="wrap") + 1)
    box = _bounding_box(cell)  # outside it: not cell
    if box is None:
        return cell
    yy, xx = np.mgrid[box]
    theta = np.arctan2(yy - cy, xx - cx) % (2 * np.pi)
    reach = np.interp(theta, np.append(angles, 2 * np.pi), np.append(length, length[0]))
    out = np.zeros_like(cell)
    out[box] = cell[box] & (np.hypot(yy - cy, xx - cx) <= reach)
    return out


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
