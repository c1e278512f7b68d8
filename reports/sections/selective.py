"""Report section 11: Selective prediction and referral."""

from __future__ import annotations

from collections.abc import Mapping

from reports import figures
from reports.sections.common import check_header, computed_check, findings_of, lookup, pick
from reports.sections.registry import register_section


def selective_section(audit: Mapping, assets=None) -> dict:
    result, missing = computed_check(audit, "selective")
    if missing:
        return missing
    m = result.metrics
    threshold = m.section("threshold")
    sets, curves = [], {}
    for name, d in result.per_set().items():
        curves[name] = d.get("risk_coverage")
        sets.append({"name": name, "role": d.get("role", ""), "n": d.required("n"),
                     "accuracy": d.required("accuracy"),
                     "accepted_accuracy": d.get("accepted_accuracy"),
                     "accepted_ci": d.get("accepted_accuracy_ci"),
                     "n_accepted": d.required("n_accepted"),
                     "coverage": d.required("coverage"), "referred": d.required("referred"),
                     "basis": {"out_of_fold": "out-of-fold", "in_sample": "in-sample",
                               "measured_under_shift": "measured (no guarantee under shift)"}
                     .get(d.get("basis"), d.get("basis") or ""),
                     "in_sample": pick(d.get("in_sample"), "accepted_accuracy", "coverage"),
                     "aurc": d.required("aurc"), "ood_msp": lookup(d, "ood_auroc", "msp"),
                     "ood_energy": lookup(d, "ood_auroc", "energy")})
    return {"available": True, "reason": "", **check_header(result),
            "threshold": threshold.required("value"),
            "target": threshold.required("target_accuracy"),
            "delta": threshold.get("delta"), "naive": threshold.get("naive_value"),
            "guarantee": threshold.get("guarantee"), "folds": lookup(m, "crossfit", "folds"),
            "calibrated": threshold.required("calibrated"), "temperature": m.get("temperature"),
            "reference": m.get("reference"), "sets": sets,
            "figure": figures.coverage_curves(curves, threshold.get("value"),
                                              threshold.get("target_accuracy")),
            "findings": findings_of(audit, "selective")}


register_section("selective", "Selective prediction and referral", selective_section,
                 "_selective.html.j2", order=110, check="selective")
