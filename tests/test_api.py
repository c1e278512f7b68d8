"""The Python API: `audit.run` on paths, arrays, tf.data and model objects; results in Python;
the CLI as a thin layer over the same code path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import strip_volatile

import audit
from audit.cli import main
from audit.data import load_dataset, read_images

REPO = Path(__file__).resolve().parents[1]
CHEAP = ["checks.robustness.max_images=20", "checks.gap_factors.max_images=20",
         "explain.correct_per_class=1", "explain.errors_per_class=0",
         "explain.most_confident_errors=0", "explain.shap_max_evals=40",
         "explain.lime_num_samples=40", "explain.sanity=false", "explain.stability=false"]


def _comparable(path: Path) -> dict:
    return strip_volatile(json.loads(path.read_text()))


def test_import_audit_does_not_import_tensorflow():
    code = ("import sys, audit\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]"
    assert set(audit.__all__) >= {"run", "predict", "gate", "AuditResult", "Finding"}


@pytest.mark.slow
def test_cli_and_api_write_the_same_audit_json(tiny_model, synthetic_sites, tmp_path):
    sets = {"heldout": synthetic_sites["heldout"], "site_b": synthetic_sites["site_b"],
            "train": synthetic_sites["train"]}
    sets_args = [f"heldout={sets['heldout']}", f"train={sets['train']}",
                 f"shifted:site_b={sets['site_b']}"]
    cli_out, api_out = tmp_path / "cli", tmp_path / "api"
    overrides = [item for pair in [("--set", c) for c in CHEAP] for item in pair]
    code = main(["run", "--model", str(tiny_model), *[a for d in sets_args for a in ("--data", d)],
                 "--out", str(cli_out), "--no-cache", "--seed", "3", *overrides])
    assert code in (0, 1)
    result = audit.run(tiny_model, heldout=sets["heldout"], train=sets["train"],
                       shifted={"site_b": sets["site_b"]}, out=api_out, cache=False, seed=3,
                       overrides=CHEAP)
    assert _comparable(cli_out / "audit.json") == _comparable(api_out / "audit.json")
    assert result.location == api_out and (api_out / "report.html").is_file()


@pytest.fixture(scope="module")
def heldout_arrays(synthetic_sites):
    dataset = load_dataset(synthetic_sites["heldout"])
    return read_images(list(dataset.paths), 32, resize="crop"), dataset.labels, dataset


QUICK = dict(checks="performance,calibration,selective", explain=False, cache=False)


@pytest.mark.slow
def test_arrays_tf_data_and_model_objects_give_what_files_give(tiny_model, heldout_arrays,
                                                               synthetic_sites, tmp_path):
    import tensorflow as tf

    from model.loaded import load_model

    images, labels, dataset = heldout_arrays
    from_files = audit.run(tiny_model, heldout=synthetic_sites["heldout"], **QUICK)
    accuracy = from_files.checks["performance"].metrics["datasets"]["heldout"]["accuracy"]
    names = np.array(dataset.class_names)[labels]
    network = load_model(tiny_model).keras_model  # a live keras.Model, as in a notebook
    runs = {
        "uint8, int labels": audit.run(tiny_model, heldout=(images, labels), **QUICK),
        "float [0, 1], names": audit.run(tiny_model, heldout=(images / 255.0, names), **QUICK),
        "tf.data": audit.run(tiny_model, heldout=tf.data.Dataset.from_tensor_slices(
            (images, labels)).batch(7), **QUICK),
        "model object": audit.run(network, classes=dataset.class_names,
                                  heldout=(images, labels), **QUICK),
    }
    for what, result in runs.items():
        got = result.checks["performance"].metrics["datasets"]["heldout"]["accuracy"]
        assert got == accuracy, what
        assert result.location is not None and (result.location / "audit.json").is_file()
    assert runs["model object"].model["format"] == "memory"
    assert runs["float [0, 1], names"].datasets["heldout"]["n_images"] == len(images)


@pytest.mark.slow
def test_result_in_python_save_and_inline_report(tiny_model, synthetic_sites, tmp_path):
    result = audit.run(tiny_model, heldout=synthetic_sites["heldout"],
                       shifted={"site_b": synthetic_sites["site_b"]},
                       checks=["performance", "calibration"], explain=False, cache=False)
    assert result.status in (audit.Status.PASS, audit.Status.WARN, audit.Status.FAIL)
    assert all(isinstance(f, audit.Finding) for f in result.findings)
    assert result.checks["calibration"].metrics["temperature"] > 0
    html = result._repr_html_()
    assert html.startswith("<iframe srcdoc=") and "CellAudit" in html and "<script" not in html
    saved = result.save(tmp_path / "saved")
    assert {p.name for p in saved.iterdir()} == {"audit.json", "artifacts", "report.html"}
    assert audit.AuditResult.load(saved).to_dict() == result.to_dict()
    # predict and gate take results as well as paths
    table = audit.predict(tiny_model, synthetic_sites["site_b"], audit=result)
    assert len(table) == 100 and {"predicted_class", "refer_to_human"} <= set(table.columns)
    decision = audit.gate(result, saved)
    assert decision.passed and decision.exit_code == 0


@pytest.mark.parametrize("heldout, expected", [
    ((np.zeros((4, 32, 32)), [0, 1, 0, 1]), "shape (N, height, width, 3)"),
    ((np.zeros((4, 32, 32, 3), dtype="U1"), [0, 1, 0, 1]), "dtype"),
    ((np.zeros((4, 32, 32, 3), np.uint8), [0, 1, 0, 9]), "label 9 is outside"),
    ((np.zeros((4, 32, 32, 3), np.uint8), ["a", "b", "c", "d"]), "not among the model's classes"),
    (([np.zeros((32, 32, 3), np.uint8), np.zeros((40, 32, 3), np.uint8)], [0, 1]), "mixed sizes"),
    ((np.zeros((0, 32, 32, 3), np.uint8), []), "empty"),
    ((-np.ones((2, 32, 32, 3)), [0, 1]), "[0, 255] or [0, 1]"),
    ((np.zeros((3, 32, 32, 3), np.uint8), [0, 1]), "3 images but 2 labels"),
    ({"images": 1}, "expected a folder or CSV manifest path"),
])
def test_bad_arguments_raise_one_clear_value_error(tiny_model, heldout, expected, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError) as caught:
        audit.run(tiny_model, heldout=heldout, out=out, **QUICK)
    assert expected in str(caught.value) and "heldout" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert not out.exists()


def test_unknown_config_key_and_bad_model_argument(tiny_model, synthetic_sites, tmp_path):
    with pytest.raises(audit.UsageError, match="unknown key 'ece_warnn'"):
        audit.run(tiny_model, heldout=synthetic_sites["heldout"], out=tmp_path / "o",
                  config={"checks": {"calibration": {"ece_warnn": 0.1}}})
    with pytest.raises(ValueError, match="model: expected a model path"):
        audit.run(42, heldout=synthetic_sites["heldout"])
    assert not (tmp_path / "o").exists()


def test_run_audit_checks_a_config_dict_built_in_code(tmp_path):
    # The runner is the one gate every config passes, file or dict (the checks and explainers
    # no longer repeat it): a bad value stops it before any model is loaded.
    from audit.config import default_config
    from audit.runner import run_audit

    config = default_config()
    config["checks"]["calibration"]["n_bins"] = 1
    with pytest.raises(audit.UsageError, match=r"checks.calibration.n_bins: expected"):
        run_audit("no-such-model.keras", [], config=config, out_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()
    config = default_config()
    config["audit"]["forward_batch"] = -1
    with pytest.raises(audit.UsageError, match=r"audit.forward_batch: expected"):
        run_audit("no-such-model.keras", [], config=config, out_dir=tmp_path / "o")


def test_every_public_name_is_documented():
    text = (REPO / "docs" / "api.md").read_text()
    for name in audit.__all__:
        assert f"### `audit.{name}" in text, name
        obj = getattr(audit, name)
        assert (obj.__doc__ or "").strip(), f"audit.{name} has no docstring"
    for name in ("run", "predict", "gate"):
        assert ">>>" in getattr(audit, name).__doc__, f"audit.{name} has no example"
