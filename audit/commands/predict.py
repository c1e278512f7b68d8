"""`audit predict`: classify new images with the audit's calibration and referral threshold."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from audit.commands.common import MODEL_HELP, add_model_options, contract_options, positive_int
from audit.errors import InputError, UsageError

__all__ = ["add_parser", "run", "collect_images", "audit_calibration"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict", help="classify new images, with calibrated probabilities and referral flags",
        description="Classify image files or folders in batches. With --audit, probabilities "
                    "are temperature-calibrated and images below the audit's referral "
                    "threshold are flagged for a human reviewer.",
    )
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--audit", metavar="AUDIT_JSON", help="audit.json of this model")
    p.add_argument("--out", required=True, help="output CSV")
    p.add_argument("--batch-size", type=positive_int, default=64)
    add_model_options(p)
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


def audit_calibration(audit_path: str, model_sha256: str) -> tuple[float, float | None]:
    """(temperature, referral threshold) that the audit fitted for this very model."""
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
    return (float(temperature) if calibrated else 1.0), threshold.get("value")


def run(args: argparse.Namespace) -> int:
    from audit.atomic import atomic_path
    from audit.inference import Predictor, softmax
    from audit.progress import progress
    from model.loaded import load_model

    if not args.out.endswith(".csv"):
        raise UsageError(f"--out '{args.out}' must end in .csv")
    paths = collect_images(args.images)
    loaded = load_model(args.model, contract_options(args))
    temperature, threshold = 1.0, None
    if args.audit:
        temperature, threshold = audit_calibration(args.audit, loaded.sha256)
    class_names = loaded.contract.class_names
    size, resize = loaded.contract.input_size, loaded.contract.resize
    predictor = Predictor(loaded, batch_size=args.batch_size)
    n_unreadable = 0
    with atomic_path(args.out, suffix=".csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "predicted_class", "probability", "refer_to_human", "status",
                         *[f"p_{c}" for c in class_names]])
        starts = range(0, len(paths), args.batch_size)
        for start in progress(starts, desc="predict", total=len(starts), unit="batch"):
            batch_paths = paths[start:start + args.batch_size]
            images, readable = _read_batch(batch_paths, size, resize)
            probs = softmax(predictor.logits(images) / temperature) if len(images) else []
            row_probs = iter(probs)
            for path, problem in zip(batch_paths, readable, strict=True):
                if problem:
                    n_unreadable += 1
                    writer.writerow([path, "", "", "", f"unreadable: {problem}",
                                     *[""] * len(class_names)])
                    continue
                p = next(row_probs)
                top = int(np.argmax(p))
                refer = "" if threshold is None else ("yes" if p[top] < threshold else "no")
                writer.writerow([path, class_names[top], f"{p[top]:.4f}", refer, "ok",
                                 *[f"{v:.4f}" for v in p]])
    print(f"wrote {args.out}: {len(paths) - n_unreadable} classified, {n_unreadable} unreadable"
          + ("" if threshold is None else f", referral threshold {threshold:.3f}, T={temperature:.2f}"))
    return 0


def _read_batch(batch_paths: list[str], size: int, resize: str
                ) -> tuple[np.ndarray, list[str | None]]:
    """Decode a batch; an unreadable file is reported in its row, not dropped."""
    from audit.data import load_image

    problems: list[str | None] = []
    images = []
    for path in batch_paths:
        try:
            images.append(load_image(path, size, resize=resize))
            problems.append(None)
        except InputError as exc:
            problems.append(str(exc).split(": ", 1)[-1])
    array = np.stack(images) if images else np.empty((0, size, size, 3), np.uint8)
    return array, problems
