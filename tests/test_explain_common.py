"""One test over every registered explainer: shape, finite values, normalisation, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from audit.explain import load_builtin_explainers
from audit.explain.base import make_explainer, normalise_maps
from audit.explain.config import EXPLAIN_DEFAULTS
from audit.synthetic import generate

REGISTRY = load_builtin_explainers()
CHEAP = {**EXPLAIN_DEFAULTS, "shap_max_evals": 40, "lime_num_samples": 30, "lime_segments": 12,
         "gradcam_batch_size": 2, "batch_size": 32, "shap_batch_size": 16, "lime_batch_size": 16}


@pytest.fixture(scope="module")
def untrained_model():
    from model.build import build_classifier

    return build_classifier(2, input_size=32, alpha=0.35, weights=None)


@pytest.fixture(scope="module")
def predictor(untrained_model):
    from audit.inference import Predictor

    return Predictor(untrained_model, batch_size=32)  # one traced forward pass for the module


@pytest.fixture(scope="module")
def images():
    images, _, _ = generate(3, size=32, seed=3, classes=("lymphocyte", "neutrophil"))
    return images


def test_registry_holds_the_three_methods():
    assert list(REGISTRY) == ["gradcam", "shap", "lime"]
    assert set(EXPLAIN_DEFAULTS["methods"]) <= set(REGISTRY)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_explainer_contract(name, untrained_model, predictor, images):
    targets = np.array([0, 1, 1])
    first = make_explainer(name, untrained_model, CHEAP, seed=7, predictor=predictor)
    maps = first.explain(images, targets)
    assert maps.shape == (3, 32, 32)
    assert maps.dtype == np.float32
    assert np.isfinite(maps).all()
    assert np.abs(maps).max() <= 1.0 + 1e-6
    if not first.signed:
        assert maps.min() >= 0.0
    again = make_explainer(name, untrained_model, CHEAP, seed=7, predictor=predictor).explain(
        images, targets)
    np.testing.assert_array_equal(maps, again)
    info = first.info()
    assert info["signed"] == first.signed and info["description"]


@pytest.mark.parametrize("name", list(REGISTRY))
def test_explainer_rejects_bad_inputs_and_handles_empty(name, untrained_model, predictor, images):
    explainer = make_explainer(name, untrained_model, CHEAP, seed=0, predictor=predictor)
    with pytest.raises(ValueError, match="targets"):
        explainer.explain(images, np.array([0]))
    with pytest.raises(ValueError, match="shape"):
        explainer.explain(images[..., 0], np.array([0, 0, 0]))
    assert explainer.explain(images[:0], np.zeros(0, int)).shape == (0, 32, 32)


@pytest.mark.parametrize("name", ["shap", "lime"])
def test_perturbation_methods_count_their_forward_passes(name, untrained_model, predictor, images):
    explainer = make_explainer(name, untrained_model, CHEAP, seed=0, predictor=predictor)
    before = explainer.forward_passes
    explainer.explain(images[:2], np.array([0, 1]))
    expected = 2 * (CHEAP["shap_max_evals"] if name == "shap" else CHEAP["lime_num_samples"])
    assert explainer.forward_passes - before == expected


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="unknown explanation method 'occlusion'"):
        make_explainer("occlusion", None, CHEAP, seed=0)


def test_normalise_maps_scales_by_max_abs_and_keeps_zero_maps():
    maps = np.stack([np.full((2, 2), -4.0), np.zeros((2, 2)), np.array([[1.0, 2.0], [np.nan, 0]])])
    out = normalise_maps(maps)
    np.testing.assert_allclose(out[0], -1.0)
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_allclose(out[2], [[0.5, 1.0], [0.0, 0.0]])
