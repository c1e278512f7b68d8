"""Turn audit.json into the template context: one plain dict per report section.

Each section builder reads its part of the audit and returns a dict with `available` and
`reason` ("not computed: <reason>" when a check is missing, ERROR or SKIP, or its data is
absent) plus the rows and figures the section's template shows. Templates never read audit.json
directly: everything they use is put here explicitly (jinja runs with StrictUndefined), and a
builder that meets an unexpected layout fails alone (the renderer turns that into a note).

Sentences in the verdict are composed from the numbers and the ranked findings, never canned.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from audit.audit_json import (
    AuditDocument,
    AuditJsonError,
    CheckView,
    View,
    load_audit,
    performance_set,
)
from reports import figures
from reports.format import (  # noqa: F401 - the filters, re-exported for existing imports
    MIN_RELIABLE_N,
    ci_text,
    num,
    p_text,
    pct,
    points_ci,
    pts,
    toml_text,
)
from reports.format import finite as _finite

__all__ = ["SECTIONS", "SECTION_TITLES", "build_context", "pct", "ci_text", "num", "p_text",
           "check_state", "recommendations", "limitations", "reporting_checklist", "toml_text",
           "STATUS_WORDS"]

# (anchor id, heading) in report order; the heading is printed as "N. heading".
SECTIONS: tuple[tuple[str, str], ...] = (
    ("verdict", "Verdict and generalization gap"),
    ("model-card", "Model card"),
    ("datasets", "Datasets"),
    ("performance", "Performance"),
    ("errors", "Per-class errors"),
    ("leakage", "Leakage and duplicates"),
    ("shift", "Distribution shift"),
    ("calibration", "Calibration"),
    ("robustness", "Robustness to image corruptions"),
    ("explanations", "Explanations"),
    ("selective", "Selective prediction and referral"),
    ("safety", "Per-image safety flags"),
    ("label-issues", "Likely label errors"),
    ("recommendations", "Recommendations, limitations and reporting checklist"),
    ("reproducibility", "Reproducibility"),
)
SECTION_TITLES = tuple(f"{i}. {title}" for i, (_, title) in enumerate(SECTIONS, 1))
SECTION_NUMBER = {anchor: i for i, (anchor, _) in enumerate(SECTIONS, 1)}

# What each overall status means for the people deciding; the reasons come from the findings.
STATUS_WORDS = {
    "PASS": "can be used on data like the evaluated sets, within the limitations below",
    "WARN": "can be used only with the cautions below",
    "FAIL": "should not be trusted as it is on the evaluated data",
    "ERROR": "cannot be judged: part of the audit failed to run",
    "SKIP": "cannot be judged: no check applied to these inputs",
}
_SCORED = ("PASS", "WARN", "FAIL")
EXAMPLES_PER_CLASS = 4
THUMBNAIL_PIXELS = 64


def _get(data: Any, *keys: Any, default: Any = None) -> Any:
    for key in keys:
        if isinstance(data, Mapping) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return default
    return data


def _pick(data: Any, *keys: str) -> dict:
    """Exactly `keys` from a mapping (None when absent): templates see every key they use."""
    data = data if isinstance(data, Mapping) else {}
    return {key: data.get(key) for key in keys}


def _words(name: str) -> str:
    return str(name).replace("_", " ")


# ---------------------------------------------------------------- shared pieces

def check_state(audit: Mapping | AuditDocument, name: str) -> tuple[CheckView | None, str]:
    """(check result, "") when it produced numbers, else (result or None, reason). The
    result's status is required (AuditJsonError naming it when missing or unknown)."""
    result = load_audit(audit).check(name)
    if result is None:
        return None, f"the {name} check was not run (not selected, or not available)"
    status = result.status
    if status == "ERROR":
        return result, f"the {name} check failed: {result.error or result.summary}"
    if status == "SKIP":
        return result, f"{result.summary or f'the {name} check did not apply'}"
    if not isinstance(result.get("metrics"), Mapping) or not result["metrics"]:
        return result, f"the {name} check recorded no metrics"
    return result, ""


def _per_set(audit: AuditDocument, name: str, *, lenient: bool = False) -> dict[str, View]:
    """The check's per-dataset numbers as views; {} when it computed none (not run, ERROR,
    SKIP). A computed check without them raises AuditJsonError, or with `lenient` (another
    section shows that check's problem) gives {}."""
    result, reason = check_state(audit, name)
    if reason:
        return {}
    try:
        return result.per_set()
    except AuditJsonError:
        if lenient:
            return {}
        raise


def _unavailable(reason: str, **extra: Any) -> dict:
    return {"available": False, "reason": reason, **extra}


def _check_header(result: Mapping | None) -> dict:
    return {"status": (result or {}).get("status", "SKIP"),
            "summary": (result or {}).get("summary", "")}


def _datasets_in_order(audit: Mapping) -> list[str]:
    """Evaluated sets first (heldout, then shifted in audit order), then train."""
    datasets = audit.get("datasets") or {}
    order = {"heldout": 0, "shifted": 1, "train": 2}
    return sorted(datasets, key=lambda n: order.get(datasets[n].get("role"), 3))


def _reference(audit: Mapping) -> str | None:
    return next((n for n, d in (audit.get("datasets") or {}).items()
                 if d.get("role") == "heldout"), None)


def _class_names(audit: Mapping) -> list[str]:
    return list(_get(audit, "model", "class_names", default=[]) or [])


def _finding_rows(findings: Sequence[Mapping]) -> list[dict]:
    return [{"rank": i, "check": f.get("check", ""), "dataset": f.get("dataset") or "",
             "text": f.get("text", ""), "action": f.get("action", ""),
             "gap_share": f.get("gap_share"), "impact": f.get("impact"),
             "kind": f.get("kind", "")} for i, f in findings]


def _ranked(audit: Mapping) -> list[tuple[int, Mapping]]:
    return list(enumerate(audit.get("findings") or [], 1))


def _findings_of(audit: Mapping, check: str) -> list[dict]:
    return _finding_rows([(i, f) for i, f in _ranked(audit) if f.get("check") == check])


# ---------------------------------------------------------------- 1. verdict

