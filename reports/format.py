"""Text formatting shared by the report: the number filters templates use (pct, pts, num, ci,
points, p) and the TOML rendering of the audit config. Pure functions of plain values; a value
that is missing or not finite prints as "n/a"."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["pct", "pts", "num", "ci_text", "points_ci", "p_text", "toml_text", "finite",
           "MIN_RELIABLE_N"]

MIN_RELIABLE_N = 20  # as audit.stats: rates on fewer images are marked as rough


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
        and abs(value) != float("inf")


def pct(value: Any, digits: int = 1) -> str:
    """0.1234 -> '12.3%'; None/NaN -> 'n/a'."""
    return f"{100 * value:.{digits}f}%" if finite(value) else "n/a"


def pts(value: Any, digits: int = 1) -> str:
    """An accuracy difference as points: 0.163 -> '16.3'; None/NaN -> 'n/a'."""
    return f"{100 * value:.{digits}f}" if finite(value) else "n/a"


def num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if finite(value) else "n/a"


def ci_text(ci: Any, digits: int = 1) -> str:
    """{value, low, high[, n]} -> '92.1% (95% CI 89.0 to 94.6, n=120)'; percentages. A rate
    carries its number of images; under 20 the text says it is a rough estimate."""
    if not isinstance(ci, Mapping) or not finite(ci.get("value")):
        return "n/a" if not isinstance(ci, Mapping) or ci.get("n") is None else \
            f"n/a (n={ci['n']})"
    text = pct(ci["value"], digits)
    n = ci.get("n")
    count = f", n={n}" if isinstance(n, int) else ""
    if finite(ci.get("low")) and finite(ci.get("high")):
        text += f" (95% CI {100 * ci['low']:.{digits}f} to {100 * ci['high']:.{digits}f}{count})"
    elif count:
        text += f" ({count[2:]})"
    if isinstance(n, int) and n < MIN_RELIABLE_N:
        text += " (few images: rough)"
    return text


def points_ci(ci: Any, digits: int = 1) -> str:
    """A difference in percentage points with its CI: '12.0 points (95% CI 4.1 to 20.2)'."""
    if not isinstance(ci, Mapping) or not finite(ci.get("value")):
        return "n/a"
    text = f"{100 * ci['value']:.{digits}f} points"
    if finite(ci.get("low")) and finite(ci.get("high")):
        text += f" (95% CI {100 * ci['low']:.{digits}f} to {100 * ci['high']:.{digits}f})"
    return text


def p_text(value: Any) -> str:
    if not finite(value):
        return "n/a"
    return "<0.001" if value < 0.001 else f"{value:.3f}"



# ---------------------------------------------------------------- the config as TOML

def toml_text(data: Mapping, prefix: str = "") -> str:
    """A readable TOML rendering of the config: scalars first, then one [table] per section."""
    def is_table(value: Any) -> bool:
        return isinstance(value, Mapping) and bool(value)

    blocks = []
    scalars = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data.items() if not is_table(v)]
    if scalars:
        blocks.append("\n".join(scalars))
    for key, value in data.items():
        if not is_table(value):
            continue
        name = f"{prefix}{_toml_key(key)}"
        inner = toml_text(value, prefix=f"{name}.")
        has_scalars = any(not is_table(v) for v in value.values())
        blocks.append(f"[{name}]\n{inner}" if has_scalars else inner)
    return "\n\n".join(blocks)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", str(key)) else json.dumps(str(key))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "{}" if not value else "{ " + ", ".join(
            f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if value is None:
        return '""'
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)

