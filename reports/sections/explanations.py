"""Report section 10: Explanations."""

from __future__ import annotations

from collections.abc import Mapping

from reports.format import finite
from reports.sections.common import THUMBNAIL_PIXELS, lookup, pick, unavailable
from reports.sections.registry import register_section

METHOD_NAMES = {"gradcam": "Grad-CAM", "shap": "SHAP", "lime": "LIME"}
REASON_WORDS = {"correct": "correct", "error": "error", "confident_error": "confident error"}


def _method_rows(d: Mapping, methods: Mapping) -> list[dict]:
    """Per method (and the random baseline) on one dataset: faithfulness, focus, sanity."""
    rows = []
    entries = [(m, e) for m, e in (d.get("methods") or {}).items()]
    if d.get("random"):
        entries.append(("random", d["random"]))
    for name, e in entries:
        if e.get("error"):
            rows.append({"method": METHOD_NAMES.get(name, name), "error": e["error"]})
            continue
        faith, focus = e.get("faithfulness") or {}, e.get("cell_focus") or {}
        rows.append({
            "method": METHOD_NAMES.get(name, name) if name != "random" else "random maps "
                                                                           "(baseline)",
            "error": None, "deletion": faith.get("deletion_auc"),
            "insertion": faith.get("insertion_auc"),
            "gain": pick(faith.get("gain_vs_random"), "value", "low", "high")
            if faith.get("gain_vs_random") else None,
            "mass_share": focus.get("mass_share"), "area_share": focus.get("area_share"),
            "focus_ratio": focus.get("focus_ratio"),
            "sanity": lookup(e, "sanity", "spearman"), "stability": lookup(e, "stability", "spearman"),
            "flags": [(methods.get("flag_meanings") or {}).get(f, f) for f in e.get("flags", [])],
            "seconds": lookup(methods, "methods", name, "timing", "seconds_per_image")})
    return rows


def _per_image_gain(faithfulness: Mapping | None, i: int) -> float | None:
    deletion = lookup(faithfulness, "deletion", i)
    insertion = lookup(faithfulness, "insertion", i)
    return insertion - deletion if finite(deletion) and finite(insertion) else None


def _per_image_scores(d: Mapping, method: str, i: int) -> dict:
    """One image's faithfulness gain over the random map and its cell-focus share."""
    e = lookup(d, "methods", method) or {}
    gain = _per_image_gain(e.get("faithfulness"), i)
    random_gain = _per_image_gain(lookup(d, "random", "faithfulness"), i)
    return {"gain": gain - random_gain if gain is not None and random_gain is not None else None,
            "focus": lookup(e, "cell_focus", "per_image", i)}


def explanations_section(audit: Mapping, assets=None) -> dict:
    explanations = audit.get("explanations") or {}
    # The explanations' own verdict (not the gap-factor check's, which shares a word).
    header = {"status": explanations.get("status", "SKIP"),
              "summary": explanations.get("headline", "")}
    if not explanations:
        enabled = lookup(audit, "config", "audit", "explain", default=True)
        why = ("explanations were switched off for this run (--no-explain)" if enabled is False
               else "the run recorded no explanations")
        return unavailable(why, **header)
    if explanations.get("error") or explanations.get("skipped"):
        what = explanations.get("error") or explanations.get("skipped")
        return unavailable(f"the explanations failed: {what}" if explanations.get("error")
                            else f"explanations skipped: {what}", **header)
    methods_meta = explanations.get("methods") or {}
    methods = [m for m in methods_meta if not (methods_meta[m] or {}).get("error")]
    signed = {m: bool((methods_meta[m] or {}).get("signed")) for m in methods}
    sets = []
    for name, d in (explanations.get("datasets") or {}).items():
        items = assets.explained(name) if assets is not None else []
        rows = []
        for i, item in enumerate(items):
            panels = assets.explanation_panels(item, methods, signed=signed,
                                               size=THUMBNAIL_PIXELS + 32)
            for panel in panels[1:]:
                panel.update(_per_image_scores(d, panel["method"], i))
            rows.append({"panels": panels, "true": item.get("label_name"),
                         "predicted": item.get("target_name"),
                         "confidence": item.get("confidence"),
                         "reason": REASON_WORDS.get(item.get("reason"), item.get("reason", ""))})
        sets.append({"name": name, "role": d.get("role", ""), "n": d.get("n_images"),
                     "cell_area_share": d.get("cell_area_share"),
                     "methods": _method_rows(d, explanations), "rows": rows,
                     "rows_reason": "" if rows else (
                         "no image was selected" if not d.get("n_images") else
                         "the explanation artifact is missing or unreadable")})
    return {"available": True, "reason": "", **header, "has_check": bool(header["summary"]),
            "methods": [{"name": METHOD_NAMES.get(m, m), "key": m, "signed": signed[m],
                         "description": (methods_meta[m] or {}).get("description", ""),
                         "flags": [(explanations.get("flag_meanings") or {}).get(f, f)
                                   for f in (methods_meta[m] or {}).get("flags", [])]}
                        for m in methods],
            "failed": [(METHOD_NAMES.get(m, m), e.get("error")) for m, e in methods_meta.items()
                       if (e or {}).get("error")],
            "notes": [str(x) for x in explanations.get("summary") or []],
            "sets": sets, "findings": []}


register_section("explanations", "Explanations", explanations_section, "_explanations.html.j2",
                 order=100)
