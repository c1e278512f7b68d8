"""Training-time augmentation as TensorFlow ops on uint8-range float batches (B, S, S, 3).

Each family is a switch in `AugmentConfig`. Stain jitter follows Tellez et al. (2018): the
image is split into stain channels in optical-density space (haematoxylin, eosin, DAB) and
each channel is scaled and shifted a little, which mimics lab-to-lab staining differences
better than RGB colour jitter alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf

__all__ = ["AugmentConfig", "make_augmenter"]

# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB), as in skimage's rgb2hed.
_RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32
)
_RGB_FROM_HED[2] = np.cross(_RGB_FROM_HED[0], _RGB_FROM_HED[1])
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)


@dataclass(frozen=True)
class AugmentConfig:
    flips: bool = True           # horizontal/vertical flips and transposes: all 8 symmetries
    affine: bool = True          # small rotation, zoom and shift
    color: bool = True           # brightness, contrast, saturation, hue
    stain: bool = True           # HED stain jitter
    rotation_deg: float = 15.0
    zoom: float = 0.1
    zoom_in: float = 1.0         # largest magnification (scale augmentation), 1 = only `zoom`
    shift: float = 0.05
    brightness: float = 0.1      # fraction of the 0-255 range
    contrast: float = 0.15
    saturation: float = 0.2
    hue: float = 0.03            # fraction of the hue circle
    stain_sigma: float = 0.05

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def enabled(self) -> bool:
        return self.flips or self.affine or self.color or self.stain


def make_augmenter(config: AugmentConfig, *, seed: int):
    """A function (images float32 0-255, step int64) -> augmented images, stateless-seeded."""
    affine = None
    if config.affine:
        import keras

        affine = keras.Sequential([
            keras.layers.RandomRotation(config.rotation_deg / 360.0, fill_mode="reflect", seed=seed),
            # Keras zooms in for negative factors: -0.5 shows half the height, 2x magnified.
            keras.layers.RandomZoom((-max(config.zoom, 1.0 - 1.0 / config.zoom_in), config.zoom),
                                    fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomTranslation(config.shift, config.shift, fill_mode="reflect",
                                           seed=seed + 2),
        ], name="affine_augment")

    def augment(images: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        step_seed = tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])
        seeds = tf.random.experimental.stateless_split(step_seed, 8)
        x = images
        if config.flips:
            x = tf.image.stateless_random_flip_left_right(x, seeds[0])
            x = tf.image.stateless_random_flip_up_down(x, seeds[1])
            transpose = tf.random.stateless_uniform([tf.shape(x)[0], 1, 1, 1], seeds[2]) < 0.5
            x = tf.where(transpose, tf.transpose(x, [0, 2, 1, 3]), x)
        if affine is not None:
            x = affine(x, training=True)
        if config.stain:
            x = _stain_jitter(x, config.stain_sigma, seeds[3])
        if config.color:
            x = x / 255.0
            x = tf.image.stateless_random_brightness(x, config.brightness, seeds[4])
            x = tf.image.stateless_random_contrast(x, 1 - config.contrast, 1 + config.contrast,
                                                   seeds[5])
            x = tf.image.stateless_random_saturation(x, 1 - config.saturation,
                                                     1 + config.saturation, seeds[6])
            x = tf.image.stateless_random_hue(x, config.hue, seeds[7])
            x = x * 255.0
        return tf.clip_by_value(x, 0.0, 255.0)

    return augment


def _stain_jitter(x: tf.Tensor, sigma: float, seed: tf.Tensor) -> tf.Tensor:
    batch = tf.shape(x)[0]
    alpha_seed, beta_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    alpha = tf.random.stateless_uniform([batch, 1, 1, 3], alpha_seed, 1 - sigma, 1 + sigma)
    beta = tf.random.stateless_uniform([batch, 1, 1, 3], beta_seed, -sigma, sigma)
    od = -tf.math.log(tf.maximum(x, 1.0) / 255.0)
    hed = tf.einsum("bhwc,cd->bhwd", od, _HED_FROM_RGB)
    hed = hed * alpha + beta
    od = tf.einsum("bhwd,dc->bhwc", hed, _RGB_FROM_HED)
    return 255.0 * tf.exp(-od)
