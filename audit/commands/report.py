"""`audit report`: re-render the HTML report from an audit.json, without TensorFlow."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report", help="render the HTML report from an audit.json",
        description="Render the self-contained HTML audit report (inline CSS, embedded images, "
                    "no JavaScript, no network) from AUDIT_JSON and the artifacts/ folder beside "
                    "it. Needs neither the model nor TensorFlow; dataset thumbnails are included "
                    "when the images are still where the audit found them.")
    p.add_argument("audit_json", metavar="AUDIT_JSON", help="audit.json written by `audit run`")
    p.add_argument("-o", "--out", metavar="HTML",
                   help="output file (default: report.html beside AUDIT_JSON)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from audit.errors import InputError, UsageError

    source = Path(args.audit_json)
    if not source.is_file():
        raise InputError(f"AUDIT_JSON '{source}' does not exist; expected the audit.json written "
                         "by `audit run`")
    target = Path(args.out) if args.out else source.with_name("report.html")
    if target.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out '{target}' must end in .html")
    if target.is_dir():
        raise UsageError(f"--out '{target}' is a folder; give a file name ending in .html")

    from audit.render_step import render_report

    try:
        path = render_report(source, target)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    size = path.stat().st_size
    print(f"wrote {path} ({size / 1e6:.1f} MB)")
    return 0
