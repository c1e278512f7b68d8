"""Label issues: which images are likely mislabelled, and how much do they move the accuracy?

Confident learning (Northcutt et al. 2021, cleanlab's `find_label_issues`) on the model's
probabilities for each evaluated set. The model never trained on these images, so its
probabilities are out-of-sample, which confident learning needs: an image is a likely label
issue when the model confidently puts it in another class, by per-class thresholds estimated
from the set itself. Reported: the issues (paths, given and suggested class) and the accuracy
with and without them. On the reference this points at labelling errors; on a shifted set the
model's disagreement mixes shift with label noise, and the report says so.
"""

from __future__ import annotations

import os

import numpy as np

from audit.checks.base import AuditContext, Check, DatasetView, register
from audit.options import count, fraction
from audit.results import CheckResult, Finding, Status
from audit.stats import few_images_note, rate_ci

__all__ = ["LabelIssuesCheck", "label_issues"]


def label_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Indices of likely label issues, most likely first (cleanlab, self-confidence ranking).

    `filter_by="prune_by_class"`: on the simulation of tests/test_honesty.py (a 95%-accurate
    model, 5% of labels flipped) it found more flips (recall 0.83 against 0.77) with fewer
    false alarms (precision 0.88 against 0.85) than cleanlab's default "prune_by_noise_rate".

    Classes absent from `labels` are dropped and the probabilities renormalised over the
    present ones (confident learning estimates a threshold per given class); fewer than two
    present classes, or fewer than two images per class, give no issue.
    """
    from cleanlab.filter import find_label_issues

    labels = np.asarray(labels)
    present, counts = np.unique(labels, return_counts=True)
    if len(present) < 2 or counts.min() < 2:
        return np.zeros(0, dtype=np.int64)
    sub = np.asarray(probs, dtype=float)[:, present]
    sub = sub / np.maximum(sub.sum(axis=1, keepdims=True), 1e-12)
    remapped = np.searchsorted(present, labels)
    return np.asarray(find_label_issues(remapped, sub, return_indices_ranked_by="self_confidence",
                                        filter_by="prune_by_class", n_jobs=1),
                      dtype=np.int64)


@register
class LabelIssuesCheck(Check):
    name = "label_issues"
    description = ("Likely mislabelled images by confident learning (cleanlab) on out-of-sample "
                   "probabilities, with the accuracy with and without them")
    DEFAULTS = {
        "share_warn": 0.05,   # reference: a finding and WARN when more labels than this look wrong
        "max_listed": 24,     # issues listed per set (most likely first), shown as thumbnails
    }
    LIMITS = {"share_warn": fraction(), "max_listed": count(0)}

    def run(self, ctx: AuditContext) -> CheckResult:
        opts = self.options(ctx)
        ref = ctx.reference
        datasets, findings = {}, []
        for view in ctx.evaluated:
            d = _set_metrics(view, ctx.class_names, max_listed=opts.max_listed)
            datasets[view.name] = d
            finding = _finding(self.name, view, d, opts.share_warn)
            if finding is not None:
                findings.append(finding)
        r = datasets[ref.name]
        status = Status.WARN if r["share"]["value"] > opts.share_warn else Status.PASS
        summary = (f"{r['n_issues']} of {r['n']} {ref.name} labels look wrong to confident "
                   f"learning ({_pct(r['share']['value'])}%); accuracy "
                   f"{_pct(r['accuracy']['value'])}% with them, "
                   f"{_pct(_get(r['accuracy_without'], 'value'))}% without"
                   + "".join(f"; {n}: {d['n_issues']} (shift and label noise mixed)"
                             for n, d in datasets.items() if n != ref.name) + ".")
        return CheckResult(self.name, status, summary, findings=findings, metrics={
            "reference": ref.name, "method": "cleanlab.find_label_issues (prune_by_class)",
            "probabilities": "the model's, out-of-sample (the model was not trained on these "
                             "images)", "datasets": datasets})


def _set_metrics(view: DatasetView, class_names: tuple[str, ...], *, max_listed: int) -> dict:
    issues = label_issues(view.labels, view.probs)
    is_issue = np.zeros(len(view), bool)
    is_issue[issues] = True
    groups = view.groups
    keep = ~is_issue
    listed = []
    for i in issues[:max_listed]:
        given, predicted = int(view.labels[i]), int(view.predictions[i])
        listed.append({"path": os.path.relpath(view.dataset.paths[i], view.dataset.root),
                       "given": class_names[given], "suggested": class_names[predicted],
                       "probability_given": float(view.probs[i, given]),
                       "probability_suggested": float(view.probs[i, predicted])})
    return {
        "role": view.role, "n": len(view), "n_issues": int(is_issue.sum()),
        "share": rate_ci(is_issue, groups=groups),
        "accuracy": rate_ci(view.correct, groups=groups),
        "accuracy_without": rate_ci(view.correct[keep], groups=None if groups is None
                                    else groups[keep]) if keep.any() else None,
        "per_class": {c: int(np.sum(is_issue & (view.labels == k)))
                      for k, c in enumerate(class_names)},
        "issues": listed,
        "interpretation": ("likely labelling errors" if view.role == "heldout" else
                           "the model's disagreement on a shifted set mixes shift with label "
                           "noise"),
    }


def _finding(check: str, view: DatasetView, d: dict, share_warn: float) -> Finding | None:
    if d["share"]["value"] <= share_warn:
        return None
    without = d["accuracy_without"]
    base = (f"{d['n_issues']} of {d['n']} {view.name} images ({_pct(d['share']['value'])}%, 95% "
            f"CI {_pct(d['share']['low'])}-{_pct(d['share']['high'])}) have labels the model "
            f"confidently disputes; accuracy is {_pct(d['accuracy']['value'])}% with them and "
            f"{_pct(_get(without, 'value'))}% without{few_images_note(d['n'])}")
    if view.role == "heldout":
        text = base + "."
        action = ("have a specialist review the listed labels before trusting figures measured "
                  "on this set")
    else:
        text = (base + "; on a shifted set this disagreement mixes shift with label noise, so "
                "it is not an estimate of labelling errors.")
        action = f"review a sample of the listed {view.name} labels with a specialist"
    return Finding(check=check, dataset=view.name, kind="label_issues",
                   impact=max(_get(without, "value", 0.0) - d["accuracy"]["value"], 0.0),
                   text=text, action=action,
                   evidence={k: d[k] for k in ("n", "n_issues", "share", "accuracy",
                                               "accuracy_without")})


def _get(block: dict | None, key: str, default=None):
    return default if block is None else block.get(key, default)


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"