def _key_numbers(audit: AuditDocument) -> list[dict]:
    """One row per evaluated dataset: accuracy, balanced accuracy, macro-F1 (CIs), ECE, referral.
    A number is None only when its check did not compute this set; a computed set missing a
    key raises (the verdict then names the key instead of showing "n/a")."""
    perf_check, reason = check_state(audit, "performance")
    gap = {} if reason else perf_check.metrics.required("gap", Mapping)
    # Calibration and referral have their own sections, which report an unreadable layout.
    calib = _per_set(audit, "calibration", lenient=True)
    select = _per_set(audit, "selective", lenient=True)
    rows = []
    for name in _datasets_in_order(audit):
        meta = audit.dataset(name)
        if meta.role == "train":
            continue
        perf = performance_set(audit, name)
        rows.append({
            "name": name, "role": meta.role, "n": meta.get("n_images"),
            "accuracy": perf.accuracy if perf else None,
            "balanced_accuracy": perf.balanced_accuracy if perf else None,
            "macro_f1": perf.macro_f1 if perf else None, "drop": gap.get(name),
            "ece": calib[name].section("before").required("ece") if name in calib else None,
            "referred": select[name].required("referred") if name in select else None,
            "accepted_accuracy": (select[name].required("accepted_accuracy")
                                  if name in select else None),
            "findings": sum(1 for f in audit.findings if f.dataset == name),
        })
    return rows


def _gap_explanations(audit: Mapping) -> list[dict]:
    """Per shifted set: the accuracy gap with its CI and the findings that explain it, ranked."""
    reference = _reference(audit)
    perf_check, reason = check_state(audit, "performance")
    gaps = {} if reason else perf_check.metrics.required("gap", Mapping)
    shift = _per_set(audit, "shift", lenient=True)
    ref_perf = performance_set(audit, reference) if reference else None
    reference_accuracy = ref_perf.accuracy if ref_perf else None
    out = []
    for name, meta in audit.datasets.items():
        if meta.role != "shifted":
            continue
        perf = performance_set(audit, name)
        accuracy = perf.accuracy if perf else None
        # The drop as performance measured it; shift's own measure when performance did not.
        gap = gaps.get(name) or (shift[name].required("drop") if name in shift else None)
        ranked = [(i, f) for i, f in _ranked(audit) if f.get("dataset") == name]
        explained = [(i, f) for i, f in ranked if _finite(f.get("gap_share"))]
        other = [(i, f) for i, f in ranked if not _finite(f.get("gap_share"))]
        out.append({
            "name": name, "reference": reference, "gap": gap,
            "reference_accuracy": reference_accuracy, "accuracy": accuracy,
            "sentence": _gap_sentence(name, reference, gap, accuracy, reference_accuracy,
                                      explained),
            "explained": _finding_rows(explained), "other": _finding_rows(other[:5]),
        })
    return out


def _gap_sentence(name: str, reference: str | None, gap: Mapping | None, accuracy: Mapping | None,
                  reference_accuracy: Mapping | None, explained: list) -> str:
    if not isinstance(gap, Mapping) or not _finite(gap.get("value")):
        return f"The accuracy gap between {reference} and {name} was not measured."
    value = gap["value"]
    ci_excludes_zero = _finite(gap.get("low")) and _finite(gap.get("high")) and \
        (gap["low"] > 0 or gap["high"] < 0)
    if value > 0:
        text = (f"On {name} the model is right on {ci_text(accuracy)} of images, "
                f"{points_ci(gap)} lower than on {reference} ({pct(_get(reference_accuracy, 'value'))}).")
    elif value < 0:
        text = (f"On {name} the model is right on {ci_text(accuracy)} of images, "
                f"{100 * -value:.1f} points higher than on {reference} "
                f"({pct(_get(reference_accuracy, 'value'))}).")
    else:
        text = f"Accuracy on {name} equals accuracy on {reference} ({ci_text(accuracy)})."
    if not ci_excludes_zero:
        text += " The 95% interval of the difference includes zero: with this many images the " \
                "difference may be chance."
    if explained and value > 0:
        _, top = explained[0]
        text += (f" The largest measured cause explains {pct(top['gap_share'], 0)} of the gap: "
                 f"{top['text']}")
    elif value > 0:
        text += " No check measured what share of this gap it explains; see the findings below."
    return text


def _headline(audit: Mapping, key_rows: list[dict]) -> dict:
    status = audit.get("status", "ERROR")
    checks = audit.get("checks") or {}
    failing = [{"name": n, "status": c.get("status"), "summary": c.get("summary", "")}
               for n, c in checks.items() if c.get("status") in ("FAIL", "ERROR")]
    warning = [{"name": n, "status": c.get("status"), "summary": c.get("summary", "")}
               for n, c in checks.items() if c.get("status") == "WARN"]
    sentences = []
    for row in key_rows:
        if row["accuracy"]:
            role = "the reference" if row["role"] == "heldout" else row["role"]
            sentences.append(f"on {row['name']} ({role}, {row['n']} images) accuracy "
                             f"{ci_text(row['accuracy'])}")
    return {"status": status, "meaning": STATUS_WORDS.get(status, STATUS_WORDS["ERROR"]),
            "failing": failing, "warning": warning, "accuracy_sentences": sentences,
            "n_checks": len(checks),
            "n_scored": sum(1 for c in checks.values() if c.get("status") in _SCORED)}


def verdict_section(audit: AuditDocument, assets=None) -> dict:
    # The headline is always written; key numbers that cannot be read are named instead.
    try:
        key_rows, gaps, unreadable = _key_numbers(audit), _gap_explanations(audit), ""
    except AuditJsonError as exc:
        key_rows, gaps, unreadable = [], [], f"{type(exc).__name__}: {exc}"
    rows = [(r["name"], label, r[key]) for r in key_rows
            for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"))
            if r[key]]
    return {"available": True, "reason": "", "headline": _headline(audit, key_rows),
            "unreadable": unreadable, "key_numbers": key_rows, "gaps": gaps,
            "top_findings": _finding_rows(_ranked(audit)[:8]),
            "n_findings": len(audit.get("findings") or []),
            "figure": figures.accuracy_intervals(rows)}


# ---------------------------------------------------------------- 2. model card

