"""Grad-CAM: the map peaks where a hand-built model looks; nested, flat and inline MobileNetV2."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from audit.explain.gradcam import FeatureHead, GradCAM, find_feature_layer


def quadrant_model() -> keras.Model:
    """Class-1 logit = mean over the image of relu(brightness - 0.6) on an 8x8 grid; class 0 is
    its negative. On images darker than 0.6 outside one bright quadrant, the class depends on
    that quadrant only."""
    inputs = keras.Input((32, 32, 3))
    bright = keras.layers.Conv2D(1, 1, activation="relu", name="bright")(inputs)
    cells = keras.layers.AveragePooling2D(4, name="cells")(bright)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(cells)
    logits = keras.layers.Dense(2, name="logits")(pooled)
    probs = keras.layers.Activation("softmax", name="probs")(logits)
    model = keras.Model(inputs, probs)
    model.get_layer("bright").set_weights([np.full((1, 1, 3, 1), 1 / (3 * 255.0)),
                                           np.array([-0.6])])
    model.get_layer("logits").set_weights([np.array([[-10.0, 10.0]]), np.zeros(2)])
    return model


def quadrant_images(rng: np.random.Generator) -> np.ndarray:
    images = rng.integers(0, 140, (2, 32, 32, 3)).astype(np.uint8)
    images[0, :16, :16] = 230  # bright top-left
    images[1, 16:, 16:] = 230  # bright bottom-right
    return images


def test_map_peaks_in_the_quadrant_the_class_depends_on():
    model = quadrant_model()
    explainer = GradCAM(model, batch_size=2)
    assert explainer.head.feature_path == "cells"
    maps = explainer.explain(quadrant_images(np.random.default_rng(0)), np.array([1, 1]))
    top_left, bottom_right = maps[0], maps[1]
    assert np.unravel_index(top_left.argmax(), top_left.shape) < (16, 16)
    assert top_left[:16, :16].sum() / top_left.sum() > 0.9
    peak = np.unravel_index(bottom_right.argmax(), bottom_right.shape)
    assert peak[0] >= 16 and peak[1] >= 16
    assert bottom_right[16:, 16:].sum() / bottom_right.sum() > 0.9
    assert explainer.gradient_passes == 2


def test_map_against_the_class_is_empty():
    maps = GradCAM(quadrant_model()).explain(quadrant_images(np.random.default_rng(1)),
                                             np.array([0, 0]))
    np.testing.assert_array_equal(maps, 0.0)


@pytest.fixture(scope="module")
def nested_model():
    from model.build import build_classifier

    return build_classifier(3, input_size=64, alpha=0.35, weights=None)


def test_nested_backbone_uses_its_last_feature_map_and_matches_a_direct_tape(nested_model):
    path = find_feature_layer(nested_model, min_grid=2)  # out_relu is 2x2 at 64 px
    assert [layer.name for layer in path] == ["backbone", "out_relu"]
    images = np.random.default_rng(2).integers(0, 256, (3, 64, 64, 3)).astype(np.uint8)
    targets = np.array([0, 1, 2])
    explainer = GradCAM(nested_model, batch_size=2, min_grid=2)
    assert explainer.head.feature_path == "backbone/out_relu"
    # Reference: the backbone output is the pool layer's input in the outer graph.
    direct = keras.Model(nested_model.inputs, [nested_model.get_layer("pool").input,
                                               nested_model.get_layer("logits").output])
    x = tf.constant(images, tf.float32)
    with tf.GradientTape() as tape:
        feature, logits = direct(x, training=False)
        score = tf.reduce_sum(tf.gather(logits, targets, axis=1, batch_dims=1))
    grads = tape.gradient(score, feature)
    cam = tf.nn.relu(tf.reduce_sum(tf.reduce_mean(grads, axis=(1, 2), keepdims=True) * feature,
                                   axis=-1, keepdims=True))
    expected = tf.image.resize(cam, (64, 64), method="bilinear")[..., 0].numpy()
    scale = np.abs(expected).reshape(3, -1).max(axis=1)[:, None, None]
    expected = expected / np.where(scale > 0, scale, 1)
    np.testing.assert_allclose(explainer.explain(images, targets), expected, atol=1e-4)


def test_one_by_one_feature_maps_are_skipped_for_a_localising_layer():
    from model.build import build_classifier

    model = build_classifier(2, input_size=32, alpha=0.35, weights=None)  # out_relu is 1x1
    path = find_feature_layer(model)
    assert path[0].name == "backbone"
    assert path[1].output.shape[1] > 1 and path[1].name != "out_relu"
    images = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    maps = GradCAM(model).explain(images, np.array([0, 1]))
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all()


def _log_softmax_matches(model, images: np.ndarray) -> None:
    """The head's logits equal the log-probabilities up to one constant per image."""
    _, logits = FeatureHead.from_model(model).run(tf.constant(images, tf.float32))
    log_probs = np.log(model(images.astype(np.float32), training=False).numpy())
    diff = logits.numpy() - log_probs
    np.testing.assert_allclose(diff, diff[:, :1] * np.ones_like(diff), atol=1e-3)


def test_flat_keras_mobilenet_with_softmax_top():
    model = keras.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.35,
                                           include_top=True, weights=None, classes=4)
    assert [layer.name for layer in find_feature_layer(model, min_grid=2)] == ["out_relu"]
    images = np.random.default_rng(4).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    _log_softmax_matches(model, images)
    explainer = GradCAM(model, min_grid=2)
    assert explainer.info()["layer"] == "out_relu"
    maps = explainer.explain(images, np.array([1, 3]))
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all() and maps.max() <= 1


def test_functional_model_with_inline_mobilenet_layers():
    inputs = keras.Input((64, 64, 3))
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    base = keras.applications.MobileNetV2(input_tensor=scaled, alpha=0.35, include_top=False,
                                          weights=None)
    pooled = keras.layers.GlobalAveragePooling2D()(base.output)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(pooled))
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert [layer.name for layer in find_feature_layer(model, min_grid=2)] == ["out_relu"]
    assert find_feature_layer(model)[0].name == "block_13_expand_relu"  # 4x4 at 64 px
    images = np.random.default_rng(5).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    _log_softmax_matches(model, images)
    assert GradCAM(model).explain(images, np.array([0, 2])).shape == (2, 64, 64)


def test_model_without_feature_map_is_refused_by_name():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs), name="tabular")
    with pytest.raises(ValueError, match="model 'tabular' has no layer with a 4-D"):
        find_feature_layer(model)


def test_min_grid_picks_a_finer_feature_map(nested_model):
    coarse = find_feature_layer(nested_model, min_grid=2)  # 64 px: out_relu is 2x2
    assert coarse[-1].output.shape[1] == 2
    fine = find_feature_layer(nested_model)  # default: at least 4x4
    assert fine[0].name == "backbone" and fine[-1].output.shape[1] >= 4
    assert fine[-1].name == "block_13_expand_relu"  # the last map before the stride-2 conv
    assert find_feature_layer(nested_model, min_grid=1000)[-1].name == "out_relu"
