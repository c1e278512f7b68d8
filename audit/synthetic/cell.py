"""Drawing one smear crop: a pale background with red cells and platelets, the white cell of
a class (cytoplasm, granules, nucleus) and its ground-truth mask, then the site's stain,
brightness, blur and noise."""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter

from audit.synthetic.domain import CLASSES, REFERENCE_SITE, SiteDomain, check_integer
from audit.synthetic.shapes import NUCLEUS_SHAPES, disc, pixel_coverage

__all__ = ["MIN_SIZE", "render_cell"]

MIN_SIZE = 16
RED_CELLS_PER_IMAGE = 9.0  # expected count at background_density 1

# ---- colours (RGB in [0, 1], before the site's stain transform) and per-class looks ----

BACKGROUND = (0.94, 0.88, 0.88)
RED_CELL, RED_CELL_PALLOR = (0.89, 0.60, 0.61), (0.95, 0.80, 0.80)
PLATELET = (0.52, 0.32, 0.62)
RED_CELL_RADIUS = 0.115  # fraction of image size


@dataclasses.dataclass(frozen=True)
class _Look:
    radius: float  # white-cell radius as a fraction of image size
    cytoplasm: tuple[float, float, float]
    nucleus: tuple[float, float, float]
    chromatin: float  # strength of the nucleus texture
    irregularity: float  # amplitude of the cell outline wobble
    granules: tuple[float, float, float] | None = None
    granule_sigma: float = 0.6  # granule size, pixels at 64x64
    granule_threshold: float = 1.0  # z-score cut-off of the noise field; lower = denser
    granule_alpha: float = 1.0
    granules_over_nucleus: bool = False


LOOKS: dict[str, _Look] = {
    "basophil": _Look(0.2, (0.70, 0.58, 0.80), (0.42, 0.24, 0.56), 0.10, 0.05,
                      granules=(0.18, 0.06, 0.28), granule_sigma=1.0, granule_threshold=-0.3,
                      granule_alpha=0.95, granules_over_nucleus=True),
    "eosinophil": _Look(0.23, (0.93, 0.68, 0.58), (0.38, 0.18, 0.50), 0.10, 0.04,
                        granules=(0.90, 0.38, 0.24), granule_sigma=0.9, granule_threshold=-0.1,
                        granule_alpha=0.9),
    "lymphocyte": _Look(0.16, (0.60, 0.72, 0.93), (0.26, 0.15, 0.46), 0.18, 0.03),
    "monocyte": _Look(0.27, (0.73, 0.74, 0.85), (0.52, 0.38, 0.66), 0.14, 0.08,
                      granules=(0.93, 0.93, 0.97), granule_sigma=1.1, granule_threshold=2.0,
                      granule_alpha=0.7),
    "neutrophil": _Look(0.22, (0.89, 0.79, 0.86), (0.38, 0.17, 0.50), 0.10, 0.04,
                        granules=(0.76, 0.60, 0.76), granule_sigma=0.5, granule_threshold=0.8,
                        granule_alpha=0.35),
}


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    y.flags.writeable = x.flags.writeable = False
    return y, x


def _stain_matrix(hue_shift_degrees: float, saturation: float) -> np.ndarray:
    # Rotating about the grey axis turns hue without changing lightness, and scaling the part
    # off that axis changes saturation. Both are linear, so applying them to the palette equals
    # applying them to the finished image, at a fraction of the cost.
    t = math.radians(hue_shift_degrees)
    c, k, q = math.cos(t), (1 - math.cos(t)) / 3, math.sin(t) / math.sqrt(3)
    rotation = np.array([[c + k, k - q, k + q], [k + q, c + k, k - q], [k - q, k + q, c + k]])
    grey = np.full((3, 3), 1 / 3)
    return grey + saturation * (rotation - grey)


def _window(cx: float, cy: float, reach: float, size: int) -> tuple[slice, slice]:
    """The rows and columns within `reach` pixels of (cx, cy), clipped to the image."""
    rows = slice(max(0, int(cy - reach)), max(0, min(size, int(cy + reach) + 2)))
    cols = slice(max(0, int(cx - reach)), max(0, min(size, int(cx + reach) + 2)))
    return rows, cols


def _paint(image: np.ndarray, coverage: np.ndarray, colour: np.ndarray) -> None:
    image += coverage[..., None] * (colour - image)


