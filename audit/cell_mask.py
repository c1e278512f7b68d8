"""A stain-based mask of the white cell in a blood-smear crop (nucleus and cytoplasm).

The image-property pass measures cell size with it (`audit.imaging`), and the gap-factors
check scales, recolours and blurs cells and background through it. numpy, scipy, Pillow and
scikit-image only; every function takes a batch of uint8 RGB images (N, H, W, 3).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.filters import threshold_multiotsu
from skimage.morphology import convex_hull_image
from skimage.segmentation import watershed

from audit.imaging import _CHUNK, _LUMA, _check
from audit.parallel import map_chunks

__all__ = ["white_cell_mask"]

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
