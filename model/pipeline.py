"""The tf.data input of training: paths decoded lazily in parallel by `audit.decode.load_image`
(the audit's own decoding, so a model is trained on the pixels it is audited on), optionally
class-balanced, augmented on the batch and one-hot encoded."""

from __future__ import annotations

import numpy as np

from audit.data import Dataset
from audit.decode import load_image
from model.augment import make_augmenter
from model.config import AugmentConfig

__all__ = ["make_input_pipeline"]


def make_input_pipeline(
    dataset: Dataset,
    indices: np.ndarray,
    *,
    image_size: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    augment: AugmentConfig | None = None,
    balanced: bool = False,
    n_classes: int | None = None,
):
    """A tf.data pipeline of (float32 images 0-255, labels); decodes lazily in parallel.

    Labels are int class indices, or one-hot rows when `n_classes` is given.
    """
    import tensorflow as tf

    paths = np.array([dataset.paths[i] for i in indices])
    labels = dataset.labels[indices].astype(np.int32)

    def decode(path, label):
        image = tf.numpy_function(lambda p: load_image(p.decode(), image_size, resize="crop"),
                                  [path], tf.uint8)
        image.set_shape((image_size, image_size, 3))
        return tf.cast(image, tf.float32), label

    if balanced:
        # Equal chance per class at every draw: each class's stream repeats independently.
        streams = []
        for c in np.unique(labels):
            sel = labels == c
            ds = tf.data.Dataset.from_tensor_slices((paths[sel], labels[sel]))
            streams.append(ds.shuffle(int(sel.sum()), seed=seed + int(c)).repeat())
        ds = tf.data.Dataset.sample_from_datasets(streams, seed=seed).take(len(labels))
    else:
        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        if shuffle:
            ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size)
    if augment is not None and augment.enabled:
        augment_fn = make_augmenter(augment, seed=seed)
        ds = ds.enumerate().map(lambda step, batch: (augment_fn(batch[0], step), batch[1]),
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if n_classes is not None:
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, n_classes)))
    return ds.prefetch(tf.data.AUTOTUNE)