def _flatten(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(data, Mapping):
        rows = []
        for key, value in data.items():
            rows += _flatten(value, f"{prefix}{key}." if isinstance(value, Mapping) else
                             f"{prefix}{key}")
            if isinstance(value, Mapping) and not value:
                rows.append((f"{prefix}{key}", "{}"))
        return rows
    if isinstance(data, list):
        return [(prefix.rstrip("."), ", ".join(map(str, data)) if data else "[]")]
    return [(prefix.rstrip("."), "none" if data is None else str(data))]


def model_card_section(audit: Mapping, assets=None) -> dict:
    model = audit.get("model") or {}
    meta = model.get("metadata") or {}
    if not model:
        return _unavailable("audit.json has no model description")
    classes = list(model.get("class_names") or meta.get("class_names") or [])
    size = model.get("input_size") or meta.get("input_size")
    intended = meta.get("intended_use")
    derived_use = (f"Classifies one image of a single white blood cell (an RGB crop, resized to "
                   f"{size}x{size} pixels) into one of {len(classes)} classes: "
                   f"{', '.join(classes)}.")
    history = meta.get("history") or {}
    phases = list(meta.get("phases") or [])
    training = meta.get("training_data") or {}
    return {
        "available": True, "reason": "",
        "intended_use": intended, "derived_use": derived_use,
        "classes": classes, "input_size": size,
        "preprocessing": _flatten(meta.get("preprocessing") or {}),
        "architecture": _flatten(meta.get("architecture") or {}),
        "outputs": meta.get("outputs"),
        "training_data": {
            "root": training.get("root"), "n_images": training.get("n_images"),
            "class_counts": training.get("class_counts") or {},
            "fingerprint": training.get("fingerprint"),
            "groups": training.get("n_groups") if training.get("has_groups") else None,
            "skipped": training.get("skipped"),
        } if training else None,
        "validation_data": _flatten(meta.get("validation_data") or {}),
        "split": _flatten(meta.get("split") or {}),
        "hyperparameters": _flatten(meta.get("hyperparameters") or {}),
        "seed": meta.get("seed"),
        "phases": [{"phase": p.get("phase", ""), "epochs_run": p.get("epochs_run"),
                    "learning_rate": p.get("learning_rate"),
                    "trainable": p.get("trainable_backbone_layers"),
                    "best_epoch": p.get("best_epoch"), "seconds": p.get("seconds")}
                   for p in phases],
        "validation_accuracy": meta.get("validation_accuracy"),
        "training_seconds": meta.get("training_seconds"),
        "fingerprints": [("model file (SHA-256)", model.get("sha256") or "not recorded"),
                         ("training data", training.get("fingerprint") or "not recorded")]
        + [(f"dataset {n}", d.get("fingerprint") or "not recorded")
           for n, d in (audit.get("datasets") or {}).items()],
        "fingerprint_notes": _fingerprint_notes(audit, training.get("fingerprint")),
        "versions": sorted((meta.get("versions") or {}).items()),
        "metadata_format": meta.get("format"),
        "curves": figures.training_curves(history, phases) if history else None,
        "curves_reason": "" if history else "the model's metadata holds no training history",
        **_input_contract(model),
    }


_CONTRACT_LABELS = (("class_names", "Class names, in output order"), ("input_size", "Input size"),
                    ("resize", "Resize"), ("channel_order", "Channel order"),
                    ("preprocess", "Pixel scaling"), ("output", "Outputs"))
_FORMATS = {"keras": "Keras 3 .keras archive", "h5": "legacy HDF5 (.h5) full model",
            "savedmodel": "TensorFlow SavedModel (inference only)", "memory": "model object"}


def _input_contract(model: Mapping) -> dict:
    """How the audit fed the model, where each part came from, and the quick check of it."""
    contract = model.get("contract") or {}
    sources = contract.get("sources") or {}
    rows = []
    for key, label in _CONTRACT_LABELS:
        if key in contract:
            value = contract[key]
            shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            if key == "input_size":
                shown = f"{value} x {value} pixels"
            rows.append((label, shown, sources.get(key, "")))
    check = model.get("contract_check") or {}
    declared = check.get("declared") or {}
    others = sorted((c for c in check.get("candidates") or [] if c != declared),
                    key=lambda c: -c.get("accuracy", 0))
    graph = model.get("graph") or {}
    return {
        "format": _FORMATS.get(model.get("format"), model.get("format") or "not recorded"),
        "format_notes": list(model.get("notes") or []),
        "contract_rows": rows,
        "contract_check": {
            "images": check.get("images"), "verdict": check.get("verdict"),
            "message": check.get("message"), "forced": check.get("forced", False),
            "accuracy": declared.get("accuracy"),
            "best_other": others[0] if others else None,
        } if check else None,
        "graph_rows": [(label, graph.get(key) or "none") for key, label in (
            ("own_scaling_layer", "Scales its own input (first layer)"),
            ("logits", "Logits"), ("embedding", "Embedding"),
            ("gradcam_layer", "Grad-CAM feature map"))] if graph else [],
        "gradcam_unavailable": graph.get("gradcam_unavailable"),
    }


def _fingerprint_notes(audit: Mapping, training_fingerprint: str | None) -> list[str]:
    """Which audited sets are, file for file, the data the model was trained on."""
    if not training_fingerprint:
        return []
    notes = []
    for name, d in (audit.get("datasets") or {}).items():
        if d.get("fingerprint") != training_fingerprint:
            continue
        if d.get("role") == "train":
            notes.append(f"The audit's train set '{name}' is the model's training data "
                         "(identical fingerprint).")
        else:
            notes.append(f"Warning: {name} ({d.get('role')}) is identical to the model's "
                         "training data: its numbers do not measure generalization.")
    return notes


# ---------------------------------------------------------------- 3. datasets

def datasets_section(audit: Mapping, assets=None) -> dict:
    datasets = audit.get("datasets") or {}
    if not datasets:
        return _unavailable("audit.json lists no datasets")
    classes = _class_names(audit)
    names = _datasets_in_order(audit)
    training = _get(audit, "model", "metadata", "training_data", "class_counts", default=None)
    columns = [*names] + (["model training data"] if training and "train" not in
                          {datasets[n].get("role") for n in names} else [])
    counts = []
    for cls in classes:
        row = [(datasets[n].get("class_counts") or {}).get(cls) for n in names]
        if len(columns) > len(names):
            row.append(training.get(cls))
        counts.append({"class": cls, "counts": row})
    totals = [datasets[n].get("n_images") for n in names]
    if len(columns) > len(names):
        totals.append(sum(v for v in training.values() if isinstance(v, int)))
    rows, galleries = [], []
    for name in names:
        d = datasets[name]
        skipped = d.get("skipped") or []
        rows.append({"name": name, "role": d.get("role", ""), "source": d.get("source", ""),
                     "root": d.get("root", ""), "n": d.get("n_images"),
                     "groups": d.get("n_groups") if d.get("has_groups") else None,
                     "skipped": len(skipped) if isinstance(skipped, list) else skipped,
                     "skipped_files": [_pick(f, "path", "reason") for f in skipped[:10]]
                     if isinstance(skipped, list) else [],
                     "fingerprint": d.get("fingerprint") or "", "from_cache": d.get("from_cache")})
        examples, reason = (assets.examples(name, classes, per_class=EXAMPLES_PER_CLASS,
                                            size=THUMBNAIL_PIXELS)
                            if assets is not None else (None, "no artifacts were given"))
        galleries.append({"name": name, "reason": reason,
                          "rows": figures.thumbnail_rows(name, examples, size=THUMBNAIL_PIXELS)
                          if examples else []})
    absent = [{"dataset": n, "classes": [c for c in classes
                                         if not (datasets[n].get("class_counts") or {}).get(c)]}
              for n in names]
    return {"available": True, "reason": "", "rows": rows, "columns": columns,
            "counts": counts, "totals": totals, "galleries": galleries,
            "absent": [a for a in absent if a["classes"]]}


# ---------------------------------------------------------------- 4. performance

def performance_section(audit: Mapping, assets=None) -> dict:
    result, reason = check_state(audit, "performance")
    if reason:
        return _unavailable(reason, **_check_header(result))
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
    return {"available": True, "reason": "", **_check_header(result),
            "reference": m.get("reference"), "n_boot": m.get("n_boot"), "sets": sets,
            "findings": _findings_of(audit, "performance")}


# ---------------------------------------------------------------- 5. errors

def errors_section(audit: Mapping, assets=None) -> dict:
    result, reason = check_state(audit, "errors")
    if reason:
        return _unavailable(reason, **_check_header(result))
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
        per_class = [{"class": c, **_pick(v, "n", "errors", "error_rate", "error_rate_ci")}
                     for c, v in d.section("per_class").items()]
        sets.append({
            "name": name, "role": d.required("role"), "n": d.required("n"),
            "error_rate": d.required("error_rate"), "per_class": per_class,
            "pairs": [_pick(p, "true", "predicted", "count", "share_of_class")
                      for p in d.required("confused_pairs", list)], "gallery": gallery,
            "n_errors_listed": len(d.required("confident_errors", list)),
            "gallery_missing": missing, "has_cam": any(t["cam"] for t in gallery),
            "weak_slices": [{**_pick(s, "label", "n", "error_rate", "error_rate_ci", "q_value"),
                             "property": _words(s.get("property", "")),
                             "range": _range_text(s)} for s in slices],
            "n_slices": len(d.required("slices", list))})
    return {"available": True, "reason": "", **_check_header(result), "sets": sets,
            "findings": _findings_of(audit, "errors")}


def _change_text(drop: Any) -> str:
    """'a drop of 12.0 points (95% CI ...)' or 'a gain of ...' for a negative drop."""
    if not isinstance(drop, Mapping) or not _finite(drop.get("value")):
        return "an unmeasured change"
    if drop["value"] >= 0:
        return f"a drop of {points_ci(drop)}"
    flipped = {"value": -drop["value"], "low": -drop["high"] if _finite(drop.get("high")) else None,
               "high": -drop["low"] if _finite(drop.get("low")) else None}
    return f"a gain of {points_ci(flipped)}"


def _range_text(row: Mapping) -> str:
    low, high = row.get("low"), row.get("high")
    if _finite(low) and _finite(high):
        return f"{low:.3g} to {high:.3g}"
    if _finite(high):
        return f"below {high:.3g}"
    if _finite(low):
        return f"above {low:.3g}"
    return "all"


# ---------------------------------------------------------------- 6. leakage

LEAK_EXAMPLES = 6


def _copy_row(query: str, against: str, entry: Mapping, n: int | None) -> dict:
    accuracy = entry.get("accuracy") or {}
    return {"query": query, "against": against, "n": n, "n_with_copy": entry.get("n_with_copy"),
            "share": entry.get("share"),
            "by": _pick(entry.get("by_criterion"), "exact", "hash", "embedding"),
            "label_conflicts": entry.get("label_conflicts"),
            "n_unique": entry.get("n_unique"),
            "with_copy": accuracy.get("with_copy"), "without_copy": accuracy.get("without_copy")}


def leakage_section(audit: Mapping, assets=None) -> dict:
    result, reason = check_state(audit, "leakage")
    if reason:
        return _unavailable(reason, **_check_header(result))
    m = result.metrics
    cross, within, examples = [], [], []
    for name, d in result.per_set().items():
        n = d.required("n")
        if isinstance(d.get("within"), Mapping):   # optional: sets compared with themselves
            within.append(_copy_row(name, name, d["within"], n))
        for other, entry in (d.get("against") or {}).items():   # optional: train has none
            cross.append(_copy_row(name, other, entry, n))
            pairs = (assets.copy_pairs(name, other, entry.get("examples") or [],
                                       limit=LEAK_EXAMPLES, size=THUMBNAIL_PIXELS)
                     if assets is not None else [])
            if entry.get("examples"):
                examples.append({"query": name, "against": other, "pairs": pairs,
                                 "n_listed": len(entry["examples"])})
    criteria = ["a byte-identical file", f"a perceptual hash within {m.required('max_hash_distance')} "
                "bits" + (f" in any of {m['hash_orientations']} rotations/mirrorings"
                           if (m.get("hash_orientations") or 1) > 1 else "")]
    if m.get("cosine_min") is not None:
        criteria.append(f"an embedding cosine similarity of at least {m['cosine_min']:.2f}")
    return {"available": True, "reason": "", **_check_header(result),
            "criteria": ", or ".join(criteria), "leaked_share": m.required("leaked_share"),
            "cross": cross, "within": within, "examples": examples,
            "sources": _source_groups(m, assets),
            "findings": _findings_of(audit, "leakage")}


SOURCE_PAIRS = 6  # verified pairs shown per set


def _source_groups(m: Mapping, assets) -> dict:
    """Discovered source groups (checks.leakage.source_groups): per set how many groups and
    their sizes, distinct cells per class, verified copies in training, and pictures of
    verified pairs so a reviewer can see the groups are real; or how to turn it on."""
    state = m.section("source_groups")
    if not state.get("run"):
        return {"run": False, "how_to_enable": state.get("how_to_enable") or
                "--set checks.leakage.source_groups=true"}
    sets, classes, copies, galleries = [], {}, [], []
    for name, d in (m.get("datasets") or {}).items():
        src = d.get("sources")
        if not isinstance(src, Mapping):
            continue
        sizes = src.get("sizes") or {}
        sets.append({"name": name, "n": src.get("n_images"), "examined": src.get("examined"),
                     "sampled": src.get("sampled"), "n_groups": src.get("n_groups"),
                     "singletons": sizes.get("singletons"), "median": sizes.get("median"),
                     "p90": sizes.get("p90"), "max": sizes.get("max"),
                     "threshold": src.get("threshold"),
                     "bootstrap_groups": d.get("bootstrap_groups")})
        few = {c.get("class") for c in src.get("few_cells") or []}
        for cls, counts in (src.get("per_class") or {}).items():
            classes.setdefault(cls, {})[name] = {**counts, "few": cls in few}
        pairs = (assets.copy_pairs(name, name, src.get("sample") or [], limit=SOURCE_PAIRS,
                                   size=THUMBNAIL_PIXELS) if assets is not None else [])
        galleries.append({"query": name, "against": name, "pairs": pairs,
                          "n_listed": len(src.get("sample") or [])})
        for other, entry in (d.get("against") or {}).items():
            v = entry.get("verified")
            if not isinstance(v, Mapping):
                continue
            accuracy = v.get("accuracy") or {}
            copies.append({"query": name, "against": other, "n_examined": v.get("n_examined"),
                           "n_with_copy": v.get("n_with_copy"), "share": v.get("share"),
                           "sampled": v.get("sampled") or v.get("reference_sampled"),
                           "with_copy": accuracy.get("with_copy"),
                           "without_copy": accuracy.get("without_copy")})
            pairs = (assets.copy_pairs(name, other, v.get("examples") or [],
                                       limit=SOURCE_PAIRS, size=THUMBNAIL_PIXELS)
                     if assets is not None else [])
            galleries.append({"query": name, "against": other, "pairs": pairs,
                              "n_listed": len(v.get("examples") or [])})
    names = [s["name"] for s in sets]
    return {"run": True, "max_images": state.get("max_images"),
            "few_cells_max": state.get("few_cells_max"), "sets": sets, "set_names": names,
            "classes": [{"name": cls, "cells": [by_set.get(n) for n in names]}
                        for cls, by_set in classes.items()],
            "copies": copies, "galleries": [g for g in galleries if g["n_listed"]]}


# ---------------------------------------------------------------- 7. shift

def _gap_factors(audit: Mapping, name: str, assets) -> dict | None:
    """The gap-factor chart and before/after examples of one shifted set, if measured."""
    d = _per_set(audit, "gap_factors").get(name)
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
            "explained": _get(combined.required("explained"), "value"),
            "gap": d.required("gap"),
            "sum_alone": combined.required("sum_alone_share"),
            "interaction": combined.required("interaction_share"),
            "beyond_gap": combined.required("beyond_gap"),
            "unexplained": _get(combined.required("unexplained"), "value"),
            "examples": examples}


