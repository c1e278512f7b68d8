"""Gate policy: the drops, floors and ceilings `audit gate` enforces, read from TOML.

    [defaults]                       # every evaluated set (heldout, shifted)
    metrics = { accuracy = { max_abs_drop = 0.01 }, balanced_accuracy = { max_abs_drop = 0.01 } }
    [roles.shifted]                  # every set of that role (train, heldout, shifted)
    ece_max = 0.15
    [datasets.heldout]               # one set, by name
    metrics = { accuracy = { max_abs_drop = 0.01, max_rel_drop = 0.02 } }
    class_recall_floor = 0.80
    class_recall_floors = { basophil = 0.60 }
    ece_max = 0.10
    [significance]
    enabled = false

Layers merge key by key: built-in defaults < [defaults] < [roles.<role>] < [datasets.<name>].
`false` switches a rule off in a later layer (`accuracy = false`, `ece_max = false`). The train
set is gated only when [roles.train] or [datasets.<its name>] mentions it. Unknown keys, metrics,
roles and out-of-range numbers are errors (exit 2): a typo must never silently pass a gate.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from audit.errors import InputError
from audit.tomlcompat import tomllib

__all__ = ["METRICS", "ECE_STAGES", "BUILTIN_DEFAULTS", "MetricLimit", "DatasetRules",
           "Significance", "Policy", "load_policy", "parse_policy"]

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
ECE_STAGES = ("before", "after")  # raw model / after the audit's temperature scaling
ROLES = ("train", "heldout", "shifted")
EVALUATED_ROLES = ("heldout", "shifted")

# Applies when no policy file is given, and under any file's own [defaults].
BUILTIN_DEFAULTS = {"metrics": {"accuracy": {"max_abs_drop": 0.01},
                                "balanced_accuracy": {"max_abs_drop": 0.01}}}

_LIMIT_KEYS = ("max_abs_drop", "max_rel_drop")
_SCALAR_KEYS = ("class_recall_floor", "class_recall_max_drop", "ece_max")
_LAYER_KEYS = ("metrics", "class_recall_floors", "ece_stage", *_SCALAR_KEYS)
_TOP_KEYS = ("defaults", "roles", "datasets", "significance")


@dataclass(frozen=True)
class MetricLimit:
    """Largest allowed drop of one metric: absolute (0.01 = 1 point) and relative to baseline."""

    max_abs_drop: float | None = None
    max_rel_drop: float | None = None


@dataclass(frozen=True)
class DatasetRules:
    """Every rule that applies to one dataset, after merging the policy's layers."""

    metrics: dict[str, MetricLimit] = field(default_factory=dict)
    class_recall_floor: float | None = None
    class_recall_floors: dict[str, float] = field(default_factory=dict)
    class_recall_max_drop: float | None = None
    ece_max: float | None = None
    ece_stage: str = "before"

    def recall_floor(self, class_name: str) -> float | None:
        return self.class_recall_floors.get(class_name, self.class_recall_floor)

    @property
    def empty(self) -> bool:
        return not (self.metrics or self.class_recall_floor is not None or self.class_recall_floors
                    or self.class_recall_max_drop is not None or self.ece_max is not None)


@dataclass(frozen=True)
class Significance:
    """Fail a drop rule only when the `level` bootstrap interval of (baseline - current) lies
    wholly above the allowed drop."""

    enabled: bool = False
    level: float = 0.95
    n_boot: int = 2000
    seed: int = 0


@dataclass(frozen=True)
class Policy:
    defaults: dict = field(default_factory=lambda: copy.deepcopy(BUILTIN_DEFAULTS))
    roles: dict[str, dict] = field(default_factory=dict)
    datasets: dict[str, dict] = field(default_factory=dict)
    significance: Significance = Significance()
    source: str = "built-in defaults"

    def rules_for(self, name: str, role: str) -> DatasetRules:
        """The merged rules of dataset `name`; empty for a train set the policy does not name."""
        layers = [self.roles.get(role, {}), self.datasets.get(name, {})]
        if role not in EVALUATED_ROLES and not any(layers):
            return DatasetRules()
        merged: dict = {"metrics": {}, "class_recall_floors": {}}
        for layer in (self.defaults, *layers):
            _merge(merged, layer)
        metrics = {m: MetricLimit(**{k: v for k, v in spec.items() if v is not False})
                   for m, spec in merged.pop("metrics").items()}
        metrics = {m: lim for m, lim in metrics.items()
                   if lim.max_abs_drop is not None or lim.max_rel_drop is not None}
        scalars = {k: (None if merged.get(k) is False else merged.get(k)) for k in _SCALAR_KEYS}
        return DatasetRules(metrics=metrics, class_recall_floors=merged["class_recall_floors"],
                            ece_stage=merged.get("ece_stage", "before"), **scalars)


