"""Classify new images with a model and, optionally, its audit's calibration, referral
threshold and safety flags: the library behind `audit predict` and `audit.predict`.

Images are decoded through the model's input contract and predicted in batches; an unreadable
file gets a row saying why instead of disappearing. An image is referred to a human
(`refer_to_human`, the reasons in `refer_reason`) when it is not a usable cell image (blank,
far smaller than the model input, mostly black padding, no stained nucleus: checked with or
without an audit), when it is unlike the audit's reference images (the Mahalanobis score its
safety check fitted), or when its calibrated confidence is below the audit's certified referral
threshold (every image, if the audit could certify none).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audit.audit_json import AuditDocument, AuditJsonError, load_audit
from audit.errors import InputError

__all__ = ["collect_images", "audit_calibration", "audit_referral", "Referral", "SafetyRules",
           "predict_rows", "COLUMNS"]

COLUMNS = ("path", "predicted_class", "probability", "refer_to_human", "refer_reason", "status")


def collect_images(items: list[str]) -> list[str]:
    from audit.data import IMAGE_EXTENSIONS

    paths = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file()
                           and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
            if not found:
                raise InputError(f"folder '{item}' holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths += found
        elif path.is_file():
            paths.append(str(path))
        else:
            raise InputError(f"'{item}' is neither an image file nor a folder")
    return paths


# What changes the model's outputs: an audit's temperature, threshold and OOD model hold
# only for the model fed as in the audit (defaults for audits written before a field existed).
_FED_AS = {"input_size": None, "preprocess": None, "resize": None, "channel_order": None,
           "views": "single"}


def _read_audit(audit_path: str | Path, model_sha256: str, contract=None) -> AuditDocument:
    """The audit (through the one loader: version checked, older schema migrated), refused
    when it was computed for another model, or for this one fed another way (`contract`)."""
    try:
        audit = load_audit(audit_path, label="--audit")
        sha = audit.model.sha256
    except AuditJsonError as exc:
        raise InputError(str(exc)) from None
    if sha != model_sha256:
        raise InputError(f"--audit '{audit_path}' was computed for another model (sha256 "
                         f"{sha[:12] or 'None'}...); re-run the audit")
    audited = audit.model.get("contract") or {}
    for key, default in _FED_AS.items() if contract is not None else ():
        then, now = audited.get(key, default), getattr(contract, key)
        if then is not None and then != now:
            option = "--" + key.replace("_", "-")
            raise InputError(f"--audit '{audit_path}' was computed with the model fed "
                             f"{option} {then}; here it is fed {option} {now}. Give "
                             f"{option} {then}, or re-run the audit")
    return audit


def audit_calibration(audit_path: str | Path, model_sha256: str) -> tuple[float, float | None]:
    """(temperature, referral threshold) that the audit fitted for this very model."""
    referral = audit_referral(audit_path, model_sha256)
    return referral.temperature, referral.threshold


@dataclass(frozen=True)
class SafetyRules:
    """Usability thresholds and, from an audit, the OOD model fitted on its reference."""

    thresholds: dict = field(default_factory=dict)
    ood: object | None = None  # audit.safety.OODModel

    def flags(self, images: np.ndarray, sizes: tuple[np.ndarray, np.ndarray],
              embeddings: np.ndarray, *, input_size: int) -> np.ndarray:
        from audit.imaging import image_usability, rms_contrast
        from audit.safety import OOD_BIT, usability_flags

        props = {"contrast": rms_contrast(images), **image_usability(images),
                 "source_width": sizes[0], "source_height": sizes[1]}
        flags = usability_flags(props, input_size=input_size, thresholds=self.thresholds)
        if self.ood is not None:
            flags |= self.ood.flags(embeddings).astype(np.int64) * OOD_BIT
        return flags


@dataclass(frozen=True)
class Referral:
    """What the audit decided for this model: temperature, certified referral threshold
    (`none_certified`: the selective check could certify none, so every image is referred) and
    the safety flags' rules."""

    temperature: float = 1.0
    threshold: float | None = None
    none_certified: bool = False
    safety: SafetyRules = field(default_factory=SafetyRules)


