"""Turn audit.json into the template context: one plain dict per report section.

The sections are registered (reports/sections/: one module per section, a pure builder and the
template it declares). Each builder reads its part of the audit and returns a dict with
`available` and `reason` ("not computed: <reason>" when a check is missing, ERROR or SKIP, or its
data is absent) plus the rows and figures the section's template shows. Templates never read
audit.json directly: everything they use is put in that dict (jinja runs with StrictUndefined),
and a builder that meets an unexpected layout fails alone (the report turns that into a note).
A check in audit.json that no registered section names gets a generic section.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

from audit.audit_json import AuditDocument, AuditJsonError, load_audit
from reports.format import ci_text, num, p_text, pct, toml_text
from reports.sections import GENERIC_ORDER, Section, load_builtin_sections, load_sections
from reports.sections.common import (
    STATUS_WORDS,
    check_state,
    datasets_in_order,
    reference_name,
    unavailable,
)
from reports.sections.explanations import METHOD_NAMES
from reports.sections.generic import GENERIC_TEMPLATE, generic_section
from reports.sections.recommendations import limitations, recommendations, reporting_checklist

__all__ = ["SECTIONS", "SECTION_TITLES", "build_context", "report_sections", "pct", "ci_text",
           "num", "p_text", "check_state", "recommendations", "limitations",
           "reporting_checklist", "toml_text", "STATUS_WORDS", "METHOD_NAMES"]

# The built-in sections as (anchor id, heading) in report order; printed as "N. heading".
SECTIONS: tuple[tuple[str, str], ...] = tuple((s.name, s.title) for s in load_builtin_sections())
SECTION_TITLES = tuple(f"{i}. {title}" for i, (_, title) in enumerate(SECTIONS, 1))


def report_sections(audit: Mapping) -> list[Section]:
    """The sections of this audit's report, in order: every registered section, and a generic
    one for each check in audit.json that none of them names."""
    sections = load_sections()
    shown = {check for section in sections for check in section.checks}
    taken = {section.name for section in sections}
    extra = []
    for name in sorted(audit.get("checks") or {}):
        if name in shown:
            continue
        anchor = f"check-{name}"
        while anchor in taken:
            anchor += "-check"
        extra.append(Section(name=anchor, title=f"The {name} check",
                             builder=functools.partial(generic_section, check=name),
                             template=GENERIC_TEMPLATE, order=GENERIC_ORDER, checks=(name,)))
    index = {s.name: i for i, s in enumerate([*sections, *extra])}
    return sorted([*sections, *extra], key=lambda s: (s.order, index[s.name]))


def build_context(audit: Mapping | AuditDocument, assets=None, *, strict: bool = False) -> dict:
    """The template context: header facts and one dict per section (see `report_sections`).
    `audit` is read through `load_audit`; with `strict`, a section that cannot be read raises."""
    audit = load_audit(audit)
    order = report_sections(audit)
    headings = {s.name: f"{i}. {s.title}" for i, s in enumerate(order, 1)}
    data, problems = {}, []
    for section in order:
        if not section.reads_others:
            data[section.name] = _guarded(section.name, section.builder, audit, assets, problems,
                                          strict=strict)
    available = {name: bool(d.get("available")) for name, d in data.items()}
    for section in order:
        if section.reads_others:  # e.g. the checklist: which other sections were computed
            available[section.name] = True
    for section in order:
        if section.reads_others:
            builder = functools.partial(section.builder, available=available, headings=headings)
            data[section.name] = _guarded(section.name, builder, audit, assets, problems,
                                          strict=strict)
    ordered = [{"anchor": s.name, "number": i, "title": s.title, "heading": headings[s.name],
                "template": s.template, "data": data[s.name]} for i, s in enumerate(order, 1)]
    model = audit.get("model") or {}
    return {
        "title": "CellAudit report",
        "status": audit.get("status", "ERROR"),
        "model_name": str(model.get("path", "model")).rsplit("/", 1)[-1],
        "model_sha256": model.get("sha256") or "",
        "datasets": datasets_in_order(audit),
        "reference": reference_name(audit),
        "generated_from": "audit.json",
        "schema_version": audit.schema_version,
        "sections": ordered, "s": data, "problems": problems,
    }


def _guarded(anchor: str, builder: Callable, audit: AuditDocument, assets, problems: list, *,
             strict: bool = False) -> dict:
    try:
        section = builder(audit, assets)
        if section.get("unreadable"):   # written, with a part it could not read
            if strict:
                raise AuditJsonError(section["unreadable"])
            problems.append({"section": anchor, "error": section["unreadable"]})
        return section
    except Exception as exc:  # noqa: BLE001 - one unreadable section must not sink the report
        if strict:
            raise
        detail = f"{type(exc).__name__}: {exc}"
        problems.append({"section": anchor, "error": detail})
        return unavailable(f"the report could not read this part of audit.json ({detail})")
