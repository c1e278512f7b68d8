"""Shared statistics: seeded bootstrap intervals, exact intervals for proportions (group-aware
when groups are known) and cross-fitting folds."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["bootstrap_indices", "bootstrap_ci", "interval", "MIN_RELIABLE_N", "effective_size",
           "proportion_ci", "clopper_pearson_upper", "rate_ci", "few_images_note", "crossfit_folds"]


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


# ---- proportions: intervals valid at small n and at 0% / 100% --------------------------------

# A rate measured on fewer images than this is flagged as a rough estimate wherever it is stated.
MIN_RELIABLE_N = 20


def effective_size(hits: np.ndarray, groups: np.ndarray | None) -> float:
    """Images' worth of independent evidence in `hits` (Kish's effective sample size).

    Without groups, n. With groups, p(1-p) / var(p) where var is the cluster-robust (ratio
    estimator) variance of the proportion, capped at n; when every image agrees (p = 0 or 1)
    the intra-group correlation cannot be estimated and the number of groups is used, the
    conservative choice (Korn and Graubard 1998).
    """
    hits = np.asarray(hits, dtype=float)
    n = hits.size
    if groups is None or n == 0:
        return float(n)
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(inverse.max()) + 1
    if n_groups < 2:
        return 1.0
    p = hits.mean()
    if p <= 0.0 or p >= 1.0:
        return float(n_groups)
    totals = np.bincount(inverse, weights=hits - p)
    variance = n_groups / (n_groups - 1) * np.sum(totals ** 2) / n ** 2
    return float(min(n, p * (1 - p) / variance)) if variance > 0 else float(n)


def proportion_ci(successes: float, n: float, *, level: float = 0.95,
                  n_effective: float | None = None) -> dict[str, float | int]:
    """{"value", "low", "high", "n"} of successes / n: the Clopper-Pearson (exact) interval.

    Its coverage is at least `level` for every true rate and every n, including 0 and 1, where
    percentile bootstraps collapse to a point. With `n_effective` (from `effective_size`), the
    interval is taken on that many images at the same rate (Korn-Graubard). n = 0 gives NaN.
    """
    from scipy.stats import beta

    if n <= 0:
        return {"value": float("nan"), "low": float("nan"), "high": float("nan"), "n": int(n)}
    value = successes / n
    m = float(n if n_effective is None else max(min(n_effective, n), 1.0))
    x = value * m
    alpha = 1.0 - level
    low = 0.0 if x <= 0 else float(beta.ppf(alpha / 2, x, m - x + 1))
    high = clopper_pearson_upper(x, m, confidence=1 - alpha / 2)
    return {"value": float(value), "low": low, "high": high, "n": int(n)}


def clopper_pearson_upper(successes: float, n: float, *, confidence: float = 0.95) -> float:
    """One-sided exact (Clopper-Pearson) upper bound on the rate behind `successes` of `n`:
    the true rate is below it with at least `confidence`, for every rate and n (about 3/n at
    95% when there is no success; 1 when every trial succeeded). The upper end of
    `proportion_ci` at level 2 * confidence - 1."""
    from scipy.stats import beta

    return 1.0 if successes >= n else float(beta.ppf(confidence, successes + 1, n - successes))


def rate_ci(hits: np.ndarray, *, groups: np.ndarray | None = None,
            level: float = 0.95) -> dict[str, float | int]:
    """`proportion_ci` of a boolean array, group-aware when `groups` are given."""
    hits = np.asarray(hits, dtype=bool)
    n_eff = None if groups is None else effective_size(hits, np.asarray(groups))
    return proportion_ci(float(hits.sum()), hits.size, level=level, n_effective=n_eff)


def few_images_note(n: int, *, min_n: int = MIN_RELIABLE_N) -> str:
    """' (only n images: a rough estimate)' below `min_n`, else ''."""
    return f" (only {n} image{'s' if n != 1 else ''}: a rough estimate)" if n < min_n else ""


# ---- cross-fitting ------------------------------------------------------------------------------

def crossfit_folds(labels: np.ndarray, *, k: int, seed: int,
                   groups: np.ndarray | None = None) -> np.ndarray | None:
    """Fold index (0..k-1) per image for cross-fitting, or None when fewer than 2 folds fit.

    Stratified by label, shuffled with `seed`; with groups, whole groups stay in one fold
    (copies of one cell must not be fitted on and evaluated on at once).
    """
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.asarray(labels)
    n_units = len(np.unique(groups)) if groups is not None else len(labels)
    k = min(int(k), n_units)
    if k < 2:
        return None
    folds = np.full(len(labels), -1, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class with fewer than k members: folds still cover it
        try:
            if groups is None:
                splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(
                    np.zeros(len(labels)), labels)
            else:
                splits = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(
                    np.zeros(len(labels)), labels, groups=np.asarray(groups))
            for j, (_, test) in enumerate(splits):
                folds[test] = j
        except ValueError:  # every class smaller than k: unstratified, still seeded and grouped
            units = np.arange(len(labels)) if groups is None else \
                np.unique(np.asarray(groups), return_inverse=True)[1]
            order = np.random.default_rng(seed).permutation(int(units.max()) + 1)
            folds = (np.argsort(order)[units] % k).astype(np.int64)
    return folds
