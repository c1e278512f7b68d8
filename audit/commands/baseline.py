"""`audit baseline accept`: make an audit the gate's new baseline, deliberately.

The baseline is a copy of the audit.json plus the per-image predictions it references (for the
gate's paired significance test), in a folder beside it named `<baseline stem>.artifacts/`.
Accepting refuses an audit whose status is ERROR and an audit that regresses against the
existing baseline; `--force` overrides both and is recorded in the baseline.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["add_parser", "run", "accept_baseline", "artifacts_folder"]


def add_parser(sub) -> None:
    p = sub.add_parser("baseline", help="accept an audit as the gate's baseline",
                       description="Manage the baseline audit that `audit gate` compares against.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    a = actions.add_parser(
        "accept", help="copy an audit (and its predictions) to the baseline location",
        description="Copy AUDIT_JSON and the prediction files it references to BASELINE_JSON and "
                    "BASELINE_STEM.artifacts/, atomically. Refuses an audit with status ERROR or "
                    "one that regresses against the existing baseline, unless --force.",
        epilog="exit codes: 0 accepted, 1 refused (regression against the existing baseline), "
               "2 usage or input error (including an audit with status ERROR).")
    a.add_argument("audit", metavar="AUDIT_JSON", help="the audit to accept")
    a.add_argument("baseline", metavar="BASELINE_JSON", help="where the baseline lives")
    a.add_argument("--policy", metavar="TOML", help="gate policy for the regression check")
    a.add_argument("--allow-dataset-change", action="store_true",
                   help="accept although datasets or classes differ from the old baseline")
    a.add_argument("--force", action="store_true",
                   help="accept despite an ERROR status, a regression or a dataset change")
    a.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    return accept_baseline(args.audit, args.baseline, policy=args.policy,
                           allow_dataset_change=args.allow_dataset_change, force=args.force)


def artifacts_folder(baseline_path: str | Path) -> Path:
    baseline_path = Path(baseline_path)
    return baseline_path.with_name(f"{baseline_path.stem}.artifacts")


def accept_baseline(audit_path: str | Path, baseline_path: str | Path, *, policy=None,
                    allow_dataset_change: bool = False, force: bool = False,
                    stream=None) -> int:
    """Accept `audit_path` as the baseline at `baseline_path`; return the exit code."""
    from audit.errors import InputError, UsageError
    from audit.gating.reading import AuditFile

    stream = stream or sys.stdout
    audit_path, baseline_path = Path(audit_path), Path(baseline_path)
    if baseline_path.suffix != ".json":
        raise UsageError(f"BASELINE_JSON '{baseline_path}' must end in .json")
    audit = AuditFile.load(audit_path, role="current")
    if baseline_path.exists() and baseline_path.resolve() == audit_path.resolve():
        raise UsageError(f"'{audit_path}' is already the baseline")
    if audit.status == "ERROR":
        if not force:
            raise InputError(f"audit '{audit_path}' has status ERROR (a check crashed); fix and "
                             "re-run it, or pass --force to accept it anyway")
        print("warning: accepting an audit with status ERROR (--force)", file=stream)
    if baseline_path.exists():
        code = _compare_with_old(audit_path, baseline_path, policy=policy,
                                 allow_dataset_change=allow_dataset_change, force=force,
                                 stream=stream)
        if code:
            return code
    copied, missing = _write_baseline(audit, baseline_path, force=force)
    folder = artifacts_folder(baseline_path)
    print(f"accepted {audit_path} as baseline {baseline_path} (model {audit.model_sha[:12] or '?'};"
          f" datasets: {', '.join(audit.dataset_names)})", file=stream)
    if copied:
        print(f"  copied {len(copied)} prediction file(s) to {folder}/", file=stream)
    if missing:
        print(f"  no predictions for {missing}: the gate's significance mode cannot pair "
              "those sets", file=stream)
    return 0


def _compare_with_old(audit_path: Path, baseline_path: Path, *, policy, allow_dataset_change: bool,
                      force: bool, stream) -> int:
    from audit.errors import InputError
    from audit.gating.decision import run_gate
    from audit.gating.formats import format_table

    try:
        report = run_gate(baseline_path, audit_path, policy=policy,
                          allow_dataset_change=allow_dataset_change)
    except InputError as exc:
        if not force:
            raise InputError(f"cannot compare with the existing baseline: {exc} (or pass --force "
                             "to replace the baseline)") from exc
        print(f"warning: not comparable with the existing baseline ({exc}); replacing it "
              "(--force)", file=stream)
        return 0
    print(format_table(report), file=stream)
    if report.failures and not force:
        print(f"refused: {audit_path} regresses against the existing baseline {baseline_path} "
              f"({len(report.failures)} rule(s) failed); pass --force to accept it anyway",
              file=stream)
        return 1
    if report.failures:
        print("warning: accepting a regression (--force)", file=stream)
    return 0


def _write_baseline(audit, baseline_path: Path, *, force: bool) -> tuple[list[str], list[str]]:
    """Copy predictions into the artifacts folder and write the JSON, each atomically."""
    from audit.atomic import atomic_dir, atomic_path
    from audit.results import clean

    data = copy.deepcopy(audit.data)
    folder = artifacts_folder(baseline_path)
    sources = {name: audit.predictions_file(name) for name in audit.dataset_names}
    copied = [name for name, path in sources.items() if path.is_file()]
    missing = [name for name in sources if name not in copied]
    for name in audit.dataset_names:
        data["datasets"][name].pop("predictions", None)
        if name in copied:
            data["datasets"][name]["predictions"] = f"{folder.name}/predictions_{name}.npz"
    data["baseline"] = {
        "accepted_from": str(audit.path.resolve()),
        "source_sha256": hashlib.sha256(audit.path.read_bytes()).hexdigest(),
        "accepted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "forced": force,
    }
    text = json.dumps(clean(data), indent=2, allow_nan=False) + "\n"
    # Both are staged beside their targets, then renamed one right after the other: a failure
    # while copying leaves the old baseline whole, and the new one appears complete.
    with atomic_path(baseline_path) as tmp_json:
        tmp_json.write_text(text, encoding="utf-8")
        if copied:
            with atomic_dir(folder) as staging:
                for name in copied:
                    shutil.copy2(sources[name], staging / f"predictions_{name}.npz")
    return copied, missing
