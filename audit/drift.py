"""Two-sample drift statistics: kernel MMD with a permutation test, a domain classifier's AUC,
and per-property distribution distances (Wasserstein in reference SD units, KS p-value).

Pure numpy/scipy/scikit-learn; randomness only through an explicit `np.random.Generator` or seed.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from audit.sampling import subsample  # its home; kept importable from here

__all__ = [
    "median_bandwidth",
    "rbf_kernel",
    "mmd2_unbiased",
    "mmd_permutation_test",
    "domain_classifier_auc",
    "property_drift",
    "subsample",
    "class_matched_sample",
]


def class_matched_sample(ref_labels: np.ndarray, shifted_labels: np.ndarray, max_n: int, *,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices into each set with the same number of images of every class they share.

    Drift tests on these compare images at equal class proportions, so a changed class mix
    (label shift, measured separately) is not mistaken for the images looking different.
    Per class min(n_ref, n_shifted) images, scaled down so each side has at most `max_n`.
    """
    ref_labels, shifted_labels = np.asarray(ref_labels), np.asarray(shifted_labels)
    shared = np.intersect1d(ref_labels, shifted_labels)
    counts = np.array([min((ref_labels == c).sum(), (shifted_labels == c).sum()) for c in shared])
    if counts.sum() > max_n:
        counts = np.maximum(np.floor(counts * max_n / counts.sum()).astype(int), 1)
    ref_idx, sh_idx = [], []
    for c, k in zip(shared, counts, strict=True):
        ref_idx.append(rng.choice(np.flatnonzero(ref_labels == c), size=k, replace=False))
        sh_idx.append(rng.choice(np.flatnonzero(shifted_labels == c), size=k, replace=False))
    if not ref_idx:
        return np.array([], int), np.array([], int)
    return np.sort(np.concatenate(ref_idx)), np.sort(np.concatenate(sh_idx))


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.maximum(d2, 0.0)


def median_bandwidth(x: np.ndarray) -> float:
    """Median heuristic: the median Euclidean distance between distinct rows of `x`.

    Falls back to 1.0 when every row is identical (any bandwidth gives the same test then).
    """
    d2 = _squared_distances(x, x)
    upper = d2[np.triu_indices(len(x), k=1)]
    positive = upper[upper > 0]
    return float(np.sqrt(np.median(positive))) if positive.size else 1.0


def rbf_kernel(x: np.ndarray, y: np.ndarray, *, bandwidth: float) -> np.ndarray:
    """k(a, b) = exp(-|a - b|^2 / (2 bandwidth^2))."""
    return np.exp(-_squared_distances(x, y) / (2.0 * bandwidth ** 2))


def _mmd2_from_kernel(kernel: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 for each column of boolean `masks` (True = first sample) over a pooled kernel.

    One matrix product serves every permutation: a^T K a sums a sample's kernel block, and the
    diagonal is removed from the within-sample sums (the unbiased U-statistic).
    """
    a = masks.astype(np.float64)
    b = 1.0 - a
    ka = kernel @ a
    diag = np.diag(kernel)
    n, m = a.sum(0), b.sum(0)
    xx = ((a * ka).sum(0) - diag @ a) / (n * (n - 1))
    yy = ((b * (kernel @ b)).sum(0) - diag @ b) / (m * (m - 1))
    xy = (b * ka).sum(0) / (n * m)
    return xx + yy - 2.0 * xy


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, *, bandwidth: float) -> float:
    """Unbiased squared maximum mean discrepancy of two samples under an RBF kernel."""
    pooled = np.concatenate([x, y])
    mask = np.zeros((len(pooled), 1), bool)
    mask[: len(x)] = True
    return float(_mmd2_from_kernel(rbf_kernel(pooled, pooled, bandwidth=bandwidth), mask)[0])


def mmd_permutation_test(x: np.ndarray, y: np.ndarray, *, n_perm: int = 200,
                         rng: np.random.Generator, bandwidth: float | None = None,
                         chunk: int = 50) -> dict[str, float]:
    """MMD^2 of x (reference) vs y with a permutation p-value.

    Bandwidth: the median heuristic on the reference `x` unless given. p = (1 + #{permuted
    MMD^2 >= observed}) / (1 + n_perm), so the smallest attainable p is 1 / (1 + n_perm).
    NaN statistic and p when either sample has fewer than 2 rows.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        return {"mmd2": float("nan"), "p_value": float("nan"), "bandwidth": float("nan"),
                "n_perm": int(n_perm)}
    if bandwidth is None:
        bandwidth = median_bandwidth(x)
    pooled = np.concatenate([x, y])
    kernel = rbf_kernel(pooled, pooled, bandwidth=bandwidth)
    observed_mask = np.zeros((n + m, 1), bool)
    observed_mask[:n] = True
    observed = float(_mmd2_from_kernel(kernel, observed_mask)[0])
    exceed = 0
    for start in range(0, n_perm, chunk):
        k = min(chunk, n_perm - start)
        masks = np.zeros((n + m, k), bool)
        for j in range(k):
            masks[rng.permutation(n + m)[:n], j] = True
        exceed += int((_mmd2_from_kernel(kernel, masks) >= observed).sum())
    return {"mmd2": observed, "p_value": (1.0 + exceed) / (1.0 + n_perm),
            "bandwidth": float(bandwidth), "n_perm": int(n_perm)}


