"""Selective prediction: how safe is "accept confident predictions, refer the rest to a human"?

Per evaluated set a risk-coverage curve and its area (AURC). The referral threshold carries a
finite-sample guarantee (Learn-then-Test, Angelopoulos et al. 2021): with probability at least
1 - delta over the reference sample, accuracy on accepted images is at least the target on data
like the reference. Candidate thresholds are tested from strict to lenient with exact binomial
p-values (fixed-sequence testing controls the family-wise error at delta); the most lenient
certified one is chosen. The figures reported for the reference are out-of-fold: each fold is
judged at a threshold (and temperature) fitted on the other folds. What ships to `audit
predict` is refitted on the whole reference. On shifted sets the shipped threshold is applied
and what happens is measured; the guarantee does not transfer under shift. Also: how well
confidence (maximum softmax probability) and energy tell shifted images from reference ones.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

from audit.checks.base import AuditContext, Check, register
from audit.inference import softmax
from audit.options import count, fraction
from audit.results import CheckResult, Finding, Status, worst_status
from audit.stats import few_images_note, rate_ci

__all__ = ["risk_coverage_curve", "aurc", "fit_threshold", "accepted_accuracy", "shift_auroc",
           "energy_score", "guaranteed_threshold", "crossfit_referral", "SelectiveCheck"]


def _by_confidence(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-confidence, kind="stable")
    return confidence[order], np.asarray(correct, dtype=float)[order]


def risk_coverage_curve(confidence: np.ndarray, correct: np.ndarray, *,
                        max_points: int | None = None) -> dict[str, np.ndarray]:
    """Error rate among the k most confident images, for k = 1..N (optionally subsampled)."""
    conf, hits = _by_confidence(confidence, correct)
    k = np.arange(1, len(conf) + 1)
    curve = {"coverage": k / len(conf), "risk": 1.0 - np.cumsum(hits) / k, "threshold": conf}
    if max_points is not None and len(conf) > max_points:
        keep = np.unique(np.linspace(0, len(conf) - 1, max_points).round().astype(int))
        curve = {key: value[keep] for key, value in curve.items()}
    return curve


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve (mean risk over all coverages; lower is better)."""
    return float(np.mean(risk_coverage_curve(confidence, correct)["risk"]))


def fit_threshold(confidence: np.ndarray, correct: np.ndarray, *,
                  target_accuracy: float) -> float | None:
    """Lowest threshold t such that images with confidence >= t are right >= target of the time
    on these very images: optimistic by construction (the winner's curse), kept for comparison
    with `guaranteed_threshold` (`naive_value` in the JSON)."""
    conf, hits = _by_confidence(confidence, correct)
    # A threshold accepts every image tied at its value: evaluate only at the end of each tie run.
    last_of_value = np.append(conf[1:] != conf[:-1], True)
    accuracy = (np.cumsum(hits) / np.arange(1, len(conf) + 1))[last_of_value]
    reached = np.flatnonzero(accuracy >= target_accuracy - 1e-12)
    return float(conf[last_of_value][reached[-1]]) if reached.size else None


def accepted_accuracy(confidence: np.ndarray, correct: np.ndarray,
                      threshold: float | None) -> tuple[float | None, float]:
    """(accuracy on accepted images or None if none, share accepted) at `threshold`."""
    accepted = np.zeros(len(confidence), bool) if threshold is None else confidence >= threshold
    coverage = float(accepted.mean()) if len(confidence) else 0.0
    return (float(np.mean(correct[accepted])) if accepted.any() else None), coverage


def energy_score(logits: np.ndarray) -> np.ndarray:
    """-logsumexp(logits): higher energy means the input looks less like the training data."""
    return -logsumexp(logits, axis=1)


def shift_auroc(reference_score: np.ndarray, shifted_score: np.ndarray) -> float | None:
    """AUROC of a score (higher = more likely shifted) separating shifted from reference images."""
    if len(reference_score) == 0 or len(shifted_score) == 0:
        return None
    is_shifted = np.r_[np.zeros(len(reference_score)), np.ones(len(shifted_score))]
    return float(roc_auc_score(is_shifted, np.r_[reference_score, shifted_score]))


