"""Classify new images with a model and, optionally, its audit's calibration and referral
threshold: the library behind `audit predict` and `audit.predict`.

Images are decoded through the model's input contract and predicted in batches; an unreadable
file gets a row saying why instead of disappearing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from audit.errors import InputError

__all__ = ["collect_images", "audit_calibration", "predict_rows", "COLUMNS"]

COLUMNS = ("path", "predicted_class", "probability", "refer_to_human", "status")


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


def audit_calibration(audit_path: str | Path, model_sha256: str) -> tuple[float, float | None]:
    """(temperature, referral threshold) that the audit fitted for this very model."""
    path = Path(audit_path)
    if path.is_dir():
        path = path / "audit.json"
    try:
        audit = json.loads(path.read_text(encoding="utf-8"))
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


def predict_rows(loaded, paths: list[str], *, temperature: float = 1.0,
                 threshold: float | None = None, batch_size: int = 64) -> Iterator[dict]:
    """One row per path: {"path", "predicted_class", "probability", "refer_to_human" (True,
    False, or None without a threshold), "status" ("ok" or "unreadable: why"), "p_<class>"...}."""
    from audit.inference import Predictor, softmax
    from audit.progress import progress

    class_names = loaded.contract.class_names
    size, resize = loaded.contract.input_size, loaded.contract.resize
    predictor = Predictor(loaded, batch_size=batch_size)
    starts = range(0, len(paths), batch_size)
    for start in progress(starts, desc="predict", total=len(starts), unit="batch"):
        batch_paths = paths[start:start + batch_size]
        images, problems = _read_batch(batch_paths, size, resize)
        probs = iter(softmax(predictor.logits(images) / temperature) if len(images) else [])
        for path, problem in zip(batch_paths, problems, strict=True):
            if problem:
                yield {"path": path, "predicted_class": None, "probability": None,
                       "refer_to_human": None, "status": f"unreadable: {problem}",
                       **{f"p_{c}": None for c in class_names}}
                continue
            p = next(probs)
            top = int(np.argmax(p))
            yield {"path": path, "predicted_class": class_names[top],
                   "probability": float(p[top]),
                   "refer_to_human": None if threshold is None else bool(p[top] < threshold),
                   "status": "ok", **{f"p_{c}": float(v) for c, v in zip(class_names, p,
                                                                          strict=True)}}


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