def domain_classifier_auc(x: np.ndarray, y: np.ndarray, *, seed: int, n_splits: int = 5) -> float:
    """Cross-validated ROC AUC of a logistic regression telling rows of y from rows of x.

    0.5: the sets are indistinguishable in this space; 1.0: perfectly separable. Mean AUC over
    stratified folds (fewer folds when a set is tiny); NaN when a set has fewer than 2 rows.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    folds = min(n_splits, len(x), len(y))
    if folds < 2:
        return float("nan")
    features = np.concatenate([x, y]).astype(np.float64)
    target = np.r_[np.zeros(len(x), int), np.ones(len(y), int)]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # Hundreds of small L-BFGS steps: one BLAS thread. Two spinning OpenBLAS threads made the
    # fits 13x slower on a busy 2-core machine (8.9 s against 0.7 s, 400 + 400 x 1,280, same AUC).
    with threadpool_limits(1):
        scores = cross_val_score(model, features, target, cv=splitter, scoring="roc_auc")
    return float(np.mean(scores))


def _circular_mean_deg(values: np.ndarray) -> float:
    angle = np.deg2rad(values)
    return float(np.rad2deg(np.arctan2(np.sin(angle).mean(), np.cos(angle).mean())) % 360.0)


def _unwrap(values: np.ndarray, centre: float) -> np.ndarray:
    """Degrees relative to `centre`, in [-180, 180): hue 359 vs 1 is a 2-degree difference."""
    return (values - centre + 180.0) % 360.0 - 180.0


def property_drift(reference: np.ndarray, shifted: np.ndarray, *,
                   circular: bool = False) -> dict[str, float]:
    """How one image property's distribution moved from `reference` to `shifted`.

    - wasserstein_sd: Wasserstein-1 distance divided by the reference SD (so properties on
      different scales are comparable; the pooled SD when the reference is constant).
    - shift: shifted mean - reference mean, in the property's units (signed: the direction);
      shift_sd: the same divided by that SD.
    - ks_p: two-sample Kolmogorov-Smirnov p-value.
    Circular properties (hue, degrees) are unwrapped around the reference circular mean first;
    the means are then reported relative to it. NaN values (e.g. hue of a grey image) are dropped;
    every number is NaN when a side has no finite value.
    """
    ref = np.asarray(reference, np.float64)
    sh = np.asarray(shifted, np.float64)
    ref, sh = ref[np.isfinite(ref)], sh[np.isfinite(sh)]
    out = {"wasserstein_sd": float("nan"), "shift": float("nan"), "shift_sd": float("nan"),
           "ks_p": float("nan"), "ref_mean": float("nan"), "shifted_mean": float("nan"),
           "n_ref": int(ref.size), "n_shifted": int(sh.size)}
    if ref.size == 0 or sh.size == 0:
        return out
    if circular:
        centre = _circular_mean_deg(ref)
        ref, sh = _unwrap(ref, centre), _unwrap(sh, centre)
    scale = ref.std()
    if scale <= 1e-12:
        scale = np.concatenate([ref, sh]).std()
    distance = stats.wasserstein_distance(ref, sh)
    shift = sh.mean() - ref.mean()
    out.update(
        wasserstein_sd=float(distance / scale) if scale > 1e-12 else 0.0,
        shift=float(shift),
        shift_sd=float(shift / scale) if scale > 1e-12 else 0.0,
        ks_p=float(stats.ks_2samp(ref, sh).pvalue),
        ref_mean=float(ref.mean()),
        shifted_mean=float(sh.mean()),
    )
    if circular:  # back to absolute degrees
        out["ref_mean"] = float((centre + ref.mean()) % 360.0)
        out["shifted_mean"] = float((centre + sh.mean()) % 360.0)
    return out
