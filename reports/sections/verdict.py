"""Report section 1: Verdict and generalization gap."""

from __future__ import annotations

from collections.abc import Mapping

from audit.audit_json import AuditDocument, AuditJsonError, performance_set
from reports import figures
from reports.format import ci_text, finite, pct, points_ci
from reports.sections.common import (
    STATUS_WORDS,
    check_state,
    datasets_in_order,
    finding_rows,
    lookup,
    per_set,
    ranked_findings,
    reference_name,
)
from reports.sections.registry import register_section

_SCORED = ("PASS", "WARN", "FAIL")


def _key_numbers(audit: AuditDocument) -> list[dict]:
    """One row per evaluated dataset: accuracy, balanced accuracy, macro-F1 (CIs), ECE, referral.
    A number is None only when its check did not compute this set; a computed set missing a
    key raises (the verdict then names the key instead of showing "n/a")."""
    perf_check, reason = check_state(audit, "performance")
    gap = {} if reason else perf_check.metrics.required("gap", Mapping)
    # Calibration and referral have their own sections, which report an unreadable layout.
    calib = per_set(audit, "calibration", lenient=True)
    select = per_set(audit, "selective", lenient=True)
    rows = []
    for name in datasets_in_order(audit):
        meta = audit.dataset(name)
        if meta.role == "train":
            continue
        perf = performance_set(audit, name)
        rows.append({
            "name": name, "role": meta.role, "n": meta.get("n_images"),
            "accuracy": perf.accuracy if perf else None,
            "balanced_accuracy": perf.balanced_accuracy if perf else None,
            "macro_f1": perf.macro_f1 if perf else None, "drop": gap.get(name),
            "ece": calib[name].section("before").required("ece") if name in calib else None,
            "referred": select[name].required("referred") if name in select else None,
            "accepted_accuracy": (select[name].required("accepted_accuracy")
                                  if name in select else None),
            "findings": sum(1 for f in audit.findings if f.dataset == name),
        })
    return rows


def _gap_explanations(audit: Mapping) -> list[dict]:
    """Per shifted set: the accuracy gap with its CI and the findings that explain it, ranked."""
    reference = reference_name(audit)
    perf_check, reason = check_state(audit, "performance")
    gaps = {} if reason else perf_check.metrics.required("gap", Mapping)
    shift = per_set(audit, "shift", lenient=True)
    ref_perf = performance_set(audit, reference) if reference else None
    reference_accuracy = ref_perf.accuracy if ref_perf else None
    out = []
    for name, meta in audit.datasets.items():
        if meta.role != "shifted":
            continue
        perf = performance_set(audit, name)
        accuracy = perf.accuracy if perf else None
        # The drop as performance measured it; shift's own measure when performance did not.
        gap = gaps.get(name) or (shift[name].required("drop") if name in shift else None)
        ranked = [(i, f) for i, f in ranked_findings(audit) if f.get("dataset") == name]
        explained = [(i, f) for i, f in ranked if finite(f.get("gap_share"))]
        other = [(i, f) for i, f in ranked if not finite(f.get("gap_share"))]
        out.append({
            "name": name, "reference": reference, "gap": gap,
            "reference_accuracy": reference_accuracy, "accuracy": accuracy,
            "sentence": _gap_sentence(name, reference, gap, accuracy, reference_accuracy,
                                      explained),
            "explained": finding_rows(explained), "other": finding_rows(other[:5]),
        })
    return out


def _gap_sentence(name: str, reference: str | None, gap: Mapping | None, accuracy: Mapping | None,
                  reference_accuracy: Mapping | None, explained: list) -> str:
    if not isinstance(gap, Mapping) or not finite(gap.get("value")):
        return f"The accuracy gap between {reference} and {name} was not measured."
    value = gap["value"]
    ci_excludes_zero = finite(gap.get("low")) and finite(gap.get("high")) and \
        (gap["low"] > 0 or gap["high"] < 0)
    if value > 0:
        text = (f"On {name} the model is right on {ci_text(accuracy)} of images, "
                f"{points_ci(gap)} lower than on {reference} ({pct(lookup(reference_accuracy, 'value'))}).")
    elif value < 0:
        text = (f"On {name} the model is right on {ci_text(accuracy)} of images, "
                f"{100 * -value:.1f} points higher than on {reference} "
                f"({pct(lookup(reference_accuracy, 'value'))}).")
    else:
        text = f"Accuracy on {name} equals accuracy on {reference} ({ci_text(accuracy)})."
    if not ci_excludes_zero:
        text += " The 95% interval of the difference includes zero: with this many images the " \
                "difference may be chance."
    if explained and value > 0:
        _, top = explained[0]
        text += (f" The largest measured cause explains {pct(top['gap_share'], 0)} of the gap: "
                 f"{top['text']}")
    elif value > 0:
        text += " No check measured what share of this gap it explains; see the findings below."
    return text


def _headline(audit: Mapping, key_rows: list[dict]) -> dict:
    status = audit.get("status", "ERROR")
    checks = audit.get("checks") or {}
    failing = [{"name": n, "status": c.get("status"), "summary": c.get("summary", "")}
               for n, c in checks.items() if c.get("status") in ("FAIL", "ERROR")]
    warning = [{"name": n, "status": c.get("status"), "summary": c.get("summary", "")}
               for n, c in checks.items() if c.get("status") == "WARN"]
    sentences = []
    for row in key_rows:
        if row["accuracy"]:
            role = "the reference" if row["role"] == "heldout" else row["role"]
            sentences.append(f"on {row['name']} ({role}, {row['n']} images) accuracy "
                             f"{ci_text(row['accuracy'])}")
    return {"status": status, "meaning": STATUS_WORDS.get(status, STATUS_WORDS["ERROR"]),
            "failing": failing, "warning": warning, "accuracy_sentences": sentences,
            "n_checks": len(checks),
            "n_scored": sum(1 for c in checks.values() if c.get("status") in _SCORED)}


def verdict_section(audit: AuditDocument, assets=None) -> dict:
    # The headline is always written; key numbers that cannot be read are named instead.
    try:
        key_rows, gaps, unreadable = _key_numbers(audit), _gap_explanations(audit), ""
    except AuditJsonError as exc:
        key_rows, gaps, unreadable = [], [], f"{type(exc).__name__}: {exc}"
    rows = [(r["name"], label, r[key]) for r in key_rows
            for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"))
            if r[key]]
    return {"available": True, "reason": "", "headline": _headline(audit, key_rows),
            "unreadable": unreadable, "key_numbers": key_rows, "gaps": gaps,
            "top_findings": finding_rows(ranked_findings(audit)[:8]),
            "n_findings": len(audit.get("findings") or []),
            "figure": figures.accuracy_intervals(rows)}


register_section("verdict", "Verdict and generalization gap", verdict_section, "_verdict.html.j2",
                 order=10)
