"""Helpers every section builder shares: reading a check's state and its findings, the
datasets in report order, and the "not computed" section."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from audit.audit_json import AuditDocument, AuditJsonError, CheckView, View, load_audit
from reports.format import finite, points_ci

STATUS_WORDS = {
    "PASS": "can be used on data like the evaluated sets, within the limitations below",
    "WARN": "can be used only with the cautions below",
    "FAIL": "should not be trusted as it is on the evaluated data",
    "ERROR": "cannot be judged: part of the audit failed to run",
    "SKIP": "cannot be judged: no check applied to these inputs",
}
THUMBNAIL_PIXELS = 64


def lookup(data: Any, *keys: Any, default: Any = None) -> Any:
    for key in keys:
        if isinstance(data, Mapping) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return default
    return data


def pick(data: Any, *keys: str) -> dict:
    """Exactly `keys` from a mapping (None when absent): templates see every key they use."""
    data = data if isinstance(data, Mapping) else {}
    return {key: data.get(key) for key in keys}


def words(name: str) -> str:
    return str(name).replace("_", " ")



def check_state(audit: Mapping | AuditDocument, name: str) -> tuple[CheckView | None, str]:
    """(check result, "") when it produced numbers, else (result or None, reason). The
    result's status is required (AuditJsonError naming it when missing or unknown)."""
    result = load_audit(audit).check(name)
    if result is None:
        return None, f"the {name} check was not run (not selected, or not available)"
    status = result.status
    if status == "ERROR":
        return result, f"the {name} check failed: {result.error or result.summary}"
    if status == "SKIP":
        return result, f"{result.summary or f'the {name} check did not apply'}"
    if not isinstance(result.get("metrics"), Mapping) or not result["metrics"]:
        return result, f"the {name} check recorded no metrics"
    return result, ""


def computed_check(audit: Mapping | AuditDocument, name: str) -> tuple[CheckView | None,
                                                                      dict | None]:
    """(check result, None) when the check produced numbers, else (result or None, the
    section's "unavailable" data with the check's status and summary): a section's preamble."""
    result, reason = check_state(audit, name)
    return (result, None) if not reason else (result, unavailable(reason,
                                                                  **check_header(result)))


def per_set(audit: AuditDocument, name: str, *, lenient: bool = False) -> dict[str, View]:
    """The check's per-dataset numbers as views; {} when it computed none (not run, ERROR,
    SKIP). A computed check without them raises AuditJsonError, or with `lenient` (another
    section shows that check's problem) gives {}."""
    result, reason = check_state(audit, name)
    if reason:
        return {}
    try:
        return result.per_set()
    except AuditJsonError:
        if lenient:
            return {}
        raise


def unavailable(reason: str, **extra: Any) -> dict:
    return {"available": False, "reason": reason, **extra}


def check_header(result: Mapping | None) -> dict:
    return {"status": (result or {}).get("status", "SKIP"),
            "summary": (result or {}).get("summary", "")}


def datasets_in_order(audit: Mapping) -> list[str]:
    """Evaluated sets first (heldout, then shifted in audit order), then train."""
    datasets = audit.get("datasets") or {}
    order = {"heldout": 0, "shifted": 1, "train": 2}
    return sorted(datasets, key=lambda n: order.get(datasets[n].get("role"), 3))


def reference_name(audit: Mapping) -> str | None:
    return next((n for n, d in (audit.get("datasets") or {}).items()
                 if d.get("role") == "heldout"), None)


def audit_class_names(audit: Mapping) -> list[str]:
    return list(lookup(audit, "model", "class_names", default=[]) or [])


def finding_rows(findings: Sequence[Mapping]) -> list[dict]:
    return [{"rank": i, "check": f.get("check", ""), "dataset": f.get("dataset") or "",
             "text": f.get("text", ""), "action": f.get("action", ""),
             "gap_share": f.get("gap_share"), "impact": f.get("impact"),
             "kind": f.get("kind", "")} for i, f in findings]


def ranked_findings(audit: Mapping) -> list[tuple[int, Mapping]]:
    return list(enumerate(audit.get("findings") or [], 1))


def findings_of(audit: Mapping, check: str) -> list[dict]:
    return finding_rows([(i, f) for i, f in ranked_findings(audit) if f.get("check") == check])


def change_text(drop: Any) -> str:
    """'a drop of 12.0 points (95% CI ...)' or 'a gain of ...' for a negative drop."""
    if not isinstance(drop, Mapping) or not finite(drop.get("value")):
        return "an unmeasured change"
    if drop["value"] >= 0:
        return f"a drop of {points_ci(drop)}"
    flipped = {"value": -drop["value"], "low": -drop["high"] if finite(drop.get("high")) else None,
               "high": -drop["low"] if finite(drop.get("low")) else None}
    return f"a gain of {points_ci(flipped)}"
