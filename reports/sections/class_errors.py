"""Report section 5: Per-class errors."""

from __future__ import annotations

from collections.abc import Mapping

from reports.format import finite
from reports.sections.common import (
    THUMBNAIL_PIXELS,
    check_header,
    computed_check,
    findings_of,
    pick,
    words,
)
from reports.sections.registry import register_section


def errors_section(audit: Mapping, assets=None) -> dict:
    result, missing = computed_check(audit, "errors")
    if missing:
        return missing
    sets = []
    for name, d in result.per_set().items():
        gallery, missing = [], 0
        for e in d.required("confident_errors", list):
            tile = (assets.error_tile(name, e.get("path", ""), size=THUMBNAIL_PIXELS * 2)
                    if assets is not None else None)
            if tile is None:
                missing += 1
                continue
            gallery.append({**tile, "true": e.get("true"), "predicted": e.get("predicted"),
                            "probability": e.get("probability"),
                            "probability_true": e.get("probability_true"),
                            "path": e.get("path", "")})
        slices = [s for s in d.required("slices", list) if s.get("weak")]
        slices.sort(key=lambda s: -(s.get("impact") or 0))
        per_class = [{"class": c, **pick(v, "n", "errors", "error_rate", "error_rate_ci")}
                     for c, v in d.section("per_class").items()]
        sets.append({
            "name": name, "role": d.required("role"), "n": d.required("n"),
            "error_rate": d.required("error_rate"), "per_class": per_class,
            "pairs": [pick(p, "true", "predicted", "count", "share_of_class")
                      for p in d.required("confused_pairs", list)], "gallery": gallery,
            "n_errors_listed": len(d.required("confident_errors", list)),
            "gallery_missing": missing, "has_cam": any(t["cam"] for t in gallery),
            "weak_slices": [{**pick(s, "label", "n", "error_rate", "error_rate_ci", "q_value"),
                             "property": words(s.get("property", "")),
                             "range": _range_text(s)} for s in slices],
            "n_slices": len(d.required("slices", list))})
    return {"available": True, "reason": "", **check_header(result), "sets": sets,
            "findings": findings_of(audit, "errors")}


def _range_text(row: Mapping) -> str:
    low, high = row.get("low"), row.get("high")
    if finite(low) and finite(high):
        return f"{low:.3g} to {high:.3g}"
    if finite(high):
        return f"below {high:.3g}"
    if finite(low):
        return f"above {low:.3g}"
    return "all"


register_section("errors", "Per-class errors", errors_section, "_errors.html.j2", order=50,
                 check="errors")