def shift_section(audit: Mapping, assets=None) -> dict:
    result, reason = check_state(audit, "shift")
    if reason:
        return _unavailable(reason, **_check_header(result))
    m = result.metrics
    # Robustness has its own section, which reports an unreadable layout.
    resemblance = _per_set(audit, "robustness", lenient=True)
    sets, drifts = [], {}
    for name, d in result.per_set().items():
        dec = d.get("decomposition") or {}   # optional: absent when it cannot be computed
        props = d.section("properties")
        drifts[name] = props.data
        emb = d.section("embedding")
        absorbing = d.get("absorbing") or {}
        near = _get(resemblance.get(name), "nearest")
        sets.append({
            "name": name, "n": d.required("n"), "drop": d.required("drop"),
            "change": _change_text(d.required("drop")),
            "accuracy": _pick(d.section("accuracy"), "reference", "shifted"),
            "prior_part": dec.get("prior_part"), "accuracy_part": dec.get("accuracy_part"),
            "prior_share": dec.get("prior_share"),
            "per_class": [{"class": c, **_pick(v, "p_ref", "p_shifted", "acc_ref", "acc_shifted",
                                               "prior_part", "accuracy_part")}
                          for c, v in (dec.get("per_class") or {}).items()],
            "imputed": dec.get("imputed_classes") or [],
            "decomposition": figures.shift_decomposition(
                name, _get(d, "drop", "value", default=0.0) or 0.0,
                dec.get("prior_part") or 0.0, dec.get("per_class") or {}) if dec else None,
            "properties": [{"name": _words(p), **_pick(v, "ref_mean", "shifted_mean", "shift_sd",
                                                        "wasserstein_sd", "ks_p")}
                           for p, v in props.items()],
            "embedding": {"mmd2": emb.get("mmd2"), "p_value": emb.get("p_value"),
                          "domain_auc": emb.get("domain_auc"), "n_ref": emb.get("n_ref"),
                          "n_shifted": emb.get("n_shifted"), "n_perm": emb.get("n_perm")},
            "confidence": {k: _pick(d.section("confidence").get(k), "mean", "correct", "wrong")
                           for k in ("reference", "shifted")},
            "absorbing": [{"class": c, "error_share": share,
                           "change": _get(absorbing, "predicted_share_change", c)}
                          for c, share in (absorbing.get("error_share") or {}).items()],
            "n_errors": absorbing.get("n_errors"),
            "significant": d.get("significant_drift"),
            "nearest": ({"corruption": _words(near.get("corruption", "")),
                         "severity": near.get("severity"), "distance": near.get("distance"),
                         "clean_distance": _get(resemblance, name, "clean_distance")}
                        if isinstance(near, Mapping) else None),
        })
    for entry in sets:
        entry["gap_factors"] = _gap_factors(audit, entry["name"], assets)
    return {"available": True, "reason": "", **_check_header(result),
            "reference": m.get("reference"), "sets": sets,
            "drift_figure": figures.property_drift(drifts),
            "findings": _findings_of(audit, "shift")}


