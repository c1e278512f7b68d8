"""model.graph.tap through nested models: the Grad-CAM head wherever the classifier Dense sits.

Tiny random-weight models (32 px, two or three convolutions) whose feature map and classifier
Dense live at different depths: the head nested in a Sequential inside a Sequential, in a
functional sub-model, two levels down, in a sub-model after a nested backbone, and the usual
flat case. The Grad-CAM head's logits must be the model's own pre-softmax logits.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from audit.explain.gradcam import GradCAM
from model.graph import classifier_head, find_feature_layer
from model.loaded import ContractOptions, from_keras_model

SIZE, CLASSES = 32, 3


def _convs(prefix: str = "conv") -> list:
    return [keras.layers.Conv2D(8, 3, padding="same", activation="relu", name=f"{prefix}1"),
            keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu",
                                name=f"{prefix}2"),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu", name=f"{prefix}3")]


def _top(activation: str | None = "softmax") -> list:
    return [keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dense(CLASSES, activation=activation, name="logits")]


def flat_sequential():
    return keras.Sequential([keras.Input((SIZE, SIZE, 3)), *_convs(), *_top()], name="flat")


def head_in_sequential_in_sequential():
    head = keras.Sequential(_top(), name="head")
    return keras.Sequential([keras.Input((SIZE, SIZE, 3)), *_convs(), head], name="seq_seq")


def head_two_levels_down():
    inner = keras.Sequential([keras.layers.Dropout(0.2, name="drop"),
                              keras.layers.Dense(CLASSES, activation="softmax", name="logits")],
                             name="inner")
    head = keras.Sequential([keras.layers.GlobalAveragePooling2D(name="pool"), inner],
                            name="head")
    return keras.Sequential([keras.Input((SIZE, SIZE, 3)), *_convs(), head], name="deep")


def head_in_functional_sub_model(activation: str | None = "softmax"):
    head_in = keras.Input((SIZE // 2, SIZE // 2, 8))
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(head_in)
    head = keras.Model(head_in, keras.layers.Dense(CLASSES, activation=activation,
                                                   name="logits")(pooled), name="head")
    inputs = keras.Input((SIZE, SIZE, 3))
    x = inputs
    for layer in _convs():
        x = layer(x)
    return keras.Model(inputs, head(x), name="functional_head")


def functional_with_sequential_head():
    inputs = keras.Input((SIZE, SIZE, 3))
    x = inputs
    for layer in _convs():
        x = layer(x)
    return keras.Model(inputs, keras.Sequential(_top(), name="head")(x), name="fn_seq_head")


def backbone_and_head_both_nested():
    backbone = keras.Sequential([keras.Input((SIZE, SIZE, 3)), *_convs()], name="backbone")
    head = keras.Sequential(_top(), name="head")
    inputs = keras.Input((SIZE, SIZE, 3))
    return keras.Model(inputs, head(backbone(inputs)), name="two_subs")


SHAPES = {"flat": flat_sequential, "seq_in_seq": head_in_sequential_in_sequential,
          "two_levels": head_two_levels_down, "functional_sub": head_in_functional_sub_model,
          "functional_seq_head": functional_with_sequential_head,
          "backbone_and_head": backbone_and_head_both_nested}


def _loaded(model):
    return from_keras_model(model, ContractOptions(
        classes=tuple(f"c{i}" for i in range(CLASSES)), preprocess="none"))


def _own_logits(model, images: np.ndarray) -> np.ndarray:
    """The model's pre-softmax logits: its own call with the classifier's activation off."""
    dense = classifier_head(model)[-1]
    activation = dense.activation
    dense.activation = keras.activations.linear
    try:
        return np.asarray(model(images, training=False))
    finally:
        dense.activation = activation


def _images(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (4, SIZE, SIZE, 3)).astype(np.float32)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_gradcam_head_gives_the_models_own_logits_and_a_finite_map(shape):
    keras.utils.set_random_seed(0)
    model = SHAPES[shape]()
    loaded = _loaded(model)
    images = _images(1)
    path, run = loaded.feature_head()
    assert path.split("/")[-1] == "conv3"  # the last 16 x 16 map, outside the head
    feature, logits = run(tf.constant(images))
    assert tuple(feature.shape) == (4, SIZE // 2, SIZE // 2, 8)
    expected = _own_logits(model, images)
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-5)
    # ... the same logits the forward pass records, whose softmax is the model's output.
    forward_logits, _ = loaded.forward()(tf.constant(images))
    np.testing.assert_allclose(np.asarray(forward_logits), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(tf.nn.softmax(logits)),
                               np.asarray(model(images, training=False)), atol=1e-5)
    maps = GradCAM(loaded, batch_size=2).explain(images.astype(np.uint8), np.array([0, 1, 2, 0]))
    assert maps.shape == (4, SIZE, SIZE) and np.isfinite(maps).all()
    assert maps.max() > 0


def test_nested_head_without_softmax_gives_its_outputs_as_logits():
    keras.utils.set_random_seed(0)
    model = head_in_functional_sub_model(activation=None)
    loaded = _loaded(model)
    assert loaded.contract.output == "logits"
    images = _images(2)
    _, logits = loaded.feature_head()[1](tf.constant(images))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(model(images, training=False)),
                               rtol=1e-5, atol=1e-5)


def test_feature_layer_inside_the_head_sub_model_is_found_and_tapped():
    """A feature map inside the same nested model as the classifier."""
    keras.utils.set_random_seed(0)
    head = keras.Sequential([*_convs("head_conv"), *_top()], name="head")
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)),
                              keras.layers.Conv2D(8, 3, padding="same", name="stem"), head])
    loaded = _loaded(model)
    images = _images(3)
    path, run = loaded.feature_head()
    assert path == "head/head_conv3"
    _, logits = run(tf.constant(images))
    np.testing.assert_allclose(np.asarray(logits), _own_logits(model, images), rtol=1e-5,
                               atol=1e-5)
    assert find_feature_layer(model)[0] is head
