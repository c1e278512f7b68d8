"""Model randomisation and stability: the copy changes only the top layers; correlations."""

from __future__ import annotations

import numpy as np
import pytest

from audit.explain.sanity import randomised_copy, rank_correlations, weighted_layers
from audit.explain.stability import stability_correlations


@pytest.fixture(scope="module")
def model():
    from model.build import build_classifier

    model = build_classifier(2, input_size=32, alpha=0.35, weights=None)
    # Move every weight off its initial value, as training would (BatchNorm starts at 1 / 0).
    model.set_weights([w * 1.1 + 0.01 for w in model.get_weights()])
    return model


def test_randomised_copy_changes_only_the_top_layers_and_not_the_model(model):
    before = [w.copy() for w in model.get_weights()]
    copy, names = randomised_copy(model, n_layers=9, rng=np.random.default_rng(0))
    assert names == ["logits", "Conv_1_bn", "Conv_1", "block_16_project_BN", "block_16_project",
                     "block_16_depthwise_BN", "block_16_depthwise", "block_16_expand_BN",
                     "block_16_expand"]
    for old, now in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, now)
    original = {layer.name: layer for layer in weighted_layers(model)}
    for layer in weighted_layers(copy):
        same = all(np.array_equal(a, b) for a, b in
                   zip(layer.get_weights(), original[layer.name].get_weights(), strict=True))
        assert same == (layer.name not in names), layer.name
    kernel = copy.get_layer("logits").get_weights()[0]
    trained = model.get_layer("logits").get_weights()[0]
    assert kernel.std() == pytest.approx(trained.std(), rel=0.5)
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    assert not np.array_equal(copy(images).numpy(), model(images).numpy())


def test_rank_correlations_identical_reversed_and_constant_maps():
    rng = np.random.default_rng(0)
    a = rng.random((3, 8, 8))
    b = a.copy()
    b[1] = -a[1]
    b[2] = 0.0  # a map that went blank: nothing in common
    rho = rank_correlations(a, b)
    np.testing.assert_allclose(rho, [1.0, -1.0, 0.0])
    assert np.isnan(rank_correlations(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))[0])


class BrightnessExplainer:
    """A stand-in explainer whose map is the image's brightness."""

    def explain(self, images, targets):
        return np.asarray(images, dtype=np.float32).mean(axis=-1)


def test_stability_correlations_per_corruption():
    images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    explainer = BrightnessExplainer()
    clean = explainer.explain(images, None)
    out = stability_correlations(explainer, images, np.zeros(3, int), clean,
                                 corruptions=["gaussian_noise", "defocus_blur"], severity=2,
                                 seed=0)
    assert list(out) == ["gaussian_noise", "defocus_blur"]
    assert all(v.shape == (3,) and np.isfinite(v).all() for v in out.values())
    assert (out["gaussian_noise"] > 0.3).all()  # brightness survives mild noise
    with pytest.raises(ValueError, match="unknown corruption"):
        stability_correlations(explainer, images, np.zeros(3, int), clean,
                               corruptions=["snow"], severity=2, seed=0)
