"""Report section 12: Per-image safety flags."""

from __future__ import annotations

from collections.abc import Mapping

from reports.sections.common import check_header, computed_check, findings_of, lookup
from reports.sections.registry import register_section


def safety_section(audit: Mapping, assets=None) -> dict:
    result, missing = computed_check(audit, "safety")
    if missing:
        return missing
    m = result.metrics
    reasons = list(m.required("reasons", list))
    sets = []
    for name, d in result.per_set().items():
        by_reason = d.section("by_reason")
        sets.append({"name": name, "role": d.required("role"), "n": d.required("n"),
                     "n_flagged": d.required("n_flagged"), "flagged": d.required("flagged"),
                     "by_reason": [(r, by_reason.get(r)) for r in reasons],
                     "accuracy_flagged": d.get("accuracy_flagged"),
                     "accuracy_unflagged": d.get("accuracy_unflagged"),
                     "basis": d.get("ood_basis", "")})
    return {"available": True, "reason": "", **check_header(result),
            "reference": m.get("reference"), "false_alarm_rate": m.get("false_alarm_rate"),
            "observed_false_alarm": lookup(m, "ood", "observed_false_alarm"),
            "folds": lookup(m, "ood", "folds"), "usability": sorted((m.get("usability") or {})
                                                                  .items()),
            "reasons": reasons, "sets": sets, "findings": findings_of(audit, "safety")}


register_section("safety", "Per-image safety flags", safety_section, "_safety.html.j2", order=120,
                 check="safety")
