"""Training-time augmentation as TensorFlow ops on uint8-range float batches (B, S, S, 3).

Each family is a switch in `AugmentConfig`. Stain jitter follows Tellez et al. (2018): the
image is split into stain channels in optical-density space (haematoxylin, eosin, DAB) and
each channel is scaled and shifted a little, which mimics lab-to-lab staining differences
better than RGB colour jitter alone.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from model.config import AugmentConfig

__all__ = ["AugmentConfig", "make_augmenter"]  # AugmentConfig re-exported from model.config

# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB), as in skimage's rgb2hed.
_RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32
)
_RGB_FROM_HED[2] = np.cross(_RGB_FROM_HED[0], _RGB_FROM_HED[1])
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)


def make_augmenter(config: AugmentConfig, *, seed: int):
    """A function (images float32 0-255, step int64) -> augmented images, stateless-seeded."""
    affine = None
    if config.affine:
        import keras

        affine = keras.Sequential([
            keras.layers.RandomRotation(config.rotation_deg / 360.0, fill_mode="reflect", seed=seed),
            keras.layers.RandomZoom((-config.zoom, config.zoom), fill_mode="reflect",
                                    seed=seed + 1),
            keras.layers.RandomTranslation(config.shift, config.shift, fill_mode="reflect",
                                           seed=seed + 2),
        ], name="affine_augment")

    def augment(images: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        step_seed = tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])
        seeds = tf.random.experimental.stateless_split(step_seed, 11)
        x = images
        if config.flips:
            x = tf.image.stateless_random_flip_left_right(x, seeds[0])
            x = tf.image.stateless_random_flip_up_down(x, seeds[1])
            transpose = tf.random.stateless_uniform([tf.shape(x)[0], 1, 1, 1], seeds[2]) < 0.5
            x = tf.where(transpose, tf.transpose(x, [0, 2, 1, 3]), x)
        if affine is not None:
            x = affine(x, training=True)
            if config.zoom_in > 1.0:
                x = _random_magnify(x, config.zoom_in, seeds[10])
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
        x = tf.clip_by_value(x, 0.0, 255.0)
        if config.blur_sigma > 0:
            x = _random_blur(x, config.blur_sigma, seeds[8])
        if config.jpeg_quality < 100:
            x = _random_jpeg(x, config.jpeg_quality, seeds[9])
        return x

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


def _random_magnify(x: tf.Tensor, max_magnification: float, seed: tf.Tensor) -> tf.Tensor:
    """Random resized crop about the centre: each image magnified by a factor drawn
    log-uniformly from [1, max_magnification], so every octave of cell size between the
    sites is seen equally often (a uniform draw of the crop side would rarely magnify much).
    """
    batch, height, width = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    log_m = tf.random.stateless_uniform([batch], seed, 0.0, float(np.log(max_magnification)))
    half = 0.5 / tf.exp(log_m)
    boxes = tf.stack([0.5 - half, 0.5 - half, 0.5 + half, 0.5 + half], axis=1)
    return tf.image.crop_and_resize(x, boxes, tf.range(batch), tf.stack([height, width]))


def _random_blur(x: tf.Tensor, max_sigma: float, seed: tf.Tensor) -> tf.Tensor:
    """Gaussian blur with a sigma drawn per image from [0, max_sigma] (a blurrier camera).

    One separable depthwise convolution for the whole batch: images are stacked along the
    channel axis so that each gets its own kernel.
    """
    batch, height, width = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    radius = int(np.ceil(3 * max_sigma))
    sigma = tf.random.stateless_uniform([batch], seed, 0.0, max_sigma)
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * (offsets[None, :] / tf.maximum(sigma[:, None], 1e-3)) ** 2)
    kernel = kernel / tf.reduce_sum(kernel, axis=1, keepdims=True)   # (B, K)
    kernel = tf.repeat(kernel, 3, axis=0)                            # (B * 3, K)
    stacked = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, height, width, batch * 3])
    stacked = tf.pad(stacked, [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    rows = tf.transpose(kernel)[:, None, :, None]                    # (K, 1, B * 3, 1)
    cols = tf.transpose(kernel)[None, :, :, None]                    # (1, K, B * 3, 1)
    out = tf.nn.depthwise_conv2d(stacked, rows, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, cols, [1, 1, 1, 1], "VALID")
    return tf.transpose(tf.reshape(out, [height, width, batch, 3]), [2, 0, 1, 3])


def _random_jpeg(x: tf.Tensor, min_quality: int, seed: tf.Tensor) -> tf.Tensor:
    """Re-encode each image as JPEG at a quality drawn from [min_quality, 100]."""
    seeds = tf.random.experimental.stateless_split(seed, tf.shape(x)[0])

    def one(args):
        image, image_seed = args
        image = tf.cast(tf.round(image), tf.uint8)
        return tf.cast(tf.image.stateless_random_jpeg_quality(image, min_quality, 100,
                                                              image_seed), tf.float32)

    return tf.map_fn(one, (x, seeds), fn_output_signature=tf.float32)
