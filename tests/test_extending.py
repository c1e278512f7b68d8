"""A check from outside the package, with and without a report section of its own.

The example package of docs/extending.md (examples/lab_checks) is copied to tmp_path, put on
sys.path and published through the same entry points a lab's pyproject.toml declares
(`cellaudit.checks`, `cellaudit.sections`): importlib.metadata.entry_points is patched to list
them, so the test exercises the loading code that an installed package goes through.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import sys

import pytest
from conftest import REPO
from markupsafe import escape

import audit
from audit.checks import base
from reports.sections import load_builtin_sections, registry

EXAMPLE = REPO / "examples" / "lab_checks"
QUICK = dict(checks="performance,brightness", explain=False, cache=False, report=True)


@pytest.fixture
def lab_plugin(tmp_path, monkeypatch):
    """Publish examples/lab_checks through patched entry points; `with_section(False)` leaves
    out its report section. The registries are restored afterwards."""
    shutil.copytree(EXAMPLE / "lab_checks", tmp_path / "plugin" / "lab_checks")
    monkeypatch.syspath_prepend(str(tmp_path / "plugin"))
    for module in [m for m in sys.modules if m == "lab_checks" or m.startswith("lab_checks.")]:
        monkeypatch.delitem(sys.modules, module)
    base.load_builtin_checks()       # registered in the real registries before copying them
    load_builtin_sections()
    monkeypatch.setattr(base, "REGISTRY", dict(base.REGISTRY))
    monkeypatch.setattr(base, "_PLUGINS_LOADED", set())
    monkeypatch.setattr(registry, "SECTIONS", dict(registry.SECTIONS))
    monkeypatch.setattr(registry, "_PLUGINS_LOADED", set())
    original = importlib.metadata.entry_points

    def publish(*, section: bool = True) -> None:
        ours = {base.ENTRY_POINT_GROUP: [importlib.metadata.EntryPoint(
                    "brightness", "lab_checks.brightness:BrightnessOutliers",
                    base.ENTRY_POINT_GROUP)],
                registry.ENTRY_POINT_GROUP: [importlib.metadata.EntryPoint(
                    "brightness", "lab_checks.brightness_section", registry.ENTRY_POINT_GROUP)]
                if section else []}

        def entry_points(**selection):
            if selection.get("group") in ours:
                return ours[selection["group"]]
            return original(**selection)

        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)

    return publish


def _run(tiny_model, synthetic_sites, out):
    # z=0: every image is an outlier, so the check FAILs and writes a finding per set.
    return audit.run(tiny_model, heldout=synthetic_sites["heldout"],
                     shifted={"site_b": synthetic_sites["site_b"]}, out=out,
                     overrides=["checks.brightness.z=0.0"], **QUICK)


@pytest.mark.slow
def test_external_check_with_its_own_section(lab_plugin, tiny_model, synthetic_sites,
                                             tmp_path):
    lab_plugin(section=True)
    result = _run(tiny_model, synthetic_sites, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "audit.json").read_text())

    # audit.json: the check's result, its config defaults, and the overall status it sets.
    check = data["checks"]["brightness"]
    assert check["status"] == "FAIL", check
    assert set(check["metrics"]["datasets"]) == {"heldout", "site_b"}
    assert data["config"]["checks"]["brightness"]["z"] == 0.0
    assert data["status"] == "FAIL" and result.status == "FAIL"

    # The ranked findings hold its findings, ranked with the others.
    ranked = [f for f in data["findings"] if f["check"] == "brightness"]
    assert {f["dataset"] for f in ranked} == {"heldout", "site_b"}
    assert all(f["kind"] == "brightness_outliers" for f in ranked)

    # The report: its own section (template from the plugin's folder), before the
    # recommendations, numbered with the others, its findings listed there, no generic one.
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'id="brightness"' in html and "Image brightness outliers" in html
    assert "Error rate on outliers" in html          # a line only its template writes
    assert 'id="check-brightness"' not in html
    assert html.index('id="brightness"') < html.index('id="recommendations"')
    section = html.split('id="brightness"')[1].split("</section>")[0]
    for finding in ranked:
        assert str(escape(finding["text"])) in section
    # After the 13 check sections, before recommendations and reproducibility (now 15, 16).
    assert "14. Image brightness outliers" in html and "16. Reproducibility" in html


@pytest.mark.slow
def test_external_check_without_a_section_gets_the_generic_one(lab_plugin, tiny_model,
                                                               synthetic_sites, tmp_path):
    lab_plugin(section=False)
    _run(tiny_model, synthetic_sites, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert data["checks"]["brightness"]["status"] == "FAIL"
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'id="brightness"' not in html
    section = html.split('id="check-brightness"')[1].split("</section>")[0]
    assert "The brightness check" in section
    assert "registers no report section of its own" in section
    assert "datasets.site_b.share" in section            # its metrics, as recorded
    for finding in (f for f in data["findings"] if f["check"] == "brightness"):
        assert str(escape(finding["text"])) in section


def test_every_registered_section_has_a_loadable_template_and_a_unique_name():
    from reports.render import _environment

    sections = load_builtin_sections()
    assert len({s.name for s in sections}) == len(sections) == 15
    assert [s.order for s in sections] == sorted(s.order for s in sections)
    for section in sections:
        _environment().get_template(section.template)   # raises TemplateNotFound


def test_register_section_refuses_a_taken_name_and_a_missing_template(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "SECTIONS", dict(registry.SECTIONS))
    load_builtin_sections()
    with pytest.raises(ValueError, match="'performance' is already registered"):
        registry.register_section("performance", "Mine", lambda audit, assets: {},
                                  "_performance.html.j2")
    with pytest.raises(ValueError, match="does not exist"):
        registry.register_section("mine", "Mine", lambda audit, assets: {},
                                  tmp_path / "absent.html.j2")


def test_a_check_in_audit_json_without_a_section_is_shown_generically():
    """No model: the frozen sample plus one check no section names."""
    from reports.render import render_html

    data = json.loads((REPO / "tests" / "data" / "audit_sample_v2.json").read_text())
    finding = {"check": "stain_batch", "text": "Stain batch 7 is paler than the others.",
               "action": "re-stain batch 7", "dataset": "heldout", "gap_share": None,
               "impact": 0.5, "evidence": {}, "kind": "stain_batch"}
    data["checks"]["stain_batch"] = {
        "name": "stain_batch", "status": "WARN", "summary": "one pale batch",
        "metrics": {"datasets": {"heldout": {"pale_batches": 1, "share": 0.125}}},
        "findings": [finding], "artifacts": {}, "error": None, "seconds": 0.1}
    data["findings"].insert(0, finding)
    html = render_html(data, strict=True)
    section = html.split('id="check-stain_batch"')[1].split("</section>")[0]
    assert "14. The stain_batch check" in section
    assert "one pale batch" in section and "datasets.heldout.share" in section
    assert "0.1250" in section and "Stain batch 7 is paler than the others." in section
    assert '<li value="1">' in section                 # its rank among all findings
    assert "16. Reproducibility" in html
