"""Run the gate on two audit files and write its outputs: the table, Markdown and JUnit XML."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

from audit.gating.decision import JUNIT_NAME, MARKDOWN_NAME, run_gate
from audit.gating.formats import format_junit, format_markdown, format_table
from audit.gating.policy import Policy

__all__ = ["gate_files"]


def gate_files(baseline_path: str | os.PathLike, current_path: str | os.PathLike, *,
               policy: str | os.PathLike | Policy | None = None,
               allow_dataset_change: bool = False,
               markdown: str | os.PathLike | None = None,
               junit: str | os.PathLike | None = None,
               stream: TextIO | None = None) -> int:
    """Gate, print the table, write the Markdown summary and JUnit XML; return the exit code.

    `markdown`/`junit` default to gate-summary.md / gate-junit.xml beside the current audit.
    """
    from audit.atomic import write_text

    stream = stream or sys.stdout
    report = run_gate(baseline_path, current_path, policy=policy,
                      allow_dataset_change=allow_dataset_change)
    folder = Path(current_path).parent
    md_path = Path(markdown) if markdown else folder / MARKDOWN_NAME
    junit_path = Path(junit) if junit else folder / JUNIT_NAME
    write_text(md_path, format_markdown(report))
    write_text(junit_path, format_junit(report))
    print(format_table(report), file=stream)
    print(f"gate summary: {md_path}, JUnit: {junit_path}", file=stream)
    return report.exit_code
