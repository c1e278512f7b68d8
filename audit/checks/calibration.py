"""Calibration: does the model's confidence match how often it is right, before and after
temperature scaling fitted on the reference set?

ECE, adaptive ECE, MCE, reliability bins (top label), Brier score, NLL and class-wise ECE per
evaluated set. On the reference, "after" is out-of-fold: the reference is cut into k folds
(seeded, stratified, whole groups together), each fold is scaled by a temperature fitted on
the other folds, and every figure is computed within each fold and averaged over the folds.
Pooling the folds before binning would not be out-of-sample: a fold's images share confidence
bins with the images its temperature was fitted on, and their errors cancel in the bins. The
same fold-wise figures at T = 1 are in `before_by_fold`, so the change is measured like with
like (binned figures on fewer images read higher). The temperature that ships (to `audit
predict` and to shifted sets) is refitted on the whole reference; its in-sample figures are
kept under `after_in_sample`, labelled as such. A shifted set's calibration after scaling shows
what a reference-only fix leaves behind.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from audit.checks.base import AuditContext, Check, register
from audit.inference import softmax
from audit.options import count, fraction
from audit.results import CheckResult, Finding, Status
from audit.stats import crossfit_folds, few_images_note

__all__ = ["reliability_bins", "expected_calibration_error", "maximum_calibration_error",
           "classwise_ece", "brier_score", "negative_log_likelihood", "fit_temperature",
           "calibration_metrics", "crossfit_temperature", "fold_averaged_metrics",
           "reference_folds", "CalibrationCheck"]

_LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))


def _bin_of(values: np.ndarray, n_bins: int, adaptive: bool) -> np.ndarray:
    """Bin of each value, bins (lo, hi]: equal-width on [0, 1], or equal-mass (quantile edges;
    tied values share a bin, so a set of identical confidences is one bin, not n arbitrary ones)."""
    if adaptive:
        inner = np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1])
        return np.searchsorted(inner, values, side="left")
    return np.clip(np.ceil(values * n_bins).astype(int) - 1, 0, n_bins - 1)


def _binned(scores: np.ndarray, hits: np.ndarray, n_bins: int, adaptive: bool):
    bins = _bin_of(scores, n_bins, adaptive)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        confidence = np.bincount(bins, weights=scores, minlength=n_bins) / count
        accuracy = np.bincount(bins, weights=hits.astype(float), minlength=n_bins) / count
    return count, confidence, accuracy


def reliability_bins(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15,
                     adaptive: bool = False) -> dict[str, list]:
    """Top-label reliability diagram: per bin its count, mean confidence and accuracy (NaN if empty)."""
    count, confidence, accuracy = _binned(probs.max(axis=1), probs.argmax(axis=1) == labels,
                                          n_bins, adaptive)
    return {"edges": None if adaptive else np.linspace(0, 1, n_bins + 1).tolist(),
            "count": count.tolist(), "confidence": confidence.tolist(),
            "accuracy": accuracy.tolist()}


def _ece(scores: np.ndarray, hits: np.ndarray, n_bins: int, adaptive: bool) -> float:
    count, confidence, accuracy = _binned(scores, hits, n_bins, adaptive)
    filled = count > 0
    return float(np.sum(count[filled] * np.abs(accuracy[filled] - confidence[filled])) / count.sum())


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15,
                               adaptive: bool = False) -> float:
    """Top-label ECE: bin-weighted mean |accuracy - confidence| (equal-width or equal-mass bins)."""
    return _ece(probs.max(axis=1), probs.argmax(axis=1) == labels, n_bins, adaptive)


def maximum_calibration_error(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> float:
    """Largest |accuracy - confidence| over the non-empty equal-width bins."""
    count, confidence, accuracy = _binned(probs.max(axis=1), probs.argmax(axis=1) == labels,
                                          n_bins, False)
    return float(np.max(np.abs(accuracy - confidence)[count > 0]))


def classwise_ece(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> list[float | None]:
    """ECE of each class's own probability against "is this class" (None if the class is absent)."""
    return [_ece(probs[:, c], labels == c, n_bins, False) if np.any(labels == c) else None
            for c in range(probs.shape[1])]


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: squared error to the one-hot label, summed over classes."""
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(log_softmax(logits, axis=1)[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) (searched on log T in [0.05, 20])."""
    result = minimize_scalar(lambda log_t: negative_log_likelihood(logits / np.exp(log_t), labels),
                             bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def crossfit_temperature(logits: np.ndarray, labels: np.ndarray, folds: np.ndarray | None
                         ) -> tuple[np.ndarray, list[float]]:
    """(temperature per image, one per fold): image i gets the temperature fitted on the folds
    it is not in. Without folds (too few images), every image gets the in-sample fit."""
    if folds is None:
        t = fit_temperature(logits, labels)
        return np.full(len(labels), t), [t]
    per_image, temps = np.empty(len(labels)), []
    for j in range(int(folds.max()) + 1):
        held = folds == j
        t = fit_temperature(logits[~held], labels[~held])
        per_image[held] = t
        temps.append(t)
    return per_image, temps


_SCALARS = ("ece", "adaptive_ece", "mce", "brier", "nll", "mean_confidence", "accuracy",
            "overconfidence")


def fold_averaged_metrics(logits: np.ndarray, labels: np.ndarray, folds: np.ndarray,
                          temperature: np.ndarray, class_names: tuple[str, ...], *,
                          n_bins: int) -> dict:
    """`calibration_metrics` within each fold, averaged over folds weighted by their size;
    the reliability diagram pools the folds (for display)."""
    parts, weights = [], []
    for j in range(int(folds.max()) + 1):
        held = folds == j
        parts.append(calibration_metrics(logits[held], labels[held], class_names, n_bins=n_bins,
                                         temperature=temperature[held]))
        weights.append(held.mean())
    weights = np.asarray(weights)
    out = {k: float(np.dot(weights, [p[k] for p in parts])) for k in _SCALARS}
    per_class = {}
    for c in class_names:
        values = [(w, p["per_class_ece"][c]) for w, p in zip(weights, parts, strict=True)
                  if p["per_class_ece"][c] is not None]
        per_class[c] = (sum(w * v for w, v in values) / sum(w for w, _ in values)
                        if values else None)
    probs = softmax(logits / np.reshape(temperature, (-1, 1)))
    return {**out, "per_class_ece": per_class,
            "reliability": reliability_bins(probs, labels, n_bins=n_bins),
            "folds": int(folds.max()) + 1, "fold_sizes": [int(np.sum(folds == j))
                                                          for j in range(int(folds.max()) + 1)]}


def reference_folds(ctx: AuditContext, k: int) -> np.ndarray | None:
    """The reference's cross-fitting folds: the same for every check that cross-fits."""
    ref = ctx.reference
    seed = ctx.child_seed("crossfit", ref.name)
    return crossfit_folds(ref.labels, k=k, seed=seed, groups=ref.groups)


def calibration_metrics(logits: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], *,
                        n_bins: int = 15, temperature: float | np.ndarray = 1.0) -> dict:
    """Everything the check reports for one set at one temperature (or one per image)."""
    temperature = np.reshape(temperature, (-1, 1)) if np.ndim(temperature) else temperature
    probs = softmax(logits / temperature)
    confidence, accuracy = probs.max(axis=1).mean(), np.mean(probs.argmax(axis=1) == labels)
    return {
        "ece": expected_calibration_error(probs, labels, n_bins=n_bins),
        "adaptive_ece": expected_calibration_error(probs, labels, n_bins=n_bins, adaptive=True),
        "mce": maximum_calibration_error(probs, labels, n_bins=n_bins),
        "brier": brier_score(probs, labels),
        "nll": negative_log_likelihood(logits / temperature, labels),
        "mean_confidence": float(confidence), "accuracy": float(accuracy),
        "overconfidence": float(confidence - accuracy),
        "per_class_ece": dict(zip(class_names, classwise_ece(probs, labels, n_bins=n_bins),
                                  strict=True)),
        "reliability": reliability_bins(probs, labels, n_bins=n_bins),
    }


