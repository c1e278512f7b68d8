"""Grad-CAM (Selvaraju et al. 2017) with `tf.GradientTape` on the last convolutional feature map.

The feature map is found automatically: walk the model's layers from the end and take the last
layer with a 4-D output, descending into a nested sub-model (the `backbone` of
`model.build.build_classifier`) when there is one. A 1x1 grid cannot localise anything
(MobileNetV2 at 32 px), so the last 4-D layer whose grid is at least `min_grid` cells a side
is taken. Default 4: MobileNetV2's last map (`out_relu`) is 7x7 at 224 px, the standard
Grad-CAM layer; at 64 px it is 2x2, and there the 4x4 `block_13_expand_relu` is taken instead
(on a classifier trained on 64-px synthetic cells, `out_relu` maps were no better than random
maps under deletion/insertion, gain -0.01, while `block_13_expand_relu` maps gained +0.36).

The explained score is the target's logit (pre-softmax): the `logits` layer when the model has
one, else the pre-activation of a final softmax Dense layer (e.g.
`keras.applications.MobileNetV2(include_top=True)`), computed from its input, kernel and bias.
Gradients of the softmax output saturate for confident predictions, logits do not.

Map = ReLU(sum_k mean_xy(d logit / d A_k) * A_k), upsampled bilinearly to the input size;
non-negative (`signed = False`). One traced tape per batch of `batch_size` images.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from audit.explain.base import Explainer, register_explainer

__all__ = ["GradCAM", "find_feature_layer", "FeatureHead"]


def _rank(layer) -> int | None:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):  # a layer with several outputs or never called
        return None
    return len(shape)


def _grid(layer) -> int:
    """The smaller side of a layer's feature grid (0 when unknown)."""
    shape = layer.output.shape
    return int(min(shape[1] or 0, shape[2] or 0))


def _is_model(layer) -> bool:
    return isinstance(layer, keras.Model)


def _is_feature_map(layer) -> bool:
    # Padding layers add a border of zeros: their grid is not aligned with the image.
    return (not isinstance(layer, (keras.layers.InputLayer, keras.layers.ZeroPadding2D))
            and not _is_model(layer) and _rank(layer) == 4)


def find_feature_layer(model, *, min_grid: int = 4) -> list:
    """Path to the last convolutional feature map: [layer] or [nested_model, layer].

    The last 4-D layer whose grid is at least `min_grid` cells on each side; if none is, the
    last 4-D layer. Raises ValueError naming the model when it has no 4-D layer.
    """
    candidates: list[list] = []
    for layer in reversed(model.layers):
        if _is_model(layer):
            candidates += [[layer, lyr] for lyr in reversed(layer.layers) if _is_feature_map(lyr)]
        elif _is_feature_map(layer):
            candidates.append([layer])
    if not candidates:
        raise ValueError(f"model '{model.name}' has no layer with a 4-D (convolutional) output "
                         "for Grad-CAM")
    fine = [path for path in candidates if _grid(path[-1]) >= min_grid]
    return (fine or candidates)[0]


def _logit_source(model) -> tuple[object, keras.layers.Dense | None]:
    """(outer-graph tensor, dense): logits = tensor if dense is None else tensor @ W + b."""
    names = {layer.name for layer in model.layers}
    if "logits" in names:
        return model.get_layer("logits").output, None
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise ValueError(f"model '{model.name}' has no 'logits' or Dense layer to explain")
    last = dense[-1]
    if getattr(last.activation, "__name__", "") in ("softmax", "sigmoid"):
        return last.input, last  # the pre-activation is recomputed from the Dense's input
    return last.output, None


def _outer_node(sub_model, model):
    """The call of `sub_model` inside `model`'s graph (its input and output tensors)."""
    for node in reversed(sub_model._inbound_nodes):
        try:
            keras.Model(model.inputs, node.output_tensors)
        except ValueError:
            continue
        return node
    raise ValueError(f"cannot find where '{sub_model.name}' is called in model '{model.name}'")


@dataclass
class FeatureHead:
    """A model split as images -> (feature map A, logits), so the tape can watch A."""

    feature_path: str
    run: object  # callable(images float32) -> (A, logits)

    @classmethod
    def from_model(cls, model, *, min_grid: int = 4) -> FeatureHead:
        path = find_feature_layer(model, min_grid=min_grid)
        source, dense = _logit_source(model)
        if len(path) == 1:
            both = keras.Model(model.inputs, [path[0].output, source])

            def forward(x):
                return both(x, training=False)
        else:
            sub, layer = path
            node = _outer_node(sub, model)
            pre = keras.Model(model.inputs, node.input_tensors)
            inner = keras.Model(sub.inputs, [layer.output, *sub.outputs])
            post = keras.Model(node.output_tensors, source)

            def forward(x):
                feature, *sub_out = inner(pre(x, training=False), training=False)
                return feature, post(sub_out, training=False)

        def run(x):
            feature, out = forward(x)
            if dense is not None:
                out = tf.matmul(out, dense.kernel) + (dense.bias if dense.use_bias else 0.0)
            return feature, out

        return cls("/".join(layer.name for layer in path), run)


@register_explainer
class GradCAM(Explainer):
    name = "gradcam"
    signed = False
    description = ("Grad-CAM: the last convolutional feature maps weighted by the mean gradient "
                   "of the target logit; coarse (one value per feature-map cell), non-negative.")

    def __init__(self, model, *, seed: int = 0, batch_size: int = 32, min_grid: int = 4,
                 predictor=None):
        super().__init__(model, seed=seed, batch_size=batch_size, predictor=predictor)
        self.head = FeatureHead.from_model(model, min_grid=min_grid)
        self.gradient_passes = 0
        # One trace for every batch size and image size: tracing costs seconds on CPU.
        self._cam = tf.function(self._cam_batch, input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.float32), tf.TensorSpec([None], tf.int32)])

    @classmethod
    def from_config(cls, model, config: dict, *, seed: int, predictor=None) -> GradCAM:
        return cls(model, seed=seed, batch_size=int(config["gradcam_batch_size"]),
                   min_grid=int(config["gradcam_min_grid"]), predictor=predictor)

    def _cam_batch(self, images, targets):
        with tf.GradientTape() as tape:
            feature, logits = self.head.run(images)
            tape.watch(feature)
            score = tf.reduce_sum(tf.gather(logits, targets, axis=1, batch_dims=1))
        grads = tape.gradient(score, feature)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * feature, axis=-1, keepdims=True))
        return tf.image.resize(cam, tf.shape(images)[1:3], method="bilinear")[..., 0]

    def _explain(self, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        maps = []
        for start in range(0, len(images), self.batch_size):
            chunk = tf.constant(images[start:start + self.batch_size], tf.float32)
            picked = tf.constant(targets[start:start + self.batch_size], tf.int32)
            maps.append(self._cam(chunk, picked).numpy())
            self.gradient_passes += int(chunk.shape[0])
        return np.concatenate(maps)

    def info(self) -> dict:
        return {**super().info(), "layer": self.head.feature_path, "score": "logit"}