# ---------------------------------------------------------------- 8. calibration

_CALIBRATION_ROWS = (("ece", "ECE (expected calibration error)"), ("adaptive_ece", "adaptive ECE"),
                     ("mce", "MCE (largest bin error)"), ("brier", "Brier score"),
                     ("nll", "negative log-likelihood"), ("mean_confidence", "mean confidence"),
                     ("accuracy", "accuracy"), ("overconfidence", "confidence minus accuracy"))
_CALIBRATION_REQUIRED = frozenset({"ece", "mce", "brier", "nll", "accuracy"})  # as the schema


def calibration_section(audit: Mapping, assets=None) -> dict:
    result, reason = check_state(audit, "calibration")
    if reason:
        return _unavailable(reason, **_check_header(result))
    m = result.metrics
    temperature = m.required("temperature")
    sets = []
    for name, d in result.per_set().items():
        before, after = d.section("before"), d.section("after")
        by_fold = d.get("before_by_fold")   # optional: the reference only
        rows = [{"label": label, "key": key,
                 "before": before.required(key) if key in _CALIBRATION_REQUIRED else before.get(key),
                 "before_by_fold": _get(by_fold, key),
                 "after": after.required(key) if key in _CALIBRATION_REQUIRED else after.get(key),
                 "after_in_sample": _get(d, "after_in_sample", key)}
                for key, label in _CALIBRATION_ROWS]
        stages = {s: d.get(s) for s in ("before", "after") if d.get(s)}
        sets.append({"name": name, "role": d.get("role", ""), "n": d.get("n"), "rows": rows,
                     "basis": d.get("after_basis", ""), "by_fold": by_fold is not None,
                     "folds": _get(by_fold, "folds"),
                     "figure": figures.reliability_diagram(name, stages, temperature)})
    return {"available": True, "reason": "", **_check_header(result),
            "temperature": temperature, "reference": m.get("reference"),
            "folds": _get(m, "crossfit", "folds"),
            "n_bins": m.get("n_bins"), "sets": sets,
            "findings": _findings_of(audit, "calibration")}


