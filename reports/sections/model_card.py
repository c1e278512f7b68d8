"""Report section 2: Model card."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reports import figures
from reports.sections.common import unavailable
from reports.sections.registry import register_section


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
        return unavailable("audit.json has no model description")
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
                    ("preprocess", "Pixel scaling"), ("output", "Outputs"),
                    ("views", "Test-time views"))
_VIEWS_SHOWN = {"single": "one: the image as it is",
                "dihedral8": "8: every answer is the mean probability over the image's four "
                             "rotations and their mirror images"}
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
            if key == "views":
                shown = _VIEWS_SHOWN.get(value, shown)
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
        "views_averaged": contract.get("views", "single") != "single",
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


register_section("model-card", "Model card", model_card_section, "_model_card.html.j2", order=20)