@register
class CalibrationCheck(Check):
    name = "calibration"
    description = "ECE, MCE, Brier, NLL and reliability before/after temperature scaling"
    DEFAULTS = {
        "n_bins": 15,                   # confidence bins for ECE, MCE and reliability diagrams
        "ece_warn": 0.05,               # uncalibrated reference ECE above this: WARN
        "ece_fail": 0.15,               # ... above this: FAIL
        "overconfidence_warn": 0.1,     # shifted set: mean confidence - accuracy above this: finding
        "folds": 5,                     # cross-fitting folds on the reference (out-of-fold "after")
    }
    LIMITS = {"n_bins": count(2), "ece_warn": fraction(), "ece_fail": fraction(),
              "overconfidence_warn": fraction(), "folds": count(2)}
    ORDER = (("ece_warn", "ece_fail"),)

    def run(self, ctx: AuditContext) -> CheckResult:
        opts = self.options(ctx)
        ref, n_bins = ctx.reference, opts.n_bins
        temperature = fit_temperature(ref.logits, ref.labels)
        folds = reference_folds(ctx, opts.folds)
        per_image, fold_temperatures = crossfit_temperature(ref.logits, ref.labels, folds)
        datasets = {}
        for view in ctx.evaluated:
            metrics = {stage: calibration_metrics(view.logits, view.labels, ctx.class_names,
                                                  n_bins=n_bins, temperature=t)
                       for stage, t in (("before", 1.0), ("after", temperature))}
            basis = "fitted on the reference"
            if view is ref:
                metrics["after_in_sample"] = metrics["after"]
                basis = "in_sample"
                if folds is not None:
                    metrics["after"] = fold_averaged_metrics(
                        ref.logits, ref.labels, folds, per_image, ctx.class_names, n_bins=n_bins)
                    metrics["before_by_fold"] = fold_averaged_metrics(
                        ref.logits, ref.labels, folds, np.ones(len(ref)), ctx.class_names,
                        n_bins=n_bins)
                    basis = "out_of_fold"
            datasets[view.name] = {"role": view.role, "n": len(view), "after_basis": basis,
                                   **metrics}
        before, after = datasets[ref.name]["before"], datasets[ref.name]["after"]
        by_fold = datasets[ref.name].get("before_by_fold", before)
        oof = (f"out-of-fold, each of {int(folds.max()) + 1} folds of about "
               f"{len(ref) // (int(folds.max()) + 1)} images scaled by a temperature fitted on "
               "the others" if folds is not None else "in-sample: too few images to cross-fit")
        status = (Status.FAIL if before["ece"] > opts.ece_fail else
                  Status.WARN if before["ece"] > opts.ece_warn else Status.PASS)
        findings = []
        if before["ece"] > opts.ece_warn:
            findings.append(Finding(
                check=self.name, dataset=ref.name, impact=before["ece"], kind="miscalibration",
                text=(f"On {ref.name} the model's confidence is off by {_pct(before['ece'])} points "
                      f"on average (ECE, n={len(ref)}; {_direction(before['overconfidence'])}); "
                      f"temperature scaling (T={temperature:.2f}) takes it from "
                      f"{_pct(by_fold['ece'])} to {_pct(after['ece'])} points ({oof})"
                      f"{few_images_note(len(ref))}."),
                action=f"apply temperature scaling (T={temperature:.2f}) to the model's outputs",
                evidence={"ece_before": before["ece"], "ece_after": after["ece"],
                          "temperature": temperature}))
        for view in ctx.shifted:
            findings += _overconfidence(view.name, datasets[view.name], ref.name, temperature,
                                        limit=opts.overconfidence_warn, check=self.name)
        summary = (f"ECE on {ref.name} (n={len(ref)}) is {before['ece']:.3f}; temperature "
                   f"scaling takes it from {by_fold['ece']:.3f} to {after['ece']:.3f} ({oof}; "
                   f"T={temperature:.2f}, refitted on the whole reference, is what ships); the "
                   "status uses the uncalibrated value.")
        return CheckResult(self.name, status, summary, findings=findings, metrics={
            "reference": ref.name, "temperature": temperature, "n_bins": n_bins,
            "status_basis": "before", "datasets": datasets,
            "crossfit": {"folds": None if folds is None else int(folds.max()) + 1,
                         "grouped": ref.groups is not None,
                         "fold_temperatures": fold_temperatures,
                         "reference_after": "out_of_fold" if folds is not None else "in_sample"}})


def _overconfidence(name: str, metrics: dict, reference: str, temperature: float, *, limit: float,
                    check: str) -> list[Finding]:
    before, after = metrics["before"], metrics["after"]
    gap = before["overconfidence"]
    if gap <= limit:
        return []
    remains = after["overconfidence"] > limit
    action = (f"recalibrate on data from {name} and refer images below the referral threshold "
              "(selective check) to a human" if remains else
              f"apply temperature scaling fitted on {reference} (T={temperature:.2f})")
    return [Finding(
        check=check, dataset=name, impact=gap, kind="overconfidence",
        text=(f"On {name} the model's mean confidence is {_pct(before['mean_confidence'])}% but its "
              f"accuracy is {_pct(before['accuracy'])}%: overconfident by {_pct(gap)} points "
              f"({_pct(after['overconfidence'])} after temperature scaling fitted on {reference})."),
        action=action,
        evidence={"mean_confidence": before["mean_confidence"], "accuracy": before["accuracy"],
                  "overconfidence_after": after["overconfidence"], "ece": before["ece"],
                  "ece_after": after["ece"]})]


def _direction(overconfidence: float) -> str:
    return "overconfident" if overconfidence > 0 else "underconfident"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"
