"""Are two audit.json files the same audit? Every value compared, apart from what varies
between identical runs (timings, cache hits, the pixel store's counts, when and where it ran).

    python bench/compare_audits.py BEFORE/audit.json AFTER/audit.json [--ignore KEY ...]
        [--folders OLD=NEW ...]

Used for issue 16: a refactor must leave the demo's and a real-data audit's numbers exactly as
they were. Prints every differing path (values side by side), then a one-line verdict; exit 0
when identical, 1 when not. Artifact paths are compared as written (relative), not their files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

# What differs between two runs of the same audit by design: how long things took.
VOLATILE = ("timings", "timing", "seconds", "training_seconds")


def _moved(value, folders: list[tuple[str, str]]):
    """`value` with every string's OLD folder prefix written as NEW (runs in other folders)."""
    if isinstance(value, dict):
        return {k: _moved(v, folders) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved(v, folders) for v in value]
    if isinstance(value, str):
        for old, new in folders:
            value = value.replace(old, new)
    return value


def differences(a, b, path: str = "", *, ignore: tuple[str, ...] = ()) -> list[tuple]:
    """[(path, a value, b value)] where `a` and `b` differ (floats exactly, NaN equal to NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key in ignore:
                continue
            where = f"{path}.{key}" if path else key
            if key not in a or key not in b:
                out.append((where, a.get(key, "<absent>"), b.get(key, "<absent>")))
            else:
                out += differences(a[key], b[key], where, ignore=ignore)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [(f"{path}[len]", len(a), len(b))]
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out += differences(x, y, f"{path}[{i}]", ignore=ignore)
        return out
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b and type(a) is type(b) else [(path, a, b)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--ignore", action="append", default=[],
                        help="a further key to ignore wherever it appears (repeatable)")
    parser.add_argument("--folders", action="append", default=[], metavar="OLD=NEW",
                        help="BEFORE's folder OLD is AFTER's NEW (model, datasets; repeatable)")
    parser.add_argument("--limit", type=int, default=40, help="differences printed at most")
    args = parser.parse_args(argv)
    with open(args.before) as fh:
        before = json.load(fh)
    with open(args.after) as fh:
        after = json.load(fh)
    folders = [tuple(f.split("=", 1)) for f in args.folders]
    found = differences(_moved(before, folders), after, ignore=VOLATILE + tuple(args.ignore))
    for where, x, y in found[:args.limit]:
        print(f"{where}: {str(x)[:80]}  ->  {str(y)[:80]}")
    if len(found) > args.limit:
        print(f"... and {len(found) - args.limit} more")
    print(f"{'identical' if not found else f'{len(found)} differences'} "
          f"(ignoring {', '.join(VOLATILE + tuple(args.ignore))})")
    return 0 if not found else 1


if __name__ == "__main__":
    sys.exit(main())
