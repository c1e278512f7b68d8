"""Ranges and choices of configuration values, checked when the configuration is loaded.

A value of the right type can still be wrong (`batch_size = -1`, `ece_warn = 1.5`, a warning
threshold above its failure threshold, an unknown method): the audit must refuse it with the
key named, not run and report nonsense. Each check states its limits next to its `DEFAULTS`
(`LIMITS`, and `ORDER` for pairs that must be ordered); `[audit]` and `[explain]` do the same.
Keys without a stated limit still get their type checked against the default.

    LIMITS = {"n_bins": count(2), "ece_warn": fraction(), "method": one_of("a", "b")}
    ORDER = (("ece_warn", "ece_fail"),)      # ece_warn <= ece_fail

Once validated, a table is read through a frozen dataclass derived from its defaults
(`options_type`, `build_options`): a check reads `opts.n_bins`, an int, never
`int(cfg["n_bins"])`. The dict stays what the TOML file, `--set` and audit.json's `config` hold.
"""

from __future__ import annotations

import dataclasses
import keyword
import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from audit.errors import UsageError

__all__ = ["count", "fraction", "positive", "between", "one_of", "subset_of", "validate",
           "Limit", "options_type", "build_options"]

Limit = Callable[[object], str | None]  # value -> what was expected, or None when fine


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def count(minimum: int = 1) -> Limit:
    """A whole number >= minimum."""
    def check(value):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        return None if ok else f"a whole number >= {minimum}"
    return check


def fraction(*, open_low: bool = False) -> Limit:
    """A number in [0, 1] (or (0, 1] with `open_low`)."""
    def check(value):
        ok = _number(value) and (0 < value if open_low else 0 <= value) and value <= 1
        return None if ok else f"a number in {'(' if open_low else '['}0, 1]"
    return check


def positive() -> Limit:
    """A number > 0."""
    return lambda v: None if _number(v) and v > 0 else "a number > 0"


def between(low: float, high: float) -> Limit:
    return lambda v: None if _number(v) and low <= v <= high else f"a number in [{low:g}, {high:g}]"


def one_of(*choices: str) -> Limit:
    return lambda v: None if v in choices else f"one of {', '.join(map(repr, choices))}"


def subset_of(*choices: object, allow_empty: bool = True) -> Limit:
    def check(value):
        ok = (isinstance(value, list) and (allow_empty or value)
              and all(v in choices for v in value) and len(set(value)) == len(value))
        return None if ok else (f"a list of distinct values from {', '.join(map(repr, choices))}"
                                + ("" if allow_empty else ", not empty"))
    return check


def validate(values: Mapping, limits: Mapping[str, Limit], order: Sequence[tuple[str, str]], *,
             where: str) -> None:
    """Raise UsageError naming the first key out of its limits or out of order."""
    for key, limit in limits.items():
        if key in values:
            expected = limit(values[key])
            if expected is not None:
                raise UsageError(f"{where}.{key}: expected {expected}, received {values[key]!r}")
    for low, high in order:
        if _number(values.get(low)) and _number(values.get(high)) and values[low] > values[high]:
            raise UsageError(f"{where}: {low} ({values[low]!r}) must not exceed {high} "
                             f"({values[high]!r})")


# Typed, frozen options --------------------------------------------------------------------
#
# Code reads a validated table through a frozen dataclass whose fields follow its defaults
# (`opts.max_images`, an int), not through `int(cfg["max_images"])` at each use. The table
# itself (the dict) stays what the TOML file, `--set` and audit.json's `config` hold.

def _field_type(value: object) -> object:
    if isinstance(value, (bool, int, float, str)):
        return type(value)
    if isinstance(value, (list, tuple)):
        kinds = {_field_type(v) for v in value}
        return tuple[kinds.pop(), ...] if len(kinds) == 1 else tuple
    if isinstance(value, Mapping):
        return Mapping
    return object


def _frozen(value: object, kind: object) -> object:
    """`value` as a field of type `kind`: numbers cast the way their readers used to, lists
    as tuples and tables as read-only mappings (nested ones too)."""
    if kind is bool:
        return bool(value)
    if kind in (int, float):
        return kind(value)
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v, None) for v in value)
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v, None) for k, v in value.items()})
    return value


def options_type(name: str, defaults: Mapping) -> type:
    """A frozen dataclass called `name` with one field per key of `defaults`, typed by its
    default value (bool, int, float, str; a list becomes a tuple, a table a read-only mapping)
    and defaulting to it. Build instances from a config table with `build_options`."""
    fields = []
    for key, value in defaults.items():
        if not isinstance(key, str) or not key.isidentifier() or keyword.iskeyword(key):
            raise TypeError(f"{name}: the option key {key!r} is not a Python identifier, so it "
                            "cannot be a field; read its table as a dict instead")
        kind = _field_type(value)
        default = _frozen(value, kind)
        field = (dataclasses.field(default=default) if type(default).__hash__ is not None
                 else dataclasses.field(default_factory=lambda default=default: default))
        fields.append((key, kind, field))
    return dataclasses.make_dataclass(name, fields, frozen=True)


def build_options(kind: type, values: Mapping) -> object:
    """An instance of the options type `kind` from a validated config table: each value cast
    to its field's type; keys the table lacks keep their defaults."""
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise TypeError(f"{kind.__name__}: unknown option(s) {unknown}; known: {sorted(fields)}")
    return kind(**{key: _frozen(value, fields[key].type) for key, value in values.items()})
