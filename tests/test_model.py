"""The classifier's structure, weights loading, and save/load with metadata."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from audit.errors import InputError, UsageError
from model.build import BACKBONE, build_classifier
from model.io import read_metadata, save_model
from model.loaded import load_model

WEIGHTS = Path(os.environ.get(
    "CELLAUDIT_WEIGHTS",
    Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v2_1.0_no_top.weights.h5",
))


@pytest.fixture(scope="module")
def tiny():
    return build_classifier(3, input_size=32, alpha=0.35, weights=None)


def test_structure_and_names(tiny):
    names = [layer.name for layer in tiny.layers]
    assert names == ["image", "preprocess", BACKBONE, "pool", "dropout", "logits", "probs"]
    assert tiny.output_shape == (None, 3)
    assert tiny.get_layer(BACKBONE).get_layer("out_relu").output.shape[-1] > 0


def test_takes_raw_pixels_and_outputs_probabilities(tiny):
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    probs = np.asarray(tiny(images, training=False))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # Preprocessing is inside: 0-255 input maps to [-1, 1].
    scaled = np.asarray(tiny.get_layer("preprocess")(images))
    assert scaled.min() >= -1.0 and scaled.max() <= 1.0


def test_local_imagenet_weights_load(tmp_path):
    model = build_classifier(2, input_size=64, alpha=1.0, weights=WEIGHTS)
    reference = keras.applications.MobileNetV2(input_shape=(64, 64, 3), include_top=False,
                                               weights=str(WEIGHTS))
    ours = model.get_layer(BACKBONE).get_layer("Conv1").get_weights()[0]
    np.testing.assert_array_equal(ours, reference.get_layer("Conv1").get_weights()[0])


def test_weights_errors_are_clear(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        build_classifier(2, input_size=32, weights=tmp_path / "none.h5")
    with pytest.raises(UsageError, match=r"cannot load weights .*alpha=0.35"):
        build_classifier(2, input_size=32, alpha=0.35, weights=WEIGHTS)
    with pytest.raises(UsageError, match="alpha"):
        build_classifier(2, alpha=0.6, weights=None)


def test_save_load_round_trip_with_metadata(tiny, tmp_path):
    path = tmp_path / "m.keras"
    save_model(tiny, path, {"class_names": ["a", "b", "c"], "input_size": 32, "seed": 7})
    loaded = load_model(path)
    model, meta = loaded.keras_model, loaded.metadata
    assert loaded.contract.class_names == ("a", "b", "c") and loaded.contract.resize == "crop"
    assert meta["class_names"] == ["a", "b", "c"] and meta["seed"] == 7
    assert meta["format"] == "cellaudit-model/1"
    x = np.full((1, 32, 32, 3), 100.0, "float32")
    np.testing.assert_allclose(model(x), tiny(x), rtol=1e-5)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temporary


def test_loader_rejects_other_files(tmp_path, tiny):
    text = tmp_path / "x.keras"
    text.write_text("hello")
    with pytest.raises(InputError, match="not a .keras file"):
        read_metadata(text)
    with pytest.raises(InputError, match="does not exist"):
        read_metadata(tmp_path / "missing.keras")
    plain = tmp_path / "plain.keras"
    tiny.save(plain)
    with pytest.raises(InputError, match="no CellAudit metadata"):
        read_metadata(plain)
    # A user's own model can bring its input contract as a sidecar file.
    Path(str(plain) + ".json").write_text('{"class_names": ["a", "b", "c"], "input_size": 32}')
    assert load_model(plain).contract.class_names == ("a", "b", "c")
    with zipfile.ZipFile(plain) as archive:
        assert "cellaudit.json" not in archive.namelist()
