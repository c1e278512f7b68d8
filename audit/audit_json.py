"""The `audit.json` contract: its version, the one loader, and typed read-only views.

    doc = load_audit("OUT/audit.json")         # or a folder, or the dict `AuditResult.to_dict()`
    doc.model.class_names                      # ("basophil", ...): required, never None
    doc.dataset("heldout").role                # "heldout"
    doc.check("performance").status            # "PASS"; None when the check did not run
    performance_set(doc, "heldout").accuracy   # {"value", "low", "high", "n"}

Every reader (report, gate, `audit predict`, `AuditResult.load`) goes through `load_audit`, so
the schema-version check and the migration of older files exist once, here. A required key
that is missing raises `AuditJsonError` naming the file and the path of the key, instead of
reading as None and blanking a report cell; optional keys are read with `.get(...)` on the
view, explicitly. The layout is documented in docs/audit-json.md and as a JSON Schema in
docs/audit.schema.json; `tests/test_audit_json.py` keeps the three in step.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.errors import InputError

__all__ = ["SCHEMA_VERSION", "AuditJsonError", "AuditDocument", "View", "ModelView",
           "DatasetInfo", "CheckView", "FindingView", "PerformanceSet", "load_audit",
           "migrate", "performance_set", "STATUSES"]

# Major: a key was renamed or removed (readers refuse another major; older majors we know are
# migrated on read). Minor: keys were added.
SCHEMA_VERSION = "2.3"  # 2.1: timings count the pixel store's images (pixels.*); 2.2:
# model.forward_batch; 2.3: model.contract.views
STATUSES = ("PASS", "WARN", "FAIL", "ERROR", "SKIP")
# What each older major renamed, applied in order by `migrate`.
_RENAMED_CHECKS = {"1": {"attribution": "gap_factors"}}


class AuditJsonError(InputError):
    """An audit.json that cannot be read as this version's contract (one line, names the
    file and the key)."""


_MISSING = object()


@dataclass(frozen=True)
class View(Mapping):
    """A read-only part of audit.json: `where` is its path ("'a/audit.json' checks.errors"),
    used in every error. `view["key"]` and `view.get("key")` read raw (optional) values;
    `required("key")` raises `AuditJsonError` when it is missing."""

    data: Mapping
    where: str

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def required(self, key: str, kind: type | tuple[type, ...] = object) -> Any:
        value = self.data.get(key, _MISSING) if isinstance(self.data, Mapping) else _MISSING
        if value is _MISSING:
            raise AuditJsonError(f"{self.where} has no '{key}'")
        if not isinstance(value, kind):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise AuditJsonError(f"{self.where}.{key}: expected {names}, received "
                                 f"{type(value).__name__}")
        return value

    def section(self, key: str) -> View:
        """A required object under `key`, as a view."""
        return View(self.required(key, Mapping), f"{self.where}.{key}")


class ModelView(View):
    @property
    def class_names(self) -> tuple[str, ...]:
        names = self.required("class_names", list)
        if not names or not all(isinstance(n, str) for n in names):
            raise AuditJsonError(f"{self.where}.class_names: expected a non-empty list of names")
        return tuple(names)

    @property
    def sha256(self) -> str:
        return str(self.get("sha256") or "")   # optional: null for an unsaved model


class DatasetInfo(View):
    @property
    def name(self) -> str:
        return self.where.split(" datasets.", 1)[-1]

    @property
    def role(self) -> str:
        return str(self.required("role", str))

    @property
    def predictions(self) -> str:
        """The predictions artifact, relative to the audit folder."""
        return str(self.get("predictions") or f"artifacts/predictions_{self.name}.npz")


class FindingView(View):
    @property
    def check(self) -> str:
        return self.required("check", str)

    @property
    def text(self) -> str:
        return self.required("text", str)

    @property
    def dataset(self) -> str | None:
        return self.get("dataset")

    @property
    def gap_share(self) -> float | None:
        return self.get("gap_share")


class CheckView(View):
    """One check's common part: status, summary, metrics, findings, artifacts, error."""

    @property
    def name(self) -> str:
        return self.where.split(" checks.", 1)[-1]

    @property
    def status(self) -> str:
        status = self.required("status", str)
        if status not in STATUSES:
            raise AuditJsonError(f"{self.where}.status: expected one of {STATUSES}, "
                                 f"received {status!r}")
        return status

    @property
    def summary(self) -> str:
        return str(self.get("summary") or "")

    @property
    def error(self) -> str | None:
        return self.get("error")

    @property
    def metrics(self) -> View:
        return self.section("metrics")

    @property
    def artifacts(self) -> Mapping[str, str]:
        return self.get("artifacts") or {}

    @property
    def findings(self) -> tuple[FindingView, ...]:
        items = self.get("findings") or []
        return tuple(FindingView(f, f"{self.where}.findings[{i}]") for i, f in enumerate(items))

    @property
    def computed(self) -> bool:
        """Ran and produced numbers (not ERROR or SKIP)."""
        return self.status in ("PASS", "WARN", "FAIL")

    def per_set(self) -> dict[str, View]:
        """`metrics.datasets` as views (required when the check computed anything)."""
        sets = self.metrics.section("datasets")
        return {name: View(d, f"{sets.where}.{name}") for name, d in sets.items()}


class PerformanceSet(View):
    """`checks.performance.metrics.datasets.<name>`: the numbers the report and gate read."""

    def _interval(self, key: str) -> Mapping:
        return self.required(key, Mapping)

    @property
    def accuracy(self) -> Mapping:
        return self._interval("accuracy")

    @property
    def balanced_accuracy(self) -> Mapping:
        return self._interval("balanced_accuracy")

    @property
    def macro_f1(self) -> Mapping:
        return self._interval("macro_f1")

    @property
    def n(self) -> int:
        return self.required("n", int)

    def per_class(self, class_name: str) -> View:
        return self.section("per_class").section(class_name)