def guaranteed_threshold(confidence: np.ndarray, correct: np.ndarray, *, target_accuracy: float,
                         delta: float) -> dict:
    """Learn-then-Test: the lowest confidence threshold certified to keep accuracy on accepted
    images >= `target_accuracy` with probability >= 1 - `delta`.

    H0(t): error rate among images with confidence >= t exceeds a = 1 - target. Its p-value is
    exact given the n accepted: P(Binomial(n, a) <= errors). Thresholds are tested in a fixed
    order, strict to lenient (1 - t on a log grid from 1e-6 to 1), stopping at the first that
    is not rejected at delta; this controls the family-wise error at delta, so every certified
    threshold holds at once. A threshold accepting fewer images than can certify a perfect
    record twice over (2 log(delta) / log(1 - a)) is skipped: that depends on the confidences
    only, not on which images are right.
    (MAPIE's BinaryClassificationController could run this with the "precision" risk, but its
    fixed-sequence order is inferred from the empirical risk, i.e. from the labels; these few
    lines keep the order fixed in advance.)
    """
    from scipy.stats import binom

    confidence = np.asarray(confidence, dtype=float)
    errors = ~np.asarray(correct, dtype=bool)
    alpha = 1.0 - float(target_accuracy)
    out = {"value": None, "p_value": None, "n_tested": 0,
           "min_accepted": None if alpha <= 0 else int(np.ceil(2 * np.log(delta) /
                                                                  np.log(1.0 - alpha)))}
    if alpha <= 0 or confidence.size == 0:
        return out
    order = np.argsort(-confidence, kind="stable")
    conf_sorted, cum_errors = confidence[order], np.cumsum(errors[order])
    for t in 1.0 - np.geomspace(1e-6, 1.0, 400):
        n = int(np.searchsorted(-conf_sorted, -t, side="right"))  # images with confidence >= t
        if n < out["min_accepted"]:
            continue
        p = float(binom.cdf(int(cum_errors[n - 1]), n, alpha))
        out["n_tested"] += 1
        if p > delta:
            break
        out["value"], out["p_value"] = float(t), p
    return out


def _accepted_figures(accepted: np.ndarray, correct: np.ndarray, groups: np.ndarray | None
                      ) -> dict:
    """Accuracy on accepted images and the share accepted, each with an exact interval."""
    g = None if groups is None else groups[accepted]
    acc = rate_ci(correct[accepted], groups=g) if accepted.any() else None
    coverage = rate_ci(accepted, groups=groups)
    return {"accepted_accuracy": None if acc is None else acc["value"],
            "accepted_accuracy_ci": acc, "n_accepted": int(accepted.sum()),
            "coverage": coverage["value"], "coverage_ci": coverage,
            "referred": 1.0 - coverage["value"]}


def crossfit_referral(logits: np.ndarray, labels: np.ndarray, folds: np.ndarray | None, *,
                      calibrate: bool, target_accuracy: float, delta: float) -> dict:
    """Out-of-fold referral on the reference: each fold judged at the temperature and threshold
    fitted on the other folds. {"accepted": bool per image, "thresholds", "temperatures"}."""
    from audit.checks.calibration import fit_temperature

    correct = logits.argmax(axis=1) == labels
    accepted = np.zeros(len(labels), bool)
    thresholds, temperatures = [], []
    for j in range(int(folds.max()) + 1 if folds is not None else 0):
        held = folds == j
        t = fit_temperature(logits[~held], labels[~held]) if calibrate else 1.0
        conf = softmax(logits / t).max(axis=1)
        fitted = guaranteed_threshold(conf[~held], correct[~held],
                                      target_accuracy=target_accuracy, delta=delta)["value"]
        if fitted is not None:
            accepted[held] = conf[held] >= fitted
        thresholds.append(fitted)
        temperatures.append(t)
    return {"accepted": accepted, "thresholds": thresholds, "temperatures": temperatures}


