"""Does a map point at what the model uses? Deletion and insertion curves (RISE protocol,
Petsiuk et al. 2018), compared with random maps on the same images.

Pixels are ranked by attribution, most positive first (ties broken at random, seeded). In
`steps` equal steps the top-ranked pixels are
- deleted: replaced by the baseline image, starting from the image (the target probability
  should fall fast: low area under the curve is good), or
- inserted: copied from the image into the baseline (the probability should rise fast: high
  area is good).
The baseline is a blurred copy of the image (`"blur"`, box kernel `blur_fraction` of the side:
removes detail, keeps colour, stays close to real images) or the image's mean colour
(`"mean"`). AUC = trapezoid area of the target probability over the fraction of pixels in
[0, 1]. All perturbed images of a chunk of images go through the model in one batched call.

Random maps are smooth (uniform noise on a coarse grid, upsampled), so the comparison is
with maps of the same spatial scale as the methods', not with pixel noise, which deletes
scattered pixels that a blurred baseline barely changes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from audit.stats import bootstrap_ci

__all__ = ["BASELINES", "make_baseline", "pixel_ranks", "perturbation_curves", "curve_auc",
           "deletion_auc", "insertion_auc", "random_maps", "gain_over_random"]

BASELINES = ("blur", "mean")
Predict = Callable[[np.ndarray], np.ndarray]


def make_baseline(images: np.ndarray, *, kind: str = "blur", blur_fraction: float = 16 / 224
                  ) -> np.ndarray:
    """The "nothing here" image for each image, uint8 (N, H, W, 3)."""
    images = np.asarray(images)
    if kind == "blur":
        size = max(1, int(round(blur_fraction * images.shape[1])))
        out = ndimage.uniform_filter(images.astype(np.float32), size=(1, size, size, 1),
                                     mode="reflect")
    elif kind == "mean":
        out = np.broadcast_to(images.astype(np.float32).mean(axis=(1, 2), keepdims=True),
                              images.shape)
    else:
        raise ValueError(f"baseline must be one of {BASELINES}, received {kind!r}")
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def pixel_ranks(maps: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
    """Rank (N, H, W) of each pixel, 0 = highest attribution; ties in random order."""
    flat = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    ranks = np.empty(flat.shape, dtype=np.int64)
    for i, values in enumerate(flat):
        order = np.lexsort((rng.random(values.size), -values))
        ranks[i, order] = np.arange(values.size)
    return ranks.reshape(np.shape(maps))


def perturbation_curves(images: np.ndarray, maps: np.ndarray, targets: np.ndarray,
                        predict: Predict, *, mode: str, steps: int, baseline: np.ndarray,
                        rng: np.random.Generator, max_batch: int = 512) -> np.ndarray:
    """Target probability (N, steps + 1) as the top-ranked pixels are deleted or inserted."""
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', received {mode!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, received {steps}")
    images, baseline = np.asarray(images), np.asarray(baseline)
    ranks = pixel_ranks(maps, rng=rng)
    n_pixels = images.shape[1] * images.shape[2]
    counts = np.round(np.linspace(0, n_pixels, steps + 1)).astype(np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    curves = np.empty((len(images), steps + 1))
    chunk = max(1, max_batch // (steps + 1))
    for start in range(0, len(images), chunk):
        sl = slice(start, start + chunk)
        changed = ranks[sl, None] < counts[None, :, None, None]  # (c, steps+1, H, W)
        source, other = (baseline, images) if mode == "deletion" else (images, baseline)
        batch = np.where(changed[..., None], source[sl, None], other[sl, None])
        probs = predict(batch.reshape(-1, *images.shape[1:]))
        picked = probs.reshape(batch.shape[0], steps + 1, -1)
        curves[sl] = np.take_along_axis(picked, targets[sl, None, None], axis=2)[..., 0]
    return curves


def curve_auc(curves: np.ndarray) -> np.ndarray:
    """Trapezoid area under each curve over x in [0, 1] (equal steps)."""
    curves = np.asarray(curves, dtype=np.float64)
    return (curves[:, :-1] + curves[:, 1:]).sum(axis=1) / (2 * (curves.shape[1] - 1))


def deletion_auc(images, maps, targets, predict: Predict, *, steps: int, baseline: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Per-image deletion AUC (lower = the map found what the model needs)."""
    return curve_auc(perturbation_curves(images, maps, targets, predict, mode="deletion",
                                         steps=steps, baseline=baseline, rng=rng))


def insertion_auc(images, maps, targets, predict: Predict, *, steps: int, baseline: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """Per-image insertion AUC (higher = the map found what the model needs)."""
    return curve_auc(perturbation_curves(images, maps, targets, predict, mode="insertion",
                                         steps=steps, baseline=baseline, rng=rng))


def random_maps(n: int, height: int, width: int, *, rng: np.random.Generator,
                grid: int = 8) -> np.ndarray:
    """Smooth random maps float32 (n, H, W): uniform noise on a grid x grid lattice, upsampled."""
    coarse = rng.random((n, grid, grid))
    zoom = (1, height / grid, width / grid)
    return ndimage.zoom(coarse, zoom, order=1, mode="nearest", grid_mode=True).astype(np.float32)


def gain_over_random(deletion: np.ndarray, insertion: np.ndarray, random_deletion: np.ndarray,
                     random_insertion: np.ndarray, *, rng: np.random.Generator,
                     n_boot: int = 200) -> dict[str, float]:
    """Mean paired gain (insertion - deletion) of the method minus that of the random maps,
    with a 95% bootstrap interval over images: > 0 means better than random."""
    gain = (np.asarray(insertion) - np.asarray(deletion)) - (
        np.asarray(random_insertion) - np.asarray(random_deletion))
    if len(gain) == 0:
        return {"value": float("nan"), "low": float("nan"), "high": float("nan")}
    return bootstrap_ci(lambda idx: float(np.mean(gain[idx])), len(gain), n_boot=n_boot, rng=rng)
