"""The `errors` check (module class_errors, not to be confused with audit.errors, the exception
types): what the model gets wrong, and on which kinds of image.

Per evaluated set: the most frequent confusions, the most confident errors, per-class error
rates, and weak slices. A slice is a quantile bin of one image property (brightness, contrast,
saturation, hue, sharpness, cell size), with bin edges taken from the reference set so slices
mean the same on every set; its error rate is tested against the rest of the set (two-sided
Fisher exact test, Benjamini-Hochberg across all slices of the set).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from scipy.stats import false_discovery_control, fisher_exact

from audit.checks.base import AuditContext, Check, DatasetView, register
from audit.imaging import PROPERTIES
from audit.options import count, fraction
from audit.results import CheckResult, Finding, Status
from audit.stats import few_images_note, rate_ci

__all__ = ["PropertyBins", "property_bins", "assign_bins", "slice_table", "confused_pairs",
           "confident_errors", "per_class_errors", "recall_drop", "ErrorsCheck"]

_ORDINALS = {4: "quartile", 5: "quintile", 10: "decile", 3: "tercile"}
_ACTIONS = {
    "sharpness": "add a focus check at acquisition (re-capture blurred images) and train with "
                 "blur augmentation",
    "cell_size": "check that magnification and cropping match training, and train with scale "
                 "augmentation",
}
_COLOUR_ACTION = ("stain/colour normalisation at the input, and colour augmentation in "
                  "training")


@dataclass(frozen=True)
class PropertyBins:
    """Quantile bin edges of one property; circular values (hue) are first unwrapped at `offset`."""

    name: str
    inner_edges: np.ndarray  # increasing, len = n_bins - 1 (ties merged)
    circular: bool = False
    offset: float = 0.0

    @property
    def n_bins(self) -> int:
        return len(self.inner_edges) + 1

    def unwrap(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        return (values - self.offset) % 360.0 if self.circular else values

    def edge(self, k: int) -> float | None:
        """The k-th edge in original units; k = 0 and n_bins are the open ends (None), or for a
        circular property the cut point."""
        if k <= 0 or k >= self.n_bins:
            return self.offset if self.circular else None
        value = float(self.inner_edges[k - 1])
        return (value + self.offset) % 360.0 if self.circular else value


def property_bins(name: str, reference: np.ndarray, *, n_bins: int, circular: bool = False
                  ) -> PropertyBins:
    """Quantile edges of the finite reference values. For a circular property the cut is placed
    in the widest empty arc of the reference, so no bin straddles the data's main cluster."""
    values = np.asarray(reference, dtype=float)
    values = values[np.isfinite(values)]
    offset = 0.0
    if circular and values.size:
        ordered = np.sort(values % 360.0)
        gaps = np.diff(np.append(ordered, ordered[0] + 360.0))
        offset = float(ordered[(int(gaps.argmax()) + 1) % len(ordered)])
    bins = PropertyBins(name, np.empty(0), circular, offset)
    if values.size == 0 or n_bins < 2:
        return bins
    edges = np.quantile(bins.unwrap(values), np.arange(1, n_bins) / n_bins)
    return PropertyBins(name, np.unique(edges), circular, offset)


def assign_bins(bins: PropertyBins, values: np.ndarray) -> np.ndarray:
    """Bin index per value (-1 for NaN, e.g. the hue of a grey image)."""
    values = np.asarray(values, dtype=float)
    index = np.searchsorted(bins.inner_edges, bins.unwrap(values), side="right")
    return np.where(np.isfinite(values), index, -1)


def _bin_label(k: int, n_bins: int) -> str:
    unit = _ORDINALS.get(n_bins, f"1/{n_bins} quantile bin")
    if k == 0:
        return f"bottom {unit}"
    if k == n_bins - 1:
        return f"top {unit}"
    return f"{k + 1}{'nd' if k == 1 else 'rd' if k == 2 else 'th'} {unit}"