@dataclass(frozen=True)
class AuditDocument(View):
    """A whole audit.json, checked and migrated; `path` is None for an in-memory dict."""

    path: Path | None = None

    @property
    def schema_version(self) -> str:
        return str(self.required("schema_version"))

    @property
    def status(self) -> str:
        return str(self.get("status") or "ERROR")

    @property
    def model(self) -> ModelView:
        return ModelView(self.required("model", Mapping), f"{self.where} model")

    @property
    def datasets(self) -> dict[str, DatasetInfo]:
        return {name: self.dataset(name) for name in self.required("datasets", Mapping)}

    def dataset(self, name: str) -> DatasetInfo:
        sets = self.required("datasets", Mapping)
        if name not in sets or not isinstance(sets[name], Mapping):
            raise AuditJsonError(f"{self.where} has no dataset '{name}' (it has "
                                 f"{', '.join(sets) or 'none'})")
        return DatasetInfo(sets[name], f"{self.where} datasets.{name}")

    @property
    def checks(self) -> dict[str, CheckView]:
        return {name: CheckView(c, f"{self.where} checks.{name}")
                for name, c in self.required("checks", Mapping).items()}

    def check(self, name: str) -> CheckView | None:
        """The check's result, or None when the audit did not run it."""
        result = self.required("checks", Mapping).get(name)
        return CheckView(result, f"{self.where} checks.{name}") if isinstance(result, Mapping) \
            else None

    @property
    def findings(self) -> tuple[FindingView, ...]:
        items = self.required("findings", list)
        return tuple(FindingView(f, f"{self.where} findings[{i}]") for i, f in enumerate(items))

    @property
    def config(self) -> Mapping:
        return self.required("config", Mapping)

    @property
    def engine(self) -> Mapping:
        return self.get("engine") or {}     # optional: older files name no engine

    @property
    def timings(self) -> Mapping[str, float]:
        return self.get("timings") or {}

    @property
    def base_dir(self) -> Path | None:
        return None if self.path is None else self.path.parent


def performance_set(doc: AuditDocument, name: str) -> PerformanceSet | None:
    """The performance numbers of dataset `name`; None when the check did not compute them
    (not run, ERROR or SKIP), `AuditJsonError` when it did and they are not where they belong."""
    check = doc.check("performance")
    if check is None or not check.computed:
        return None
    sets = check.per_set()
    if name not in sets:
        return None
    return PerformanceSet(sets[name].data, sets[name].where)


# ---- reading ------------------------------------------------------------------------------------

def _major(version: object) -> str:
    return str(version).split(".")[0]


def migrate(data: dict, *, where: str = "audit.json") -> dict:
    """An older major version's layout renamed to this one's (a new dict; `data` is kept).
    Raises AuditJsonError for a version this reader does not know."""
    version = data.get("schema_version")
    if version is None:
        raise AuditJsonError(f"{where} has no schema_version; is it an audit.json from "
                             "`audit run`?")
    major = _major(version)
    if major == _major(SCHEMA_VERSION):
        return data
    if major not in _RENAMED_CHECKS:
        raise AuditJsonError(f"{where} has schema {version!r}, not compatible with "
                             f"{SCHEMA_VERSION}; re-run the audit with this version")
    out = json.loads(json.dumps(data))    # a deep copy of plain JSON
    for old, new in _RENAMED_CHECKS[major].items():
        checks = out.get("checks") or {}
        if old in checks:
            checks[new] = {**checks.pop(old), "name": new}
            for finding in checks[new].get("findings") or []:
                _rename_finding(finding, old, new)
        for finding in out.get("findings") or []:
            _rename_finding(finding, old, new)
        config_checks = (out.get("config") or {}).get("checks") or {}
        if old in config_checks:
            config_checks[new] = config_checks.pop(old)
        timings = out.get("timings") or {}
        if f"check.{old}" in timings:
            timings[f"check.{new}"] = timings.pop(f"check.{old}")
    out["schema_version"] = SCHEMA_VERSION
    out["migrated_from"] = str(version)
    return out


def _rename_finding(finding: dict, old: str, new: str) -> None:
    if finding.get("check") == old:
        finding["check"] = new
        kind = str(finding.get("kind") or "")
        if kind.startswith(f"{old}_"):
            finding["kind"] = new + kind[len(old):]


def load_audit(source: str | os.PathLike | Mapping | AuditDocument, *,
               label: str = "") -> AuditDocument:
    """Read an audit.json (a file, the folder holding it, or its dict), check its version and
    migrate an older one. `AuditJsonError` (one line naming the file) when it is unreadable,
    not JSON, not an object, or of another major version; a missing required key is named
    when a view reads it. `label` ("baseline audit") starts every message about the file."""
    if isinstance(source, AuditDocument):
        return source
    if isinstance(source, Mapping):
        path, where, data = None, f"{label} audit.json".strip(), source
    else:
        path = Path(source)
        if path.is_dir():
            path = path / "audit.json"
        where = f"{label} '{path}'".strip()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))  # NaN read; rules judge it
        except OSError as exc:
            raise AuditJsonError(f"cannot read audit {where}: {exc.strerror or exc}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AuditJsonError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise AuditJsonError(f"{where} is not an audit.json (a JSON object is expected, "
                             f"received {type(data).__name__})")
    return AuditDocument(migrate(dict(data), where=where), where, path)
