"""The gate end to end on a tiny model: audit, accept as baseline, re-audit (pass), then a
planted regression (the logits layer's class columns rotated) that must fail with exit 1."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from audit.cli import main
from audit.synthetic import SHIFTED_SITE, write_site

pytestmark = pytest.mark.slow

CLASSES = ("eosinophil", "lymphocyte", "neutrophil")
# From scratch, 8 small-batch epochs: ~0.85-0.9 validation accuracy in ~45 s of CPU.
TRAIN = ["--weights", "none", "--input-size", "32", "--alpha", "0.35", "--head-epochs", "0",
         "--finetune-epochs", "8", "--finetune-from", "Conv1", "--finetune-lr", "3e-3",
         "--patience", "20", "--batch-size", "16", "--no-affine", "--no-stain", "--seed", "1"]
POLICY = """\
[defaults]
metrics = { accuracy = { max_abs_drop = 0.01 }, balanced_accuracy = { max_abs_drop = 0.01 } }
ece_max = 1.0
[datasets.heldout]
metrics = { macro_f1 = { max_abs_drop = 0.02, max_rel_drop = 0.05 } }
class_recall_max_drop = 0.10
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate_e2e")
    write_site(root / "train", n_images=360, size=32, seed=0, classes=CLASSES)
    write_site(root / "heldout", n_images=150, size=32, seed=1, classes=CLASSES)
    write_site(root / "site_b", n_images=90, size=32, seed=2, classes=CLASSES,
               domain=SHIFTED_SITE, site_name="b")
    model = root / "model.keras"
    assert main(["train", str(root / "train"), "--out", str(model), *TRAIN]) == 0
    (root / "gate.toml").write_text(POLICY)
    return root


def audit_args(root, model, out, *gate):
    return ["run", "--model", str(model), "--data", f"heldout={root / 'heldout'}",
            "--data", f"shifted:site_b={root / 'site_b'}", "--out", str(out), "--no-explain",
            "--no-report", "--no-cache", "--checks", "performance,calibration", *gate]


def regressed_copy(model_path, out_path):
    """The same network with the logits layer's class columns rotated by one."""
    from model.io import save_model
    from model.loaded import load_model

    loaded = load_model(model_path)
    model, metadata = loaded.keras_model, loaded.metadata
    layer = model.get_layer("logits")
    kernel, bias = layer.get_weights()
    layer.set_weights([np.roll(kernel, 1, axis=1), np.roll(bias, 1)])
    save_model(model, out_path, metadata)
    return out_path


def accuracy(audit_json, dataset="heldout"):
    data = json.loads(audit_json.read_text())
    return data["checks"]["performance"]["metrics"]["datasets"][dataset]["accuracy"]["value"]


@pytest.fixture(scope="module")
def baseline(world):
    first = world / "run1"
    assert main(audit_args(world, world / "model.keras", first)) in (0, 1)  # check statuses vary
    target = world / "baseline" / "audit.json"
    assert main(["baseline", "accept", str(first / "audit.json"), str(target)]) == 0
    assert (world / "baseline" / "audit.artifacts" / "predictions_heldout.npz").is_file()
    assert accuracy(target) > 0.6, "the tiny model did not learn: the test would prove little"
    return target


def test_same_model_passes_the_gate(world, baseline, capsys):
    gate = ["--gate-baseline", str(baseline), "--gate-policy", str(world / "gate.toml")]
    main(audit_args(world, world / "model.keras", world / "run2", *gate))
    capsys.readouterr()
    current = world / "run2" / "audit.json"
    md = (world / "run2" / "gate-summary.md").read_text()
    assert "CellAudit gate ✅ PASS" in md, md
    assert main(["gate", "--baseline", str(baseline), "--current", str(current),
                 "--policy", str(world / "gate.toml"), "--markdown", str(world / "pass.md"),
                 "--junit", str(world / "pass.xml")]) == 0
    out = capsys.readouterr().out
    assert "gate PASS" in out and "FAIL" not in out
    cases = list(ET.parse(world / "pass.xml").getroot().iter("testcase"))
    # 2 sets x (accuracy, balanced accuracy, ECE) + heldout macro-F1 (abs, rel) + 3 class recalls
    assert len(cases) == 11
    assert not any(c.find("failure") is not None or c.find("error") is not None for c in cases)


def test_planted_regression_fails_the_gate(world, baseline, capsys):
    bad = regressed_copy(world / "model.keras", world / "regressed.keras")
    gate = ["--gate-baseline", str(baseline), "--gate-policy", str(world / "gate.toml")]
    assert main(audit_args(world, bad, world / "run3", *gate)) == 1
    out = capsys.readouterr().out
    current = world / "run3" / "audit.json"
    before, after = accuracy(baseline), accuracy(current)
    assert after < before - 0.01, f"the planted model is not worse: {before} -> {after}"
    assert f"FAIL: accuracy on heldout fell from {before:.3f} to {after:.3f}" in out
    md = (world / "run3" / "gate-summary.md").read_text()
    assert "CellAudit gate ❌ FAIL" in md and "**abs-drop** `heldout` `accuracy`" in md
    failed = {c.get("name") for c in ET.parse(world / "run3" / "gate-junit.xml").getroot()
              .iter("testcase") if c.find("failure") is not None}
    assert "abs-drop accuracy" in failed


def test_planted_regression_is_significant_when_paired(world, baseline, capsys):
    current = world / "run3" / "audit.json"
    if not current.exists():  # run on its own
        main(audit_args(world, regressed_copy(world / "model.keras", world / "regressed.keras"),
                        world / "run3"))
    policy = world / "significance.toml"
    policy.write_text("[significance]\nenabled = true\nn_boot = 500\n")
    capsys.readouterr()
    assert main(["gate", "--baseline", str(baseline), "--current", str(current),
                 "--policy", str(policy)]) == 1
    out = capsys.readouterr().out
    assert "regression beyond noise" in out and "paired on 150 images" in out


def test_baseline_accept_refuses_the_regression(world, baseline, capsys):
    current = world / "run3" / "audit.json"
    if not current.exists():
        main(audit_args(world, regressed_copy(world / "model.keras", world / "regressed.keras"),
                        world / "run3"))
    before = baseline.read_text()
    assert main(["baseline", "accept", str(current), str(baseline)]) == 1
    assert "refused:" in capsys.readouterr().out and baseline.read_text() == before
