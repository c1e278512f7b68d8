"""Results: what checks return and what audit.json holds (the computing/presenting contract).

Every value is plain JSON: `to_dict()` output passes `json.dumps(..., allow_nan=False)`;
non-finite floats become None (`clean`).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from audit.audit_json import SCHEMA_VERSION, load_audit

__all__ = ["Status", "Finding", "CheckResult", "AuditResult", "clean", "worst_status",
           "SCHEMA_VERSION"]


class Status(str, Enum):
    """A check's outcome against its thresholds (ordered SKIP < PASS < WARN < FAIL < ERROR)."""

    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    ERROR = "ERROR"
    SKIP = "SKIP"  # not applicable to these inputs (e.g. no shifted set)


_ORDER = {Status.SKIP: 0, Status.PASS: 1, Status.WARN: 2, Status.FAIL: 3, Status.ERROR: 4}


def worst_status(statuses) -> Status:
    statuses = [Status(s) for s in statuses]
    return max(statuses, key=_ORDER.__getitem__, default=Status.PASS)


def clean(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and non-finite floats into strict-JSON values."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Enum):
        return value.value
    return value


@dataclass(frozen=True)
class Finding:
    """One sentence a clinician can read, with the numbers behind it and what to do.

    `gap_share` is the fraction of the accuracy gap (reference minus `dataset`) this cause
    explains, when it can be measured; `impact` ranks findings without one (accuracy
    points at stake, 0-1).
    """

    check: str
    text: str
    action: str
    dataset: str | None = None
    gap_share: float | None = None
    impact: float = 0.0
    evidence: dict = field(default_factory=dict)
    kind: str = ""

    def to_dict(self) -> dict:
        return clean(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> Finding:
        return cls(**data)


@dataclass
class CheckResult:
    """One check's outcome: `status`, a one-sentence `summary`, its numbers (`metrics`, the
    layout of each check in docs/audit-json.md), its `findings` and the artifacts it wrote."""

    name: str
    status: Status
    summary: str
    metrics: dict = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "status": Status(self.status).value,
            "summary": self.summary,
            "metrics": clean(self.metrics),
            "findings": [f.to_dict() for f in self.findings],
            "artifacts": dict(self.artifacts),
            "error": self.error,
            "seconds": round(float(self.seconds), 3),
        }

    @classmethod
    def from_dict(cls, data: dict) -> CheckResult:
        return cls(
            name=data["name"], status=Status(data["status"]), summary=data["summary"],
            metrics=data.get("metrics", {}),
            findings=[Finding.from_dict(f) for f in data.get("findings", [])],
            artifacts=data.get("artifacts", {}), error=data.get("error"),
            seconds=data.get("seconds", 0.0),
        )


@dataclass
class AuditResult:
    """The result of one audit: what `audit.json` holds, as objects.

    `status` is the worst check status; `findings` are ranked (the largest measured share of
    an accuracy gap first); `checks[name].metrics` holds each check's numbers. `location` is
    the folder holding `audit.json`, its artifacts and the report (a temporary folder when
    `audit.run` was given no `out`; `save` copies it). In Jupyter, a result shown as the last
    line of a cell renders the self-contained report inline.
    """

    model: dict
    datasets: dict[str, dict]
    config: dict
    checks: dict[str, CheckResult]
    findings: list[Finding]
    versions: dict[str, str]
    timings: dict[str, float]
    command: list[str] = field(default_factory=list)
    explanations: dict = field(default_factory=dict)
    engine: dict = field(default_factory=dict)   # where the per-image work ran
    schema_version: str = SCHEMA_VERSION
    location: Path | None = field(default=None, compare=False, repr=False)

    @property
    def status(self) -> Status:
        return worst_status(c.status for c in self.checks.values())

    @classmethod
    def load(cls, path: str | os.PathLike) -> AuditResult:
        """Read an `audit.json` (or the folder holding it); an older schema is migrated."""
        from audit.errors import InputError

        doc = load_audit(path)
        try:
            result = cls.from_dict(doc)
        except (KeyError, TypeError) as exc:
            raise InputError(f"{doc.where} is not a CellAudit audit.json: {exc}") from None
        result.location = doc.base_dir
        return result

    def save(self, folder: str | os.PathLike) -> Path:
        """Write audit.json, its artifacts and report.html to `folder`, atomically: the files
        the CLI writes. Returns the folder."""
        import shutil

        from audit.atomic import atomic_dir, write_json
        from audit.errors import UsageError

        target = Path(folder)
        if target.exists() and (not target.is_dir() or (any(target.iterdir())
                                                         and not (target / "audit.json").exists())):
            raise UsageError(f"save: '{target}' exists and is not an empty folder or an audit "
                             "folder; choose a new or empty folder")
        if self.location is not None and target.resolve() == Path(self.location).resolve():
            return target
        with atomic_dir(target) as staging:
            if self.location is not None and (Path(self.location) / "artifacts").is_dir():
                shutil.copytree(Path(self.location) / "artifacts", staging / "artifacts")
            write_json(staging / "audit.json", self.to_dict())
            (staging / "report.html").write_text(self.report_html(), encoding="utf-8")
        return target

    def report_html(self) -> str:
        """The self-contained HTML report (the one `audit run` writes)."""
        if self.location is not None and (Path(self.location) / "report.html").is_file():
            return (Path(self.location) / "report.html").read_text(encoding="utf-8")
        from audit.render_step import render_html

        return render_html(self.to_dict(), base_dir=self.location)

    def _repr_html_(self) -> str:
        """Jupyter: the report inline, in an iframe (srcdoc: no file, script or network)."""
        import html

        return (f'<iframe srcdoc="{html.escape(self.report_html(), quote=True)}" '
                'style="width: 100%; height: 900px; border: 1px solid #ccc" '
                f'title="CellAudit report: {html.escape(self.status.value)}"></iframe>')

    def __repr__(self) -> str:
        return (f"AuditResult(status={self.status.value}, checks={len(self.checks)}, "
                f"findings={len(self.findings)}, location={str(self.location)!r})")

    def to_dict(self) -> dict:
        return clean({
            "schema_version": self.schema_version,
            "status": self.status.value,
            "command": self.command,
            "model": self.model,
            "datasets": self.datasets,
            "config": self.config,
            "versions": self.versions,
            "findings": [f.to_dict() for f in self.findings],
            "checks": {name: c.to_dict() for name, c in self.checks.items()},
            "explanations": self.explanations,
            "engine": self.engine,
            "timings": self.timings,
        })

    @classmethod
    def from_dict(cls, data: dict) -> AuditResult:
        """From audit.json's dict (through `audit.audit_json.load_audit`: version checked,
        an older schema migrated, required keys named when missing)."""
        doc = load_audit(data)
        return cls(
            model=dict(doc.model), datasets={k: dict(v) for k, v in doc.datasets.items()},
            config=dict(doc.config),
            checks={k: CheckResult.from_dict(dict(v)) for k, v in doc.checks.items()},
            findings=[Finding.from_dict(dict(f)) for f in doc.findings],
            versions=doc.get("versions") or {}, timings=dict(doc.timings),
            command=doc.get("command") or [], explanations=doc.get("explanations") or {},
            engine=dict(doc.engine), schema_version=doc.schema_version,
        )
