"""Report section 7: Distribution shift."""

from __future__ import annotations

from collections.abc import Mapping

from reports import figures
from reports.sections.common import (
    change_text,
    check_header,
    computed_check,
    findings_of,
    lookup,
    per_set,
    pick,
    words,
)
from reports.sections.registry import register_section


def _gap_factors(audit: Mapping, name: str, assets) -> dict | None:
    """The gap-factor chart and before/after examples of one shifted set, if measured."""
    d = per_set(audit, "gap_factors").get(name)
    if d is None:   # not run, skipped, errored or no numbers for this set: no chart
        return None
    result = audit.check("gap_factors")
    directions = {k: {f: v.get("share") for f, v in dv.section("factors").items()}
                  for k, dv in ((k, d.section("directions").section(k))
                                for k in d.required("directions", Mapping))}
    examples = []
    arrays = assets.npz(result.artifacts.get(f"examples_{name}")) if assets is not None else None
    if arrays:
        for direction in directions:
            keys = [k for k in arrays if k.startswith(f"{direction}_")]
            keys.sort(key=lambda k: (k != f"{direction}_before", k == f"{direction}_all", k))
            uri = figures.image_strip([arrays[k][0] for k in keys if len(arrays[k])], size=96)
            if uri:
                examples.append({"direction": direction, "uri": uri,
                                 "labels": [k[len(direction) + 1:] for k in keys],
                                 "alt": f"One {direction} example image before and after each "
                                        "transform: " + ", ".join(k[len(direction) + 1:]
                                                                  for k in keys) + "."})
    combined = d.section("combined")
    return {"figure": figures.gap_factor_shares(name, directions),
            "explained": lookup(combined.required("explained"), "value"),
            "gap": d.required("gap"),
            "sum_alone": combined.required("sum_alone_share"),
            "interaction": combined.required("interaction_share"),
            "beyond_gap": combined.required("beyond_gap"),
            "unexplained": lookup(combined.required("unexplained"), "value"),
            "examples": examples}


def shift_section(audit: Mapping, assets=None) -> dict:
    result, missing = computed_check(audit, "shift")
    if missing:
        return missing
    m = result.metrics
    # Robustness has its own section, which reports an unreadable layout.
    resemblance = per_set(audit, "robustness", lenient=True)
    sets, drifts = [], {}
    for name, d in result.per_set().items():
        dec = d.get("decomposition") or {}   # optional: absent when it cannot be computed
        props = d.section("properties")
        drifts[name] = props.data
        emb = d.section("embedding")
        absorbing = d.get("absorbing") or {}
        near = lookup(resemblance.get(name), "nearest")
        sets.append({
            "name": name, "n": d.required("n"), "drop": d.required("drop"),
            "change": change_text(d.required("drop")),
            "accuracy": pick(d.section("accuracy"), "reference", "shifted"),
            "prior_part": dec.get("prior_part"), "accuracy_part": dec.get("accuracy_part"),
            "prior_share": dec.get("prior_share"),
            "per_class": [{"class": c, **pick(v, "p_ref", "p_shifted", "acc_ref", "acc_shifted",
                                               "prior_part", "accuracy_part")}
                          for c, v in (dec.get("per_class") or {}).items()],
            "imputed": dec.get("imputed_classes") or [],
            "decomposition": figures.shift_decomposition(
                name, lookup(d, "drop", "value", default=0.0) or 0.0,
                dec.get("prior_part") or 0.0, dec.get("per_class") or {}) if dec else None,
            "properties": [{"name": words(p), **pick(v, "ref_mean", "shifted_mean", "shift_sd",
                                                        "wasserstein_sd", "ks_p")}
                           for p, v in props.items()],
            "embedding": {"mmd2": emb.get("mmd2"), "p_value": emb.get("p_value"),
                          "domain_auc": emb.get("domain_auc"), "n_ref": emb.get("n_ref"),
                          "n_shifted": emb.get("n_shifted"), "n_perm": emb.get("n_perm")},
            "confidence": {k: pick(d.section("confidence").get(k), "mean", "correct", "wrong")
                           for k in ("reference", "shifted")},
            "absorbing": [{"class": c, "error_share": share,
                           "change": lookup(absorbing, "predicted_share_change", c)}
                          for c, share in (absorbing.get("error_share") or {}).items()],
            "n_errors": absorbing.get("n_errors"),
            "significant": d.get("significant_drift"),
            "nearest": ({"corruption": words(near.get("corruption", "")),
                         "severity": near.get("severity"), "distance": near.get("distance"),
                         "clean_distance": lookup(resemblance, name, "clean_distance")}
                        if isinstance(near, Mapping) else None),
        })
    for entry in sets:
        entry["gap_factors"] = _gap_factors(audit, entry["name"], assets)
    return {"available": True, "reason": "", **check_header(result),
            "reference": m.get("reference"), "sets": sets,
            "drift_figure": figures.property_drift(drifts),
            "findings": findings_of(audit, "shift")}


register_section("shift", "Distribution shift", shift_section, "_shift.html.j2", order=70,
                 check=("shift", "gap_factors"))
