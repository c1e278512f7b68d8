"""Report section 8: Calibration."""

from __future__ import annotations

from collections.abc import Mapping

from reports import figures
from reports.sections.common import check_header, computed_check, findings_of, lookup
from reports.sections.registry import register_section

_CALIBRATION_ROWS = (("ece", "ECE (expected calibration error)"), ("adaptive_ece", "adaptive ECE"),
                     ("mce", "MCE (largest bin error)"), ("brier", "Brier score"),
                     ("nll", "negative log-likelihood"), ("mean_confidence", "mean confidence"),
                     ("accuracy", "accuracy"), ("overconfidence", "confidence minus accuracy"))
_CALIBRATION_REQUIRED = frozenset({"ece", "mce", "brier", "nll", "accuracy"})  # as the schema


def calibration_section(audit: Mapping, assets=None) -> dict:
    result, missing = computed_check(audit, "calibration")
    if missing:
        return missing
    m = result.metrics
    temperature = m.required("temperature")
    sets = []
    for name, d in result.per_set().items():
        before, after = d.section("before"), d.section("after")
        by_fold = d.get("before_by_fold")   # optional: the reference only
        rows = [{"label": label, "key": key,
                 "before": before.required(key) if key in _CALIBRATION_REQUIRED else before.get(key),
                 "before_by_fold": lookup(by_fold, key),
                 "after": after.required(key) if key in _CALIBRATION_REQUIRED else after.get(key),
                 "after_in_sample": lookup(d, "after_in_sample", key)}
                for key, label in _CALIBRATION_ROWS]
        stages = {s: d.get(s) for s in ("before", "after") if d.get(s)}
        sets.append({"name": name, "role": d.get("role", ""), "n": d.get("n"), "rows": rows,
                     "basis": d.get("after_basis", ""), "by_fold": by_fold is not None,
                     "folds": lookup(by_fold, "folds"),
                     "figure": figures.reliability_diagram(name, stages, temperature)})
    return {"available": True, "reason": "", **check_header(result),
            "temperature": temperature, "reference": m.get("reference"),
            "folds": lookup(m, "crossfit", "folds"),
            "n_bins": m.get("n_bins"), "sets": sets,
            "findings": findings_of(audit, "calibration")}


register_section("calibration", "Calibration", calibration_section, "_calibration.html.j2",
                 order=80, check="calibration")
