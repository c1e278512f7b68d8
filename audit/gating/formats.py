"""The gate's three outputs: a table for the terminal, Markdown for a pull-request comment and
JUnit XML (one test case per rule) for CI test reports."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from audit.gating.decision import ERROR, FAIL, SKIP, GateReport, RuleResult

__all__ = ["COLUMNS", "rows", "format_table", "format_markdown", "format_junit", "headline"]

COLUMNS = ("rule", "dataset", "metric", "baseline", "current", "change", "limit", "result")
_ICONS = {"PASS": "✅", "FAIL": "❌", "ERROR": "⛔", "SKIP": "➖"}


def _number(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def rows(report: GateReport) -> list[tuple[str, ...]]:
    """One tuple of display strings per rule, in COLUMNS order."""
    return [(r.rule, r.dataset, r.metric, _number(r.baseline), _number(r.current),
             _number(r.change, signed=True), r.limit, r.status) for r in report.results]


def headline(report: GateReport) -> str:
    counts = report.counts()
    n = len(report.results)
    skipped = f", {counts[SKIP]} skipped" if counts[SKIP] else ""
    if report.status == FAIL:
        errors = f" ({counts[ERROR]} could not be evaluated)" if counts[ERROR] else ""
        return f"gate FAIL: {len(report.failures)} of {n} rules failed{errors}{skipped}"
    return f"gate PASS: {n - counts[SKIP]} of {n} rules passed{skipped}"


def format_table(report: GateReport) -> str:
    table = [COLUMNS, *rows(report)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [f"{r.status}: {r.message}" for r in report.failures]
    lines += [f"PASS (within noise): {r.message}" for r in report.results if r.within_noise]
    lines += [f"note: {note}" for note in report.notes]
    lines.append(headline(report))
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def format_markdown(report: GateReport) -> str:
    icon = _ICONS[report.status]
    base_sha, cur_sha = (sha[:12] or "unknown" for sha in report.models)
    lines = [f"## CellAudit gate {icon} {report.status}", "",
             f"**{headline(report)}**", "",
             f"Baseline `{report.baseline}` (model `{base_sha}`) vs current `{report.current}` "
             f"(model `{cur_sha}`); policy: {report.policy}.", ""]
    if report.failures:
        lines += ["### Regressions", ""]
        lines += [f"- {_ICONS[r.status]} **{r.rule}** `{r.dataset}` `{r.metric}`: "
                  f"{_md_cell(r.message)}" for r in report.failures]
        lines.append("")
    noisy = [r for r in report.results if r.within_noise]
    if noisy:
        lines += ["### Drops within noise", ""]
        lines += [f"- **{r.rule}** `{r.dataset}` `{r.metric}`: {_md_cell(r.message)}" for r in noisy]
        lines.append("")
    if report.notes:
        lines += ["### Notes", ""] + [f"- {_md_cell(n)}" for n in report.notes] + [""]
    lines += ["### Rules", "",
              "| " + " | ".join(COLUMNS) + " |",
              "|" + "|".join(["---"] * 3 + ["---:"] * 3 + ["---"] * 2) + "|"]
    for row in rows(report):
        *cells, status = row
        lines.append("| " + " | ".join(_md_cell(c) for c in cells)
                     + f" | {_ICONS[status]} {status} |")
    return "\n".join(lines) + "\n"


def format_junit(report: GateReport) -> str:
    counts = report.counts()
    totals = {"tests": str(len(report.results)), "failures": str(counts[FAIL]),
              "errors": str(counts[ERROR]), "skipped": str(counts[SKIP])}
    root = ET.Element("testsuites", name="cellaudit-gate", **totals)
    suite = ET.SubElement(root, "testsuite", name="cellaudit-gate", **totals)
    properties = ET.SubElement(suite, "properties")
    for key, value in (("baseline", report.baseline), ("current", report.current),
                       ("policy", report.policy), ("baseline_model", report.models[0]),
                       ("current_model", report.models[1])):
        ET.SubElement(properties, "property", name=key, value=value)
    for result in report.results:
        _testcase(suite, result)
    if report.notes:
        ET.SubElement(suite, "system-out").text = "\n".join(report.notes)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _testcase(suite: ET.Element, result: RuleResult) -> None:
    case = ET.SubElement(suite, "testcase", classname=f"cellaudit.gate.{result.dataset}",
                         name=f"{result.rule} {result.metric}")
    tag = {FAIL: "failure", ERROR: "error", SKIP: "skipped"}.get(result.status)
    if tag:
        element = ET.SubElement(case, tag, message=result.message)
        if tag != "skipped":
            element.set("type", "regression" if tag == "failure" else "missing-metric")
            element.text = (f"baseline={_number(result.baseline)} current={_number(result.current)}"
                            f" change={_number(result.change, signed=True)} limit={result.limit}")
    else:
        ET.SubElement(case, "system-out").text = result.message
