"""What copies do to accuracy: on images with and without one, and the share of a
reference -> shifted accuracy gap that copies inflating the reference explain."""

from __future__ import annotations

import numpy as np

from audit.stats import bootstrap_ci

__all__ = ["accuracy_by_copy", "leak_gap_share"]


def accuracy_by_copy(correct: np.ndarray, near_copy: np.ndarray, *, n_boot: int,
                     rng: np.random.Generator, groups: np.ndarray | None, min_n: int) -> dict:
    """Accuracy {value, low, high} on images with and without a near-copy (None if empty);
    the interval only from `min_n` images up, resampling whole groups when known."""
    out = {}
    for key, members in (("with_copy", near_copy), ("without_copy", ~near_copy)):
        idx = np.flatnonzero(members)
        if idx.size == 0:
            out[key] = None
        elif idx.size < min_n:
            out[key] = {"value": float(correct[idx].mean()), "low": None, "high": None}
        else:
            sub = correct[idx]
            out[key] = bootstrap_ci(lambda i, sub=sub: sub[i].mean(), idx.size, n_boot=n_boot,
                                    rng=rng, groups=None if groups is None else groups[idx])
    return out


def leak_gap_share(acc_ref: float, acc_ref_without_copy: float, acc_shifted: float) -> float | None:
    """Fraction of the reference -> shifted gap explained by copies inflating the reference,
    clipped to [0, 1]; None when there is no positive gap."""
    gap = acc_ref - acc_shifted
    if not np.isfinite(gap) or gap <= 0 or not np.isfinite(acc_ref_without_copy):
        return None
    return float(np.clip((acc_ref - acc_ref_without_copy) / gap, 0.0, 1.0))