def slice_table(bins: list[PropertyBins], properties: dict[str, np.ndarray], correct: np.ndarray,
                *, alpha: float, margin: float, min_size: int,
                groups: np.ndarray | None = None) -> list[dict]:
    """Error rate of every non-empty slice against the rest of the set, with BH q-values and an
    exact interval (group-aware with `groups`)."""
    errors = ~np.asarray(correct, dtype=bool)
    overall = float(errors.mean()) if errors.size else float("nan")
    rows = []
    for spec in bins:
        if spec.name not in properties or spec.n_bins < 2:
            continue
        index = assign_bins(spec, properties[spec.name])
        for k in range(spec.n_bins):
            inside = index == k
            n_in, n_out = int(inside.sum()), int((~inside).sum())
            if n_in == 0:
                continue
            e_in, e_out = int(errors[inside].sum()), int(errors[~inside].sum())
            p = fisher_exact([[e_in, n_in - e_in], [e_out, n_out - e_out]])[1] if n_out else 1.0
            rows.append({"property": spec.name, "bin": k, "label": _bin_label(k, spec.n_bins),
                         "low": spec.edge(k), "high": spec.edge(k + 1), "n": n_in,
                         "share": n_in / errors.size, "errors": e_in, "error_rate": e_in / n_in,
                         "error_rate_ci": rate_ci(errors[inside], groups=None if groups is None
                                                  else groups[inside]),
                         "p_value": float(p)})
    q = false_discovery_control([r["p_value"] for r in rows]) if rows else []
    for row, q_value in zip(rows, q, strict=True):
        row["q_value"] = float(q_value)
        row["weak"] = bool(row["error_rate"] > overall + margin and q_value < alpha
                           and row["n"] >= min_size)
        row["impact"] = (row["error_rate"] - overall) * row["share"]
    return rows


def confused_pairs(labels: np.ndarray, predictions: np.ndarray, class_names: tuple[str, ...],
                   *, top: int) -> list[dict]:
    """The `top` most frequent (true -> predicted) errors, with their share of the true class."""
    n = len(class_names)
    counts = np.bincount(labels * n + predictions, minlength=n * n).reshape(n, n)
    np.fill_diagonal(counts, 0)
    support = np.bincount(labels, minlength=n)
    order = np.argsort(-counts, axis=None, kind="stable")[:top]
    return [{"true": class_names[t], "predicted": class_names[p], "count": int(counts[t, p]),
             "share_of_class": counts[t, p] / support[t]}
            for t, p in zip(*np.unravel_index(order, counts.shape), strict=True) if counts[t, p]]


def confident_errors(view: DatasetView, class_names: tuple[str, ...], *, top: int) -> list[dict]:
    """The `top` errors with the highest predicted probability (paths relative to the root)."""
    wrong = np.flatnonzero(~view.correct)
    confidence = view.probs[wrong, view.predictions[wrong]]
    picked = wrong[np.argsort(-confidence, kind="stable")[:top]]
    paths = view.dataset.paths
    return [{"path": os.path.relpath(paths[i], view.dataset.root),
             "true": class_names[view.labels[i]], "predicted": class_names[view.predictions[i]],
             "probability": float(view.probs[i, view.predictions[i]]),
             "probability_true": float(view.probs[i, view.labels[i]])} for i in picked]


def per_class_errors(labels: np.ndarray, correct: np.ndarray, class_names: tuple[str, ...], *,
                     groups: np.ndarray | None = None) -> dict[str, dict]:
    """{class: {n, errors, error_rate, error_rate_ci}}; error_rate None for an absent class."""
    out = {}
    for c, name in enumerate(class_names):
        member = labels == c
        n, errors = int(member.sum()), int((~correct[member]).sum())
        out[name] = {"n": n, "errors": errors, "error_rate": errors / n if n else None,
                     "error_rate_ci": rate_ci(~correct[member], groups=None if groups is None
                                              else groups[member])}
    return out


def recall_drop(ref: DatasetView, view: DatasetView, n_classes: int) -> dict | None:
    """The class whose fall in recall (reference -> `view`) costs `view` most accuracy.

    `cost` = (reference recall - recall) x the class's share of `view`: the accuracy `view`
    would regain if that class were recognised as on the reference. None when no class falls.
    """
    best = None
    for c in range(n_classes):
        ref_member, member = ref.labels == c, view.labels == c
        if not ref_member.any() or not member.any():
            continue
        r_ref, r_view = ref.correct[ref_member].mean(), view.correct[member].mean()
        cost = (r_ref - r_view) * member.mean()
        if cost > 0 and (best is None or cost > best["cost"]):
            wrong = np.bincount(view.predictions[member], minlength=n_classes)
            wrong[c] = 0
            best = {"class": c, "reference_recall": float(r_ref), "recall": float(r_view),
                    "n": int(member.sum()), "cost": float(cost), "to": int(wrong.argmax()),
                    "to_share": float(wrong.max() / member.sum())}
    return best


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def _slice_finding(check: str, view: DatasetView, row: dict, overall: float) -> Finding:
    name = row["property"].replace("_", " ")
    if row["property"] == "hue":
        desc = f"hue {row['low']:.0f}-{row['high']:.0f}°"
    else:
        level = ("low" if row["label"].startswith("bottom") else
                 "high" if row["label"].startswith("top") else "mid-range")
        desc = f"{level} {name} ({row['label']})"
    return Finding(
        check=check, dataset=view.name, kind="weak_slice", impact=max(row["impact"], 0.0),
        text=(f"On {view.name}, images with {desc} have {_pct(row['error_rate'])} errors "
              f"(95% CI {_pct(row['error_rate_ci']['low'])}-{_pct(row['error_rate_ci']['high'])}) "
              f"against {_pct(overall)} overall (n={row['n']}, q={row['q_value']:.2g})"
              f"{few_images_note(row['n'])}."),
        action=_ACTIONS.get(row["property"], _COLOUR_ACTION), evidence=row)