# ---------------------------------------------------------------- 9. robustness

def robustness_section(audit: Mapping, assets=None) -> dict:
    result, reason = check_state(audit, "robustness")
    if reason:
        return _unavailable(reason, **_check_header(result))
    m = result.metrics
    severities = list(m.get("severities") or [])
    corruptions = m.required("corruptions", Mapping)
    rows = [{"name": _words(n), "rce": c.get("rce"),
             "accuracy": [_get(c, "severities", str(s), "accuracy") for s in severities],
             "ece": [_get(c, "severities", str(s), "ece") for s in severities]}
            for n, c in corruptions.items()]
    rows.sort(key=lambda r: -(r["rce"] if _finite(r["rce"]) else -1))
    resemblance = []
    for name, d in (m.get("datasets") or {}).items():
        resemblance.append({"name": name, "drop": d.get("drop"),
                            "clean_distance": d.get("clean_distance"),
                            "top": [{**_pick(t, "severity", "distance"),
                                     "corruption": _words(t.get("corruption", ""))}
                                    for t in d.get("top") or []]})
    return {"available": True, "reason": "", **_check_header(result),
            "reference": m.get("reference"), "n_images": m.get("n_images"),
            "clean_accuracy": m.required("clean_accuracy"), "clean_ece": m.get("clean_ece"),
            "mean_rce": m.required("mean_rce"), "severities": severities, "rows": rows,
            "status_drop": m.get("status_drop"), "resemblance": resemblance,
            "figure": figures.robustness_curves(m.get("clean_accuracy") or 0.0, severities,
                                                corruptions),
            "findings": _findings_of(audit, "robustness")}


# ---------------------------------------------------------------- 10. explanations

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
            "gain": _pick(faith.get("gain_vs_random"), "value", "low", "high")
            if faith.get("gain_vs_random") else None,
            "mass_share": focus.get("mass_share"), "area_share": focus.get("area_share"),
            "focus_ratio": focus.get("focus_ratio"),
            "sanity": _get(e, "sanity", "spearman"), "stability": _get(e, "stability", "spearman"),
            "flags": [(methods.get("flag_meanings") or {}).get(f, f) for f in e.get("flags", [])],
            "seconds": _get(methods, "methods", name, "timing", "seconds_per_image")})
    return rows


def _per_image_gain(faithfulness: Mapping | None, i: int) -> float | None:
    deletion = _get(faithfulness, "deletion", i)
    insertion = _get(faithfulness, "insertion", i)
    return insertion - deletion if _finite(deletion) and _finite(insertion) else None


def _per_image_scores(d: Mapping, method: str, i: int) -> dict:
    """One image's faithfulness gain over the random map and its cell-focus share."""
    e = _get(d, "methods", method) or {}
    gain = _per_image_gain(e.get("faithfulness"), i)
    random_gain = _per_image_gain(_get(d, "random", "faithfulness"), i)
    return {"gain": gain - random_gain if gain is not None and random_gain is not None else None,
            "focus": _get(e, "cell_focus", "per_image", i)}


def explanations_section(audit: Mapping, assets=None) -> dict:
    explanations = audit.get("explanations") or {}
    # The explanations' own verdict (not the gap-factor check's, which shares a word).
    header = {"status": explanations.get("status", "SKIP"),
              "summary": explanations.get("headline", "")}
    if not explanations:
        enabled = _get(audit, "config", "audit", "explain", default=True)
        why = ("explanations were switched off for this run (--no-explain)" if enabled is False
               else "the run recorded no explanations")
        return _unavailable(why, **header)
    if explanations.get("error") or explanations.get("skipped"):
        what = explanations.get("error") or explanations.get("skipped")
        return _unavailable(f"the explanations failed: {what}" if explanations.get("error")
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


# ---------------------------------------------------------------- 11. selective prediction

def selective_section(audit: Mapping, assets=None) -> dict:
    result, reason = check_state(audit, "selective")
    if reason:
        return _unavailable(reason, **_check_header(result))
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
                     "in_sample": _pick(d.get("in_sample"), "accepted_accuracy", "coverage"),
                     "aurc": d.required("aurc"), "ood_msp": _get(d, "ood_auroc", "msp"),
                     "ood_energy": _get(d, "ood_auroc", "energy")})
    return {"available": True, "reason": "", **_check_header(result),
            "threshold": threshold.required("value"),
            "target": threshold.required("target_accuracy"),
            "delta": threshold.get("delta"), "naive": threshold.get("naive_value"),
            "guarantee": threshold.get("guarantee"), "folds": _get(m, "crossfit", "folds"),
            "calibrated": threshold.required("calibrated"), "temperature": m.get("temperature"),
            "reference": m.get("reference"), "sets": sets,
            "figure": figures.coverage_curves(curves, threshold.get("value"),
                                              threshold.get("target_accuracy")),
            "findings": _findings_of(audit, "selective")}


# ---------------------------------------------------------------- 12. safety flags

def safety_section(audit: Mapping, assets=None) -> dict:
    result, reason = check_state(audit, "safety")
    if reason:
        return _unavailable(reason, **_check_header(result))
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
    return {"available": True, "reason": "", **_check_header(result),
            "reference": m.get("reference"), "false_alarm_rate": m.get("false_alarm_rate"),
            "observed_false_alarm": _get(m, "ood", "observed_false_alarm"),
            "folds": _get(m, "ood", "folds"), "usability": sorted((m.get("usability") or {})
                                                                  .items()),
            "reasons": reasons, "sets": sets, "findings": _findings_of(audit, "safety")}


# ---------------------------------------------------------------- 13. label issues

