"""Report section 13: Likely label errors."""

from __future__ import annotations

from collections.abc import Mapping

from reports.sections.common import (
    THUMBNAIL_PIXELS,
    check_header,
    computed_check,
    findings_of,
    pick,
)
from reports.sections.registry import register_section


def label_issues_section(audit: Mapping, assets=None) -> dict:
    result, missing = computed_check(audit, "label_issues")
    if missing:
        return missing
    m = result.metrics
    sets = []
    for name, d in result.per_set().items():
        gallery, missing = [], 0
        for e in d.required("issues", list):
            tile = (assets.error_tile(name, e.get("path", ""), size=THUMBNAIL_PIXELS * 2)
                    if assets is not None else None)
            if tile is None:
                missing += 1
                continue
            gallery.append({"image": tile["image"], **pick(e, "path", "given", "suggested",
                                                            "probability_given",
                                                            "probability_suggested")})
        sets.append({"name": name, "role": d.required("role"), "n": d.required("n"),
                     "n_issues": d.required("n_issues"), "share": d.required("share"),
                     "accuracy": d.get("accuracy"), "accuracy_without": d.get("accuracy_without"),
                     "interpretation": d.get("interpretation", ""), "gallery": gallery,
                     "gallery_missing": missing,
                     "n_listed": len(d.required("issues", list))})
    return {"available": True, "reason": "", **check_header(result),
            "reference": m.get("reference"), "method": m.required("method"), "sets": sets,
            "findings": findings_of(audit, "label_issues")}


register_section("label-issues", "Likely label errors", label_issues_section,
                 "_label_issues.html.j2", order=130, check="label_issues")
