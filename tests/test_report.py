"""HTML report: built from a real-layout audit.json (the checks run on hand-made arrays, no model),
self-contained, every section present or "not computed" with a reason, computed wording,
StrictUndefined, deterministic output, and `audit report` without TensorFlow."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, logits_for, make_context, make_view
from PIL import Image

from audit.checks.base import load_builtin_checks
from audit.cli import main
from audit.findings import rank_findings
from audit.imaging import PROPERTIES
from audit.results import AuditResult, CheckResult, Status
from audit.tomlcompat import tomllib
from reports import figures
from reports.context import (
    SECTION_TITLES,
    check_state,
    limitations,
    recommendations,
    reporting_checklist,
    toml_text,
)
from reports.render import Assets, _environment, load_audit, render_html, render_report

CLASSES = ("basophil", "lymphocyte", "neutrophil")
HISTORY = {"accuracy": [0.5, 0.7, 0.8], "loss": [1.2, 0.8, 0.6],
           "val_accuracy": [0.45, 0.6, 0.7], "val_loss": [1.3, 1.0, 0.9]}


def _view(name, role, rng, *, n, accuracy, shift=0.0, root=None):
    labels = rng.integers(0, len(CLASSES), n)
    wrong = rng.random(n) > accuracy
    predictions = np.where(wrong, (labels + 1) % len(CLASSES), labels)
    props = {p: rng.normal(shift, 1.0, n) for p in PROPERTIES}
    props["hue"] = (rng.normal(300 + 20 * shift, 10, n)) % 360
    view = make_view(name, role, labels, logits_for(labels, predictions, len(CLASSES), rng=rng),
                     class_names=CLASSES, embeddings=rng.normal(shift, 1.0, (n, 8)),
                     properties=props, phash=rng.integers(0, 2**63, n).astype(np.uint64))
    if root is not None:  # point the dataset at real files
        from dataclasses import replace

        paths = tuple(str(root / CLASSES[c] / f"{i}.png") for i, c in enumerate(labels))
        view = replace(view, dataset=replace(view.dataset, root=str(root), paths=paths))
    return view


def _write_images(root: Path, view) -> None:
    rng = np.random.default_rng(1)
    for path, label in zip(view.dataset.paths, view.labels, strict=True):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        colour = np.array([[200, 80, 80], [80, 80, 200], [80, 160, 80]][label], np.uint8)
        image = np.clip(colour + rng.integers(0, 40, (20, 20, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(path)


def explanations_for(audit: dict, out: Path) -> dict:
    """An `explanations` entry in the layout of audit.explain.runner, with its npz artifact,
    explaining the two most confident heldout errors (Grad-CAM, SHAP; LIME failed)."""
    errors = audit["checks"]["errors"]["metrics"]["datasets"]["heldout"]["confident_errors"][:2]
    k, size, rng = len(errors), 16, np.random.default_rng(0)
    records = [{"index": i, "path": e["path"], "label": 0, "label_name": e["true"], "target": 1,
                "target_name": e["predicted"], "confidence": e["probability"], "correct": False,
                "reason": "confident_error"} for i, e in enumerate(errors)]
    np.savez_compressed(out / "artifacts" / "explanations_heldout.npz",
                        images=rng.integers(0, 255, (k, size, size, 3), dtype=np.uint8),
                        maps_gradcam=rng.random((k, size, size)).astype(np.float16),
                        maps_shap=(2 * rng.random((k, size, size)) - 1).astype(np.float16),
                        paths=np.array([r["path"] for r in records]))
    faith = {"deletion_auc": 0.2, "insertion_auc": 0.5, "deletion": [0.2] * k,
             "insertion": [0.5] * k, "gain_vs_random": {"value": 0.25, "low": 0.1, "high": 0.4}}
    focus = {"mass_share": 0.6, "area_share": 0.2, "focus_ratio": 3.0, "per_image": [0.6] * k}
    method = {"faithfulness": faith, "cell_focus": focus, "sanity": {"spearman": 0.1},
              "stability": None, "flags": []}
    return {
        "layout_version": 1,
        "methods": {"gradcam": {"signed": False, "description": "gradient maps",
                                "flags": ["not_better_than_random"]},
                    "shap": {"signed": True, "description": "Owen values", "flags": []},
                    "lime": {"error": "RuntimeError: planted", "flags": []}},
        "datasets": {"heldout": {
            "role": "heldout", "n_images": k, "images": records, "cell_area_share": 0.2,
            "artifact": "artifacts/explanations_heldout.npz", "artifact_size": size,
            "random": {"faithfulness": {"deletion_auc": 0.3, "insertion_auc": 0.35,
                                        "deletion": [0.3] * k, "insertion": [0.35] * k},
                       "cell_focus": {"mass_share": 0.2, "area_share": 0.2, "focus_ratio": 1.0}},
            "methods": {"gradcam": method, "shap": method,
                        "lime": {"error": "RuntimeError: planted"}}}},
        "flag_meanings": {"not_better_than_random": "no better than random maps"},
        "summary": ["On heldout, Grad-CAM puts 60% of its positive attribution on the cell."],
    }


def build_audit(out: Path, *, images_root: Path | None = None, drop: tuple[str, ...] = ()
                ) -> Path:
    """Run every registered check on hand-made views and write OUT/audit.json + predictions."""
    rng = np.random.default_rng(0)
    views = [_view("heldout", "heldout", rng, n=90, accuracy=0.85, root=images_root),
             _view("site_b", "shifted", rng, n=80, accuracy=0.6, shift=1.0),
             _view("train", "train", rng, n=60, accuracy=0.95)]
    if images_root is not None:
        _write_images(images_root, views[0])
    ctx = make_context(views, tmp_path=out, overrides=["checks.performance.n_boot=200",
                                                       "checks.shift.n_boot=100",
                                                       "checks.shift.n_perm=50"])
    for view in views:
        ctx.save_artifact(f"predictions_{view.name}", labels=view.labels, logits=view.logits,
                          paths=np.array(view.dataset.relative_paths))
    for name, cls in load_builtin_checks().items():
        if name in drop:
            continue
        try:
            ctx.results[name] = cls().run(ctx)
        except Exception as exc:  # noqa: BLE001 - as the runner does
            ctx.results[name] = CheckResult(name, Status.ERROR, f"the check crashed: {exc}",
                                            error=str(exc))
    metadata = {"class_names": list(CLASSES), "input_size": 32, "seed": 3,
                "architecture": {"backbone": "MobileNetV2", "alpha": 0.35},
                "preprocessing": {"resize": "centre crop, bilinear"},
                "training_data": {"root": "/data/train", "n_images": 60, "fingerprint": "abc",
                                  "class_counts": dict(zip(CLASSES, (20, 20, 20), strict=True))},
                "hyperparameters": {"batch_size": 32, "augment": {"flips": True}},
                "history": HISTORY,
                "phases": [{"phase": "head", "epochs_run": 1}, {"phase": "finetune",
                                                                "epochs_run": 2}],
                "versions": {"keras": "3.0"}}
    thumbnails = {}
    if images_root is not None:  # the runner keeps copies of the images the report shows
        from dataclasses import replace as replace_context

        from audit.thumbnails import save_thumbnails

        thumbnails = save_thumbnails(replace_context(ctx, views={"heldout": views[0]}))
    result = AuditResult(
        model={"path": "/models/m.keras", "sha256": "f" * 64, "class_names": list(CLASSES),
               "input_size": 32, "metadata": metadata},
        datasets={v.name: {"role": v.role, "source": v.name, **v.dataset.describe(),
                           **({"thumbnails": thumbnails[v.name]} if v.name in thumbnails else {})}
                  for v in views},
        config=ctx.config, checks=ctx.results, findings=rank_findings(ctx.results),
        versions={"keras": "3.0", "numpy": "2.0"}, timings={"total": 1.0},
        command=["audit", "run", "--model", "m.keras", "--out", "my out"])
    data = result.to_dict()
    if images_root is not None:
        data["explanations"] = explanations_for(data, out)
    path = out / "audit.json"
    path.write_text(json.dumps(data, allow_nan=False))
    return path


@pytest.fixture(scope="module")
def audit_json(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    return build_audit(root / "out", images_root=root / "images")


@pytest.fixture(scope="module")
def html(audit_json) -> str:
    target = audit_json.parent / "report.html"
    render_report(audit_json, target)
    return target.read_text(encoding="utf-8")


def _headings(html: str) -> list[str]:
    return re.findall(r'<h2 id="[^"]+-title">([^<]+)</h2>', html)


def _images(html: str) -> list[tuple[str, str]]:
    return re.findall(r'<img src="([^"]*)" alt="([^"]*)"', html)


def test_all_fifteen_sections_in_order(html):
    assert _headings(html) == list(SECTION_TITLES)
    assert len(SECTION_TITLES) == 15
    assert "could not read part of audit.json" not in html


def test_report_is_self_contained(html):
    assert "<script" not in html.lower()
    assert not re.search(r'(src|href)="(?!data:image/png;base64,|#)', html)
    assert "http://" not in html and "https://" not in html
    assert "default-src 'none'" in html  # the CSP forbids any request that slipped in
    assert "<style>" in html and "@page" in html and "@media print" in html


def test_every_image_is_a_decodable_png_with_alt_text(html):
    images = _images(html)
    assert len(images) == html.count("<img ")
    assert len(images) >= 8
    for uri, alt in images:
        assert len(alt) > 15, alt
        data = base64.b64decode(uri.split(",", 1)[1])
        with Image.open(io.BytesIO(data)) as im:
            im.verify()


def test_checks_that_ran_are_rendered_with_their_numbers(audit_json, html):
    audit = json.loads(audit_json.read_text())
    acc = audit["checks"]["performance"]["metrics"]["datasets"]["heldout"]["accuracy"]
    assert f"{100 * acc['value']:.1f}% (95% CI {100 * acc['low']:.1f} to" in html
    temperature = audit["checks"]["calibration"]["metrics"]["temperature"]
    assert f"{temperature:.2f}" in html
    # robustness needs a model: SKIP here, shown as not computed with the check's own reason
    assert audit["checks"]["robustness"]["status"] == "SKIP"
    assert "Not computed: No model to run corrupted images through." in html


def test_verdict_and_recommendations_come_from_the_findings(audit_json, html):
    audit = json.loads(audit_json.read_text())
    assert audit["findings"]
    verdict = html.split('id="model-card"')[0]
    assert audit["findings"][0]["text"].replace("'", "&#39;") in verdict
    actions = [r["action"] for r in recommendations(audit["findings"])]
    section = html.split('id="recommendations"')[1]
    positions = [section.find(a.replace("'", "&#39;")) for a in actions]
    assert -1 not in positions and positions == sorted(positions)


def test_pictures_come_from_the_thumbnails_artifact(html):
    datasets = html.split('id="datasets"')[1].split('id="performance"')[0]
    assert re.search(r'alt="\d example (basophil|lymphocyte|neutrophil) images? from heldout"',
                     datasets)
    assert "the thumbnails artifact of site_b is missing, so no images are shown" in datasets


def test_explanation_rows_and_overlays(html):
    section = html.split('id="explanations"')[1].split('id="selective"')[0]
    assert section.count('alt="Input:') == 2
    assert section.count('alt="Grad-CAM map over') == 2 and section.count('alt="SHAP map') == 2
    assert "<th>Image</th><th>Grad-CAM</th><th>SHAP</th>" in section
    assert "LIME</td><td colspan=\"3\">Not computed: RuntimeError: planted" in section
    assert "faith. 0.25" in section and "on cell 60%" in section  # 0.5-0.2 - (0.35-0.3)
    assert "no better than random maps" in section
    assert "Grad-CAM puts 60% of its positive attribution" in section
    gallery = html.split('id="errors"')[1].split('id="leakage"')[0]
    assert gallery.count('alt="Grad-CAM overlay') == 2


def test_report_never_reads_the_dataset(audit_json, stub_figures):
    audit = json.loads(audit_json.read_text())
    for meta in audit["datasets"].values():
        meta["root"] = "/moved/away"
    html = render_html(audit, base_dir=audit_json.parent)
    gallery = html.split('id="errors"')[1].split('id="leakage"')[0]
    assert gallery.count('alt="Grad-CAM overlay') == 2  # explained errors: from the artifact
    datasets = html.split('id="datasets"')[1].split('id="performance"')[0]
    assert re.search(r'alt="\d example (basophil|lymphocyte|neutrophil) images? from heldout"',
                     datasets)
    explained = html.split('id="explanations"')[1].split('id="selective"')[0]
    assert explained.count('alt="Input:') == 2


def test_missing_and_failed_checks_become_notes(tmp_path, stub_figures):
    path = build_audit(tmp_path / "out", drop=("calibration",))
    audit = json.loads(path.read_text())
    audit["checks"]["errors"] = {"name": "errors", "status": "ERROR", "summary": "boom",
                                 "metrics": {}, "findings": [], "artifacts": {},
                                 "error": "ValueError: planted", "seconds": 0.0}
    audit["checks"]["shift"]["metrics"]["datasets"]["site_b"].pop("decomposition")
    audit["checks"]["selective"]["metrics"] = {"datasets": "not a dict"}
    audit["model"]["metadata"].pop("history")
    audit["explanations"] = {"error": "RuntimeError: no gradients"}
    html = render_html(audit, base_dir=None)
    assert _headings(html) == list(SECTION_TITLES)
    assert "Not computed: the calibration check was not run" in html
    assert "Not computed: the errors check failed: ValueError: planted" in html
    assert "Not computed: the model&#39;s metadata holds no training history" in html
    assert "Not computed: the explanations failed: RuntimeError: no gradients" in html
    assert "Not computed: the report could not read this part of audit.json" in html  # selective
    assert "not computed</span> in this run (8. Calibration)" in html  # checklist follows


@pytest.fixture
def stub_figures(monkeypatch):
    """Skip drawing (speed) in tests about text; figures are exercised on the full audit."""
    for name in ("training_curves", "accuracy_intervals", "confusion_matrix",
                 "shift_decomposition", "property_drift", "reliability_diagram",
                 "robustness_curves", "coverage_curves"):
        monkeypatch.setattr(figures, name, lambda *a, **k: figures.Figure("data:,", "stub"))


def test_any_missing_metric_key_is_survived(audit_json, stub_figures):
    """Drop each metric key (top level and per dataset) of each check in turn: the report still
    renders every section (the affected one may become a note)."""
    audit = json.loads(audit_json.read_text())
    variants = []
    for name, check in audit["checks"].items():
        metrics = check["metrics"]
        for key in metrics:
            variants.append((name, key, None))
        first = next(iter((metrics.get("datasets") or {}).values()), None)
        for key in first or {}:
            variants.append((name, "datasets", key))
    assert len(variants) > 40
    for name, key, inner in variants:
        broken = json.loads(json.dumps(audit))
        metrics = broken["checks"][name]["metrics"]
        if inner is None:
            del metrics[key]
        else:
            next(iter(metrics["datasets"].values())).pop(inner)
        html = render_html(broken)
        assert _headings(html) == list(SECTION_TITLES), (name, key, inner)


def test_fingerprint_matches_are_reported(audit_json, stub_figures):
    audit = json.loads(audit_json.read_text())
    audit["model"]["metadata"]["training_data"]["fingerprint"] = \
        audit["datasets"]["heldout"]["fingerprint"]
    html = render_html(audit)
    assert "Warning: heldout (heldout) is identical to the model&#39;s training data" in html


def test_minimal_audit_renders(tmp_path):
    audit = {"schema_version": "2.0", "status": "ERROR", "model": {}, "datasets": {},
             "checks": {}, "findings": [], "config": {}, "versions": {}, "timings": {},
             "command": [], "explanations": {}}
    html = render_html(audit)
    assert _headings(html) == list(SECTION_TITLES)
    assert html.count("Not computed:") >= 10


def test_text_is_escaped(audit_json, stub_figures):
    audit = json.loads(audit_json.read_text())
    audit["findings"][0]["text"] = "<script>alert(1)</script> & co"
    html = render_html(audit)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html


def test_undefined_variables_are_errors():
    from jinja2 import StrictUndefined, UndefinedError

    env = _environment()
    assert env.undefined is StrictUndefined and env.autoescape
    with pytest.raises(UndefinedError):
        env.from_string("{{ missing }}").render()


def test_rendering_is_deterministic(audit_json, html):
    assert render_html(load_audit(audit_json), base_dir=audit_json.parent) == html


def test_gap_explanation_names_the_largest_measured_share(audit_json, stub_figures):
    audit = json.loads(audit_json.read_text())
    audit["findings"].insert(0, {"check": "shift", "text": "Planted cause explains it.",
                                 "action": "fix the planted cause", "dataset": "site_b",
                                 "gap_share": 0.62, "impact": 0.1, "evidence": {}, "kind": "x"})
    html = render_html(audit)
    assert "The largest measured cause explains 62% of the gap: Planted cause explains it." in html


def test_recommendations_deduplicate_in_rank_order():
    findings = [{"check": "a", "text": "t1.", "action": "do X", "dataset": "s"},
                {"check": "b", "text": "t2", "action": "do Y", "dataset": None},
                {"check": "c", "text": "t3", "action": "Do X.", "dataset": "r"},
                {"check": "d", "text": "t4", "action": "", "dataset": None}]
    out = recommendations(findings)
    assert [r["action"] for r in out] == ["Do X", "Do Y"]
    assert out[0]["ranks"] == [1, 3] and out[0]["checks"] == ["a", "c"]
    assert out[0]["datasets"] == ["s", "r"] and out[0]["because"] == "t1"


def test_limitations_follow_the_inputs():
    audit = {"datasets": {"heldout": {"role": "heldout", "n_images": 50, "has_groups": False,
                                      "class_counts": {"a": 50, "b": 0}}},
             "checks": {"robustness": {"status": "SKIP", "summary": "No model."}}}
    text = " ".join(limitations(audit))
    assert "No shifted dataset" in text and "training set was not given" in text
    assert "no images of b" in text and "robustness check was not computed (SKIP)" in text
    assert "records no patient/slide groups" in text


def test_checklist_maps_to_sections_or_human_input():
    rows = reporting_checklist({"performance": True})
    assert {r["guideline"] for r in rows} == {"CLAIM", "TRIPOD+AI"}
    assert {r["state"] for r in rows} == {"answered", "missing", "human"}
    perf = next(r for r in rows if r["item"] == "28")
    assert perf["state"] == "answered" and perf["where"] == "4. Performance"


def test_check_state_reasons():
    audit = {"schema_version": "2.0", "checks": {"a": {"status": "ERROR", "error": "E"},
                        "b": {"status": "SKIP", "summary": "not here"},
                        "c": {"status": "PASS", "metrics": {"x": 1}}}}
    assert check_state(audit, "a")[1] == "the a check failed: E"
    assert check_state(audit, "b")[1] == "not here"
    assert check_state(audit, "c")[1] == ""
    assert "was not run" in check_state(audit, "z")[1]


def test_config_is_rendered_as_valid_toml(audit_json):
    config = json.loads(audit_json.read_text())["config"]
    assert tomllib.loads(toml_text(config)) == config


def test_figures_return_none_without_data_and_alt_with_numbers():
    assert figures.training_curves({}) is None
    assert figures.confusion_matrix("x", [], CLASSES) is None
    assert figures.image_strip([], size=8) is None
    assert figures.thumbnail_rows("x", {"a": []}, size=8) == [{"class": "a", "n": 0,
                                                                "figure": None}]
    assert figures.coverage_curves({}, None, 0.95) is None
    fig = figures.confusion_matrix("heldout", [[5, 1], [0, 4]], ("a", "b"))
    assert fig.uri.startswith("data:image/png;base64,")
    assert "a 83.3%" in fig.alt and "a predicted as b (1 images)" in fig.alt
    curves = figures.training_curves(HISTORY, [{"epochs_run": 1}, {"epochs_run": 2}])
    assert "3 epochs" in curves.alt and "val accuracy 0.700" in curves.alt


def test_overlays_keep_the_image_shape():
    image = np.full((20, 20, 3), 128, np.uint8)
    out = figures.overlay_heatmap(image, np.eye(5))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert figures.signed_heatmap(np.array([[-1.0, 1.0]]), (4, 6)).shape == (4, 6, 3)


def test_assets_survive_missing_files(tmp_path):
    assets = Assets(tmp_path, {"datasets": {"x": {"root": str(tmp_path / "gone")}}})
    assert assets.npz("artifacts/nothing.npz") is None
    assert assets.image("x", "a.png", 32) is None
    examples, reason = assets.examples("x", CLASSES, per_class=2, size=32)
    assert examples is None and "thumbnails artifact of x is missing" in reason


def test_cli_report_does_not_import_tensorflow(audit_json, tmp_path):
    out = tmp_path / "again.html"
    code = (
        "import sys\n"
        "from audit.cli import main\n"
        f"rc = main(['report', {str(audit_json)!r}, '-o', {str(out)!r}])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "print(rc, heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "0 []"
    assert out.stat().st_size > 10_000


def test_cli_report_input_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "none.json")]) == 2
    bad = tmp_path / "audit.json"
    bad.write_text("{not json")
    assert main(["report", str(bad)]) == 2
    bad.write_text(json.dumps({"schema_version": "9.0", "checks": {}, "model": {}}))
    assert main(["report", str(bad)]) == 2
    assert "schema" in capsys.readouterr().err


def test_cli_report_default_output(audit_json, tmp_path, capsys):
    copy = tmp_path / "audit.json"
    copy.write_text(audit_json.read_text())
    assert main(["report", str(copy)]) == 0
    assert (tmp_path / "report.html").is_file()
    assert "wrote" in capsys.readouterr().out


def test_layering_audit_and_reports_stay_apart():
    """audit/ never imports matplotlib or jinja2; reports/ never imports TensorFlow/Keras."""
    pattern = re.compile(r"^\s*(import|from)\s+(matplotlib|jinja2)\b", re.M)
    for path in (REPO / "audit").rglob("*.py"):
        assert not pattern.search(path.read_text(encoding="utf-8")), path
    heavy = re.compile(r"^\s*(import|from)\s+(tensorflow|keras|model)\b", re.M)
    for path in (REPO / "reports").rglob("*.py"):
        assert not heavy.search(path.read_text(encoding="utf-8")), path
