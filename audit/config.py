"""Audit configuration: defaults, a TOML file over them, `--set key=value` flags over that.

    [audit]                      # run-wide settings (AUDIT_DEFAULTS)
    seed = 0
    [checks.calibration]         # one table per check; keys are the check's DEFAULTS
    ece_warn = 0.05
    [labels]                     # optional label map (see audit.labels)
    map = { NEUTROPHIL = "neutrophil" }

Unknown tables or keys are errors that name them: a typo must not silently fall back to a
default threshold.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from audit.errors import InputError, UsageError
from audit.options import build_options, options_type
from audit.tomlcompat import tomllib

__all__ = ["AUDIT_DEFAULTS", "AuditOptions", "RENAMED", "audit_options", "default_config",
           "load_config", "apply_override"]

# Sections and check names renamed since earlier releases: old -> new. A config that still uses
# an old name stops with one line naming the new one (never silently ignored).
RENAMED = {"checks.attribution": "checks.gap_factors"}

AUDIT_DEFAULTS = {
    "seed": 0,
    "batch_size": 64,
    # Images per model call; 0 = chosen from the input size (about 2^18 pixels per call on a
    # CPU, 5 images at 224 px: twice as fast per image as calls of 64 there; a GPU takes the
    # whole batch). Outputs differ between call sizes by float rounding, so it is recorded.
    "forward_batch": 0,
    "cache_dir": str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cellaudit"),
    # The cell_size property's white-cell mask costs about a 224-px MobileNetV2 forward pass
    # per image: measured on a seeded, class-stratified sample of this many images per set
    # (enough for drift tests and slices); 0 = every image.
    "cell_size_images": 256,
    # Images of the reference set on which the declared input contract is checked before
    # any expensive work (audit.contract_check).
    "contract_check_images": 64,
    "checks": [],          # empty: every registered check
    "explain": True,
    "report": True,
}

# The `[audit]` table read as typed, frozen options (audit.options.options_type).
AuditOptions = options_type("AuditOptions", AUDIT_DEFAULTS)


def audit_options(table: dict) -> AuditOptions:
    """The validated `[audit]` table (config["audit"]) as AuditOptions: `opts.seed`."""
    return build_options(AuditOptions, table)


def _audit_limits() -> dict:
    from audit.options import count

    return {"seed": count(0), "batch_size": count(1), "forward_batch": count(0),
            "cell_size_images": count(0),
            "contract_check_images": count(8)}


def validate_config(config: dict) -> None:
    """Every value within its range, choices and order; UsageError naming the key otherwise."""
    from audit.checks.base import load_builtin_checks
    from audit.explain.config import explain_limits
    from audit.options import validate

    validate(config["audit"], _audit_limits(), (), where="audit")
    registry = load_builtin_checks()
    unknown = sorted(set(config["audit"]["checks"]) - set(registry))
    for name in unknown:
        if f"checks.{name}" in RENAMED:
            raise UsageError(f"audit.checks: the check '{name}' is now called "
                             f"'{RENAMED['checks.' + name].split('.', 1)[1]}'")
    if unknown:
        raise UsageError(f"audit.checks: unknown check(s) {unknown}; known: {list(registry)}")
    validate(config["explain"], explain_limits(), (), where="explain")
    for name, cls in registry.items():
        validate(config["checks"][name], cls.LIMITS, cls.ORDER, where=f"checks.{name}")


def default_config() -> dict:
    from audit.checks.base import load_builtin_checks
    from audit.explain.config import EXPLAIN_DEFAULTS

    registry = load_builtin_checks()
    return {
        "audit": copy.deepcopy(AUDIT_DEFAULTS),
        "checks": {name: copy.deepcopy(cls.DEFAULTS) for name, cls in registry.items()},
        "explain": copy.deepcopy(EXPLAIN_DEFAULTS),
        "labels": {},
    }


def _renamed(where: str, key: str) -> tuple[str, str] | None:
    """(old, new) when `key` under `where` ("config.checks", "config 'a.toml'.checks",
    "--set.checks") is a renamed section."""
    sections = where.rsplit("'", 1)[-1].split(".")[1:]   # after the file name, if any
    old = ".".join([*sections, key])
    return (old, RENAMED[old]) if old in RENAMED else None


def _merge(base: dict, update: dict, *, where: str) -> None:
    for key, value in update.items():
        renamed = _renamed(where, key)
        if key not in base and renamed:
            raise UsageError(f"{where}: section [{renamed[0]}] was renamed; use "
                             f"[{renamed[1]}] instead")
        if key not in base:
            known = ", ".join(sorted(base)) or "none"
            raise UsageError(f"{where}: unknown key '{key}' (known: {known})")
        if isinstance(base[key], dict) and base[key] and not isinstance(value, dict):
            raise UsageError(f"{where}.{key}: expected a table, received {value!r}")
        if isinstance(base[key], dict) and base[key]:
            _merge(base[key], value, where=f"{where}.{key}")
        else:
            default = base[key]
            if (isinstance(default, bool) != isinstance(value, bool)
                    or (isinstance(default, (int, float)) and not isinstance(value, (int, float)))
                    or (isinstance(default, str) and not isinstance(value, str))
                    or (isinstance(default, list) and not isinstance(value, list))):
                raise UsageError(f"{where}.{key}: expected {type(default).__name__}, "
                                 f"received {value!r}")
            base[key] = float(value) if isinstance(default, float) else value


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = (),
                table: dict | None = None) -> dict:
    """Defaults, then the TOML file at `path` (or a `table` of the same shape, from Python),
    then `--set` overrides; every key checked against the defaults."""
    config = default_config()
    if table is not None:
        table = copy.deepcopy(dict(table))
        labels = table.pop("labels", None)
        _merge(config, table, where="config")
        if labels is not None:
            config["labels"] = labels
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"cannot read config '{path}': {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"config '{path}' is not valid TOML: {exc}") from exc
        labels = data.pop("labels", None)
        _merge(config, data, where=f"config '{path}'")
        if labels is not None:
            config["labels"] = labels
    for item in overrides:
        apply_override(config, item)
    validate_config(config)
    return config


def apply_override(config: dict, item: str) -> None:
    """Apply `section.key=value` (value in TOML syntax; bare words are strings)."""
    if "=" not in item:
        raise UsageError(f"--set '{item}': expected KEY=VALUE, e.g. checks.calibration.ece_warn=0.05")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    parts = key.strip().split(".")
    update: dict = value
    for part in reversed(parts):
        update = {part: update}
    _merge(config, update, where="--set")
