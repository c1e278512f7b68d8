"""Performance: accuracy, balanced accuracy, macro-F1, per-class metrics, confusion and AUC per set.

Proportions (accuracy, per-class recall and precision) get exact Clopper-Pearson intervals,
valid at any n and at 0% or 100% where a percentile bootstrap collapses to a point; with groups
they are taken on the effective number of independent images (Korn-Graubard). Balanced
accuracy, macro-F1 and the gaps between sets come from one bootstrap per dataset (whole groups
resampled when groups are known): each resample is reduced to a confusion matrix, and every
statistic is read from those matrices at once.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

from audit.checks.base import AuditContext, Check, DatasetView, register
from audit.options import count, fraction
from audit.results import CheckResult, Finding, Status, worst_status
from audit.stats import bootstrap_indices, few_images_note, interval, rate_ci

__all__ = ["confusion_counts", "confusion_statistics", "one_vs_rest_auc", "evaluate_set",
           "PerformanceCheck"]


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, n_classes: int,
                     resamples: list[np.ndarray] | None = None) -> np.ndarray:
    """(C, C) counts, rows = true class; with `resamples` (index arrays), (B, C, C), one each."""
    if resamples is None:
        return confusion_matrix(labels, predictions, labels=range(n_classes))
    cells = n_classes * n_classes
    codes = np.concatenate([labels[idx] * n_classes + predictions[idx] + b * cells
                            for b, idx in enumerate(resamples)])
    return np.bincount(codes, minlength=len(resamples) * cells).reshape(-1, n_classes, n_classes)


def confusion_statistics(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, macro-F1 and per-class precision/recall/F1 from (..., C, C).

    Undefined values are NaN: recall of a class with no images, precision of a class never
    predicted, F1 of a class absent from both. Balanced accuracy averages the classes present;
    macro-F1 those present or predicted (scikit-learn's definitions on the labels seen).
    """
    counts = np.asarray(counts, dtype=float)
    tp = np.diagonal(counts, axis1=-2, axis2=-1)
    support, predicted = counts.sum(axis=-1), counts.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / support
        precision = tp / predicted
        f1 = 2 * tp / (support + predicted)
        accuracy = tp.sum(axis=-1) / counts.sum(axis=(-2, -1))
    return {"accuracy": accuracy, "balanced_accuracy": _nanmean(recall), "macro_f1": _nanmean(f1),
            "precision": precision, "recall": recall, "f1": f1, "support": support}


