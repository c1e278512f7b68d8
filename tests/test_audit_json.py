"""The audit.json contract: a real audit validates against docs/audit.schema.json, a frozen sample
keeps its structure, the one loader migrates 1.x and refuses other majors, and a renamed key
fails loudly instead of blanking a report cell.

Regenerate the frozen sample after a deliberate change of the structure (and a SCHEMA_VERSION
bump in audit/audit_json.py):

    PYTHONPATH=. python tests/test_audit_json.py --regenerate PATH/TO/fresh/audit.json
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

from audit.audit_json import SCHEMA_VERSION, AuditJsonError, load_audit, performance_set

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "docs" / "audit.schema.json"
SAMPLE = REPO / "tests" / "data" / "audit_sample_v2.json"
REGENERATE = "PYTHONPATH=. python tests/test_audit_json.py --regenerate {fresh}"
MAX_ITEMS = 4          # lists of objects in the sample are cut to this many items
MAX_VALUES = 24        # and long lists of numbers (curves) to this many (figures stay drawable)
FREE_FORM = ("evidence",)   # keys whose content is free-form (a finding's numbers)
# The model file's own record (a CellAudit training record, or whatever a user's model carries),
# passed through as it is: its keys follow the trainer, not this contract.
FREE_FORM_PATHS = (".model.metadata",)


# ---- the frozen sample --------------------------------------------------------------------------

def _shrink(value, *, replace: dict[str, str]):
    """Lists cut (objects to MAX_ITEMS, numbers to MAX_VALUES), floats to 4 significant digits,
    temporary folders named."""
    if isinstance(value, dict):
        return {k: _shrink(v, replace=replace) for k, v in value.items()}
    if isinstance(value, list):
        keep = MAX_ITEMS if any(isinstance(v, dict) for v in value) else MAX_VALUES
        return [_shrink(v, replace=replace) for v in value[:keep]]
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, str):
        for old, new in replace.items():
            value = value.replace(old, new)
    return value


def make_sample(audit_json: Path) -> dict:
    data = json.loads(audit_json.read_text(encoding="utf-8"))
    roots = {str(Path(d["root"]).parent): "data" for d in data["datasets"].values() if d.get("root")}
    roots[str(audit_json.parent)] = "out"
    if data["model"].get("path"):
        roots[str(Path(data["model"]["path"]).parent)] = "model"
    return _shrink(data, replace=roots)


# ---- structure: paths and types, not values -----------------------------------------------------

def _kind(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string"}[type(value)]


def structure(value, path: str = "", out: dict | None = None) -> dict[str, set[str]]:
    """{path: kinds} of every value; array items share the path `...[]`."""
    out = {} if out is None else out
    out.setdefault(path or "$", set()).add(_kind(value))
    if isinstance(value, dict):
        for key, inner in value.items():
            if key not in FREE_FORM and f"{path}.{key}" not in FREE_FORM_PATHS:
                structure(inner, f"{path}.{key}", out)
    elif isinstance(value, list):
        for inner in value:
            structure(inner, f"{path}[]", out)
    return out


def structure_differences(fresh: dict, frozen: dict) -> list[str]:
    """What differs between two structures. null matches any kind (a value that could not be
    computed), and a path under an array that is empty on one side is not compared."""
    a, b = structure(fresh), structure(frozen)

    def comparable(path: str, other: dict) -> bool:
        parent = path
        while "[]" in parent:
            parent = parent[:parent.rindex("[]")]
            if parent not in other or other[parent] == {"null"}:
                return False
        return True

    out = []
    for path in sorted(set(a) | set(b)):
        if path not in b:
            if comparable(path, b) and not _under_null(path, b):
                out.append(f"new in this audit.json: {path} ({'/'.join(sorted(a[path]))})")
        elif path not in a:
            if comparable(path, a) and not _under_null(path, a):
                out.append(f"missing from this audit.json: {path}")
        else:
            kinds_a, kinds_b = a[path] - {"null"}, b[path] - {"null"}
            if kinds_a and kinds_b and not kinds_a & kinds_b:
                out.append(f"{path}: {'/'.join(sorted(kinds_a))} here, "
                           f"{'/'.join(sorted(kinds_b))} in the sample")
    return out


def _under_null(path: str, other: dict) -> bool:
    """An ancestor of `path` is null (or only null) on the other side: nothing to compare."""
    parts = path.replace("[]", ".[]").split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i]).replace(".[]", "[]")
        if other.get(parent) == {"null"}:
            return True
    return False


# ---- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def validator():
    import jsonschema  # a test dependency: never skipped for want of it

    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def sample() -> dict:
    return json.loads(SAMPLE.read_text(encoding="utf-8"))


def _errors(validator, data) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '$'}: {e.message[:200]}"
            for e in validator.iter_errors(data)]


# ---- (a) a real audit validates -----------------------------------------------------------------

def test_a_real_audit_validates_against_the_schema(audit_out, validator):
    data = json.loads((audit_out / "audit.json").read_text(encoding="utf-8"))
    assert data["schema_version"] == SCHEMA_VERSION
    assert _errors(validator, data) == []


def test_the_sample_validates_and_is_this_version(sample, validator):
    assert sample["schema_version"] == SCHEMA_VERSION
    assert _errors(validator, sample) == []


# ---- (b) the sample loads and renders every cell it has data for --------------------------------

def _section(html: str, anchor: str) -> str:
    return html.split(f'id="{anchor}"', 1)[1].split('<section', 1)[0]


def test_the_sample_renders_without_unread_cells(sample):
    from reports.context import ci_text, pct
    from reports.render import render_html

    doc = load_audit(sample)
    html = render_html(doc, strict=True)   # strict: a section that cannot be read raises
    assert "could not read" not in html
    shown = 0
    for name in doc.datasets:
        perf = performance_set(doc, name)
        if perf is None:
            continue
        part = _section(html, "performance")
        for key in ("accuracy", "balanced_accuracy", "macro_f1"):
            interval = perf.required(key)
            if interval.get("value") is not None:
                assert ci_text(interval) in part, (name, key)
                shown += 1
        for class_name in doc.model.class_names:
            recall = perf.per_class(class_name).required("recall")
            if recall.get("value") is not None:
                assert pct(recall["value"]) in part, (name, class_name)
    assert shown >= 6
    ece = doc.check("calibration").per_set()["heldout"].section("before")["ece"]
    assert f"{ece:.3f}" in _section(html, "calibration")
    explained = doc.check("gap_factors").per_set()["site_b"].section("combined")["explained"]
    assert pct(explained["value"], 0) in _section(html, "shift")


# ---- (c) the structure is frozen ----------------------------------------------------------------

def test_structure_matches_the_frozen_sample(audit_out, sample):
    fresh = audit_out / "audit.json"
    differences = structure_differences(json.loads(fresh.read_text(encoding="utf-8")), sample)
    assert not differences, (
        "audit.json's structure changed:\n  " + "\n  ".join(differences[:30])
        + f"\nIf this is deliberate: bump SCHEMA_VERSION in audit/audit_json.py (major when a key "
          f"is renamed or removed, minor when one is added), update docs/audit.schema.json and "
          f"docs/audit-json.md, and regenerate the sample:\n  {REGENERATE.format(fresh=fresh)}")


def test_structure_comparison_sees_a_renamed_key(sample):
    renamed = copy.deepcopy(sample)
    perf = renamed["checks"]["performance"]["metrics"]["datasets"]["heldout"]
    perf["acc"] = perf.pop("accuracy")
    differences = structure_differences(renamed, sample)
    assert any("missing from this audit.json: .checks.performance.metrics.datasets.heldout"
               ".accuracy" in d for d in differences), differences
    assert any(".heldout.acc " in d for d in differences), differences
    assert structure_differences(copy.deepcopy(sample), sample) == []


# ---- (d) a renamed metric key fails loudly ------------------------------------------------------

def test_a_renamed_metric_key_fails_loudly(sample, validator):
    from reports.render import render_html

    renamed = copy.deepcopy(sample)
    perf = renamed["checks"]["performance"]["metrics"]["datasets"]["heldout"]
    perf["acc"] = perf.pop("accuracy")
    errors = _errors(validator, renamed)
    assert any("checks.performance.metrics.datasets.heldout" in e and "'accuracy'" in e
               for e in errors), errors
    with pytest.raises(AuditJsonError, match=r"checks\.performance\.metrics\.datasets\.heldout "
                                             r"has no 'accuracy'"):
        render_html(renamed, strict=True)
    # Not strict (a user's report): the section becomes a note naming the key, never "n/a".
    html = render_html(renamed)
    assert "has no &#39;accuracy&#39;" in _section(html, "performance")


# ---- (e) versions: 1.x migrated, other majors refused -------------------------------------------

def _as_v1(sample: dict) -> dict:
    old = copy.deepcopy(sample)
    old["schema_version"] = "1.0"
    result = old["checks"].pop("gap_factors")
    old["checks"]["attribution"] = {**result, "name": "attribution"}
    for finding in old["findings"] + result["findings"]:
        if finding["check"] == "gap_factors":
            finding["check"] = "attribution"
            finding["kind"] = finding["kind"].replace("gap_factors_", "attribution_")
    old["config"]["checks"]["attribution"] = old["config"]["checks"].pop("gap_factors")
    old["timings"]["check.attribution"] = old["timings"].pop("check.gap_factors")
    return old


def test_a_1x_audit_is_migrated_on_read(sample, tmp_path):
    path = tmp_path / "audit.json"
    path.write_text(json.dumps(_as_v1(sample)), encoding="utf-8")
    doc = load_audit(path)
    assert doc.schema_version == SCHEMA_VERSION and doc["migrated_from"] == "1.0"
    assert "attribution" not in doc.checks and doc.check("gap_factors").status in (
        "PASS", "WARN", "FAIL", "SKIP")
    assert doc.check("gap_factors").name == "gap_factors"
    assert "check.gap_factors" in doc.timings and "gap_factors" in doc.config["checks"]
    kinds = {f["kind"] for f in doc.findings if f.check == "gap_factors"}
    assert all(k.startswith("gap_factors_") for k in kinds)
    assert not any(f.check == "attribution" for f in doc.findings)
    # What was migrated is what this version writes (apart from the note saying so).
    migrated = dict(doc)
    assert migrated.pop("migrated_from") == "1.0"
    assert migrated == sample


def test_a_1x_baseline_still_gates(sample, tmp_path):
    from audit.gating.reading import AuditFile

    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(_as_v1(sample)), encoding="utf-8")
    baseline = AuditFile.load(path, role="baseline")
    assert baseline.metric("heldout", "accuracy").value is not None
    assert baseline.doc.check("gap_factors") is not None


@pytest.mark.parametrize("text, words", [
    ('{"schema_version": "9.0", "model": {}, "checks": {}}', "has schema '9.0', not compatible "
                                                              f"with {SCHEMA_VERSION}"),
    ('{"model": {}, "checks": {}}', "has no schema_version"),
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "is not an audit.json"),
])
def test_an_unreadable_audit_is_one_line_naming_the_file(tmp_path, text, words):
    path = tmp_path / "audit.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(AuditJsonError) as caught:
        load_audit(path)
    message = str(caught.value)
    assert words in message and str(path) in message and "\n" not in message


def test_the_version_check_exists_once():
    """One reader compares schema versions: audit/audit_json.py (grep for the comparison)."""
    readers = sorted(str(p.relative_to(REPO)) for root in ("audit", "reports")
                     for p in (REPO / root).rglob("*.py")
                     if 'split(".")[0]' in p.read_text(encoding="utf-8")
                     and "schema" in p.read_text(encoding="utf-8").lower())
    assert readers == ["audit/audit_json.py"], readers


def test_audit_reaches_reports_only_through_the_render_step():
    import re

    pattern = re.compile(r"^\s*(import|from)\s+reports\b", re.M)
    importers = sorted(str(p.relative_to(REPO)) for p in (REPO / "audit").rglob("*.py")
                       if pattern.search(p.read_text(encoding="utf-8")))
    assert importers == ["audit/render_step.py"], importers


def test_a_missing_required_key_is_named():
    doc = load_audit({"schema_version": "2.0", "model": {}, "datasets": {}, "checks": {
        "performance": {"status": "PASS", "metrics": {}}}})
    with pytest.raises(AuditJsonError, match=r"model has no 'class_names'"):
        _ = doc.model.class_names
    with pytest.raises(AuditJsonError, match=r"checks\.performance\.metrics has no 'datasets'"):
        performance_set(doc, "heldout")
    assert doc.check("calibration") is None      # not run: optional, explicitly


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--regenerate":
        sys.exit(f"usage: {REGENERATE.format(fresh='PATH/TO/audit.json')}")
    SAMPLE.parent.mkdir(parents=True, exist_ok=True)
    SAMPLE.write_text(json.dumps(make_sample(Path(sys.argv[2])), indent=1, allow_nan=False)
                      + "\n", encoding="utf-8")
    print(f"wrote {SAMPLE.relative_to(REPO)} ({SAMPLE.stat().st_size // 1024} KB)")
