"""Procedural Wright/Giemsa-style blood-smear crops, so demos and tests need no downloaded data.

Each image is one white cell, centred with a little jitter, on a pale pink background of red cells
and platelets. The classes differ the way they do under the microscope (nucleus shape, cytoplasm
colour, granules, cell size), so a classifier has real morphology to learn and an attribution
method has a real cell to focus on. A `SiteDomain` describes one lab's look; two domains with a
known difference give a controlled distribution shift.

Image `i` of a run with seed `s` is drawn from `np.random.default_rng([s, i])`, so an image does not
depend on how many others are generated or in which order.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import numbers
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache, partial
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from audit.progress import progress

__all__ = [
    "CLASSES", "SiteDomain", "REFERENCE_SITE", "SHIFTED_SITE",
    "render_cell", "generate", "write_site",
]

CLASSES: tuple[str, ...] = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
GENERATOR_ID = "cellaudit.synthetic"  # in site.json; marks a directory write_site may replace
MIN_SIZE = 16
RED_CELLS_PER_IMAGE = 9.0  # expected count at background_density 1


def _check_number(field: str, value: object, low: float, high: float) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        bounds = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise ValueError(f"{field} must be a finite number {bounds}, got {value!r}")


def _check_integer(field: str, value: object, low: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{field} must be an integer >= {low}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class SiteDomain:
    """How one lab's images look; the defaults are the reference site.

    stain_hue_shift: degrees added to the hue of every stained colour (negative turns the pinks
        and purples bluer).
    stain_saturation: multiplier on stain saturation (1 = unchanged).
    brightness: multiplier on intensity before blur and noise (1 = unchanged, <1 darker).
    blur_sigma: Gaussian blur sigma in output pixels (focus, optics).
    noise_std: standard deviation of additive Gaussian noise on the 0-255 scale.
    cell_scale: multiplier on the white-cell radius (magnification, cell size).
    background_density: multiplier on the expected number of red cells (9 per image at 1).
    class_priors: class -> weight, normalised over the classes generated (unlisted classes
        get 0), or None for uniform.
    """

    stain_hue_shift: float = 0.0
    stain_saturation: float = 1.0
    brightness: float = 1.0
    blur_sigma: float = 0.4
    noise_std: float = 2.0
    cell_scale: float = 1.0
    background_density: float = 1.0
    class_priors: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        _check_number("stain_hue_shift", self.stain_hue_shift, -180, 180)
        _check_number("stain_saturation", self.stain_saturation, 0, 3)
        _check_number("brightness", self.brightness, 0.2, 3)
        _check_number("blur_sigma", self.blur_sigma, 0, 10)
        _check_number("noise_std", self.noise_std, 0, 100)
        # outside this, monocytes leave the frame or lymphocytes shrink to a pixel at size 16
        _check_number("cell_scale", self.cell_scale, 0.5, 1.8)
        _check_number("background_density", self.background_density, 0, 5)
        if self.class_priors is not None:
            priors = MappingProxyType(_checked_priors(self.class_priors))  # read-only too
            object.__setattr__(self, "class_priors", priors)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready dict of the parameters."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.class_priors is not None:
            fields["class_priors"] = dict(self.class_priors)
        return fields


def _checked_priors(priors: object) -> dict[str, float]:
    if not isinstance(priors, Mapping):
        raise ValueError(f"class_priors must be a mapping class -> weight or None, got {priors!r}")
    for cls, weight in priors.items():
        if cls not in CLASSES:
            raise ValueError(f"class_priors has unknown class {cls!r} "
                             f"(expected some of {', '.join(CLASSES)})")
        _check_number(f"class_priors[{cls!r}]", weight, 0, math.inf)
    if sum(priors.values()) <= 0:
        raise ValueError(f"class_priors must give a class a positive weight, got {dict(priors)!r}")
    return {cls: float(weight) for cls, weight in priors.items()}


REFERENCE_SITE = SiteDomain()
# A second lab: bluer and more saturated stain, softer focus, lower magnification, busier smear and
# a neutrophil-heavy case mix.
SHIFTED_SITE = SiteDomain(
    stain_hue_shift=-20.0, stain_saturation=1.2, brightness=0.94, blur_sigma=1.1, noise_std=4.0,
    cell_scale=0.85, background_density=1.4,
    class_priors={"basophil": 0.06, "eosinophil": 0.12, "lymphocyte": 0.27, "monocyte": 0.1,
                  "neutrophil": 0.45},
)

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

# ---- geometry: signed distances (negative inside), so edges can be anti-aliased cheaply ----


def _coverage(signed_distance: np.ndarray) -> np.ndarray:
    """Fraction of each pixel inside a shape, from a signed distance in pixels."""
    return np.clip(0.5 - signed_distance, 0.0, 1.0)


def _disc(u: np.ndarray, v: np.ndarray, cu: float, cv: float, r: float) -> np.ndarray:
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
    sd = np.minimum.reduce([_disc(u, v, cu, cv, r)
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
    notch = _disc(u, v, *notch_centre, rng.uniform(0.22, 0.32))
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

# ---- painting ----


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
    _check_integer("size", size, MIN_SIZE)
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
        _paint(image[box], _coverage((radius - 1) * r * aspect), red + centre * (pallor - red))

    for _ in range(rng.poisson(1.2)):
        cx, cy = rng.uniform(0, size, 2)
        r = 0.02 * size * rng.uniform(0.8, 1.4)
        box = _window(cx, cy, r + 1, size)
        _paint(image[box], _coverage(_disc(x[box], y[box], cx, cy, r)), stained(PLATELET))

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
    cell = _coverage(cell_sd)
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
    _paint(canvas, _coverage(nucleus_sd), stained(look.nucleus) * chromatin[..., None])

    if granules is not None and look.granules_over_nucleus:
        _paint(canvas, granules, stained(look.granules))
    mask = np.zeros((size, size), bool)
    mask[box] = cell_sd < 0
    return mask


# ---- datasets ----


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    classes = tuple(classes)
    unknown = [c for c in classes if c not in CLASSES]
    if not classes or unknown or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names from {', '.join(CLASSES)}, "
                         f"got {classes!r}")
    return classes


def _class_probabilities(domain: SiteDomain, classes: tuple[str, ...]) -> np.ndarray:
    if domain.class_priors is None:
        return np.full(len(classes), 1 / len(classes))
    weights = np.array([domain.class_priors.get(c, 0.0) for c in classes])
    if weights.sum() <= 0:
        raise ValueError(f"class_priors give no weight to any of classes {classes!r}")
    return weights / weights.sum()


def _render_indexed(index: int, *, seed: int, size: int, domain: SiteDomain,
                    classes: tuple[str, ...], probabilities: np.ndarray):
    rng = np.random.default_rng([seed, index])
    label = int(rng.choice(len(classes), p=probabilities))
    image, mask = render_cell(classes[label], size=size, domain=domain, rng=rng)
    return label, image, mask


def generate(
    n: int, *, size: int = 64, domain: SiteDomain = REFERENCE_SITE, seed: int = 0,
    classes: Sequence[str] = CLASSES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` images: uint8 (n, size, size, 3), int64 labels indexing `classes`, bool masks.

    Masks are (n, size, size), the ground-truth white-cell regions.
    """
    _check_integer("n", n, 0)
    _check_integer("size", size, MIN_SIZE)
    _check_integer("seed", seed, 0)
    classes = _check_classes(classes)
    probabilities = _class_probabilities(domain, classes)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    masks = np.empty((n, size, size), bool)
    for i in range(n):
        labels[i], images[i], masks[i] = _render_indexed(
            i, seed=seed, size=size, domain=domain, classes=classes, probabilities=probabilities)
    return images, labels, masks


