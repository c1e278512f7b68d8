"""`audit predict`: classify new images with the audit's calibration, referral threshold and
safety flags.

An image is referred to a human (`refer_to_human` yes, the reasons in `refer_reason`) when it is
not a usable cell image (blank, far smaller than the model input, mostly black padding, no
stained nucleus: checked with or without an audit), when it is unlike the audit's reference
images (the Mahalanobis score fitted by the audit's safety check), or when its calibrated
confidence is below the audit's certified referral threshold (all images, if the audit could
certify none).
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit.commands.common import positive_int
from audit.errors import InputError, UsageError

__all__ = ["add_parser", "run", "collect_images", "audit_calibration", "audit_safety",
           "SafetyRules"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict", help="classify new images, with calibrated probabilities and referral flags",
        description="Classify image files or folders in batches. Images that are not usable "
                    "cell images are referred to a human reviewer. With --audit, probabilities "
                    "are temperature-calibrated, and images below the audit's certified "
                    "referral threshold or unlike its reference images are referred too.",
    )
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--model", required=True, help="trained model (.keras)")
    p.add_argument("--audit", metavar="AUDIT_JSON", help="audit.json of this model")
    p.add_argument("--out", required=True, help="output CSV")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.set_defaults(handler=run)


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


def audit_calibration(audit_path: str, model_sha256: str) -> tuple[float, float | None, bool]:
    """(temperature, referral threshold, whether the audit's selective check certified none)
    that the audit fitted for this very model."""
    try:
        audit = json.loads(Path(audit_path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"--audit '{audit_path}': cannot read audit JSON ({exc})") from exc
    if audit.get("model", {}).get("sha256") != model_sha256:
        raise InputError(f"--audit '{audit_path}' was computed for another model (sha256 "
                         f"{str(audit.get('model', {}).get('sha256'))[:12]}...); re-run the audit")
    checks = audit.get("checks", {})
    temperature = checks.get("calibration", {}).get("metrics", {}).get("temperature") or 1.0
    threshold = checks.get("selective", {}).get("metrics", {}).get("threshold", {})
    calibrated = threshold.get("calibrated", False)
    none_certified = "guarantee" in threshold and threshold.get("value") is None
    return (float(temperature) if calibrated else 1.0), threshold.get("value"), none_certified


@dataclass(frozen=True)
class SafetyRules:
    """Usability thresholds and, from an audit, the OOD model fitted on its reference."""

    thresholds: dict
    ood: object | None = None  # audit.safety.OODModel

    def flags(self, images: np.ndarray, sizes: tuple[np.ndarray, np.ndarray],
              embeddings: np.ndarray, *, input_size: int) -> np.ndarray:
        from audit.imaging import image_usability, rms_contrast
        from audit.safety import OOD_BIT, usability_flags

        props = {"contrast": rms_contrast(images),
                 **image_usability(images), "source_width": sizes[0], "source_height": sizes[1]}
        flags = usability_flags(props, input_size=input_size, thresholds=self.thresholds)
        if self.ood is not None:
            flags |= self.ood.flags(embeddings).astype(np.int64) * OOD_BIT
        return flags


def audit_safety(audit_path: str) -> SafetyRules:
    """The safety check's fitted parameters from the audit's artifacts (defaults if absent)."""
    from audit.safety import USABILITY_DEFAULTS, OODModel

    audit = json.loads(Path(audit_path).read_text(encoding="utf-8"))
    relative = audit.get("checks", {}).get("safety", {}).get("artifacts", {}).get("model")
    if not relative:
        return SafetyRules(dict(USABILITY_DEFAULTS))
    path = Path(audit_path).parent / relative
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"--audit '{audit_path}': cannot read its safety model '{path}' "
                         f"({exc})") from exc
    thresholds = {k: float(arrays.get(f"usability_{k}", v)) for k, v in USABILITY_DEFAULTS.items()}
    return SafetyRules(thresholds, OODModel.from_arrays(arrays))


def run(args: argparse.Namespace) -> int:
    from audit.atomic import atomic_path
    from audit.predict import Predictor, softmax
    from audit.progress import progress
    from audit.safety import USABILITY_DEFAULTS, reasons_text
    from model.io import load_model, model_hash

    if not args.out.endswith(".csv"):
        raise UsageError(f"--out '{args.out}' must end in .csv")
    paths = collect_images(args.images)
    model, metadata = load_model(args.model)

    temperature, threshold, rules = 1.0, None, SafetyRules(dict(USABILITY_DEFAULTS))
    none_certified = False
    if args.audit:
        temperature, threshold, none_certified = audit_calibration(args.audit,
                                                                   model_hash(args.model))
        rules = audit_safety(args.audit)
    class_names = metadata["class_names"]
    size = int(metadata["input_size"])
    predictor = Predictor(model, batch_size=args.batch_size)
    n_unreadable, n_referred = 0, 0
    with atomic_path(args.out, suffix=".csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "predicted_class", "probability", "refer_to_human",
                         "refer_reason", "status", *[f"p_{c}" for c in class_names]])
        starts = range(0, len(paths), args.batch_size)
        for start in progress(starts, desc="predict", total=len(starts), unit="batch"):
            batch_paths = paths[start:start + args.batch_size]
            images, readable, sizes = _read_batch(batch_paths, size)
            if len(images):
                logits, embeddings = predictor.outputs(images)
                probs = softmax(logits / temperature)
                flags = rules.flags(images, sizes, embeddings, input_size=size)
            rows = iter(range(len(images)))
            for path, problem in zip(batch_paths, readable, strict=True):
                if problem:
                    n_unreadable += 1
                    writer.writerow([path, "", "", "", "", f"unreadable: {problem}",
                                     *[""] * len(class_names)])
                    continue
                i = next(rows)
                p = probs[i]
                top = int(np.argmax(p))
                reasons = [reasons_text(flags[i])] if flags[i] else []
                if none_certified:
                    reasons.append("the audit certified no referral threshold")
                elif threshold is not None and p[top] < threshold:
                    reasons.append("confidence below the referral threshold")
                refer = "yes" if reasons else ("no" if args.audit else "")
                n_referred += bool(reasons)
                writer.writerow([path, class_names[top], f"{p[top]:.4f}", refer,
                                 "; ".join(reasons), "ok", *[f"{v:.4f}" for v in p]])
    print(f"wrote {args.out}: {len(paths) - n_unreadable} classified, {n_unreadable} unreadable, "
          f"{n_referred} referred to a human"
          + ("" if threshold is None else f" (referral threshold {threshold:.3f}, "
                                          f"T={temperature:.2f})"))
    return 0


def _read_batch(batch_paths: list[str], size: int
                ) -> tuple[np.ndarray, list[str | None], tuple[np.ndarray, np.ndarray]]:
    """Decode a batch; an unreadable file is reported in its row, not dropped. Also the
    readable files' sizes on disk (from the header)."""
    from audit.data import load_image
    from audit.imaging import source_sizes

    problems: list[str | None] = []
    images = []
    for path in batch_paths:
        try:
            images.append(load_image(path, size))
            problems.append(None)
        except InputError as exc:
            problems.append(str(exc).split(": ", 1)[-1])
    array = np.stack(images) if images else np.empty((0, size, size, 3), np.uint8)
    sizes = source_sizes([p for p, problem in zip(batch_paths, problems, strict=True)
                          if problem is None])
    return array, problems, sizes
