"""The one optional step from computing to presenting: `audit/` reaches `reports/` only here.

`reports` reads only audit.json and its artifacts (through `audit.audit_json.load_audit`), so
the audit runs without it (jinja2 and matplotlib not installed: `available()` is False and the
run writes no report); `audit report` re-renders later.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["available", "render_html", "render_report"]


def available() -> bool:
    """Whether the report renderer (jinja2, matplotlib) can be imported."""
    try:
        import reports.render  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def render_html(audit: Mapping, *, base_dir: str | os.PathLike | None = None) -> str:
    """The self-contained HTML report of `audit` (audit.json's dict or an AuditDocument)."""
    from reports.render import render_html as render

    return render(audit, base_dir=base_dir)


def render_report(audit_json: str | os.PathLike, html_path: str | os.PathLike) -> Path:
    """Render `audit_json` (artifacts beside it) to `html_path`, atomically."""
    from reports.render import render_report as render

    return render(audit_json, html_path)