def _merge(merged: dict, layer: dict) -> None:
    for key, value in layer.items():
        if key == "metrics":
            for metric, spec in value.items():
                if spec is False:
                    merged.setdefault("metrics", {}).pop(metric, None)
                else:
                    merged.setdefault("metrics", {}).setdefault(metric, {}).update(spec)
        elif key == "class_recall_floors":
            merged.setdefault("class_recall_floors", {}).update(value)
        else:
            merged[key] = value


def load_policy(path: str | os.PathLike | None) -> Policy:
    """The policy in `path`, or the built-in defaults when `path` is None."""
    if path is None:
        return Policy()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--policy '{path}' does not exist; expected a TOML gate policy")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"--policy '{path}' is not valid TOML: {exc}") from exc
    return parse_policy(data, source=str(path))


def parse_policy(data: dict, *, source: str = "policy") -> Policy:
    """Validate a parsed TOML policy; every problem is an InputError naming the key."""
    _known(data, _TOP_KEYS, where=source)
    defaults = copy.deepcopy(BUILTIN_DEFAULTS)
    _merge(defaults, _layer(data.get("defaults", {}), where=f"{source} [defaults]"))
    roles = _table(data.get("roles", {}), where=f"{source} [roles]")
    _known(roles, ROLES, where=f"{source} [roles]")
    datasets = _table(data.get("datasets", {}), where=f"{source} [datasets]")
    return Policy(
        defaults=defaults,
        roles={r: _layer(v, where=f"{source} [roles.{r}]") for r, v in roles.items()},
        datasets={n: _layer(v, where=f"{source} [datasets.{n}]") for n, v in datasets.items()},
        significance=_significance(data.get("significance", {}), where=f"{source} [significance]"),
        source=source,
    )


def _layer(table: object, *, where: str) -> dict:
    table = _table(table, where=where)
    _known(table, _LAYER_KEYS, where=where)
    layer: dict = {}
    if "metrics" in table:
        metrics = _table(table["metrics"], where=f"{where} metrics")
        _known(metrics, METRICS, where=f"{where} metrics")
        layer["metrics"] = {}
        for metric, spec in metrics.items():
            if spec is False:
                layer["metrics"][metric] = False
                continue
            spec = _table(spec, where=f"{where} metrics.{metric}", allow_false=True)
            _known(spec, _LIMIT_KEYS, where=f"{where} metrics.{metric}")
            layer["metrics"][metric] = {
                k: _fraction(v, where=f"{where} metrics.{metric}.{k}", allow_false=True)
                for k, v in spec.items()}
    for key in _SCALAR_KEYS:
        if key in table:
            layer[key] = _fraction(table[key], where=f"{where} {key}", allow_false=True)
    if "class_recall_floors" in table:
        floors = _table(table["class_recall_floors"], where=f"{where} class_recall_floors")
        layer["class_recall_floors"] = {
            str(c): _fraction(v, where=f"{where} class_recall_floors.{c}") for c, v in floors.items()}
    if "ece_stage" in table:
        if table["ece_stage"] not in ECE_STAGES:
            raise InputError(f"{where} ece_stage: expected one of {list(ECE_STAGES)}, "
                             f"received {table['ece_stage']!r}")
        layer["ece_stage"] = table["ece_stage"]
    return layer


def _significance(table: object, *, where: str) -> Significance:
    table = _table(table, where=where)
    _known(table, ("enabled", "level", "n_boot", "seed"), where=where)
    enabled = table.get("enabled", False)
    if not isinstance(enabled, bool):
        raise InputError(f"{where} enabled: expected true or false, received {enabled!r}")
    level = _fraction(table.get("level", 0.95), where=f"{where} level")
    if not 0.5 <= level < 1.0:
        raise InputError(f"{where} level: expected a number in [0.5, 1), received {level!r}")
    n_boot, seed = table.get("n_boot", 2000), table.get("seed", 0)
    for key, value, low in (("n_boot", n_boot, 100), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InputError(f"{where} {key}: expected a whole number >= {low}, received {value!r}")
    return Significance(enabled=enabled, level=float(level), n_boot=n_boot, seed=seed)


def _table(value: object, *, where: str, allow_false: bool = False) -> dict:
    if not isinstance(value, dict):
        expected = "a table (or false)" if allow_false else "a table"
        raise InputError(f"{where}: expected {expected}, received {value!r}")
    return value


def _known(table: dict, known: tuple[str, ...], *, where: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; known: {list(known)}")


def _fraction(value: object, *, where: str, allow_false: bool = False) -> float | bool:
    if value is False and allow_false:
        return False
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and 0.0 <= value <= 1.0)
    if not ok:
        extra = " or false (rule off)" if allow_false else ""
        raise InputError(f"{where}: expected a number between 0 and 1{extra}, received {value!r}")
    return float(value)
