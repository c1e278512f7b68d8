"""Custom layers saved inside the model, so every user of the model gets the same input.

`ReinhardNormalization` is stain normalisation at the input (Reinhard et al., 2001): each
image's colour statistics in CIE Lab are moved to fixed target statistics (fitted on the
training set), so a smear stained bluer or paler at another laboratory reaches the network
looking like the training stain.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = ["ReinhardNormalization", "lab_statistics"]

_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]], dtype=np.float32)
_WHITE = np.array([0.950456, 1.0, 1.088754], dtype=np.float32)  # D65


def _rgb_to_lab(rgb):
    """sRGB in [0, 1] -> CIE Lab, with keras.ops (differentiable, any backend)."""
    linear = ops.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = ops.matmul(linear, ops.convert_to_tensor(_RGB_TO_XYZ.T)) / _WHITE
    f = ops.where(xyz > 0.008856, ops.power(ops.maximum(xyz, 1e-6), 1.0 / 3.0),
                  7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return ops.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def _lab_to_rgb(lab):
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = fy + lab[..., 1] / 500.0
    fz = fy - lab[..., 2] / 200.0
    f = ops.stack([fx, fy, fz], axis=-1)
    xyz = ops.where(f > 0.2068966, f ** 3, (f - 16.0 / 116.0) / 7.787) * _WHITE
    linear = ops.matmul(xyz, ops.convert_to_tensor(np.linalg.inv(_RGB_TO_XYZ).T))
    linear = ops.clip(linear, 0.0, 1.0)
    return ops.where(linear > 0.0031308, 1.055 * ops.power(ops.maximum(linear, 1e-6), 1 / 2.4)
                     - 0.055, 12.92 * linear)


def lab_statistics(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Mean over images of each image's Lab channel means and standard deviations."""
    lab = np.asarray(_rgb_to_lab(ops.convert_to_tensor(images.astype(np.float32) / 255.0)))
    means = lab.mean(axis=(1, 2))
    stds = lab.std(axis=(1, 2))
    return means.mean(axis=0).tolist(), stds.mean(axis=0).tolist()


@keras.saving.register_keras_serializable(package="cellaudit")
class ReinhardNormalization(keras.layers.Layer):
    """Per-image Reinhard colour normalisation of raw 0-255 RGB to target Lab statistics."""

    def __init__(self, target_mean, target_std, **kwargs):
        super().__init__(**kwargs)
        self.target_mean = [float(v) for v in target_mean]
        self.target_std = [float(v) for v in target_std]

    def call(self, inputs):
        lab = _rgb_to_lab(ops.cast(inputs, "float32") / 255.0)
        mean = ops.mean(lab, axis=(1, 2), keepdims=True)
        std = ops.std(lab, axis=(1, 2), keepdims=True)
        target_mean = ops.reshape(ops.convert_to_tensor(self.target_mean), (1, 1, 1, 3))
        target_std = ops.reshape(ops.convert_to_tensor(self.target_std), (1, 1, 1, 3))
        normalised = (lab - mean) / ops.maximum(std, 1e-3) * target_std + target_mean
        return 255.0 * _lab_to_rgb(normalised)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "target_mean": self.target_mean,
                "target_std": self.target_std}
