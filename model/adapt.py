"""AdaBN (Li et al., 2016), aligned to the source site's statistics.

A network trained at one laboratory sees activations with that laboratory's statistics; images
from another stain or scanner shift them. Classic AdaBN replaces each BatchNorm's moving mean
and variance by the target's, which is right only when those moving statistics are the source
site's. Ours are not: a pretrained backbone is fine-tuned with BatchNorm kept in inference mode
(model.build), so its statistics are ImageNet's and the head learned PBC features *as
normalised by ImageNet statistics*. Replacing them standardises target activations where
source activations never were: on PBC -> BCCD crops classic AdaBN took accuracy from 48.7% to
13.1%.

So we align instead: every BatchNorm input on target images is mapped to the mean and spread
the same input has on source images, then normalised as before. Per channel, with moving
statistics (m, s = sqrt(v + eps)), source input statistics (mu_S, sd_S) and target input
statistics (mu_T, sd_T) measured through the already-aligned earlier layers:

    s' = s * sd_T / sd_S        m' = mu_T - (sd_T / sd_S) * (mu_S - m)

On the source's own images this changes nothing; when the moving statistics are the source's
(m = mu_S, s = sd_S: a backbone whose BatchNorm learned them) it is classic AdaBN.

The BatchNormalization layers are found anywhere in the model's graph (nested backbones
included), so a notebook's model adapts as well as one `audit train` made; the images are
decoded and scaled through the model's input contract, as for every forward pass.
"""

from __future__ import annotations

import numpy as np

from audit.data import Dataset, iter_batches, read_images
from audit.errors import UsageError
from audit.progress import progress
from audit.sampling import subsample

__all__ = ["align_batchnorm", "batchnorm_input_statistics", "batchnorm_layers"]


def batchnorm_layers(keras_model) -> list[tuple[tuple, object]]:
    """(container path, layer) of every BatchNormalization layer, in graph order."""
    import keras

    from model.graph import iter_layer_paths

    return [(tuple(path[:-1]), path[-1]) for path in iter_layer_paths(keras_model)
            if isinstance(path[-1], keras.layers.BatchNormalization)]


def align_batchnorm(loaded, target: Dataset, source: Dataset | None = None, *,
                    batch_size: int = 32, max_images: int | None = 512, seed: int = 0) -> dict:
    """Align every BatchNorm of `loaded` (a `LoadedModel`) to `target` (labels unused), in
    place; returns a record for the model's metadata.

    `source`: images of the training site; None takes the moving statistics for the source's
    (classic AdaBN). Layers are aligned in order, each from the target's population
    statistics at its input through the layers already aligned: one partial forward pass per
    layer over the target images, held in memory (at most `max_images` of each set, a seeded
    sample). Exact and independent of batch composition, unlike training-mode statistics
    (a folder in class order gives one-class batches).
    """
    from model.loaded import GraphUnavailable

    try:
        network = loaded.require_graph("AdaBN")
    except GraphUnavailable as exc:
        raise UsageError(f"--model: {exc}") from None
    norms = [layer for _, layer in batchnorm_layers(network)]
    if not norms:
        raise UsageError("--model: the model has no BatchNormalization layer; AdaBN has "
                         "nothing to adapt")
    contract = loaded.contract
    target = _sample(target, max_images, seed)
    moving = [(np.asarray(layer.moving_mean, np.float64),
               np.asarray(layer.moving_variance, np.float64)) for layer in norms]
    if source is not None:
        source = _sample(source, max_images, seed)
        source_stats = batchnorm_input_statistics(loaded, source, batch_size=batch_size,
                                                  desc="source statistics")
    else:
        source_stats = moving
    images = read_images(list(target.paths), contract.input_size, resize=contract.resize)
    for index, layer in enumerate(progress(norms, desc="align BatchNorm", unit="layer")):
        [(mu_t, var_t)] = batchnorm_input_statistics(loaded, images, batch_size=batch_size,
                                                     only=index, desc=None)
        (m, v), (mu_s, var_s) = moving[index], source_stats[index]
        eps = layer.epsilon
        ratio = np.sqrt(var_t + eps) / np.sqrt(var_s + eps)
        layer.moving_mean.assign((mu_t - ratio * (mu_s - m)).astype(np.float32))
        layer.moving_variance.assign(np.maximum((v + eps) * ratio ** 2 - eps, 0.0)
                                     .astype(np.float32))
    record = {"method": "AdaBN aligned to source statistics" if source is not None
              else "AdaBN (moving statistics taken as the source's)",
              "images": len(target), "fingerprint": target.fingerprint,
              "batchnorm_layers": len(norms), "batch_size": batch_size, "seed": seed}
    if source is not None:
        record["source"] = {"images": len(source), "fingerprint": source.fingerprint}
    return record


