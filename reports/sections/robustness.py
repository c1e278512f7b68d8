"""Report section 9: Robustness to image corruptions."""

from __future__ import annotations

from collections.abc import Mapping

from reports import figures
from reports.format import finite
from reports.sections.common import check_header, computed_check, findings_of, lookup, pick, words
from reports.sections.registry import register_section


def robustness_section(audit: Mapping, assets=None) -> dict:
    result, missing = computed_check(audit, "robustness")
    if missing:
        return missing
    m = result.metrics
    severities = list(m.get("severities") or [])
    corruptions = m.required("corruptions", Mapping)
    rows = [{"name": words(n), "rce": c.get("rce"),
             "accuracy": [lookup(c, "severities", str(s), "accuracy") for s in severities],
             "ece": [lookup(c, "severities", str(s), "ece") for s in severities]}
            for n, c in corruptions.items()]
    rows.sort(key=lambda r: -(r["rce"] if finite(r["rce"]) else -1))
    resemblance = []
    for name, d in (m.get("datasets") or {}).items():
        resemblance.append({"name": name, "drop": d.get("drop"),
                            "clean_distance": d.get("clean_distance"),
                            "top": [{**pick(t, "severity", "distance"),
                                     "corruption": words(t.get("corruption", ""))}
                                    for t in d.get("top") or []]})
    return {"available": True, "reason": "", **check_header(result),
            "reference": m.get("reference"), "n_images": m.get("n_images"),
            "clean_accuracy": m.required("clean_accuracy"), "clean_ece": m.get("clean_ece"),
            "mean_rce": m.required("mean_rce"), "severities": severities, "rows": rows,
            "status_drop": m.get("status_drop"), "resemblance": resemblance,
            "figure": figures.robustness_curves(m.get("clean_accuracy") or 0.0, severities,
                                                corruptions),
            "findings": findings_of(audit, "robustness")}


register_section("robustness", "Robustness to image corruptions", robustness_section,
                 "_robustness.html.j2", order=90, check="robustness")
