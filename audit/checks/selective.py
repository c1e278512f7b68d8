"""Selective prediction: how safe is "accept confident predictions, refer the rest to a human"?

Per evaluated set a risk-coverage curve and its area (AURC). A referral threshold is fitted on
the reference so that accepted images reach the target accuracy, then applied unchanged to every
shifted set, where it may no longer protect. Also: how well confidence (maximum softmax
probability) and energy tell shifted images from reference ones (AUROC).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

from audit.checks.base import AuditContext, Check, register
from audit.inference import softmax
from audit.options import count, fraction
from audit.results import CheckResult, Finding, Status, worst_status

__all__ = ["risk_coverage_curve", "aurc", "fit_threshold", "accepted_accuracy", "shift_auroc",
           "energy_score", "SelectiveCheck"]


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
    """Lowest threshold t such that images with confidence >= t are right >= target of the time."""
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


@register
class SelectiveCheck(Check):
    name = "selective"
    description = "Risk-coverage, a referral threshold fitted on the reference, OOD AUROC"
    DEFAULTS = {
        "target_accuracy": 0.95,   # accepted images on the reference must reach this accuracy
        "min_coverage_warn": 0.5,  # WARN if the reference accepts less than this share at the threshold
        "fail_margin": 0.10,       # FAIL if a shifted set's accepted accuracy < target - margin
        "curve_points": 101,       # risk-coverage points kept in the JSON per set
    }
    LIMITS = {"target_accuracy": fraction(open_low=True), "min_coverage_warn": fraction(),
              "fail_margin": fraction(), "curve_points": count(2)}

    def run(self, ctx: AuditContext) -> CheckResult:
        cfg = ctx.check_config(self.name)
        target, ref = float(cfg["target_accuracy"]), ctx.reference
        temperature = _fitted_temperature(ctx)
        probs = {v.name: softmax(v.logits / (temperature or 1.0)) for v in ctx.evaluated}
        conf = {name: p.max(axis=1) for name, p in probs.items()}
        correct = {v.name: probs[v.name].argmax(axis=1) == v.labels for v in ctx.evaluated}
        threshold = fit_threshold(conf[ref.name], correct[ref.name], target_accuracy=target)
        datasets = {}
        for view in ctx.evaluated:
            acc, coverage = accepted_accuracy(conf[view.name], correct[view.name], threshold)
            curve = risk_coverage_curve(conf[view.name], correct[view.name],
                                        max_points=int(cfg["curve_points"]))
            datasets[view.name] = {
                "role": view.role, "n": len(view), "aurc": aurc(conf[view.name], correct[view.name]),
                "accuracy": float(np.mean(correct[view.name])), "accepted_accuracy": acc,
                "coverage": coverage, "referred": 1.0 - coverage, "risk_coverage": curve}
        statuses, findings = [Status.PASS], []
        ref_metrics = datasets[ref.name]
        if threshold is None or ref_metrics["coverage"] < cfg["min_coverage_warn"]:
            statuses.append(Status.WARN)
            findings.append(_reference_finding(ref.name, ref_metrics, threshold, target, self.name))
        for view in ctx.shifted:
            m = datasets[view.name]
            m["ood_auroc"] = {
                "msp": shift_auroc(-conf[ref.name], -conf[view.name]),
                "energy": shift_auroc(energy_score(ref.logits), energy_score(view.logits))}
            unsafe = m["accepted_accuracy"] is not None and \
                m["accepted_accuracy"] < target - cfg["fail_margin"]
            statuses.append(Status.FAIL if unsafe else Status.PASS)
            if threshold is not None:
                findings.append(_shifted_finding(view.name, m, ref.name, threshold, target, unsafe,
                                                 self.name))
        summary = (f"No confidence threshold reaches {_pct(target)}% accuracy on {ref.name}."
                   if threshold is None else
                   f"Accepting confidence >= {threshold:.3f} keeps {_pct(ref_metrics['accepted_accuracy'])}% "
                   f"accuracy on {ref.name} and refers {_pct(ref_metrics['referred'])}% of images"
                   + "".join(f"; {n}: {_pct(m['accepted_accuracy'])}% accuracy, "
                             f"{_pct(m['referred'])}% referred"
                             for n, m in datasets.items() if n != ref.name) + ".")
        return CheckResult(self.name, worst_status(statuses), summary, findings=findings, metrics={
            "reference": ref.name, "calibrated": temperature is not None,
            "temperature": temperature,
            "threshold": {"value": threshold, "target_accuracy": target,
                          "calibrated": temperature is not None},
            "datasets": datasets})


def _fitted_temperature(ctx: AuditContext) -> float | None:
    """The calibration check's temperature, if it ran and succeeded (else raw softmax)."""
    result = ctx.results.get("calibration")
    if result is None or result.status in (Status.ERROR, Status.SKIP):
        return None
    value = result.metrics.get("temperature")
    return float(value) if value is not None and np.isfinite(value) and value > 0 else None


def _reference_finding(name: str, m: dict, threshold: float | None, target: float,
                       check: str) -> Finding:
    if threshold is None:
        text = (f"On {name} no confidence threshold makes the accepted images reach "
                f"{_pct(target)}% accuracy (overall accuracy {_pct(m['accuracy'])}%).")
        action = "improve the model or agree a lower target accuracy before referring by confidence"
    else:
        text = (f"To reach {_pct(target)}% accuracy on {name}, images below confidence "
                f"{threshold:.3f} must go to a human: {_pct(m['referred'])}% of them.")
        action = "improve the model so fewer images need human review"
    return Finding(check=check, dataset=name, impact=1.0 - m["coverage"], kind="referral_load",
                   text=text, action=action, evidence={"threshold": threshold,
                                                       "coverage": m["coverage"]})


def _shifted_finding(name: str, m: dict, reference: str, threshold: float, target: float,
                     unsafe: bool, check: str) -> Finding:
    acc, auroc = m["accepted_accuracy"], m["ood_auroc"]
    kept = (f"keeps accuracy {_pct(acc)}% on the images it accepts" if acc is not None
            else "accepts no image")
    text = (f"At the referral threshold fitted on {reference} (confidence >= {threshold:.3f}), "
            f"{name} {kept} and refers {_pct(m['referred'])}% to a human; confidence tells {name} "
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
