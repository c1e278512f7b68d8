"""Auditing the model a user already has: formats, the input contract, and the quick check.

The user's model is made the way the study's notebook made it (tests/study_notebook.py, run in
its own process with tf.keras 2.x): MobileNetV2 from the local ImageNet weights, frozen, [0, 1]
scaling outside the model, `image_dataset_from_directory` stretch resizing, saved as .h5 and
as a SavedModel. The cells are padded to 64 x 96 pixels so that stretching and cropping show
the model different images.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import weights_path
from PIL import Image

from audit.cli import main

SIZE = 64
NOTEBOOK = Path(__file__).with_name("study_notebook.py")


def _widen(folder: Path) -> None:
    """Pad every image of a class-per-folder set to SIZE x 1.5 SIZE with its edge colours."""
    for path in folder.rglob("*.png"):
        image = np.asarray(Image.open(path).convert("RGB"))
        pad = SIZE // 4
        Image.fromarray(np.pad(image, ((0, 0), (pad, pad), (0, 0)), mode="edge")).save(path)


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    from audit.synthetic import REFERENCE_SITE, write_site

    root = tmp_path_factory.mktemp("notebook")
    for name, n, seed in (("train", 300, 21), ("heldout", 150, 22)):
        write_site(root / name, n_images=n, size=SIZE, domain=REFERENCE_SITE, seed=seed,
                   site_name=name)
        (root / name / "manifest.csv").unlink()
        (root / name / "site.json").unlink()
        _widen(root / name)
    out = root / "models"
    out.mkdir()
    done = subprocess.run([sys.executable, str(NOTEBOOK), str(root / "train"),
                           str(root / "heldout"), str(out)], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                               "CELLAUDIT_WEIGHTS": str(weights_path())}, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {"root": root, "h5": out / "study.h5", "savedmodel": out / "study_savedmodel",
            "accuracy": report["accuracy"], "classes": report["classes"]}


def _audit(model, notebook, out, *extra) -> int:
    return main(["run", "--model", str(model), "--data",
                 f"heldout={notebook['root'] / 'heldout'}", "--out", str(out), "--no-cache",
                 *extra])


def _accuracy(out: Path) -> float:
    data = json.loads((out / "audit.json").read_text())
    return data["checks"]["performance"]["metrics"]["datasets"]["heldout"]["accuracy"]["value"]


NOTEBOOK_CONTRACT = ["--preprocess", "unit", "--resize", "stretch"]
QUICK = ["--checks", "performance", "--no-explain", "--no-report"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["h5", "savedmodel"])
def test_audit_gives_the_accuracy_model_evaluate_gives(notebook, fmt, tmp_path):
    out = tmp_path / "audit"
    assert _audit(notebook[fmt], notebook, out, "--classes-from",
                  str(notebook["root"] / "heldout"), *NOTEBOOK_CONTRACT, *QUICK) == 0
    # Pillow's antialiased bilinear resize against TensorFlow's plain bilinear: the pixels
    # differ slightly, a prediction rarely.
    assert _accuracy(out) == pytest.approx(notebook["accuracy"], abs=0.01)
    assert notebook["accuracy"] > 0.8
    model = json.loads((out / "audit.json").read_text())["model"]
    assert model["format"] == fmt
    assert model["contract"]["preprocess"] == "unit"
    assert model["contract"]["sources"]["preprocess"] == "option"
    assert model["contract"]["sources"]["input_size"] == "model input shape"
    assert model["contract_check"]["verdict"] == "ok"
    if fmt == "h5":  # what Keras 3 could not read from tf.keras 2.x, mended and recorded
        assert any("BatchNormalization axis" in note for note in model["notes"])


@pytest.mark.slow
def test_a_wrong_preprocess_stops_the_audit_naming_the_right_one(notebook, tmp_path, capsys):
    out = tmp_path / "audit"
    code = _audit(notebook["h5"], notebook, out, "--classes-from",
                  str(notebook["root"] / "heldout"), "--preprocess", "none", "--resize",
                  "stretch", *QUICK)
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, err
    assert "--preprocess unit" in errors[0] and "--force" in errors[0]
    assert not out.exists()
    # --force audits the model as declared, and says so in audit.json.
    assert _audit(notebook["h5"], notebook, out, "--classes-from",
                  str(notebook["root"] / "heldout"), "--preprocess", "none", "--resize",
                  "stretch", "--force", *QUICK) in (0, 1)
    check = json.loads((out / "audit.json").read_text())["model"]["contract_check"]
    assert check["verdict"] == "wrong" and check["forced"] is True


@pytest.mark.slow
def test_inspect_finds_the_contract_and_writes_the_sidecar(notebook, tmp_path, capsys):
    heldout = notebook["root"] / "heldout"
    assert main(["inspect", str(notebook["h5"]), "--data", str(heldout), "--write"]) == 0
    printed = capsys.readouterr().out
    assert "recommended: --preprocess unit" in printed
    assert "Grad-CAM layer: 'mobilenetv2_1.00_64/" in printed
    sidecar = json.loads(Path(str(notebook["h5"]) + ".json").read_text())
    assert sidecar["preprocess"] == "unit" and sidecar["class_names"] == notebook["classes"]
    # With the sidecar, no flag is needed.
    out = tmp_path / "audit"
    assert _audit(notebook["h5"], notebook, out, *QUICK) == 0
    assert _accuracy(out) == pytest.approx(notebook["accuracy"], abs=0.02)
    Path(str(notebook["h5"]) + ".json").unlink()


@pytest.mark.slow
def test_savedmodel_audit_explains_with_shap_and_lime_and_says_why_not_gradcam(notebook,
                                                                               tmp_path):
    out = tmp_path / "audit"
    code = _audit(notebook["savedmodel"], notebook, out, "--classes-from",
                  str(notebook["root"] / "heldout"), *NOTEBOOK_CONTRACT,
                  "--checks", "performance,calibration",
                  "--set", "explain.correct_per_class=1", "--set", "explain.errors_per_class=0",
                  "--set", "explain.most_confident_errors=0", "--set", "explain.shap_max_evals=60",
                  "--set", "explain.lime_num_samples=60", "--set", "explain.sanity=false",
                  "--set", "explain.stability=false")
    assert code in (0, 1)
    methods = json.loads((out / "audit.json").read_text())["explanations"]["methods"]
    assert "layer graph" in methods["gradcam"]["error"]
    assert "error" not in methods["shap"] and "error" not in methods["lime"]
    html = (out / "report.html").read_text()
    assert "layer graph" in html


def test_a_model_with_its_own_scaling_needs_no_preprocess_flag(tmp_path, synthetic_sites):
    """A second architecture: EfficientNetB0 (random weights) starts with Rescaling and
    Normalization layers, so it takes 0-255 pixels; Grad-CAM finds its feature map inside."""
    import keras

    net = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=5)
    path = tmp_path / "effnet.keras"
    net.save(path)
    out = tmp_path / "audit"
    code = main(["run", "--model", str(path), "--classes-from", str(synthetic_sites["heldout"]),
                 "--data", f"heldout={synthetic_sites['heldout']}", "--out", str(out),
                 "--no-cache", "--checks", "performance", "--no-report",
                 "--set", 'explain.methods=["gradcam"]', "--set", "explain.sanity=false",
                 "--set", "explain.stability=false", "--set", "explain.correct_per_class=1",
                 "--set", "explain.errors_per_class=1", "--set", "explain.gradcam_min_grid=1"])
    assert code in (0, 1)
    data = json.loads((out / "audit.json").read_text())
    contract = data["model"]["contract"]
    assert contract["preprocess"] == "none"
    # Keras numbers unnamed layers per process: an earlier test's Rescaling makes it 'rescaling_1'.
    assert re.fullmatch(r"model graph \(starts with 'rescaling(_\d+)?'\)",
                        contract["sources"]["preprocess"])
    assert contract["resize"] == "crop" and contract["sources"]["resize"] == "default"
    assert data["model"]["graph"]["logits"] == "pre-activation of 'predictions'"
    gradcam = data["explanations"]["methods"]["gradcam"]
    assert "error" not in gradcam and gradcam["layer"].startswith("top_")


def _two_input_model(path: Path) -> None:
    import keras

    a, b = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([a, b]))
    keras.Model([a, b], keras.layers.Dense(2, activation="softmax")(x)).save(path)


@pytest.mark.parametrize("case, expected", [
    ("text.h5", "not a model file"),
    ("folder", "without saved_model.pb"),
    ("two_inputs.keras", "2 inputs"),
    ("class_count", "outputs 5 classes but the contract names 2"),
    ("duplicates", "repeated class name"),
    ("unknown_preprocess", "--preprocess"),
    ("incomplete", "input contract is incomplete"),
])
def test_bad_models_and_options_give_one_line_and_exit_2(case, expected, tmp_path, capsys,
                                                         synthetic_sites):
    import keras

    model = tmp_path / "m.keras"
    extra: list[str] = []
    if case == "text.h5":
        model = tmp_path / "m.h5"
        model.write_text("not a model")
    elif case == "folder":
        model = tmp_path / "folder"
        model.mkdir()
    elif case == "two_inputs.keras":
        _two_input_model(model)
    else:
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
        keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x)).save(model)
        extra = {"class_count": ["--classes", "a,b"], "duplicates": ["--classes", "a,b,a,c,d"],
                 "unknown_preprocess": ["--classes", "a,b,c,d,e", "--preprocess", "imagenet"],
                 "incomplete": []}[case]  # incomplete: no class names anywhere
    out = tmp_path / "out"
    code = main(["run", "--model", str(model), "--data", f"heldout={synthetic_sites['heldout']}",
                 "--out", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:"), err
    assert expected in err[0], err[0]
    assert not out.exists()


@pytest.mark.slow
def test_predict_and_adapt_feed_the_user_model_through_its_contract(notebook, tmp_path):
    import csv

    heldout = notebook["root"] / "heldout"
    contract = ["--classes-from", str(heldout), *NOTEBOOK_CONTRACT]
    table = tmp_path / "p.csv"
    assert main(["predict", str(heldout), "--model", str(notebook["h5"]), *contract,
                 "--out", str(table)]) == 0
    rows = list(csv.DictReader(table.open()))
    correct = [Path(r["path"]).parent.name == r["predicted_class"] for r in rows]
    assert len(rows) == 150
    assert np.mean(correct) == pytest.approx(notebook["accuracy"], abs=0.01)
    # AdaBN finds the BatchNorm layers inside the notebook's nested backbone; aligned to the
    # training site itself it must leave predictions as they were.
    adapted = tmp_path / "adapted.keras"
    assert main(["adapt", "--model", str(notebook["h5"]), *contract, "--data", str(heldout),
                 "--source", str(heldout), "--max-images", "40", "--out", str(adapted)]) == 0
    again = tmp_path / "q.csv"
    assert main(["predict", str(heldout), "--model", str(adapted), "--out", str(again)]) == 0
    same = [a["predicted_class"] == b["predicted_class"]
            for a, b in zip(rows, csv.DictReader(again.open()), strict=True)]
    assert np.mean(same) >= 0.98
