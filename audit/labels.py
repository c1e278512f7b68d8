"""Label maps: rename source class names to canonical ones and drop classes explicitly.

File format (JSON or TOML), either form:

    {"map": {"NEUTROPHIL": "neutrophil", "SNE": "neutrophil"}, "drop": ["platelet"]}
    {"NEUTROPHIL": "neutrophil", "SNE": "neutrophil"}          # mapping only

Names not in the map pass through unchanged. `"ignore_case": true` also matches source
names case-insensitively (exact matches win).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from audit.errors import InputError
from audit.tomlcompat import tomllib

__all__ = ["LabelMap", "load_label_map"]


@dataclass(frozen=True)
class LabelMap:
    mapping: Mapping[str, str] = field(default_factory=dict)
    drop: frozenset[str] = frozenset()
    ignore_case: bool = False

    def apply(self, label: str) -> str | None:
        """The canonical name of `label`, or None when it is dropped."""
        if label in self.drop:
            return None
        if label in self.mapping:
            return self.mapping[label]
        if self.ignore_case:
            folded = label.casefold()
            if folded in {d.casefold() for d in self.drop}:
                return None
            for source, target in self.mapping.items():
                if source.casefold() == folded:
                    return target
        return label

    def to_dict(self) -> dict:
        return {"map": dict(self.mapping), "drop": sorted(self.drop), "ignore_case": self.ignore_case}

    @classmethod
    def from_dict(cls, data: Mapping, *, source: str = "label map") -> LabelMap:
        if not isinstance(data, Mapping):
            raise InputError(f"{source}: expected a table/object, received {type(data).__name__}")
        if "map" in data or "drop" in data:
            unknown = set(data) - {"map", "drop", "ignore_case"}
            if unknown:
                raise InputError(f"{source}: unknown key(s) {sorted(unknown)}; "
                                 "expected 'map', 'drop', 'ignore_case'")
            mapping, drop = data.get("map", {}), data.get("drop", [])
        else:
            mapping, drop = data, []
        if not isinstance(mapping, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in mapping.items()
        ):
            raise InputError(f"{source}: 'map' must map source names to non-empty class names")
        if isinstance(drop, str) or not isinstance(drop, Iterable) or not all(
            isinstance(d, str) for d in drop
        ):
            raise InputError(f"{source}: 'drop' must be a list of class names, received {drop!r}")
        return cls(dict(mapping), frozenset(drop), bool(data.get("ignore_case", False)))


def load_label_map(path: str | os.PathLike) -> LabelMap:
    """Read a label map from a .json or .toml file; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read label map '{path}': {exc.strerror or exc}") from exc
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise InputError(f"label map '{path}' must be a .json or .toml file")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"label map '{path}' is not valid {path.suffix[1:].upper()}: {exc}") from exc
    return LabelMap.from_dict(data, source=f"label map '{path}'")