def batchnorm_input_statistics(loaded, dataset: Dataset | np.ndarray, *, batch_size: int = 32,
                               only: int | None = None, desc: str | None = "statistics"
                               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per BatchNorm of `loaded` (or only the one at index `only`), the population (mean,
    variance) per channel of its input over `dataset` (a Dataset, or uint8 images already
    decoded the model's way): one inference-mode pass, reduced in-graph so memory stays that
    of a forward pass. `desc` None: no progress bar (one per layer would be noise)."""
    import tensorflow as tf

    from model.contract import scale_images
    from model.graph import tap

    contract = loaded.contract
    norms = batchnorm_layers(loaded.keras_model)
    selected = norms if only is None else [norms[only]]
    # One probe per nested model holding BatchNorm layers (usually one: the backbone).
    containers: dict[tuple, list] = {}
    for container, layer in selected:
        containers.setdefault(tuple(id(m) for m in container), [container, []])[1].append(layer)
    probes = [tap(loaded.keras_model, container, layers, at="input")
              for container, layers in containers.values()]

    # Eager: a graph function traced per layer costs more than the pass itself on small inputs.
    def moments(images):
        x = scale_images(images, preprocess=contract.preprocess,
                         channel_order=contract.channel_order)
        acts = [a for probe in probes for a in probe(x)[0]]
        return [(tf.reduce_sum(a, [0, 1, 2]), tf.reduce_sum(tf.square(a), [0, 1, 2]),
                 tf.cast(tf.reduce_prod(tf.shape(a)[:3]), tf.float32)) for a in acts]

    if isinstance(dataset, np.ndarray):
        batches = ((dataset[i:i + batch_size], None) for i in range(0, len(dataset), batch_size))
    else:
        batches = iter_batches(dataset, image_size=contract.input_size, resize=contract.resize,
                               batch_size=batch_size)
    if desc is not None:
        batches = progress(batches, desc=desc, total=-(-len(dataset) // batch_size),
                           unit="batch")
    sums = None
    for images, _ in batches:
        batch = [(s.numpy().astype(np.float64), q.numpy().astype(np.float64), float(n))
                 for s, q, n in moments(tf.constant(images, tf.float32))]
        sums = batch if sums is None else [(a + s, b + q, c + n) for (a, b, c), (s, q, n)
                                           in zip(sums, batch, strict=True)]
    stats = []
    for total_sum, total_square, count in sums:
        mean = total_sum / count
        stats.append((mean, np.maximum(total_square / count - mean ** 2, 0.0)))
    # Back to graph order when several containers were probed.
    order = {id(layer): i for i, (_, layer) in enumerate(selected)}
    probed = [layer for _, layers in containers.values() for layer in layers]
    return [stats[probed.index(layer)] for layer in sorted(probed, key=lambda lyr: order[id(lyr)])]


def _sample(dataset: Dataset, max_images: int | None, seed: int) -> Dataset:
    if max_images is None or max_images >= len(dataset):
        return dataset
    return dataset.subset(subsample(len(dataset), max_images, rng=np.random.default_rng(seed)))
