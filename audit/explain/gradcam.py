"""Grad-CAM (Selvaraju et al. 2017) with `tf.GradientTape` on the last convolutional feature map.

The feature map is found automatically (`model.graph.find_feature_layer`): walk the model's
layers from the end and take the last layer with a 4-D output, at any depth of nested
sub-models (the `backbone` of `model.build.build_classifier`, or a notebook's
`Sequential([MobileNetV2(...), ...])`). A 1x1 grid cannot localise anything
(MobileNetV2 at 32 px), so the last 4-D layer whose grid is at least `min_grid` cells a side
is taken. Default 4: MobileNetV2's last map (`out_relu`) is 7x7 at 224 px, the standard
Grad-CAM layer; at 64 px it is 2x2, and there the 4x4 `block_13_expand_relu` is taken instead
(on a classifier trained on 64-px synthetic cells, `out_relu` maps were no better than random
maps under deletion/insertion, gain -0.01, while `block_13_expand_relu` maps gained +0.36).

The explained score is the target's logit (pre-softmax): the pre-activation of the classifier's
last Dense layer, computed from its input, kernel and bias (`LoadedModel.feature_head`).
Gradients of the softmax output saturate for confident predictions, logits do not. The
model's input contract (channel order, scaling) is applied before the model, as for every
forward pass; a SavedModel has no layer graph, so Grad-CAM reports that it is not possible.

Map = ReLU(sum_k mean_xy(d logit / d A_k) * A_k), upsampled bilinearly to the input size;
non-negative (`signed = False`). One traced tape per batch of `batch_size` images.

A model with test-time views (`views = "dihedral8"` in its contract) averages its answers
over the eight views, and its map is the mean of the eight views' maps, each computed from
that view's own target logit and turned back to the image's orientation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from audit.explain.base import Explainer, register_explainer
from audit.explain.config import ExplainOptions
from model.graph import find_feature_layer
from model.views import merge_views, view_count

__all__ = ["GradCAM", "find_feature_layer", "FeatureHead"]


@dataclass
class FeatureHead:
    """A model split as images -> (feature map A, logits), so the tape can watch A."""

    feature_path: str
    run: object  # callable(raw RGB images float32) -> (A, logits)
    views: str = "single"  # A holds every test-time view of each image (model.views)

    @classmethod
    def from_model(cls, model, *, min_grid: int = 4) -> FeatureHead:
        """From a `LoadedModel` (or a Keras model): its contract's scaling comes first.
        Raises `model.loaded.GraphUnavailable` for a model without a layer graph."""
        from model.loaded import as_loaded

        loaded = as_loaded(model)
        path, run = loaded.feature_head(min_grid=min_grid)
        return cls(path, run, loaded.contract.views)


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
        # A tape holds its batch's activations: with test-time views each image is 8 inputs,
        # so a tape takes fewer images and holds as many inputs as without views.
        self.tape_images = max(1, self.batch_size // view_count(self.head.views))
        self.gradient_passes = 0
        # One trace for every batch size and image size: tracing costs seconds on CPU.
        self._cam = tf.function(self._cam_batch, input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.float32), tf.TensorSpec([None], tf.int32)])

    @classmethod
    def from_config(cls, model, options: ExplainOptions, *, seed: int, predictor=None) -> GradCAM:
        return cls(model, seed=seed, batch_size=options.gradcam_batch_size,
                   min_grid=options.gradcam_min_grid, predictor=predictor)

    def _cam_batch(self, images, targets):
        with tf.GradientTape() as tape:
            feature, logits = self.head.run(images)  # every view's, view-major
            tape.watch(feature)
            targets = tf.tile(targets, [view_count(self.head.views)])
            score = tf.reduce_sum(tf.gather(logits, targets, axis=1, batch_dims=1))
        grads = tape.gradient(score, feature)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * feature, axis=-1, keepdims=True))
        cam = merge_views(cam, self.head.views)  # each view's map turned back, averaged
        return tf.image.resize(cam, tf.shape(images)[1:3], method="bilinear")[..., 0]

    def _explain(self, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        maps = []
        step = self.tape_images
        for start in range(0, len(images), step):
            chunk = tf.constant(images[start:start + step], tf.float32)
            picked = tf.constant(targets[start:start + step], tf.int32)
            maps.append(self._cam(chunk, picked).numpy())
            self.gradient_passes += int(chunk.shape[0])
        return np.concatenate(maps)

    def info(self) -> dict:
        return {**super().info(), "layer": self.head.feature_path, "score": "logit"}
