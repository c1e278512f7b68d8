"""Shared statistics: seeded bootstrap confidence intervals, group-aware when groups are known."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["bootstrap_indices", "bootstrap_ci", "interval"]


def bootstrap_indices(n: int, *, n_boot: int, rng: np.random.Generator,
                      groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Index arrays of `n_boot` resamples of n items.

    With `groups` (source image, patient, slide), whole groups are resampled with replacement:
    copies of one cell move together, so the interval is not falsely narrow.
    """
    if groups is None:
        return [rng.integers(0, n, n) for _ in range(n_boot)]
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    resamples = []
    for _ in range(n_boot):
        picked = rng.integers(0, len(members), len(members))
        resamples.append(np.concatenate([members[g] for g in picked]))
    return resamples


def interval(samples: np.ndarray, *, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of finite bootstrap samples (NaN, NaN when none are finite)."""
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    n_boot: int,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,
    level: float = 0.95,
) -> dict[str, float]:
    """{"value", "low", "high"} of `statistic(indices)` over the full set and resamples."""
    value = float(statistic(np.arange(n)))
    samples = np.array([statistic(idx) for idx in bootstrap_indices(n, n_boot=n_boot, rng=rng,
                                                                    groups=groups)])
    low, high = interval(samples, level=level)
    return {"value": value, "low": low, "high": high}
