"""Test-time views: declared in the contract, applied in the one forward pass, explained back."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from audit.errors import UsageError
from audit.inference import Predictor, resolve_forward_batch
from model.loaded import ContractOptions, from_keras_model
from model.views import DIHEDRAL8, apply_views, merge_views, view_count


def numpy_view(images: np.ndarray, transpose: bool, flip_rows: bool, flip_cols: bool):
    out = images.transpose(0, 2, 1, 3) if transpose else images
    out = out[:, ::-1] if flip_rows else out
    return out[:, :, ::-1] if flip_cols else out


def position_model(size: int = 8) -> keras.Model:
    """Logits from a random dense layer on the flattened pixels: every view answers differently."""
    inputs = keras.Input((size, size, 3))
    flat = keras.layers.Flatten(name="flat")(inputs)
    hidden = keras.layers.Dense(6, activation="tanh", name="pool")(flat)
    logits = keras.layers.Dense(3, name="logits")(hidden)
    model = keras.Model(inputs, keras.layers.Activation("softmax")(logits))
    rng = np.random.default_rng(0)
    model.get_layer("pool").set_weights([rng.normal(0, 0.01, (size * size * 3, 6)), np.zeros(6)])
    model.get_layer("logits").set_weights([rng.normal(0, 2.0, (6, 3)), np.zeros(3)])
    return model


def loaded(model, views: str):
    return from_keras_model(model, ContractOptions(classes=("a", "b", "c"), preprocess="none",
                                                   views=views))


def test_the_eight_views_are_the_eight_symmetries_and_merge_undoes_each():
    images = np.random.default_rng(1).uniform(0, 255, (2, 6, 6, 3)).astype(np.float32)
    stacked = np.asarray(apply_views(images, "dihedral8"))
    assert stacked.shape == (16, 6, 6, 3)
    per_view = stacked.reshape(8, 2, 6, 6, 3)
    for i, transform in enumerate(DIHEDRAL8):
        np.testing.assert_array_equal(per_view[i], numpy_view(images, *transform))
    assert len({v.tobytes() for v in per_view}) == 8
    np.testing.assert_allclose(np.asarray(merge_views(stacked, "dihedral8")), images, rtol=1e-6)
    assert apply_views(images, "single") is images and view_count("single") == 1


def test_forward_is_the_mean_probability_over_the_views():
    model = position_model()
    images = np.random.default_rng(2).integers(0, 256, (5, 8, 8, 3)).astype(np.uint8)
    single = Predictor(loaded(model, "single"))
    per_view = [single.outputs(numpy_view(images, *t)) for t in DIHEDRAL8]
    averaged = Predictor(loaded(model, "dihedral8"))
    logits, embeddings = averaged.outputs(images)
    assert averaged.n_images == 5  # images, not image-views
    expected = np.mean([single.probs(numpy_view(images, *t)) for t in DIHEDRAL8], axis=0)
    np.testing.assert_allclose(averaged.probs(images), expected, atol=1e-5)
    # ... and the energy score (-logsumexp of the logits) is the views' mean energy, not 0.
    from audit.checks.selective import energy_score

    np.testing.assert_allclose(energy_score(logits),
                               np.mean([energy_score(lo) for lo, _ in per_view], axis=0),
                               atol=1e-4)
    np.testing.assert_allclose(embeddings, np.mean([e for _, e in per_view], axis=0), atol=1e-5)
    assert not np.allclose(single.probs(images), expected, atol=1e-3)  # the views do differ


def test_views_are_recorded_and_a_wrong_value_is_one_line():
    model = loaded(position_model(), "dihedral8")
    assert model.contract.views == "dihedral8"
    assert model.contract.sources["views"] == "option"
    assert model.describe()["contract"]["views"] == "dihedral8"
    assert "8 views" in model.contract.summary()
    assert "mean probability over the dihedral8 views" in model.graph_summary()["logits"]
    assert loaded(position_model(), None).contract.views == "single"
    with pytest.raises(UsageError, match="--views: unknown value 'tta'"):
        loaded(position_model(), "tta")


def test_each_view_is_a_model_call_as_large_as_without_views():
    for size in (224, 96, 64):
        assert resolve_forward_batch(0, size, 64, views="dihedral8") == \
            resolve_forward_batch(0, size, 64)
    assert resolve_forward_batch(3, 224, 64, views="dihedral8") == 3  # explicit: taken as is


def test_gradcam_turns_each_view_back_before_averaging():
    from test_explain_gradcam import quadrant_images, quadrant_model

    from audit.explain.gradcam import GradCAM

    model = quadrant_model()
    contract = ContractOptions(classes=("dark", "bright"), preprocess="none", views="dihedral8")
    explainer = GradCAM(from_keras_model(model, contract), batch_size=8)
    assert explainer.tape_images == 1  # 8 inputs per tape, as 8 images without views
    maps = explainer.explain(quadrant_images(np.random.default_rng(0)), np.array([1, 1]))
    assert maps.shape == (2, 32, 32)
    # Maps not turned back would spread over all four corners (a quarter each).
    assert maps[0, :16, :16].sum() / maps[0].sum() > 0.9
    assert maps[1, 16:, 16:].sum() / maps[1].sum() > 0.9


def test_gradcam_with_views_is_the_mean_of_each_views_own_map_turned_back():
    """Each view's map from its own model call and its own logit, as a single-view Grad-CAM
    would give for that view, turned back and averaged."""
    import tensorflow as tf
    from test_explain_gradcam import quadrant_images, quadrant_model

    from audit.explain.gradcam import GradCAM

    model = quadrant_model()
    images = quadrant_images(np.random.default_rng(1)).astype(np.float32)
    targets = tf.constant([1, 0], tf.int32)

    def cams(views, x):
        contract = ContractOptions(classes=("dark", "bright"), preprocess="none", views=views)
        explainer = GradCAM(from_keras_model(model, contract), batch_size=8)
        return explainer._cam(tf.constant(x), targets).numpy()

    got = cams("dihedral8", images)
    each = [cams("single", np.ascontiguousarray(numpy_view(images, *t))) for t in DIHEDRAL8]
    expected = np.asarray(merge_views(np.concatenate(each)[..., None], "dihedral8"))[..., 0]
    assert got.shape == images.shape[:3] and got.max() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6 * got.max())


def test_train_records_the_views_and_the_audit_applies_them(synthetic_sites, tmp_path, capsys):
    import json

    from conftest import TINY_TRAIN

    from audit.cli import main
    from audit.inference import resolve_forward_batch
    from model.loaded import load_model

    path = tmp_path / "views.keras"
    assert main(["train", str(synthetic_sites["train"]), "--out", str(path), "--views",
                 "dihedral8", "--finetune-epochs", "0", *TINY_TRAIN]) == 0
    contract = load_model(path).contract
    assert (contract.views, contract.sources["views"]) == ("dihedral8", "metadata")
    out = tmp_path / "audit"
    code = main(["run", "--model", str(path), "--data", f"heldout={synthetic_sites['heldout']}",
                 "--out", str(out), "--checks", "performance", "--no-explain", "--no-report",
                 "--set", 'audit.cache_dir=""'])
    assert code in (0, 1)
    model = json.loads((out / "audit.json").read_text())["model"]
    assert model["contract"]["views"] == "dihedral8"
    assert model["forward_batch"] == resolve_forward_batch(0, 32, 64, views="dihedral8") == 64
    # Declared on the command line, the option wins over the model's metadata.
    assert main(["run", "--model", str(path), "--data", f"heldout={synthetic_sites['heldout']}",
                 "--out", str(tmp_path / "single"), "--checks", "performance", "--views",
                 "single", "--no-explain", "--no-report", "--set", 'audit.cache_dir=""']) in (0, 1)
    single = json.loads((tmp_path / "single" / "audit.json").read_text())["model"]["contract"]
    assert (single["views"], single["sources"]["views"]) == ("single", "option")
    # An audit's calibration and referral hold only for the model fed as in the audit.
    capsys.readouterr()
    images = str(synthetic_sites["heldout"])
    assert main(["predict", images, "--model", str(path), "--audit", str(out / "audit.json"),
                 "--views", "single", "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "--views dihedral8" in err and err.count("\n") == 1, err
    assert main(["predict", images, "--model", str(path), "--audit", str(out / "audit.json"),
                 "--out", str(tmp_path / "p.csv")]) == 0
