"""The example notebook runs headless, start to finish, and says what it should.

examples/audit_in_a_notebook.ipynb trains a model on synthetic cells whose site B differs from
site A only in stain hue, audits it, prints the findings, shows the report inline and gates a
weaker model; a notebook that no longer runs fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "audit_in_a_notebook.ipynb"


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        data = output.get("data", {})
        parts.append(data.get("text/plain", ""))
    return "".join(parts)


@pytest.mark.slow
def test_notebook_runs_and_finds_the_injected_cause(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in notebook.cells if c.cell_type == "code"]
    findings = next(c for c in code if "result.findings" in c.source)
    first = _text(findings).split("\n- ")[1]
    assert "colour" in first, _text(findings)  # the one difference between the sites
    inline = next(c for c in code if c.source.strip() == "result")
    html = inline.outputs[0]["data"]["text/html"]
    assert html.startswith("<iframe srcdoc=") and "CellAudit" in html
    gate = code[-1]
    assert "gate failed" in _text(gate)  # two epochs instead of twelve: a regression
