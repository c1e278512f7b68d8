"""Per-image safety flags: is this input a usable cell image, and does it look like the reference?

Two kinds of flag, both refer an image to a human whatever the model's confidence:

* not a usable cell image: blank or near-constant, far smaller than the model input (its size on
  disk), mostly black padding, or no stained nucleus (the white-cell segmentation's first
  test, on a thumbnail). Thresholds are fixed rules (`USABILITY_DEFAULTS`).
* unlike the reference: an out-of-distribution score in the model's embedding, fitted on the
  reference set. The score is the class-conditional Mahalanobis distance (Lee et al. 2018) under
  a probabilistic-PCA covariance shared by the classes: the top `n_components` directions of
  within-class variation keep their variances, the rest share one (Tipping and Bishop 1999),
  so it is defined even with fewer images than embedding dimensions. The threshold is the
  (1 - false-alarm rate) conformal quantile of out-of-fold scores on the reference.

Pure numpy; `OODModel.to_arrays` / `from_arrays` store what `audit predict` needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["REASONS", "USABILITY_DEFAULTS", "usability_flags", "reasons_text", "OODModel",
           "fit_ood", "crossfit_ood", "conformal_threshold", "OOD_BIT"]

REASONS: tuple[str, ...] = (
    "blank or near-constant image",
    "far smaller than the model input",
    "mostly black padding",
    "no white cell found",
    "unlike the reference images",
)
OOD_BIT = 1 << 4
USABILITY_DEFAULTS = {
    "min_contrast": 0.02,             # luminance SD below this: blank or near-constant
    "min_source_fraction": 0.25,      # shorter side on disk below this x model input: too small
    "max_dark_fraction": 0.5,         # more of the image than this near-black: padding
    "min_nucleus_contrast": 0.15,     # no stained nucleus below this (log B/G, as the mask)
    "min_nucleus_concentration": 0.3,  # ... or when the nucleus class is scattered specks
}


def usability_flags(properties: dict[str, np.ndarray], *, input_size: int,
                    thresholds: dict | None = None) -> np.ndarray:
    """Bit mask per image (bits 0-3 of `REASONS`) from per-image properties (`contrast`,
    `source_width`/`source_height`, `dark_fraction`, `nucleus_contrast`,
    `nucleus_concentration`); a property that is missing raises no flag."""
    t = {**USABILITY_DEFAULTS, **(thresholds or {})}
    n = len(next(iter(properties.values()))) if properties else 0
    flags = np.zeros(n, dtype=np.int64)

    def prop(name: str) -> np.ndarray | None:
        value = properties.get(name)
        return None if value is None else np.asarray(value, dtype=float)

    contrast = prop("contrast")
    if contrast is not None:
        flags |= (contrast < t["min_contrast"]).astype(np.int64)
    width, height = prop("source_width"), prop("source_height")
    if width is not None and height is not None:
        side = np.minimum(width, height)
        flags |= ((side > 0) & (side < t["min_source_fraction"] * input_size)).astype(np.int64) << 1
    dark = prop("dark_fraction")
    if dark is not None:
        flags |= (dark > t["max_dark_fraction"]).astype(np.int64) << 2
    nucleus, concentration = prop("nucleus_contrast"), prop("nucleus_concentration")
    if nucleus is not None and concentration is not None:
        no_cell = (nucleus < t["min_nucleus_contrast"]) | \
            (concentration < t["min_nucleus_concentration"])
        flags |= no_cell.astype(np.int64) << 3
    return flags


def reasons_text(flags: int) -> str:
    """'; '-joined reasons of one image's bit mask ('' when none)."""
    return "; ".join(r for i, r in enumerate(REASONS) if int(flags) >> i & 1)


