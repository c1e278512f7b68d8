"""The verification threshold, calibrated on a null of pairs known to be different cells.

Copies of one cell share its label, so an image and its most similar images of other classes
are different cells as alike as the data makes them: their inlier counts are what chance and
shared texture give. The threshold is the smallest count that at most `max_rate` of that
null reaches, and never below `minimum` (three matches always fit an affine transform, and a
handful of consistent matches is within reach of chance on any set).

Unless the same image was filed under two labels. On kaggle_bloodcells TRAIN 83 of 4,000
other-class pairs (2%) score 16-42 inliers while the rest score at most 5: lymphocyte and
monocyte folders hold copies of the same smear frames. Such pairs are not chance, and a
quantile taken over them would raise the threshold to 41 (355 groups for ~277 sources).
So the top of the null is set apart as *cross-class copies* when it stands apart from the
rest by a gap (its smallest score at least `gap_factor` times the largest remaining one and
at least `minimum`), at most `max_contamination` of the null; a null whose tail rises without
such a gap (texture that really matches by chance) is used whole.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from audit.stats import clopper_pearson_upper

__all__ = ["NullStatistics", "calibrate_threshold", "GAP_FACTOR", "MAX_CONTAMINATION"]

GAP_FACTOR = 2.0
MAX_CONTAMINATION = 0.05


@dataclass(frozen=True)
class NullStatistics:
    """Inlier counts of the null pairs and what the chosen threshold means for them.

    `cross_class_copies`: null pairs set apart as copies under two labels (see the module
    docstring); the other figures describe the remaining null. `rate_at_threshold`: share of
    it at or above the threshold (observed). `rate_upper_95`: one-sided 95% upper bound on
    that rate for an unseen pair (exact binomial; about 3/n when none reached it), the figure
    to multiply by the number of candidate pairs for the expected count of chance links.
    """

    n_pairs: int
    cross_class_copies: int
    median: float | None
    q99: float | None
    max: int | None
    rate_at_threshold: float | None
    rate_upper_95: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def separated_top(null: np.ndarray, *, minimum: int, gap_factor: float = GAP_FACTOR,
                  max_contamination: float = MAX_CONTAMINATION) -> int:
    """How many of the highest null scores form a separate mode (0: none)."""
    values = np.sort(np.asarray(null, dtype=np.int64))
    n = len(values)
    best = 0
    for k in range(1, int(max_contamination * n) + 1):
        lowest_set_apart, highest_kept = values[n - k], values[n - k - 1]
        if lowest_set_apart >= max(minimum, gap_factor * max(int(highest_kept), 1)):
            best = k
    return best


def calibrate_threshold(null_inliers: np.ndarray, *, minimum: int, max_rate: float,
                        gap_factor: float = GAP_FACTOR,
                        max_contamination: float = MAX_CONTAMINATION
                        ) -> tuple[int, NullStatistics, np.ndarray]:
    """(threshold, statistics, mask of the null pairs set apart as cross-class copies): the
    smallest inlier count >= `minimum` that at most `max_rate` of the (remaining) null
    reaches."""
    null = np.asarray(null_inliers, dtype=np.int64)
    copies = np.zeros(null.size, bool)
    if null.size == 0:
        return int(minimum), NullStatistics(0, 0, None, None, None, None, None), copies
    k = separated_top(null, minimum=minimum, gap_factor=gap_factor,
                      max_contamination=max_contamination)
    if k:
        copies[np.argsort(null, kind="stable")[null.size - k:]] = True
    rest = null[~copies]
    level = int(np.quantile(rest, 1.0 - max_rate, method="higher"))
    threshold = max(int(minimum), level + 1)
    hits = int(np.sum(rest >= threshold))
    return threshold, NullStatistics(
        n_pairs=int(rest.size), cross_class_copies=int(k), median=float(np.median(rest)),
        q99=float(np.quantile(rest, 0.99)), max=int(rest.max()),
        rate_at_threshold=hits / rest.size,
        rate_upper_95=clopper_pearson_upper(hits, int(rest.size))), copies