def _smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance blobby noise with features about `sigma` pixels across."""
    field = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / field.std()


def render_cell(
    cls: str, *, size: int = 64, domain: SiteDomain = REFERENCE_SITE, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """One smear crop of a white cell of class `cls`.

    Returns a uint8 (size, size, 3) image and the bool (size, size) ground-truth white-cell mask
    (nucleus and cytoplasm).
    """
    if cls not in CLASSES:
        raise ValueError(f"cls must be one of {', '.join(CLASSES)}, got {cls!r}")
    check_integer("size", size, MIN_SIZE)
    if not isinstance(domain, SiteDomain):
        raise ValueError(f"domain must be a SiteDomain, got {domain!r}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {rng!r}")

    # slide-to-slide stain variation within a site
    stain = _stain_matrix(domain.stain_hue_shift + rng.normal(0, 2.5),
                          domain.stain_saturation * (1 + rng.normal(0, 0.05)))

    def stained(rgb) -> np.ndarray:
        return np.asarray(rgb) @ stain.T

    y, x = _pixel_grid(size)
    scale = size / 64  # texture sizes are tuned at 64x64
    # a faint illumination gradient across the field
    tilt_x, tilt_y = rng.normal(0, 0.015, 2)
    illumination = 1 + (tilt_x * (x - size / 2) + tilt_y * (y - size / 2)) / size
    image = illumination[..., None] * stained(BACKGROUND)

    red, pallor = stained(RED_CELL), stained(RED_CELL_PALLOR)
    for _ in range(rng.poisson(RED_CELLS_PER_IMAGE * domain.background_density)):
        r = RED_CELL_RADIUS * size * rng.uniform(0.9, 1.08)
        cx, cy = rng.uniform(-r, size + r, 2)
        aspect, angle = rng.uniform(0.85, 1.0), rng.uniform(0, math.pi)
        box = _window(cx, cy, r + 1, size)  # small shapes: only touch the pixels they can cover
        u = (x[box] - cx) * math.cos(angle) + (y[box] - cy) * math.sin(angle)
        v = (y[box] - cy) * math.cos(angle) - (x[box] - cx) * math.sin(angle)
        radius = np.hypot(u / r, v / (r * aspect))
        centre = np.clip(1 - radius / 0.6, 0, 1)[..., None]  # the thin centre of the biconcave disc
        _paint(image[box], pixel_coverage((radius - 1) * r * aspect), red + centre * (pallor - red))

    for _ in range(rng.poisson(1.2)):
        cx, cy = rng.uniform(0, size, 2)
        r = 0.02 * size * rng.uniform(0.8, 1.4)
        box = _window(cx, cy, r + 1, size)
        _paint(image[box], pixel_coverage(disc(x[box], y[box], cx, cy, r)), stained(PLATELET))

    mask = _paint_white_cell(image, cls, x, y, domain, stained, rng, scale)

    image = image * domain.brightness
    if domain.blur_sigma > 0:
        sigma = domain.blur_sigma
        image = gaussian_filter(image, sigma=(sigma, sigma, 0), mode="nearest")
    if domain.noise_std > 0:
        image = image + rng.normal(0, domain.noise_std / 255, image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), mask


def _paint_white_cell(image, cls, x, y, domain, stained, rng, scale) -> np.ndarray:
    look = LOOKS[cls]
    size = image.shape[0]
    radius = look.radius * size * domain.cell_scale * rng.uniform(0.93, 1.07)
    cx, cy = size / 2 + rng.normal(0, 0.025 * size, 2)
    angle = rng.uniform(0, 2 * math.pi)
    box = _window(cx, cy, radius * (1 + 2 * look.irregularity) + 1, size)
    canvas, x, y = image[box], x[box], y[box]  # a view: painting the canvas paints the image
    # cell-local coordinates in units of the cell radius, so shapes rotate with the cell
    u = ((x - cx) * math.cos(angle) + (y - cy) * math.sin(angle)) / radius
    v = ((y - cy) * math.cos(angle) - (x - cx) * math.sin(angle)) / radius
    theta = np.arctan2(v, u)
    amplitude, phase = rng.uniform(0, look.irregularity, 2), rng.uniform(0, 2 * math.pi, 2)
    outline = (1 + amplitude[0] * np.cos(2 * theta + phase[0])
               + amplitude[1] * np.cos(3 * theta + phase[1]))
    cell_sd = (np.hypot(u, v) - outline) * radius  # pixels
    cell = pixel_coverage(cell_sd)
    _paint(canvas, cell, stained(look.cytoplasm))

    granules = None
    if look.granules is not None:
        field = _smooth_noise(cell.shape, look.granule_sigma * scale, rng)
        granules = look.granule_alpha * np.clip((field - look.granule_threshold) * 2.5, 0, 1) * cell
        if not look.granules_over_nucleus:
            _paint(canvas, granules, stained(look.granules))

    # keep at least a pixel of cytoplasm around the nucleus
    nucleus_sd = np.maximum(NUCLEUS_SHAPES[cls](u, v, rng) * radius, cell_sd + 1.0)
    chromatin = 1 + look.chromatin * _smooth_noise(cell.shape, 1.0 * scale, rng)
    _paint(canvas, pixel_coverage(nucleus_sd), stained(look.nucleus) * chromatin[..., None])

    if granules is not None and look.granules_over_nucleus:
        _paint(canvas, granules, stained(look.granules))
    mask = np.zeros((size, size), bool)
    mask[box] = cell_sd < 0
    return mask
