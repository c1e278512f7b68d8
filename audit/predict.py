"""One streamed pass per dataset: logits, probabilities, embeddings, image properties, hashes.

Everything the checks need from pixels is computed here once, batched, and cached on disk
under a key of model hash, dataset fingerprint and input size: a second audit over the same
inputs does no model work and decodes no image.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit.atomic import atomic_path
from audit.data import Dataset, iter_batches
from audit.progress import progress

__all__ = ["DatasetOutputs", "Predictor", "forward_model", "compute_outputs", "softmax",
           "cell_size_sample", "CACHE_VERSION"]

CACHE_VERSION = "4"  # 4: usability properties and source sizes


@dataclass(frozen=True)
class DatasetOutputs:
    logits: np.ndarray       # (N, C) float64
    probs: np.ndarray        # (N, C) float64
    embeddings: np.ndarray   # (N, D) float32, penultimate layer
    properties: dict[str, np.ndarray]
    phash: np.ndarray        # (N, 8) uint64: pHash of the 8 flips/90-degree rotations
    from_cache: bool = False

    @property
    def predictions(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def forward_model(model):
    """A model mapping images to (logits, probs, embedding), found from the layer graph.

    Works for models `model.build` makes (layers 'logits', 'probs', 'pool') and for a user's
    classifier whose last Dense layer has a softmax: logits are then log-probabilities,
    which differ from the true logits by a per-image constant and so give the same softmax,
    temperature scaling and energy ranking.
    """
    import keras

    names = {layer.name for layer in model.layers}
    if {"logits", "pool"} <= names:
        logits = model.get_layer("logits").output
        embedding = model.get_layer("pool").output
    else:
        dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
        if not dense:
            raise ValueError(f"model '{model.name}' has no Dense layer to take logits from")
        last = dense[-1]
        logits = last.output
        embedding = last.input
        if getattr(last.activation, "__name__", "") == "softmax":
            logits = keras.ops.log(keras.ops.maximum(last.output, 1e-12))
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, [logits, embedding])


class Predictor:
    """Batched, graph-compiled forward passes of one model; counts the images it has seen."""

    def __init__(self, model, *, batch_size: int = 64):
        import tensorflow as tf

        self.model = model
        self.batch_size = batch_size
        self.n_images = 0
        forward = forward_model(model)
        # One trace for every batch size: eager per-call overhead dominates on CPU.
        spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        self._run = tf.function(lambda x: forward(x, training=False), input_signature=[spec])

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits float64 (N, C), embeddings float32 (N, D)) for uint8 or float images."""
        import tensorflow as tf

        logits, embeddings = [], []
        for start in range(0, len(images), self.batch_size):
            chunk = tf.constant(np.asarray(images[start:start + self.batch_size]), tf.float32)
            lo, em = self._run(chunk)
            logits.append(lo.numpy().astype(np.float64))
            embeddings.append(em.numpy().astype(np.float32))
            self.n_images += int(chunk.shape[0])
        if not logits:
            raise ValueError("no images to predict")
        return np.concatenate(logits), np.concatenate(embeddings)

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.outputs(images)[0]

    def probs(self, images: np.ndarray) -> np.ndarray:
        return softmax(self.logits(images))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def cell_size_sample(dataset: Dataset, max_images: int) -> np.ndarray:
    """Bool per image: measure its cell size (see `compute_outputs`)."""
    from audit.sampling import stratified_subsample

    selected = np.zeros(len(dataset), bool)
    if max_images <= 0 or max_images >= len(dataset):
        selected[:] = True
        return selected
    seed = int.from_bytes(hashlib.sha256(dataset.fingerprint.encode()).digest()[:8], "little")
    selected[stratified_subsample(dataset.labels, max_images,
                                  rng=np.random.default_rng(seed))] = True
    return selected


def _cache_file(cache_dir: Path, model_hash: str, dataset: Dataset, image_size: int,
                cell_size_images: int) -> Path:
    key = hashlib.sha256(
        f"{CACHE_VERSION}|{model_hash}|{dataset.fingerprint}|{image_size}|{cell_size_images}"
        .encode()).hexdigest()[:32]
    return cache_dir / f"outputs-{key}.npz"


def compute_outputs(
    dataset: Dataset,
    *,
    predictor: Predictor,
    image_size: int,
    cache_dir: str | os.PathLike | None,
    model_hash: str,
    cell_size_images: int = 0,
) -> DatasetOutputs:
    """Outputs for every image of `dataset`, from the cache when present.

    The white-cell mask behind the cell_size property costs twice a forward pass per image,
    so with `cell_size_images` > 0 it is measured on a class-stratified sample of that many
    images, seeded by the dataset fingerprint (NaN elsewhere); 0 measures every image.
    """
    cache_path = None
    if cache_dir is not None:
        cache_path = _cache_file(Path(cache_dir), model_hash, dataset, image_size,
                                 cell_size_images)
        if cache_path.is_file():
            with np.load(cache_path) as data:
                props = {k[5:]: data[k] for k in data.files if k.startswith("prop_")}
                return DatasetOutputs(data["logits"], softmax(data["logits"]), data["embeddings"],
                                      props, data["phash"], from_cache=True)
    from audit.duplicates import dihedral_hashes
    from audit.imaging import image_properties, image_usability, source_sizes

    logits, embeddings, hashes, props = [], [], [], []
    measure_cell = cell_size_sample(dataset, cell_size_images)
    batch_size = predictor.batch_size
    batches = iter_batches(dataset, image_size=image_size, batch_size=batch_size)
    n_batches = -(-len(dataset) // batch_size)
    for images, indices in progress(batches, desc=f"predict {dataset.name}", total=n_batches,
                                    unit="batch"):
        lo, em = predictor.outputs(images)
        logits.append(lo)
        embeddings.append(em)
        hashes.append(dihedral_hashes(images))
        width, height = source_sizes([dataset.paths[i] for i in indices])
        props.append({**image_properties(images, cell_size=measure_cell[indices]),
                      **image_usability(images), "source_width": width, "source_height": height})
    logits_arr = np.concatenate(logits)
    outputs = DatasetOutputs(
        logits=logits_arr,
        probs=softmax(logits_arr),
        embeddings=np.concatenate(embeddings),
        properties={k: np.concatenate([p[k] for p in props]) for k in props[0]},
        phash=np.concatenate(hashes).astype(np.uint64),
    )
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_path, suffix=".npz") as tmp:
            np.savez(tmp, logits=outputs.logits, embeddings=outputs.embeddings,
                     phash=outputs.phash, **{f"prop_{k}": v for k, v in outputs.properties.items()})
    return outputs