def audit_referral(audit_path: str | Path, model_sha256: str, contract=None) -> Referral:
    """The audit's temperature, threshold and safety model for this very model, fed the way
    `contract` (an `InputContract`, when given) says."""
    from audit.safety import OODModel

    audit = _read_audit(audit_path, model_sha256, contract)
    # Each part is optional: a check that was not run (or not computed) refers nothing.
    calibration, selective, safety_check = (audit.check(n) for n in
                                            ("calibration", "selective", "safety"))
    temperature = ((calibration.metrics.get("temperature") if calibration and calibration.computed
                    else None) or 1.0)
    threshold = (selective.metrics.section("threshold") if selective and selective.computed
                 else {})
    calibrated = threshold.get("calibrated", False)
    safety = SafetyRules()
    relative = safety_check.artifacts.get("model") if safety_check else None
    if relative:
        model_file = audit.base_dir / relative
        try:
            with np.load(model_file, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise InputError(f"--audit '{audit_path}': cannot read its safety model "
                             f"'{model_file}' ({exc})") from exc
        safety = SafetyRules({k[len("usability_"):]: float(v) for k, v in arrays.items()
                              if k.startswith("usability_")}, OODModel.from_arrays(arrays))
    return Referral(temperature=float(temperature) if calibrated else 1.0,
                    threshold=threshold.get("value"),
                    none_certified="guarantee" in threshold and threshold.get("value") is None,
                    safety=safety)


def predict_rows(loaded, paths: list[str], *, temperature: float = 1.0,
                 threshold: float | None = None, batch_size: int = 64,
                 referral: Referral | None = None) -> Iterator[dict]:
    """One row per path: {"path", "predicted_class", "probability", "refer_to_human" (True,
    False, or None when nothing refers it and there is no audit), "refer_reason" ("; "-joined),
    "status" ("ok" or "unreadable: why"), "p_<class>"...}. `referral` (from `audit_referral`)
    overrides `temperature` and `threshold` and adds the audit's safety model."""
    from audit.inference import Predictor, softmax
    from audit.progress import progress
    from audit.safety import reasons_text

    if referral is None:
        referral = Referral(temperature=temperature, threshold=threshold)
    audited = referral.threshold is not None or referral.none_certified or \
        referral.safety.ood is not None
    class_names = loaded.contract.class_names
    size, resize = loaded.contract.input_size, loaded.contract.resize
    predictor = Predictor(loaded, batch_size=batch_size)
    starts = range(0, len(paths), batch_size)
    for start in progress(starts, desc="predict", total=len(starts), unit="batch"):
        batch_paths = paths[start:start + batch_size]
        images, problems, sizes = _read_batch(batch_paths, size, resize)
        if len(images):
            logits, embeddings = predictor.outputs(images)
            probs = softmax(logits / referral.temperature)
            flags = referral.safety.flags(images, sizes, embeddings, input_size=size)
        rows = iter(range(len(images)))
        for path, problem in zip(batch_paths, problems, strict=True):
            if problem:
                yield {"path": path, "predicted_class": None, "probability": None,
                       "refer_to_human": None, "refer_reason": None,
                       "status": f"unreadable: {problem}", **{f"p_{c}": None for c in class_names}}
                continue
            i = next(rows)
            p = probs[i]
            top = int(np.argmax(p))
            reasons = [reasons_text(flags[i])] if flags[i] else []
            if referral.none_certified:
                reasons.append("the audit certified no referral threshold")
            elif referral.threshold is not None and p[top] < referral.threshold:
                reasons.append("confidence below the referral threshold")
            yield {"path": path, "predicted_class": class_names[top],
                   "probability": float(p[top]),
                   "refer_to_human": True if reasons else (False if audited else None),
                   "refer_reason": "; ".join(reasons), "status": "ok",
                   **{f"p_{c}": float(v) for c, v in zip(class_names, p, strict=True)}}


def _read_batch(batch_paths: list[str], size: int, resize: str
                ) -> tuple[np.ndarray, list[str | None], tuple[np.ndarray, np.ndarray]]:
    """Decode a batch; an unreadable file is reported in its row, not dropped. Also the
    readable files' (widths, heights) on disk, read from the header in the same open as the
    pixels: each file is opened once."""
    from audit.decode import load_image_with_size

    problems: list[str | None] = []
    images, stored = [], []
    for path in batch_paths:
        try:
            image, source_size = load_image_with_size(path, size, resize=resize)
        except InputError as exc:
            problems.append(str(exc).split(": ", 1)[-1])
            continue
        images.append(image)
        stored.append(source_size)
        problems.append(None)
    array = np.stack(images) if images else np.empty((0, size, size, 3), np.uint8)
    sizes = np.array(stored, dtype=np.int64).reshape(len(stored), 2)
    return array, problems, (sizes[:, 0], sizes[:, 1])