def label_issues_section(audit: Mapping, assets=None) -> dict:
    result, reason = check_state(audit, "label_issues")
    if reason:
        return _unavailable(reason, **_check_header(result))
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
            gallery.append({"image": tile["image"], **_pick(e, "path", "given", "suggested",
                                                            "probability_given",
                                                            "probability_suggested")})
        sets.append({"name": name, "role": d.required("role"), "n": d.required("n"),
                     "n_issues": d.required("n_issues"), "share": d.required("share"),
                     "accuracy": d.get("accuracy"), "accuracy_without": d.get("accuracy_without"),
                     "interpretation": d.get("interpretation", ""), "gallery": gallery,
                     "gallery_missing": missing,
                     "n_listed": len(d.required("issues", list))})
    return {"available": True, "reason": "", **_check_header(result),
            "reference": m.get("reference"), "method": m.required("method"), "sets": sets,
            "findings": _findings_of(audit, "label_issues")}


# ---------------------------------------------------------------- 14. recommendations

def recommendations(findings: Sequence[Mapping]) -> list[dict]:
    """The findings' actions, deduplicated, in rank order, with what prompted each."""
    out: dict[str, dict] = {}
    for rank, f in enumerate(findings, 1):
        action = (f.get("action") or "").strip()
        if not action:
            continue
        key = action.lower().rstrip(".")
        entry = out.setdefault(key, {"action": action[0].upper() + action[1:], "ranks": [],
                                     "checks": [], "datasets": [],
                                     "because": (f.get("text") or "").rstrip(". ")})
        entry["ranks"].append(rank)
        for field, value in (("checks", f.get("check")), ("datasets", f.get("dataset"))):
            if value and value not in entry[field]:
                entry[field].append(value)
    return list(out.values())


def limitations(audit: Mapping) -> list[str]:
    """What this audit cannot tell, computed from what it had and what it measured."""
    out = []
    datasets = audit.get("datasets") or {}
    roles = [d.get("role") for d in datasets.values()]
    for name, d in (audit.get("checks") or {}).items():
        if d.get("status") in ("ERROR", "SKIP"):
            out.append(f"The {name} check was not computed ({d.get('status')}): "
                       f"{d.get('error') or d.get('summary')}")
    if "shifted" not in roles:
        out.append("No shifted dataset (another site, scanner, stain or time) was evaluated: "
                   "performance on data unlike the reference is unknown.")
    if "train" not in roles:
        out.append("The training set was not given to the audit: leakage between training and "
                   "test images, and drift from the training data, were not checked against it.")
    perf = _get(audit, "checks", "performance", "metrics", "datasets", default={}) or {}
    for name, d in datasets.items():
        if d.get("role") == "train":
            continue
        acc = _get(perf, name, "accuracy") or {}
        if _finite(acc.get("low")) and _finite(acc.get("high")) and acc["high"] - acc["low"] > 0.1:
            out.append(f"{name} has {d.get('n_images')} images: its accuracy interval spans "
                       f"{100 * (acc['high'] - acc['low']):.0f} points, too wide for a precise "
                       "estimate.")
        if not d.get("has_groups"):
            out.append(f"{name} records no patient/slide groups: intervals treat images as "
                       "independent, and are too narrow if several images share a patient.")
        absent = [c for c, k in (d.get("class_counts") or {}).items() if not k]
        if absent:
            out.append(f"{name} has no images of {', '.join(absent)}: the model's performance "
                       "on these classes there is unknown.")
        skipped = d.get("skipped") or []
        if skipped:
            out.append(f"{len(skipped)} unreadable file(s) in {name} were left out.")
    if not _get(audit, "model", "metadata", "intended_use"):
        out.append("The model file does not state its intended clinical use, population or "
                   "users; whether the evaluated sets represent them needs human judgement.")
    if _get(audit, "checks", "label_issues", "status") in ("PASS", "WARN", "FAIL"):
        out.append("Likely label errors are found only where the model confidently disagrees "
                   "with a label: systematic labelling conventions shared by training and test "
                   "data stay invisible.")
    else:
        out.append("Labels are taken as given: the audit cannot detect systematic labelling "
                   "errors shared by training and test data.")
    out.append("The referral threshold's guarantee holds on data like the reference; under "
               "shift only measured figures apply, and the safety flags catch only what makes "
               "an image look unlike the reference.")
    return out


# Items of the CLAIM (2020) and TRIPOD+AI (2024) checklists, paraphrased, mapped to the report
# section that answers them; None = needs human input (not in any audit input).
CHECKLIST: tuple[tuple[str, str, str, str | None], ...] = (
    ("CLAIM", "3", "Intended use and clinical role of the AI", "model-card"),
    ("CLAIM", "7", "Data sources", "datasets"),
    ("CLAIM", "8", "Eligibility criteria of cases", None),
    ("CLAIM", "9", "Data pre-processing steps", "model-card"),
    ("CLAIM", "12", "De-identification methods", None),
    ("CLAIM", "13", "How missing data were handled", "datasets"),
    ("CLAIM", "14-18", "Ground truth: definition, annotators, tools, inter-rater variability", None),
    ("CLAIM", "19", "Intended sample size and how it was determined", None),
    ("CLAIM", "20", "How data were assigned to partitions, with proportions", "model-card"),
    ("CLAIM", "21", "Level at which partitions are disjoint", "leakage"),
    ("CLAIM", "22", "Detailed description of the model", "model-card"),
    ("CLAIM", "23", "Software libraries and versions", "reproducibility"),
    ("CLAIM", "24", "Initialisation of model parameters", "model-card"),
    ("CLAIM", "25", "Training approach: augmentation, hyper-parameters", "model-card"),
    ("CLAIM", "26", "Method of selecting the final model", "model-card"),
    ("CLAIM", "28", "Metrics of model performance", "performance"),
    ("CLAIM", "29", "Statistical measures of uncertainty (confidence intervals)", "performance"),
    ("CLAIM", "30", "Robustness or sensitivity analysis", "robustness"),
    ("CLAIM", "31", "Explainability methods and how they were validated", "explanations"),
    ("CLAIM", "32", "Validation on external data", "shift"),
    ("CLAIM", "34", "Demographic and clinical characteristics of cases", None),
    ("CLAIM", "35", "Performance on all data partitions", "performance"),
    ("CLAIM", "37", "Failure analysis of incorrectly classified cases", "errors"),
    ("CLAIM", "38", "Study limitations", "recommendations"),
    ("CLAIM", "40-42", "Registration, protocol, funding", None),
    ("TRIPOD+AI", "5", "Data sources and dates", "datasets"),
    ("TRIPOD+AI", "6", "Participants: setting, eligibility", None),
    ("TRIPOD+AI", "7", "Data preparation and pre-processing", "model-card"),
    ("TRIPOD+AI", "8", "Outcome (reference standard) definition and assessment", None),
    ("TRIPOD+AI", "10", "Sample size", "datasets"),
    ("TRIPOD+AI", "12", "Analytical methods: partitioning, model, hyper-parameters, measures",
     "model-card"),
    ("TRIPOD+AI", "13", "Class imbalance handling", "model-card"),
    ("TRIPOD+AI", "14", "Fairness across subgroups", None),
    ("TRIPOD+AI", "15", "Model output and decision thresholds", "selective"),
    ("TRIPOD+AI", "16", "Differences between development and evaluation data", "shift"),
    ("TRIPOD+AI", "18", "Open science: code and data availability", "reproducibility"),
    ("TRIPOD+AI", "20", "Participant flow and characteristics per dataset", "datasets"),
    ("TRIPOD+AI", "22", "Model specification", "model-card"),
    ("TRIPOD+AI", "23", "Model performance with uncertainty, including subgroups", "performance"),
    ("TRIPOD+AI", "23", "Model performance: calibration of predicted probabilities",
     "calibration"),
    ("TRIPOD+AI", "26", "Limitations", "recommendations"),
    ("TRIPOD+AI", "27", "Usability: poor-quality input, user interaction", "safety"),
)


