"""AdaBN (Li et al., 2016): re-estimate BatchNorm statistics on unlabelled target-site images.

A network trained at one laboratory normalises its activations with that laboratory's
statistics; images from another stain or scanner shift them. Replacing the moving mean and
variance of every BatchNorm layer with their averages over target images (no labels, no
gradient) often recovers much of the cross-site drop.
"""

from __future__ import annotations

import numpy as np

from audit.data import Dataset, iter_batches
from audit.progress import progress

__all__ = ["adapt_batchnorm"]


def adapt_batchnorm(model, dataset: Dataset, *, image_size: int, batch_size: int = 32,
                    max_images: int | None = None, seed: int = 0) -> dict:
    """Set every backbone BatchNorm's moving statistics to their mean over `dataset`.

    Batches run eagerly through the backbone in training mode (which is what updates the
    statistics) with momentum k/(k+1) at step k, so the result is the plain average over
    batches. The images are shuffled (seeded) first: a folder in class order would give
    one-class batches, whose statistics are not the site's. Returns a record for the
    model's metadata.
    """
    import keras

    from model.build import backbone_of

    backbone = backbone_of(model)
    if backbone is None:
        raise ValueError("AdaBN needs a model built by model.build (nested 'backbone')")
    norms = [layer for layer in backbone.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    pre = keras.Model(model.inputs[0], model.get_layer("preprocess").output)
    if max_images is not None and max_images < len(dataset):
        rng = np.random.default_rng(seed)
        dataset = dataset.subset(np.sort(rng.choice(len(dataset), max_images, replace=False)))
    shuffled = dataset.subset(np.random.default_rng(seed).permutation(len(dataset)))
    saved = [(layer.trainable, layer.momentum) for layer in norms]
    try:
        for layer in norms:
            layer.trainable = True  # a frozen BatchNorm ignores training=True
        batches = iter_batches(shuffled, image_size=image_size, batch_size=batch_size)
        total = -(-len(dataset) // batch_size)
        for step, (images, _) in enumerate(progress(batches, desc="adapt BatchNorm",
                                                    total=total, unit="batch")):
            for layer in norms:
                layer.momentum = step / (step + 1.0)
            backbone(pre(images.astype(np.float32), training=False), training=True)
    finally:
        for layer, (trainable, momentum) in zip(norms, saved, strict=True):
            layer.trainable, layer.momentum = trainable, momentum
    return {"method": "AdaBN", "images": len(dataset), "fingerprint": dataset.fingerprint,
            "batchnorm_layers": len(norms), "batch_size": batch_size, "seed": seed}
