"""Results: what checks return and what audit.json holds (the computing/presenting contract).

Every value is plain JSON: `to_dict()` output passes `json.dumps(..., allow_nan=False)`;
non-finite floats become None (`clean`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import numpy as np

__all__ = ["Status", "Finding", "CheckResult", "AuditResult", "clean", "worst_status",
           "SCHEMA_VERSION"]

SCHEMA_VERSION = "1.0"


class Status(str, Enum):
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

    @property
    def status(self) -> Status:
        return worst_status(c.status for c in self.checks.values())

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
        major = str(data.get("schema_version", "0")).split(".")[0]
        if major != SCHEMA_VERSION.split(".")[0]:
            raise ValueError(f"audit.json schema {data.get('schema_version')!r} is not "
                             f"compatible with {SCHEMA_VERSION}")
        return cls(
            model=data["model"], datasets=data["datasets"], config=data["config"],
            checks={k: CheckResult.from_dict(v) for k, v in data["checks"].items()},
            findings=[Finding.from_dict(f) for f in data.get("findings", [])],
            versions=data.get("versions", {}), timings=data.get("timings", {}),
            command=data.get("command", []), explanations=data.get("explanations", {}),
            engine=data.get("engine", {}), schema_version=data["schema_version"],
        )
