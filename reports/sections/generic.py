"""The section of a check that has none of its own: its status, summary, metrics and findings.

A check from another package that registers no section still appears in the report (one
generic section per such check, after the plugin sections), so an audit never runs a check
whose result the reader cannot see.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reports.format import finite, num
from reports.sections.common import check_header, check_state, findings_of, unavailable

__all__ = ["generic_section", "GENERIC_TEMPLATE", "MAX_METRIC_ROWS"]

GENERIC_TEMPLATE = "_generic.html.j2"
MAX_METRIC_ROWS = 40  # a check with more numbers than this needs a section of its own


def _metric_rows(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Scalar metrics as (dotted key, text) rows; a list is shown by its length."""
    if isinstance(data, Mapping):
        rows = []
        for key, value in data.items():
            rows += _metric_rows(value, f"{prefix}{key}.")
        return rows
    key = prefix.rstrip(".")
    if isinstance(data, list):
        return [(key, f"{len(data)} values")]
    if isinstance(data, bool) or data is None or isinstance(data, str):
        return [(key, "none" if data is None else str(data))]
    return [(key, num(data, 4) if finite(data) and isinstance(data, float) else str(data))]


def generic_section(audit, assets=None, *, check: str) -> dict:
    """Template data for `check`'s generic section (its findings, ranked as in audit.json)."""
    result, reason = check_state(audit, check)
    if reason:
        return unavailable(reason, check=check, findings=findings_of(audit, check))
    rows = _metric_rows(dict(result.get("metrics") or {}))
    return {"available": True, "reason": "", **check_header(result), "check": check,
            "metrics": rows[:MAX_METRIC_ROWS], "n_metrics": len(rows),
            "findings": findings_of(audit, check)}
