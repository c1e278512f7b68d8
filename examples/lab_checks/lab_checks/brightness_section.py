"""The report section of the brightness check: a pure function of audit.json, its template
beside it. Imported through the `cellaudit.sections` entry point; registers itself."""

from __future__ import annotations

from pathlib import Path

from reports.sections import check_header, computed_check, findings_of, register_section


def brightness_section(audit, assets=None) -> dict:
    result, missing = computed_check(audit, "brightness")
    if missing:                      # not run, ERROR or SKIP: the section says why
        return missing
    metrics = result.metrics
    rows = [{"name": name, "n": d.required("n"), "outliers": d.required("outliers"),
             "share": d.required("share"), "error_rate": d.get("error_rate_outliers")}
            for name, d in result.per_set().items()]
    return {"available": True, "reason": "", **check_header(result),
            "reference": metrics.required("reference"), "z": metrics.required("z"),
            "rows": rows, "findings": findings_of(audit, "brightness")}


register_section("brightness", "Image brightness outliers", brightness_section,
                 Path(__file__).with_name("brightness.html.j2"), check="brightness")