def _recall_finding(check: str, ref: DatasetView, view: DatasetView, drop: dict,
                    class_names: tuple[str, ...]) -> Finding:
    gap = ref.correct.mean() - view.correct.mean()
    cls, to = class_names[drop["class"]], class_names[drop["to"]]
    # A class's fall in recall says where the gap is, not why: it gets `impact`, not
    # `gap_share`, so causes measured by other checks rank first; its share is in evidence.
    share_of_gap = float(np.clip(drop["cost"] / gap, 0, 1)) if gap > 0 else None
    return Finding(
        check=check, dataset=view.name, kind="recall_drop", impact=drop["cost"],
        text=(f"{cls} recall falls from {_pct(drop['reference_recall'])} on {ref.name} to "
              f"{_pct(drop['recall'])} on {view.name} (n={drop['n']}), mostly to {to} "
              f"({_pct(drop['to_share'])} of {cls} images){few_images_note(drop['n'])}."),
        action=f"collect more {cls} images from {view.name} for training and review {cls} vs "
               f"{to} examples", evidence={**drop, "class": cls, "to": to,
                                                      "share_of_gap": share_of_gap})


@register
class ErrorsCheck(Check):
    name = "errors"
    description = "Top confusions, most confident errors and image-property slices with high error"
    DEFAULTS = {
        "max_confused_pairs": 5,     # confusions listed per set
        "max_confident_errors": 12,  # most confident errors listed per set
        "n_bins": 4,                 # quantile bins per property (edges from the reference)
        "alpha": 0.05,               # BH-adjusted q below this: significant
        "margin": 0.05,              # a weak slice's error rate exceeds the overall by this much
        "min_slice_size": 10,        # smaller slices are reported but never flagged
    }
    LIMITS = {"max_confused_pairs": count(0), "max_confident_errors": count(0), "n_bins": count(2),
              "alpha": fraction(open_low=True), "margin": fraction(), "min_slice_size": count(1)}

    def run(self, ctx: AuditContext) -> CheckResult:
        opts, names, ref = self.options(ctx), ctx.class_names, ctx.reference
        bins = [property_bins(p, ref.outputs.properties[p], n_bins=opts.n_bins,
                              circular=p == "hue")
                for p in PROPERTIES if p in ref.outputs.properties]
        datasets, findings = {}, []
        for view in ctx.evaluated:
            overall = float(1 - view.correct.mean())
            slices = slice_table(bins, view.outputs.properties, view.correct, alpha=opts.alpha,
                                 margin=opts.margin, min_size=opts.min_slice_size,
                                 groups=view.groups)
            weak = sorted((s for s in slices if s["weak"]), key=lambda s: -s["impact"])
            datasets[view.name] = {
                "role": view.role, "n": len(view), "error_rate": overall,
                "per_class": per_class_errors(view.labels, view.correct, names,
                                              groups=view.groups),
                "confused_pairs": confused_pairs(view.labels, view.predictions, names,
                                                 top=opts.max_confused_pairs),
                "confident_errors": confident_errors(view, names,
                                                     top=opts.max_confident_errors),
                "slices": slices, "n_weak_slices": len(weak)}
            if weak:
                findings.append(_slice_finding(self.name, view, weak[0], overall))
            drop = recall_drop(ref, view, len(names)) if view is not ref else None
            if drop is not None:
                findings.append(_recall_finding(self.name, ref, view, drop, names))
        n_weak = sum(d["n_weak_slices"] for d in datasets.values())
        worst = [f for f in findings if f.kind == "weak_slice"]
        summary = (f"{n_weak} image-property slice(s) with significantly more errors; worst: "
                   f"{max(worst, key=lambda f: f.impact).text}" if worst else
                   f"No image-property slice has significantly more errors (error rate "
                   f"{_pct(datasets[ref.name]['error_rate'])} on {ref.name}).")
        metrics = {"reference": ref.name, "class_names": list(names),
                   "bin_edges": {b.name: [b.edge(k) for k in range(1, b.n_bins)] for b in bins},
                   "datasets": datasets}
        return CheckResult(self.name, Status.WARN if n_weak else Status.PASS, summary,
                           metrics=metrics, findings=findings)
