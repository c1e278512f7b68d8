"""Fitting the factor transforms to move one set's sample toward another's (no labels)."""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.stats import mannwhitneyu

from audit.cell_mask import white_cell_mask
from audit.gap_factors.samples import LUMA, SetSample, luminance_sharpness, sharpness
from audit.gap_factors.stain import (
    MacenkoStains,
    ReinhardStats,
    reinhard_transfer,
)
from audit.gap_factors.transforms import (
    COLOR_METHODS,
    FACTORS,
    IMAGE_FACTORS,
    BackgroundFactor,
    ColorFactor,
    FactorSet,
    ResolutionFactor,
    ScaleFactor,
    SharpnessFactor,
    background_stats,
    fill_cell,
)

_MIN_CELLS = 3          # segmented cells a sample needs before its cell size is trusted
_ALPHA = 0.01           # a property drives a transform only if the two samples differ (Mann-Whitney)
_ZOOM_RANGE = (0.5, 2.0)
_TOLERANCE = 0.05       # relative difference below which sharpness / pixel size count as equal


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
        lum = images.astype(np.float32) @ (LUMA / 255.0)

        def measure(amount: float) -> float:
            blurred = ndimage.gaussian_filter(lum, (0, amount, amount), mode="reflect")
            return float(np.median(luminance_sharpness(blurred)))

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
    donors = np.stack([fill_cell(target.images[i], target.masks[i]) for i in picked]) \
        if len(picked) else np.zeros((0, *target.images.shape[1:]), np.uint8)
    if recolor is not None:
        recolored = "inverse colour factor"
        donors = recolor.apply(donors) if len(donors) else donors
    else:
        own, other = background_stats(*_unpack(source)), background_stats(*_unpack(target))
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
        unsegmented = [role for role, sample in (("source", source), ("target", target))
                       if sample.masks is None]
        if unsegmented:
            raise ValueError(f"the {' and '.join(unsegmented)} sample has no cell masks, which "
                             f"the scale and background factors need (SetSample.from_images "
                             f"with segment=True)")
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