def _nanmean(values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore"):
        return np.where(finite, values, 0).sum(axis=-1) / finite.sum(axis=-1)


def one_vs_rest_auc(labels: np.ndarray, probs: np.ndarray) -> list[float | None]:
    """AUC of each class's probability against the rest; None when the class is absent or alone."""
    out = []
    for c in range(probs.shape[1]):
        positive = labels == c
        out.append(float(roc_auc_score(positive, probs[:, c]))
                   if 0 < positive.sum() < len(labels) else None)
    return out


def _ci(value: float, samples: np.ndarray) -> dict:
    low, high = interval(samples)
    return {"value": float(value), "low": low, "high": high}


def evaluate_set(view: DatasetView, class_names: tuple[str, ...], *, n_boot: int,
                 rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    """Metrics of one dataset and its bootstrap accuracy samples (for gaps between sets)."""
    labels, preds, n_classes = view.labels, view.predictions, len(class_names)
    counts = confusion_counts(labels, preds, n_classes)
    point = confusion_statistics(counts)
    resamples = bootstrap_indices(len(labels), n_boot=n_boot, rng=rng, groups=view.groups)
    boot = confusion_statistics(confusion_counts(labels, preds, n_classes, resamples))
    auc = one_vs_rest_auc(labels, view.probs)
    with np.errstate(invalid="ignore"):
        normalized = counts / counts.sum(axis=1, keepdims=True)
    groups, correct = view.groups, labels == preds

    def rate(member: np.ndarray) -> dict:
        return rate_ci(correct[member], groups=None if groups is None else groups[member])

    per_class = {
        name: {"precision": rate(preds == c), "recall": rate(labels == c),
               "f1": point["f1"][c], "support": int(point["support"][c]), "auc": auc[c]}
        for c, name in enumerate(class_names)}
    defined_auc = [a for a in auc if a is not None]
    metrics = {
        "role": view.role, "n": len(labels),
        "resampling": "images" if view.groups is None else "groups",
        "interval_method": {"proportions": "clopper_pearson" + ("" if view.groups is None else
                                                                 "_effective_n"),
                            "other": "percentile_bootstrap"},
        "n_groups": None if view.groups is None else len(np.unique(view.groups)),
        "groups_from": (None if view.groups is None else "group column"
                        if view.has_group_column else "discovered sources"),
        "accuracy": rate_ci(correct, groups=groups),
        **{key: _ci(point[key], boot[key]) for key in ("balanced_accuracy", "macro_f1")},
        "macro_auc": float(np.mean(defined_auc)) if defined_auc else None,
        "per_class": per_class,
        "confusion": {"counts": counts, "normalized": normalized},
    }
    return metrics, boot["accuracy"]


@register
class PerformanceCheck(Check):
    name = "performance"
    description = "Accuracy, balanced accuracy, macro-F1, per-class metrics and confusion with 95% CIs"
    DEFAULTS = {
        "n_boot": 1000,                 # bootstrap resamples per dataset
        "min_accuracy_warn": 0.9,       # reference accuracy below this: WARN
        "min_accuracy_fail": 0.7,       # reference accuracy below this: FAIL
        "max_drop_warn": 0.05,          # accuracy drop reference -> shifted above this: WARN
        "max_drop_fail": 0.15,          # ... above this: FAIL
        "min_class_recall_warn": 0.7,   # a class recalled below this on an evaluated set: finding
    }
    LIMITS = {"n_boot": count(100), "min_accuracy_warn": fraction(), "min_accuracy_fail": fraction(),
              "max_drop_warn": fraction(), "max_drop_fail": fraction(),
              "min_class_recall_warn": fraction()}
    ORDER = (("min_accuracy_fail", "min_accuracy_warn"), ("max_drop_warn", "max_drop_fail"))

    def run(self, ctx: AuditContext) -> CheckResult:
        opts = self.options(ctx)
        names, ref = ctx.class_names, ctx.reference
        datasets, samples = {}, {}
        for view in ctx.views.values():
            datasets[view.name], samples[view.name] = evaluate_set(
                view, names, n_boot=opts.n_boot, rng=ctx.rng(self.name, view.name))
        ref_acc = datasets[ref.name]["accuracy"]["value"]
        statuses = [Status.FAIL if ref_acc < opts.min_accuracy_fail else
                    Status.WARN if ref_acc < opts.min_accuracy_warn else Status.PASS]
        gap, findings = {}, []
        for view in ctx.shifted:
            acc = datasets[view.name]["accuracy"]
            gap[view.name] = _ci(ref_acc - acc["value"], samples[ref.name] - samples[view.name])
            drop = gap[view.name]["value"]
            statuses.append(Status.FAIL if drop > opts.max_drop_fail else
                            Status.WARN if drop > opts.max_drop_warn else Status.PASS)
            if drop > 0 and (drop > opts.max_drop_warn or gap[view.name]["low"] > 0):
                findings.append(Finding(
                    check=self.name, dataset=view.name, impact=drop, kind="accuracy_drop",
                    text=(f"Accuracy on {view.name} is {_pct(acc['value'])}% (95% CI "
                          f"{_pct(acc['low'])}-{_pct(acc['high'])}, n={len(view)}) against "
                          f"{_pct(ref_acc)}% on {ref.name} (n={len(ref)}): a drop of "
                          f"{_pct(drop)} points{few_images_note(min(len(view), len(ref)))}."),
                    action=(f"see the shift, robustness and leakage findings for what differs "
                            f"between {ref.name} and {view.name}"),
                    evidence={"accuracy": acc, "reference_accuracy": ref_acc, "drop": gap[view.name]}))
        for view in ctx.evaluated:
            findings += _class_findings(view, datasets[view.name], names, ref.name,
                                        floor=opts.min_class_recall_warn, check=self.name)
        summary = f"Accuracy {_pct(ref_acc)}% (95% CI {_pct(datasets[ref.name]['accuracy']['low'])}" \
                  f"-{_pct(datasets[ref.name]['accuracy']['high'])}) on {ref.name}"
        summary += "".join(f"; {_pct(datasets[n]['accuracy']['value'])}% on {n} (drop "
                           f"{_pct(g['value'])} points)" for n, g in gap.items()) + "."
        return CheckResult(self.name, worst_status(statuses), summary,
                           metrics={"reference": ref.name, "class_names": list(names),
                                    "n_boot": opts.n_boot, "level": 0.95,
                                    "datasets": datasets, "gap": gap},
                           findings=findings)


def _class_findings(view: DatasetView, metrics: dict, class_names: tuple[str, ...], reference: str,
                    *, floor: float, check: str) -> list[Finding]:
    """One finding per class recalled below `floor`, naming where its images go instead."""
    counts, findings = np.asarray(metrics["confusion"]["counts"]), []
    for c, name in enumerate(class_names):
        recall, support = metrics["per_class"][name]["recall"], int(counts[c].sum())
        if support == 0 or recall["value"] >= floor:
            continue
        wrong = counts[c].copy()
        wrong[c] = -1
        other = int(wrong.argmax())
        confusion = (f"; {_pct(counts[c, other] / support)}% are called {class_names[other]}"
                     if counts[c, other] > 0 else "")
        where = "for training" if view.name == reference else f"from {view.name}"
        findings.append(Finding(
            check=check, dataset=view.name, impact=(support - counts[c, c]) / counts.sum(),
            kind="class_recall",
            text=(f"On {view.name}, only {_pct(recall['value'])}% of {name} images (n={support}) "
                  f"are recognised (95% CI {_pct(recall['low'])}-{_pct(recall['high'])})"
                  f"{confusion}{few_images_note(support)}."),
            action=f"collect more {name} images {where} and review {name} labels",
            evidence={"class": name, "recall": recall, "support": support,
                      "main_confusion": class_names[other] if counts[c, other] > 0 else None}))
    return findings


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"