def reporting_checklist(available: Mapping[str, bool]) -> list[dict]:
    """Checklist rows: answered in section N, not computed in this run, or needs human input."""
    titles = dict(SECTIONS)
    rows = []
    for guideline, item, text, anchor in CHECKLIST:
        if anchor is None:
            state, where = "human", ""
        elif available.get(anchor, False):
            state, where = "answered", f"{SECTION_NUMBER[anchor]}. {titles[anchor]}"
        else:
            state, where = "missing", f"{SECTION_NUMBER[anchor]}. {titles[anchor]}"
        rows.append({"guideline": guideline, "item": item, "text": text, "state": state,
                     "anchor": anchor or "", "where": where})
    return rows


def recommendations_section(audit: Mapping, assets=None, *, available=None) -> dict:
    return {"available": True, "reason": "",
            "recommendations": recommendations(audit.get("findings") or []),
            "limitations": limitations(audit),
            "checklist": reporting_checklist(available or {})}


# ---------------------------------------------------------------- 15. reproducibility

def reproducibility_section(audit: Mapping, assets=None) -> dict:
    command = audit.get("command") or []
    config = audit.get("config") or {}
    meta = _get(audit, "model", "metadata", default={}) or {}
    audit_versions = audit.get("versions") or {}
    train_versions = meta.get("versions") or {}
    packages = sorted(set(audit_versions) | set(train_versions))
    return {
        "available": True, "reason": "",
        "command": shlex.join(str(c) for c in command) if command else None,
        "config": toml_text(config) if config else "",
        "seeds": [("audit seed ([audit] seed)", _get(config, "audit", "seed")),
                  ("training seed", meta.get("seed"))],
        "versions": [{"package": p, "audit": audit_versions.get(p),
                      "training": train_versions.get(p)} for p in packages],
        "model_path": _get(audit, "model", "path"), "model_sha256": _get(audit, "model", "sha256"),
        "schema_version": audit.schema_version,
        "datasets": [(n, d.get("source", ""), d.get("fingerprint", ""))
                     for n, d in (audit.get("datasets") or {}).items()],
        "timings": sorted((k, v) for k, v in (audit.get("timings") or {}).items()
                          if not k.startswith("cache_hit")),
        "cache_hits": [k.split(".", 1)[1] for k, v in (audit.get("timings") or {}).items()
                       if k.startswith("cache_hit") and v],
    }


# ---------------------------------------------------------------- assembly

BUILDERS: dict[str, Callable[..., dict]] = {
    "verdict": verdict_section, "model-card": model_card_section, "datasets": datasets_section,
    "performance": performance_section, "errors": errors_section, "leakage": leakage_section,
    "shift": shift_section, "calibration": calibration_section,
    "robustness": robustness_section, "explanations": explanations_section,
    "selective": selective_section, "safety": safety_section,
    "label-issues": label_issues_section, "recommendations": recommendations_section,
    "reproducibility": reproducibility_section,
}


def build_context(audit: Mapping | AuditDocument, assets=None, *, strict: bool = False) -> dict:
    """The template context: header facts and one dict per section (see SECTIONS). `audit` is
    read through `load_audit`; with `strict`, a section that cannot be read raises."""
    audit = load_audit(audit)
    sections, problems = {}, []
    for anchor, _ in SECTIONS:
        if anchor == "recommendations":
            continue  # needs the others' availability for the checklist
        sections[anchor] = _guarded(anchor, BUILDERS[anchor], audit, assets, problems,
                                    strict=strict)
    available = {a: bool(s.get("available")) for a, s in sections.items()}
    available["recommendations"] = True  # always written: limitations need no check
    sections["recommendations"] = _guarded(
        "recommendations", lambda a, s: recommendations_section(a, s, available=available),
        audit, assets, problems, strict=strict)
    ordered = [{"anchor": anchor, "number": i, "title": title, "heading": f"{i}. {title}",
                "data": sections[anchor]} for i, (anchor, title) in enumerate(SECTIONS, 1)]
    model = audit.get("model") or {}
    return {
        "title": "CellAudit report",
        "status": audit.get("status", "ERROR"),
        "model_name": str(model.get("path", "model")).rsplit("/", 1)[-1],
        "model_sha256": model.get("sha256") or "",
        "datasets": _datasets_in_order(audit),
        "reference": _reference(audit),
        "generated_from": "audit.json",
        "schema_version": audit.schema_version,
        "sections": ordered, "s": sections, "problems": problems,
    }


def _guarded(anchor: str, builder: Callable, audit: AuditDocument, assets, problems: list, *,
             strict: bool = False) -> dict:
    try:
        section = builder(audit, assets)
        if section.get("unreadable"):   # written, with a part it could not read
            if strict:
                raise AuditJsonError(section["unreadable"])
            problems.append({"section": anchor, "error": section["unreadable"]})
        return section
    except Exception as exc:  # noqa: BLE001 - one unreadable section must not sink the report
        if strict:
            raise
        detail = f"{type(exc).__name__}: {exc}"
        problems.append({"section": anchor, "error": detail})
        return _unavailable(f"the report could not read this part of audit.json ({detail})")
