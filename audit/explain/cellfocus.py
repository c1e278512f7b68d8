"""Does the model look at the white cell? Share of positive attribution inside the cell mask.

mass share  = sum(max(map, 0) * mask) / sum(max(map, 0))   (NaN when the map has no positive mass)
area share  = mask.mean()                                   (what a map blind to the cell would get)
focus ratio = mass share / area share                        (1 = no preference, > 1 = on the cell)

Aggregates (per true class and per dataset) average the per-image shares over images where
they are defined; their focus ratio is mean mass share / mean area share, which is not swayed
by a few images with a tiny mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["focus_scores", "aggregate_focus"]


def focus_scores(maps: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image "mass_share", "area_share", "focus_ratio" (float64 (N,), NaN when undefined)."""
    positive = np.clip(np.asarray(maps, dtype=np.float64), 0, None).reshape(len(maps), -1)
    masks = np.asarray(masks, dtype=bool).reshape(len(maps), -1)
    total = positive.sum(axis=1)
    inside = (positive * masks).sum(axis=1)
    area = masks.mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mass = np.where(total > 0, inside / np.where(total > 0, total, 1), np.nan)
        ratio = np.where(area > 0, mass / np.where(area > 0, area, 1), np.nan)
    return {"mass_share": mass, "area_share": area, "focus_ratio": ratio}


def _summary(scores: dict[str, np.ndarray], rows: np.ndarray) -> dict:
    mass = scores["mass_share"][rows]
    area = scores["area_share"][rows]
    defined = np.isfinite(mass) & (area > 0)
    if not defined.any():
        return {"mass_share": None, "area_share": None, "focus_ratio": None, "n": 0}
    mean_mass, mean_area = float(mass[defined].mean()), float(area[defined].mean())
    return {"mass_share": mean_mass, "area_share": mean_area,
            "focus_ratio": mean_mass / mean_area, "n": int(defined.sum())}


def aggregate_focus(scores: dict[str, np.ndarray], labels: np.ndarray,
                    class_names: Sequence[str]) -> dict:
    """Overall and per-true-class means (classes with no image are left out)."""
    labels = np.asarray(labels, dtype=np.int64)
    result = _summary(scores, np.arange(len(labels)))
    result["per_class"] = {name: _summary(scores, np.flatnonzero(labels == c))
                           for c, name in enumerate(class_names) if (labels == c).any()}
    return result
