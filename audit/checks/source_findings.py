"""Findings of the leakage check from verified source copies (`audit.checks.source_copies`).

Two kinds: `few_cells`, a class of an evaluation set whose images are copies of a handful of
cells (ranked first of all findings by `audit.findings`: every rate of that class is measured
on those few cells, however many images it shows); and `train_leak` / `test_overlap` from
verified copies in training, worded like the check's per-image findings.
"""

from __future__ import annotations

import numpy as np

from audit.checks.base import AuditContext
from audit.results import Finding

__all__ = ["few_cells_findings", "verified_leak_findings"]

_FEW_CELLS_ACTION = ("measure the class on cells from many more sources (cells, smears, "
                     "patients) before trusting its recall; give each image its source as a "
                     "group (`audit groups DATA --out groups.csv` writes one) so every interval "
                     "counts cells, not images")
_SOURCE_SPLIT_ACTION = ("split validation by discovered source cell: `audit train --group-split "
                        "discovered` keeps every copy of a cell on one side")


def pct(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.0f}%"


def _ci(rate: dict | None) -> str:
    if not rate:
        return "n/a"
    return f"{pct(rate['value'])} (95% CI {pct(rate['low'])}-{pct(rate['high'])})"


def few_cells_findings(check: str, few_cells: dict[str, list[dict]]) -> list[Finding]:
    """One finding per class resting on few cells; impact: the share of its images that
    are copies (1 - cells / images), which orders them among themselves."""
    out = []
    for name, classes in few_cells.items():
        for c in classes:
            where = (f"{c['images']} images in {name}" if not c["sampled"] else
                     f"{c['images']} of the {c['examined']} images examined in {name}")
            out.append(Finding(
                check=check, dataset=name, kind="few_cells",
                impact=float(1.0 - c["cells"] / max(c["images"], 1)),
                text=(f"{c['class']}: {where}, at most {c['cells']} distinct "
                      f"cell{'s' if c['cells'] != 1 else ''}: its recall "
                      f"{_ci(c['recall'])}, counting cells rather than images, says little "
                      f"about {c['class']} cells in general."),
                action=_FEW_CELLS_ACTION, evidence=dict(c)))
    return out


def _accuracy_of(entry: dict) -> float:
    """Accuracy on the examined images, from the with/without copy figures."""
    acc, n = entry["accuracy"], entry["n_examined"]
    hits = sum(a["value"] * a["n"] for a in acc.values() if a)
    return hits / n if n else float("nan")


def verified_leak_findings(check: str, ctx: AuditContext, datasets: dict,
                           opts) -> list[Finding]:
    """Verified copies in training above `leak_share_warn`: for the reference, the share of its
    gap to each shifted set they explain (`train_leak`); for a shifted set, how much they lift
    its accuracy (`test_overlap`)."""
    from audit.leakage.accuracy import leak_gap_share

    train = ctx.train
    if train is None:
        return []
    acc = {v.name: float(v.correct.mean()) if len(v) else float("nan") for v in ctx.evaluated}
    out = []
    for view in ctx.evaluated:
        entry = datasets[view.name]["against"].get(train.name, {}).get("verified")
        if not entry or not entry["share"] or entry["share"]["value"] <= opts.leak_share_warn:
            continue
        share, with_copy = entry["share"]["value"], entry["accuracy"]["with_copy"]
        without = entry["accuracy"]["without_copy"]
        examined = _accuracy_of(entry)
        acc_without = without["value"] if without else float("nan")
        # a sample of train can miss the source of a copy: then the share is a lower bound
        least = "at least " if entry["reference_sampled"] else ""
        base = (f"{least}{pct(share)} of {view.name} images have a copy in {train.name} "
                f"verified by keypoint matching; accuracy {_ci(with_copy)} on those, "
                f"{_ci(without)} on the others")
        if without and without["n"] < 20:
            base += (f" (only {without['n']} without a copy: how much copies lift accuracy "
                     "cannot be measured)")
        evidence = {"verified": {k: entry[k] for k in ("share", "accuracy", "n_examined",
                                                       "sampled", "reference_sampled")}}
        if view.role == "shifted":
            inflation = examined - acc_without if np.isfinite(acc_without) else 0.0
            out.append(Finding(check=check, dataset=view.name, kind="test_overlap",
                               impact=max(float(inflation), 0.0), text=f"{base}.",
                               action=f"remove images of cells already in {train.name} from "
                                      f"{view.name} (deduplicate test sets by source cell)",
                               evidence=evidence))
            continue
        gaps = [(v, leak_gap_share(acc[view.name], acc_without, acc[v.name]))
                for v in ctx.shifted]
        gaps = [(v, g) for v, g in gaps if g is not None]
        impact = max(examined - acc_without, 0.0) if np.isfinite(acc_without) else 0.0
        for v, g in gaps:
            out.append(Finding(
                check=check, dataset=v.name, kind="train_leak", gap_share=g, impact=impact,
                text=(f"{base}, against {pct(acc[v.name])} on {v.name} ({pct(acc[view.name])} "
                      f"on all {view.name} images): copies explain {pct(g)} of the gap."),
                action=_SOURCE_SPLIT_ACTION,
                evidence={**evidence, "shifted_accuracy": acc[v.name]}))
        if not gaps:
            out.append(Finding(check=check, dataset=view.name, kind="train_leak", impact=impact,
                               text=f"{base}, against {pct(acc[view.name])} on all of them.",
                               action=_SOURCE_SPLIT_ACTION, evidence=evidence))
    return out