@register
class SelectiveCheck(Check):
    name = "selective"
    description = ("Risk-coverage, a referral threshold with a finite-sample guarantee "
                   "(out-of-fold on the reference), OOD AUROC")
    DEFAULTS = {
        "target_accuracy": 0.95,   # accepted images must reach this accuracy ...
        "delta": 0.1,              # ... with probability >= 1 - delta (Learn-then-Test)
        "folds": 5,                # cross-fitting folds for the reference's out-of-fold figures
        "min_coverage_warn": 0.5,  # WARN if the reference accepts less than this share (out-of-fold)
        "fail_margin": 0.10,       # FAIL if a shifted set's accepted accuracy < target - margin
        "curve_points": 101,       # risk-coverage points kept in the JSON per set
    }
    LIMITS = {"target_accuracy": fraction(open_low=True), "min_coverage_warn": fraction(),
              "fail_margin": fraction(), "curve_points": count(2),
              "delta": fraction(open_low=True), "folds": count(2)}

    def run(self, ctx: AuditContext) -> CheckResult:
        from audit.checks.calibration import reference_folds

        opts = self.options(ctx)
        target, delta, ref = opts.target_accuracy, opts.delta, ctx.reference
        temperature = _fitted_temperature(ctx)
        probs = {v.name: softmax(v.logits / (temperature or 1.0)) for v in ctx.evaluated}
        conf = {name: p.max(axis=1) for name, p in probs.items()}
        correct = {v.name: probs[v.name].argmax(axis=1) == v.labels for v in ctx.evaluated}
        fitted = guaranteed_threshold(conf[ref.name], correct[ref.name], target_accuracy=target,
                                      delta=delta)
        threshold = fitted["value"]
        folds = reference_folds(ctx, opts.folds)
        crossfit = crossfit_referral(ref.logits, ref.labels, folds,
                                     calibrate=temperature is not None, target_accuracy=target,
                                     delta=delta)
        datasets = {}
        for view in ctx.evaluated:
            c, hits = conf[view.name], correct[view.name]
            shipped = np.zeros(len(c), bool) if threshold is None else c >= threshold
            curve = risk_coverage_curve(c, hits, max_points=opts.curve_points)
            d = {"role": view.role, "n": len(view), "aurc": aurc(c, hits),
                 "accuracy": float(np.mean(hits)), "risk_coverage": curve}
            if view is ref and folds is not None:
                d.update(_accepted_figures(crossfit["accepted"], hits, view.groups),
                         basis="out_of_fold",
                         in_sample=_accepted_figures(shipped, hits, view.groups))
            else:
                d.update(_accepted_figures(shipped, hits, view.groups),
                         basis="in_sample" if view is ref else "measured_under_shift")
            datasets[view.name] = d
        statuses, findings = [Status.PASS], []
        ref_metrics = datasets[ref.name]
        if threshold is None or ref_metrics["coverage"] < opts.min_coverage_warn:
            statuses.append(Status.WARN)
            findings.append(_reference_finding(ref.name, ref_metrics, threshold, target, delta,
                                               self.name))
        for view in ctx.shifted:
            m = datasets[view.name]
            m["ood_auroc"] = {
                "msp": shift_auroc(-conf[ref.name], -conf[view.name]),
                "energy": shift_auroc(energy_score(ref.logits), energy_score(view.logits))}
            unsafe = m["accepted_accuracy"] is not None and \
                m["accepted_accuracy"] < target - opts.fail_margin
            statuses.append(Status.FAIL if unsafe else Status.PASS)
            if threshold is not None:
                findings.append(_shifted_finding(view.name, m, ref.name, threshold, target, unsafe,
                                                 self.name))
        summary = _summary(ref.name, datasets, threshold, target, delta)
        return CheckResult(self.name, worst_status(statuses), summary, findings=findings, metrics={
            "reference": ref.name, "calibrated": temperature is not None,
            "temperature": temperature,
            "threshold": {"value": threshold, "target_accuracy": target,
                          "calibrated": temperature is not None, "delta": delta,
                          "method": "learn_then_test_binomial_fixed_sequence",
                          "p_value": fitted["p_value"], "min_accepted": fitted["min_accepted"],
                          "naive_value": fit_threshold(conf[ref.name], correct[ref.name],
                                                       target_accuracy=target),
                          "guarantee": (f"with probability >= {1 - delta:.0%}, accuracy on "
                                        f"accepted images >= {target:.0%} on data like "
                                        f"{ref.name}; not under shift")},
            "crossfit": {"folds": None if folds is None else int(folds.max()) + 1,
                         "grouped": ref.groups is not None,
                         "fold_thresholds": crossfit["thresholds"],
                         "fold_temperatures": crossfit["temperatures"]},
            "datasets": datasets})


