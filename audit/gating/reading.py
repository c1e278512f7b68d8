"""Reading an audit.json for the gate: the one place that knows where the numbers live.

    datasets.<name>                 role, fingerprint, n_images, class_counts,
                                    predictions (npz relative to audit.json's folder: labels,
                                    logits, paths, and groups when the dataset has them)
    checks.performance.metrics.datasets.<name>
        accuracy | balanced_accuracy | macro_f1      {"value", "low", "high"} (or a number)
        per_class.<class>.recall                     {"value", "low", "high"}
    checks.calibration.metrics.datasets.<name>.<before|after>.ece   a number

A missing or undefined number is not an exception: it comes back as a `Reading` whose
`problem` says what is missing, so the rule that needed it fails with that sentence.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit.errors import InputError
from audit.results import SCHEMA_VERSION

__all__ = ["AuditFile", "Reading", "Predictions", "PredictionsUnavailable"]

_MISSING = object()


@dataclass(frozen=True)
class Reading:
    """A number from an audit, or None and the reason it is missing."""

    value: float | None
    problem: str | None = None


@dataclass(frozen=True)
class Predictions:
    """Per-image labels and predicted classes (indices into `class_names`), relative paths and
    groups (None when the dataset has none, or the audit predates them)."""

    labels: np.ndarray
    predicted: np.ndarray
    paths: np.ndarray
    class_names: tuple[str, ...]
    groups: np.ndarray | None = None


class PredictionsUnavailable(Exception):
    """The per-image predictions a significance test needs are missing or unreadable."""


@dataclass(frozen=True)
class AuditFile:
    path: Path
    data: dict
    role: str  # "baseline" or "current": how messages name this audit

    @classmethod
    def load(cls, path: str | os.PathLike, *, role: str) -> AuditFile:
        path = Path(path)
        where = f"{role} audit '{path}'"
        if not path.is_file():
            raise InputError(f"{where} does not exist; expected an audit.json written by `audit run`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))  # NaN is read, then judged by rules
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{where} is not valid JSON: {exc}") from exc
        return cls(path=path, data=_validated(data, where=where), role=role)

    # ---- run-wide facts ----

    @property
    def status(self) -> str:
        return str(self.data.get("status", ""))

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.data["model"]["class_names"])

    @property
    def model_sha(self) -> str:
        return str(self.data["model"].get("sha256") or "")

    @property
    def dataset_names(self) -> list[str]:
        return list(self.data["datasets"])

    # ---- one dataset ----

    def dataset(self, name: str) -> dict:
        return self.data["datasets"][name]

    def dataset_role(self, name: str) -> str:
        return str(self.dataset(name).get("role", ""))

    def fingerprint(self, name: str) -> str:
        return str(self.dataset(name).get("fingerprint") or "")

    def n_images(self, name: str) -> int | None:
        info = self.dataset(name)
        n = info.get("n_images")
        if isinstance(n, int) and not isinstance(n, bool):
            return n
        counts = info.get("class_counts")
        if isinstance(counts, dict):
            return int(sum(v for v in counts.values() if isinstance(v, (int, float))))
        return None

    def class_count(self, name: str, class_name: str) -> int | None:
        counts = self.dataset(name).get("class_counts")
        value = counts.get(class_name) if isinstance(counts, dict) else None
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    # ---- numbers ----

    def metric(self, name: str, metric: str) -> Reading:
        node, problem = self._check_numbers("performance", name)
        if problem:
            return Reading(None, problem)
        return self._number(node.get(metric, _MISSING), f"{metric} for {name}")

    def class_recall(self, name: str, class_name: str) -> Reading:
        node, problem = self._check_numbers("performance", name)
        if problem:
            return Reading(None, problem)
        per_class = node.get("per_class")
        entry = per_class.get(class_name) if isinstance(per_class, dict) else None
        value = entry.get("recall", _MISSING) if isinstance(entry, dict) else _MISSING
        return self._number(value, f"recall of {class_name} on {name}")

    def ece(self, name: str, stage: str) -> Reading:
        node, problem = self._check_numbers("calibration", name)
        if problem:
            return Reading(None, problem)
        stage_node = node.get(stage)
        value = stage_node.get("ece", _MISSING) if isinstance(stage_node, dict) else _MISSING
        return self._number(value, f"ECE ({stage} temperature scaling) of {name}")

    def _check_numbers(self, check: str, name: str) -> tuple[dict, str | None]:
        result = (self.data.get("checks") or {}).get(check)
        if not isinstance(result, dict):
            return {}, f"the {self.role} audit did not run the {check} check"
        metrics = result.get("metrics")
        per_set = metrics.get("datasets") if isinstance(metrics, dict) else None
        node = per_set.get(name) if isinstance(per_set, dict) else None
        if isinstance(node, dict):
            return node, None
        if result.get("status") == "ERROR":
            reason = result.get("error") or result.get("summary") or "no detail"
            return {}, f"the {check} check errored in the {self.role} audit ({reason})"
        return {}, f"the {self.role} audit's {check} check has no numbers for {name}"

    def _number(self, node: object, what: str) -> Reading:
        if isinstance(node, dict):
            node = node.get("value", _MISSING)
        if node is _MISSING:
            return Reading(None, f"the {self.role} audit has no {what}")
        if node is None:
            return Reading(None, f"{what} is undefined (null) in the {self.role} audit")
        if not isinstance(node, (int, float)) or isinstance(node, bool):
            return Reading(None, f"{what} is not a number ({node!r}) in the {self.role} audit")
        if not math.isfinite(node):
            return Reading(None, f"{what} is {node} in the {self.role} audit")
        return Reading(float(node))

    # ---- per-image predictions ----

    def predictions_file(self, name: str) -> Path:
        relative = self.dataset(name).get("predictions") or f"artifacts/predictions_{name}.npz"
        return self.path.parent / str(relative)

    def load_predictions(self, name: str) -> Predictions:
        path = self.predictions_file(name)
        if not path.is_file():
            raise PredictionsUnavailable(f"the {self.role} audit's predictions for {name} "
                                         f"('{path}') are missing")
        try:
            with np.load(path, allow_pickle=False) as npz:
                labels, logits, paths = npz["labels"], npz["logits"], npz["paths"]
                groups = npz["groups"].astype(str) if "groups" in npz.files else None
        except (OSError, ValueError, KeyError) as exc:
            raise PredictionsUnavailable(f"cannot read '{path}': {exc}") from exc
        n_classes = len(self.class_names)
        if logits.ndim != 2 or logits.shape[1] != n_classes or not len(labels) == len(logits) == len(paths) \
                or (groups is not None and len(groups) != len(labels)):
            raise PredictionsUnavailable(
                f"'{path}' does not match the audit: labels {labels.shape}, logits {logits.shape}, "
                f"paths {paths.shape}, {n_classes} classes")
        return Predictions(labels=labels.astype(np.int64), predicted=np.argmax(logits, axis=1),
                           paths=paths.astype(str), class_names=self.class_names, groups=groups)


def _validated(data: object, *, where: str) -> dict:
    if not isinstance(data, dict):
        raise InputError(f"{where} is not an audit (a JSON object is expected)")
    version = data.get("schema_version")
    if version is None:
        raise InputError(f"{where} has no schema_version; is it an audit.json from `audit run`?")
    if str(version).split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise InputError(f"{where} has schema {version!r}, not compatible with {SCHEMA_VERSION}; "
                         "re-run the audit with this version")
    model = data.get("model")
    names = model.get("class_names") if isinstance(model, dict) else None
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise InputError(f"{where} has no model.class_names list")
    datasets = data.get("datasets")
    if not isinstance(datasets, dict) or not datasets:
        raise InputError(f"{where} lists no datasets")
    for name, info in datasets.items():
        if not isinstance(info, dict):
            raise InputError(f"{where}: datasets.{name} is not an object")
    checks = data.get("checks", {})
    if not isinstance(checks, dict):
        raise InputError(f"{where}: checks is not an object")
    return data