@dataclass(frozen=True)
class OODModel:
    """Class means (C, D), principal directions (D, k) with their variances (k,), the shared
    variance of the remaining directions, and the score threshold (None until set)."""

    means: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual_variance: float
    threshold: float | None = None

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance to the nearest class mean (higher = less like the
        reference)."""
        x = np.asarray(embeddings, dtype=np.float64)
        best = np.full(len(x), np.inf)
        for mean in self.means:
            z = x - mean
            proj = z @ self.components
            inside = np.sum(proj ** 2 / self.variances, axis=1)
            outside = (np.sum(z ** 2, axis=1) - np.sum(proj ** 2, axis=1)) / self.residual_variance
            best = np.minimum(best, inside + np.maximum(outside, 0.0))
        return best

    def flags(self, embeddings: np.ndarray) -> np.ndarray:
        if self.threshold is None:
            raise ValueError("the OOD model has no threshold; fit it with crossfit_ood")
        return self.score(embeddings) > self.threshold

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"ood_means": self.means.astype(np.float32),
                "ood_components": self.components.astype(np.float32),
                "ood_variances": self.variances, "ood_residual_variance": self.residual_variance,
                "ood_threshold": np.nan if self.threshold is None else self.threshold}

    @classmethod
    def from_arrays(cls, arrays) -> OODModel:
        threshold = float(arrays["ood_threshold"])
        return cls(np.asarray(arrays["ood_means"], np.float64),
                   np.asarray(arrays["ood_components"], np.float64),
                   np.asarray(arrays["ood_variances"], np.float64),
                   float(arrays["ood_residual_variance"]),
                   None if np.isnan(threshold) else threshold)  # +inf: too few to set one


def fit_ood(embeddings: np.ndarray, labels: np.ndarray, *, n_components: int = 64) -> OODModel:
    """Class means and the shared within-class covariance (probabilistic PCA) of `embeddings`."""
    from threadpoolctl import threadpool_limits

    # Small decompositions: one BLAS thread. On a busy machine OpenBLAS's spinning threads made
    # these 20x slower (52 s against 2.8 s for five folds of 2,400 x 1,280 embeddings).
    with threadpool_limits(1):
        return _fit_ood(embeddings, labels, n_components=n_components)


def _fit_ood(embeddings: np.ndarray, labels: np.ndarray, *, n_components: int) -> OODModel:
    x = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    residuals = x - means[np.searchsorted(classes, labels)]
    dof = max(len(x) - len(classes), 1)
    # Top k directions by a seeded randomized SVD (Halko et al.): the full SVD of a
    # 2,400 x 1,280 embedding matrix would cost seconds per fold for directions never used.
    k = max(min(int(n_components), dof // 2, x.shape[1] - 1), 0)
    total = float(np.sum(residuals ** 2)) / dof          # the trace: unbiased at any n
    if k > 0 and total > 0:
        from sklearn.utils.extmath import randomized_svd

        _, singular, vt = randomized_svd(residuals, k, n_iter=4, random_state=0)
        eigen = singular ** 2 / dof
    else:
        vt, eigen = np.zeros((0, x.shape[1])), np.zeros(0)
    # The remaining D - k directions share one variance, the PPCA estimate: their total
    # variance (the trace minus the top k) spread over them all. With fewer images than
    # dimensions this keeps new images at a finite, stable distance.
    residual = (total - float(eigen.sum())) / max(x.shape[1] - k, 1)
    if residual <= 0:
        residual = float(eigen.mean()) if eigen.size else 1.0
    return OODModel(means, vt.T, eigen, residual)


def conformal_threshold(scores: np.ndarray, false_alarm: float) -> float:
    """The ceil((n + 1)(1 - rate))-th smallest score: a new image like these exceeds it with
    probability at most `false_alarm` (exchangeability); +inf when n is too small for it."""
    scores = np.sort(np.asarray(scores, dtype=float))
    rank = int(np.ceil((len(scores) + 1) * (1.0 - false_alarm)))
    return float(scores[rank - 1]) if rank <= len(scores) else float("inf")


def crossfit_ood(embeddings: np.ndarray, labels: np.ndarray, folds: np.ndarray | None, *,
                 false_alarm: float, n_components: int = 64) -> tuple[OODModel, np.ndarray]:
    """(model fitted on every image with its threshold, out-of-fold score per image).

    Each image is scored by the model fitted on the other folds, and the threshold is set on
    those out-of-fold scores, so the false-alarm rate is measured on images the model did not
    see. Without folds (too few images) the scores are in-sample and the threshold optimistic.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    full = fit_ood(x, labels, n_components=n_components)
    if folds is None:
        oof = full.score(x)
    else:
        oof = np.empty(len(x))
        for j in range(int(folds.max()) + 1):
            held = folds == j
            oof[held] = fit_ood(x[~held], labels[~held], n_components=n_components).score(
                x[held])
    threshold = conformal_threshold(oof, false_alarm)
    return OODModel(full.means, full.components, full.variances, full.residual_variance,
                    threshold), oof