def _summary(ref_name: str, datasets: dict, threshold: float | None, target: float,
             delta: float) -> str:
    r = datasets[ref_name]
    if threshold is None:
        return (f"No confidence threshold can be certified to keep {_pct(target)}% accuracy on "
                f"{ref_name} (n={r['n']}) with probability {1 - delta:.0%}: every image would be "
                "referred.")
    basis = "out-of-fold" if r["basis"] == "out_of_fold" else "in-sample"
    text = (f"Accepting confidence >= {threshold:.3f} keeps accuracy >= {_pct(target)}% on "
            f"accepted images of data like {ref_name} with probability >= {1 - delta:.0%}; "
            f"{basis} on {ref_name}: {_pct(r['accepted_accuracy'])}% accuracy on "
            f"{r['n_accepted']} accepted of {r['n']}, {_pct(r['referred'])}% referred")
    text += "".join(f"; {n} (measured, no guarantee under shift): "
                    f"{_pct(m['accepted_accuracy'])}% on {m['n_accepted']} accepted of {m['n']}, "
                    f"{_pct(m['referred'])}% referred"
                    for n, m in datasets.items() if n != ref_name)
    return text + "."


def _fitted_temperature(ctx: AuditContext) -> float | None:
    """The calibration check's temperature, if it ran and succeeded (else raw softmax)."""
    result = ctx.results.get("calibration")
    if result is None or result.status in (Status.ERROR, Status.SKIP):
        return None
    value = result.metrics.get("temperature")
    return float(value) if value is not None and np.isfinite(value) and value > 0 else None


def _reference_finding(name: str, m: dict, threshold: float | None, target: float, delta: float,
                       check: str) -> Finding:
    if threshold is None:
        text = (f"On {name} (n={m['n']}) no confidence threshold can be certified to keep "
                f"{_pct(target)}% accuracy on accepted images with probability {1 - delta:.0%} "
                f"(overall accuracy {_pct(m['accuracy'])}%){few_images_note(m['n'])}.")
        action = ("improve the model, give the audit more reference images, or agree a lower "
                  "target accuracy before referring by confidence")
    else:
        basis = "out-of-fold" if m["basis"] == "out_of_fold" else "in-sample"
        text = (f"To keep {_pct(target)}% accuracy on accepted images of {name} with "
                f"probability {1 - delta:.0%}, images below confidence {threshold:.3f} must go "
                f"to a human: {_pct(m['referred'])}% of them ({basis}, n={m['n']})"
                f"{few_images_note(m['n'])}.")
        action = "improve the model so fewer images need human review"
    return Finding(check=check, dataset=name, impact=1.0 - m["coverage"], kind="referral_load",
                   text=text, action=action, evidence={"threshold": threshold,
                                                       "coverage": m["coverage"], "n": m["n"]})


def _shifted_finding(name: str, m: dict, reference: str, threshold: float, target: float,
                     unsafe: bool, check: str) -> Finding:
    acc, auroc = m["accepted_accuracy"], m["ood_auroc"]
    ci = m["accepted_accuracy_ci"]
    kept = (f"keeps accuracy {_pct(acc)}% (95% CI {_pct(ci['low'])}-{_pct(ci['high'])}, "
            f"n={m['n_accepted']}) on the images it accepts" if acc is not None
            else "accepts no image")
    text = (f"At the referral threshold fitted on {reference} (confidence >= {threshold:.3f}), "
            f"{name} {kept} and refers {_pct(m['referred'])}% to a human; the guarantee holds "
            f"only on data like {reference}, not under shift; confidence tells {name} "
            f"images from {reference} ones with AUROC {_num(auroc['msp'])} "
            f"(energy score {_num(auroc['energy'])}).")
    action = (f"do not rely on the referral threshold on {name}: recalibrate and set it on "
              f"labelled images from {name}" if unsafe else
              "refer low-confidence images to a human reviewer")
    shortfall = max(0.0, target - acc) if acc is not None else 0.0
    return Finding(check=check, dataset=name, impact=shortfall, kind="referral", text=text,
                   action=action, evidence={"threshold": threshold, "accepted_accuracy": acc,
                                            "referred": m["referred"], "ood_auroc": auroc})


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
