"""How one lab's images look (`SiteDomain`), the two sites the demo and tests use, and the
checks every public argument of the generator goes through."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["CLASSES", "SiteDomain", "REFERENCE_SITE", "SHIFTED_SITE", "check_number",
           "check_integer"]

CLASSES: tuple[str, ...] = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")


def check_number(field: str, value: object, low: float, high: float) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        bounds = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise ValueError(f"{field} must be a finite number {bounds}, got {value!r}")


def check_integer(field: str, value: object, low: int) -> None:
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
        check_number("stain_hue_shift", self.stain_hue_shift, -180, 180)
        check_number("stain_saturation", self.stain_saturation, 0, 3)
        check_number("brightness", self.brightness, 0.2, 3)
        check_number("blur_sigma", self.blur_sigma, 0, 10)
        check_number("noise_std", self.noise_std, 0, 100)
        # outside this, monocytes leave the frame or lymphocytes shrink to a pixel at size 16
        check_number("cell_scale", self.cell_scale, 0.5, 1.8)
        check_number("background_density", self.background_density, 0, 5)
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
        check_number(f"class_priors[{cls!r}]", weight, 0, math.inf)
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