def _is_synth_output(directory: Path) -> bool:
    try:
        return json.loads((directory / "site.json").read_text()).get("generator") == GENERATOR_ID
    except (OSError, ValueError, AttributeError):
        return False


def write_site(
    out_dir: str | Path, *, n_images: int, size: int = 64, domain: SiteDomain = REFERENCE_SITE,
    seed: int = 0, classes: Sequence[str] = CLASSES, site_name: str = "site",
    overwrite: bool = False,
) -> Path:
    """Write a class-per-folder dataset and return the path of its manifest.csv.

    Layout: `out_dir/<class>/<site_name>_<index:05d>.png`, `out_dir/manifest.csv` (path relative
    to out_dir, label = class name, group = one id per image) and `out_dir/site.json` (domain,
    seed, size, class counts). Images match `generate(n_images, ...)` with the same arguments.
    The set is built in a sibling temp directory and renamed into place, so a failed run leaves
    nothing half-written. An existing non-empty out_dir is replaced only if it is a previous
    synth output or `overwrite` is true.
    """
    _check_integer("n_images", n_images, 0)
    _check_integer("size", size, MIN_SIZE)
    _check_integer("seed", seed, 0)
    classes = _check_classes(classes)
    probabilities = _class_probabilities(domain, classes)
    if not site_name or not all(ch.isalnum() or ch in "-_." for ch in site_name):
        raise ValueError(f"site_name must be non-empty letters, digits, '-', '_' or '.', "
                         f"got {site_name!r}")
    out = Path(out_dir).resolve()
    if out.parent == out:
        raise ValueError(f"out_dir cannot be the filesystem root, got {str(out_dir)!r}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite and not _is_synth_output(out):
        raise ValueError(f"out_dir {str(out)!r} is not empty and not a previous synth output; "
                         "overwrite=True (--overwrite) replaces it")

    out.parent.mkdir(parents=True, exist_ok=True)
    # not tempfile.mkdtemp: its 0700 mode would stick to the finished dataset
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir()
    try:
        for cls in classes:
            (staging / cls).mkdir()
        rows, counts = [], dict.fromkeys(classes, 0)
        for i in progress(range(n_images), desc="synth", total=n_images, unit="img"):
            label, image, _ = _render_indexed(i, seed=seed, size=size, domain=domain,
                                              classes=classes, probabilities=probabilities)
            name = f"{site_name}_{i:05d}"
            path = f"{classes[label]}/{name}.png"
            Image.fromarray(image).save(staging / path, compress_level=1)
            rows.append((path, classes[label], name))
            counts[classes[label]] += 1
        with open(staging / "manifest.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("path", "label", "group"))
            writer.writerows(rows)
        record = {"generator": GENERATOR_ID, "site_name": site_name, "seed": seed, "size": size,
                  "n_images": n_images, "classes": list(classes), "class_counts": counts,
                  "domain": domain.to_dict()}
        (staging / "site.json").write_text(json.dumps(record, indent=2) + "\n")
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out / "manifest.csv"


def _swap_into_place(staging: Path, out: Path) -> None:
    if not out.exists():
        staging.rename(out)
        return
    # move the old set aside first: rename cannot replace a non-empty directory
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    out.rename(trash / out.name)
    staging.rename(out)
    shutil.rmtree(trash, ignore_errors=True)
