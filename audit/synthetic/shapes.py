"""Signed-distance geometry (negative inside, so edges are anti-aliased cheaply): discs,
segments, ellipses, and the nucleus shape of each class in cell-local coordinates."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

__all__ = ["pixel_coverage", "disc", "NUCLEUS_SHAPES"]


def pixel_coverage(signed_distance: np.ndarray) -> np.ndarray:
    """Fraction of each pixel inside a shape, from a signed distance in pixels."""
    return np.clip(0.5 - signed_distance, 0.0, 1.0)


def disc(u: np.ndarray, v: np.ndarray, cu: float, cv: float, r: float) -> np.ndarray:
    return np.hypot(u - cu, v - cv) - r


def _segment(u: np.ndarray, v: np.ndarray, a: np.ndarray, b: np.ndarray, r: float) -> np.ndarray:
    du, dv = b - a
    t = np.clip(((u - a[0]) * du + (v - a[1]) * dv) / (du * du + dv * dv), 0.0, 1.0)
    return np.hypot(u - a[0] - t * du, v - a[1] - t * dv) - r


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, a: float, b: float) -> np.ndarray:
    # (normalised radius - 1) * minor axis: exact on the outline, close enough near it
    return (np.hypot((u - cu) / a, (v - cv) / b) - 1.0) * min(a, b)


def _lobed_nucleus(u, v, rng, *, lobes: tuple[int, int], arc: float, step: float,
                   lobe_radius: tuple[float, float]) -> np.ndarray:
    """Lobes (count drawn from an inclusive range) along a C-shaped arc, joined by strands."""
    count = int(rng.integers(lobes[0], lobes[1] + 1))
    t = (np.arange(count) - (count - 1) / 2) * step + rng.normal(0, 0.08, count)
    centres = np.stack([arc * np.cos(t), arc * np.sin(t)], axis=1)
    centres -= centres.mean(axis=0) - rng.normal(0, 0.05, 2)
    radii = rng.uniform(*lobe_radius, count)
    sd = np.minimum.reduce([disc(u, v, cu, cv, r)
                            for (cu, cv), r in zip(centres, radii, strict=True)])
    for a, b in zip(centres[:-1], centres[1:], strict=True):
        sd = np.minimum(sd, _segment(u, v, a, b, 0.05))
    return sd


def _lymphocyte_nucleus(u, v, rng) -> np.ndarray:
    a = rng.uniform(0.74, 0.84)
    return _ellipse(u, v, *rng.uniform(-0.08, 0.08, 2), a, a * rng.uniform(0.88, 1.0))


def _monocyte_nucleus(u, v, rng) -> np.ndarray:
    """Kidney shape: an ellipse with a bite taken out of one long side."""
    a, b = rng.uniform(0.6, 0.7), rng.uniform(0.45, 0.55)
    body = _ellipse(u, v, 0.0, -0.08, a, b)
    notch_centre = rng.uniform(-0.15, 0.15), b * rng.uniform(0.95, 1.15) - 0.08
    notch = disc(u, v, *notch_centre, rng.uniform(0.22, 0.32))
    return np.maximum(body, -notch)


# nucleus signed distance in units of the cell radius, from cell-local coordinates
NUCLEUS_SHAPES: dict[str, Callable[..., np.ndarray]] = {
    "basophil": partial(_lobed_nucleus, lobes=(2, 3), arc=0.35, step=1.2,
                        lobe_radius=(0.24, 0.3)),
    "eosinophil": partial(_lobed_nucleus, lobes=(2, 2), arc=0.45, step=1.4,
                          lobe_radius=(0.24, 0.3)),
    "lymphocyte": _lymphocyte_nucleus,
    "monocyte": _monocyte_nucleus,
    "neutrophil": partial(_lobed_nucleus, lobes=(3, 5), arc=0.55, step=0.8,
                          lobe_radius=(0.19, 0.25)),
}
