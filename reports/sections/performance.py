"""Report section 4: Performance."""

from __future__ import annotations

from collections.abc import Mapping

from audit.audit_json import performance_set
from reports import figures
from reports.sections.common import check_header, computed_check, findings_of
from reports.sections.registry import register_section


def performance_section(audit: Mapping, assets=None) -> dict:
    result, missing = computed_check(audit, "performance")
    if missing:
        return missing
    m = result.metrics
    classes = list(m.required("class_names", list))
    gaps = m.required("gap", Mapping)
    sets = []
    for name in result.per_set():
        d = performance_set(audit, name)
        per_class = []
        for c in classes:
            entry = d.per_class(c)
            per_class.append({"class": c, "precision": entry.required("precision"),
                              "recall": entry.required("recall"), "f1": entry.required("f1"),
                              "support": entry.required("support"), "auc": entry.get("auc")})
        sets.append({
            "name": name, "role": d.required("role", str), "n": d.n,
            "resampling": d.get("resampling"), "n_groups": d.get("n_groups"),
            "groups_from": d.get("groups_from"),
            "accuracy": d.accuracy, "balanced_accuracy": d.balanced_accuracy,
            "macro_f1": d.macro_f1, "macro_auc": d.get("macro_auc"),
            "gap": gaps.get(name), "per_class": per_class,
            "confusion": figures.confusion_matrix(
                name, d.section("confusion").required("counts", list), classes)})
    order = {"heldout": 0, "shifted": 1, "train": 2}
    sets.sort(key=lambda s: order.get(s["role"], 3))
    return {"available": True, "reason": "", **check_header(result),
            "reference": m.get("reference"), "n_boot": m.get("n_boot"), "sets": sets,
            "findings": findings_of(audit, "performance")}


register_section("performance", "Performance", performance_section, "_performance.html.j2",
                 order=40, check="performance")
