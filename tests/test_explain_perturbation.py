"""SHAP and LIME on a "model" that looks at one known region, and against the libraries' own code."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from audit.explain.lime_segments import Lime, _BatchedLime, segment_image
from audit.explain.shap_partition import ShapPartition, _BlurGame, leaf_values


class RegionModel:
    """P(class 0) = mean over the top-left quadrant of (pixel / 255)^2: depends on that region
    only, and falls when the region is blurred or flattened to its mean colour."""

    def __init__(self):
        self.n_images = 0

    def probs(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float64)
        self.n_images += len(images)
        half = images.shape[1] // 2
        score = ((images[:, :half, :half] / 255.0) ** 2).mean(axis=(1, 2, 3))
        return np.stack([score, 1.0 - score], axis=1)


def noise_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


def quadrant_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Noise on four distinct quadrant colours, so superpixels follow the quadrants."""
    rng = np.random.default_rng(seed)
    half = size // 2
    base = np.zeros((size, size, 3))
    for (rows, cols), colour in zip([(slice(0, half), slice(0, half)),
                                     (slice(0, half), slice(half, size)),
                                     (slice(half, size), slice(0, half)),
                                     (slice(half, size), slice(half, size))],
                                    [(200, 60, 60), (60, 200, 60), (60, 60, 200), (200, 200, 60)],
                                    strict=True):
        base[rows, cols] = colour
    noisy = base[None] + rng.integers(-50, 51, (n, size, size, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def top_left_share(maps: np.ndarray) -> np.ndarray:
    positive = np.clip(maps, 0, None)
    half = maps.shape[1] // 2
    return positive[:, :half, :half].sum(axis=(1, 2)) / positive.sum(axis=(1, 2))


def test_shap_attributes_the_region_the_model_reads_and_adds_up():
    model = RegionModel()
    explainer = ShapPartition(None, predictor=model, max_evals=200, batch_size=32,
                              blur_fraction=0.2)
    images = noise_images(2)
    maps = explainer.explain(images, np.array([0, 0]))
    assert (top_left_share(maps) > 0.95).all()
    raw = explainer.explain_one(images[0], 0)
    game = _BlurGame(images[0], 0, model.probs, fraction=0.2)
    everything, nothing = game(np.ones((1, 32 * 32), bool)), game(np.zeros((1, 32 * 32), bool))
    assert raw.sum() == pytest.approx(float((everything - nothing)[0, 0]), rel=1e-6)


def test_shap_budget_is_max_evals_per_image():
    model = RegionModel()
    ShapPartition(None, predictor=model, max_evals=50, batch_size=16).explain(
        noise_images(3), np.zeros(3, int))
    assert model.n_images == 150


def test_leaf_values_share_cluster_credit_by_size():
    # leaves 0, 1, 2; cluster 3 = {0, 1}; cluster 4 = {0, 1, 2}
    masks = scipy.sparse.csr_matrix(np.array(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 1, 1]], dtype=bool))
    dvalues = np.array([1.0, 2.0, 3.0, 4.0, 6.0])
    np.testing.assert_allclose(leaf_values(dvalues, masks), [1 + 2 + 2, 2 + 2 + 2, 3 + 2])


def test_shap_values_equal_the_library_pipeline():
    """Our vectorised game + sparse credit lowering give exactly shap's own explainer output
    (which numba-compiles MaskedModel and lower_credit helpers: 4-20 s on first use)."""
    import shap

    model = RegionModel()
    image = noise_images(1, size=8)[0]
    ours = ShapPartition(None, predictor=model, max_evals=60, batch_size=16, blur_fraction=0.25,
                         seed=0).explain_one(image, 0)
    game = _BlurGame(image, 0, model.probs, fraction=0.25)
    # shap's own masked model: feature value 1 = keep, 0 = hidden, decoded by the game.
    masker = shap.maskers.Image(np.zeros((8, 8, 1)), (8, 8, 1))
    library = shap.PartitionExplainer(lambda m: game(m.reshape(len(m), -1) > 0.5), masker)
    np.random.seed(0)
    result = library(np.ones((1, 8, 8, 1)), max_evals=60, batch_size=16, silent=True)
    np.testing.assert_allclose(ours, np.asarray(result.values)[0, ..., 0, 0], atol=1e-12)


def test_lime_attributes_the_region_the_model_reads():
    model = RegionModel()
    explainer = Lime(None, predictor=model, num_samples=200, batch_size=64, n_segments=16)
    images = quadrant_images(2, seed=1)
    maps = explainer.explain(images, np.array([0, 0]))
    assert model.n_images == 400
    half = images.shape[1] // 2
    in_region = np.zeros(images.shape[1:3], bool)
    in_region[:half, :half] = True
    for image, lime_map in zip(images, maps, strict=True):
        segments = segment_image(image, n_segments=16)
        # one weight per superpixel, painted on all its pixels
        weights = np.array([lime_map[segments == s][0] for s in range(segments.max() + 1)])
        overlap = np.array([in_region[segments == s].mean() for s in range(len(weights))])
        assert overlap[np.argmax(weights)] > 0.5
        assert np.abs(weights[overlap == 0]).max() < 0.05 * weights.max()


def test_lime_neighbourhood_matches_the_library():
    from lime import lime_image

    image = noise_images(1, size=16, seed=2)[0].astype(np.float64)
    segments = segment_image(image, n_segments=6)
    fudged = np.zeros_like(image)
    seen = {"ours": [], "library": []}

    def recorder(key):
        def classify(batch):
            seen[key].append(np.array(batch))
            return np.ones((len(batch), 2)) / 2
        return classify

    ours = _BatchedLime(random_state=3).data_labels(image, fudged, segments, recorder("ours"),
                                                    25, batch_size=7)
    library = lime_image.LimeImageExplainer(random_state=3).data_labels(
        image, fudged, segments, recorder("library"), 25, batch_size=7)
    np.testing.assert_array_equal(ours[0], library[0])
    np.testing.assert_array_equal(np.concatenate(seen["ours"]), np.concatenate(seen["library"]))
    assert [len(b) for b in seen["ours"]] == [len(b) for b in seen["library"]]


def test_segments_are_deterministic_and_contiguous():
    image = noise_images(1, seed=4)[0]
    a, b = segment_image(image, n_segments=20), segment_image(image, n_segments=20)
    np.testing.assert_array_equal(a, b)
    assert a.min() == 0 and set(np.unique(a)) == set(range(a.max() + 1))
