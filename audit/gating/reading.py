"""Reading an audit.json for the gate: which numbers the rules use and where they live. The file
is read by `audit.audit_json.load_audit` (version check, migration of older files, typed views).

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

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit.audit_json import AuditDocument, AuditJsonError, load_audit
from audit.errors import InputError

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
    doc: AuditDocument  # the typed views over `data`

    @classmethod
    def load(cls, path: str | os.PathLike, *, role: str) -> AuditFile:
        path = Path(path)
        where = f"{role} audit '{path}'"
        if not path.is_file():
            raise InputError(f"{where} does not exist; expected an audit.json written by `audit run`")
        doc = load_audit(path, label=f"{role} audit")  # version checked, older schema migrated
        _validated(doc, where=where)
        return cls(path=path, data=doc.data, role=role, doc=doc)

    # ---- run-wide facts ----

    @property
    def status(self) -> str:
        return str(self.data.get("status", ""))

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.doc.model.class_names

    @property
    def model_sha(self) -> str:
        return self.doc.model.sha256

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

    def _check_numbers(self, check: str, name: str) -> tuple[Mapping, str | None]:
        result = self.doc.check(check) if "checks" in self.doc else None
        if result is None:
            return {}, f"the {self.role} audit did not run the {check} check"
        try:
            if result.status == "ERROR":
                reason = result.error or result.summary or "no detail"
                return {}, f"the {check} check errored in the {self.role} audit ({reason})"
            node = result.per_set().get(name) if result.computed else None
        except AuditJsonError as exc:
            return {}, f"the {self.role} audit is not readable here: {exc}"
        if node is None:
            return {}, f"the {self.role} audit's {check} check has no numbers for {name}"
        return node, None

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
        return self.path.parent / self.doc.dataset(name).predictions

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


def _validated(doc: AuditDocument, *, where: str) -> None:
    """What the gate needs beyond the loader's checks: class names and at least one dataset."""
    if not doc.model.class_names:  # AuditJsonError (an InputError) naming the key if missing
        raise InputError(f"{where} has no model.class_names list")
    datasets = doc.required("datasets", dict)
    if "checks" in doc:
        doc.required("checks", dict)
    if not datasets:
        raise InputError(f"{where} lists no datasets")
    for name, info in datasets.items():
        if not isinstance(info, dict):
            raise InputError(f"{where}: datasets.{name} is not an object")
