"""One streamed pass per dataset: logits, probabilities, embeddings, image properties, hashes.

Everything the checks need from pixels is computed here once, batched, and cached on disk
under a key of model hash, dataset fingerprint and input contract: a second audit over the
same inputs does no model work and decodes no image.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit import seeds
from audit.atomic import OutputError, atomic_path
from audit.data import Dataset, iter_batches
from audit.progress import progress

__all__ = ["DatasetOutputs", "Predictor", "batch_outputs", "compute_outputs", "per_image_outputs",
           "assemble_outputs", "softmax",
           "cell_size_sample", "cache_key", "resolve_forward_batch", "CACHE_VERSION"]

CACHE_VERSION = "6"  # 5: usability properties and sizes on disk (safety flags); 6: the
# cell_size sample drawn through audit.seeds


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


class Predictor:
    """Batched, graph-compiled forward passes of one model through its input contract;
    counts the images it has seen.

    `model` is a `model.loaded.LoadedModel` (or a Keras model whose scaling its graph shows);
    images are RGB uint8 (or float 0-255) at the contract's input size, decoded by
    `audit.data` with the contract's `resize`: `LoadedModel.forward` applies the channel order
    and scaling, so no caller can feed the model any other way.
    """

    def __init__(self, model, *, batch_size: int = 64, forward_batch: int = 0):

        from model.loaded import as_loaded

        self.loaded = as_loaded(model)
        self.model = self.loaded.keras_model
        self.contract = self.loaded.contract
        self.batch_size = batch_size
        self.forward_batch = resolve_forward_batch(forward_batch, self.contract.input_size,
                                                   batch_size, views=self.contract.views)
        self.n_images = 0
        # One trace for every batch size, shared by every Predictor of this model: eager
        # per-call overhead dominates on CPU.
        self._run = self.loaded.compiled_forward()

    @property
    def image_size(self) -> int:
        return self.contract.input_size

    @property
    def resize(self) -> str:
        return self.contract.resize

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits float64 (N, C), embeddings float32 (N, D)) for uint8 or float images."""
        import tensorflow as tf

        images = np.asarray(images)
        size = self.contract.input_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(f"images must have shape (N, {size}, {size}, 3) for this model, "
                             f"received {images.shape}")
        logits, embeddings = [], []
        for start in range(0, len(images), self.forward_batch):
            chunk = tf.constant(images[start:start + self.forward_batch], tf.float32)
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


# Images per model call on a CPU: about this many pixels. A 2-core EPYC (32 MB L3) ran a
# MobileNetV2 fastest at 4-6 images of 224 px, 8-12 of 160, 16 of 128, 32 of 96 and 64 of 64 px,
# all near 2^18 pixels, and twice as fast per image at 224 px as in calls of 64 images: larger
# calls spill the activations out of cache (bench/bench_forward_batch.py reruns this).
PIXELS_PER_CALL = 2 ** 18


def resolve_forward_batch(requested: int, input_size: int, batch_size: int, *,
                          views: str = "single") -> int:
    """Images per model call: `requested` if > 0, else the CPU rule above (a GPU takes the
    whole batch); never more than `batch_size`, which bounds the memory of a call. A model
    with test-time views makes one call per view (`model.views.map_views`), each as large as
    without views; on a GPU, whose graph may hold every view's activations at once, the
    whole batch is divided by the number of views.

    Outputs differ between call sizes by float rounding (about 1e-6 in a logit), so the size is
    a setting recorded in audit.json, not something timed at run time."""
    from model.views import view_count

    if requested > 0:
        return max(1, min(int(requested), int(batch_size)))
    if _has_gpu():
        return max(1, int(batch_size) // view_count(views))
    return max(1, min(int(batch_size), round(PIXELS_PER_CALL / input_size ** 2)))


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


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
    # Named by the dataset's fingerprint under a fixed seed 0, not the audit seed: the sample is
    # part of the cached per-image outputs, whose cache key holds no audit seed.
    selected[stratified_subsample(dataset.labels, max_images,
                                  rng=seeds.rng(0, "cell_size", dataset.fingerprint))] = True
    return selected


def per_image_outputs(predictor: Predictor, images: np.ndarray, *,
                      measure_cell: np.ndarray) -> dict[str, np.ndarray]:
    """Everything computed from one decoded batch: the unit of work of every engine (local
    threads here, Ray Data workers in a cluster), so that both give the same numbers.

    {"logits" (B, C) float64, "embeddings" (B, D) float32, "phash" (B, 8) uint64,
     "prop_<name>" (B,) per image property}; `measure_cell` (B,) bool: where to measure the
    cell size (its mask costs about a forward pass).
    """
    from audit.imaging import image_properties, image_usability
    from audit.leakage.duplicates import dihedral_hashes

    logits, embeddings = predictor.outputs(images)
    properties = {**image_properties(images, cell_size=measure_cell), **image_usability(images)}
    return {"logits": logits, "embeddings": embeddings,
            "phash": dihedral_hashes(images).astype(np.uint64),
            **{f"prop_{k}": v for k, v in properties.items()}}


def batch_outputs(predictor: Predictor, images: np.ndarray, paths: Sequence,
                  *, measure_cell: np.ndarray, sizes: np.ndarray | None = None) -> dict:
    """`per_image_outputs` of one decoded batch plus each file's size on disk (lost once the
    image is resized): `sizes` (B, 2) as the dataset scan read them from the headers
    (`Dataset.sizes`), else read from the headers here. Every engine goes through here, so a
    new per-image property reaches them all."""
    from audit.imaging import source_sizes

    if sizes is None:
        width, height = source_sizes(paths)
    else:
        sizes = np.asarray(sizes, dtype=np.int64).reshape(len(paths), 2)
        width, height = sizes[:, 0], sizes[:, 1]
    return {**per_image_outputs(predictor, images, measure_cell=measure_cell),
            "prop_source_width": width, "prop_source_height": height}


def assemble_outputs(parts: list[dict[str, np.ndarray]], *, from_cache: bool = False
                     ) -> DatasetOutputs:
    """`DatasetOutputs` from per-batch results (or one dict of whole arrays, used as is: a
    memory-mapped array stays one), in order. Every engine and cache reader ends here."""
    arrays = parts[0] if len(parts) == 1 else {
        k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return DatasetOutputs(
        logits=arrays["logits"], probs=softmax(arrays["logits"]),
        embeddings=arrays["embeddings"],
        properties={k[5:]: v for k, v in arrays.items() if k.startswith("prop_")},
        phash=arrays["phash"].astype(np.uint64), from_cache=from_cache)


def cache_key(predictor: Predictor, dataset: Dataset, cell_size_images: int) -> str:
    """The name of one dataset's outputs in the cache, the same for every engine."""
    contract = predictor.contract
    # Everything that changes what the model sees or returns is in the key.
    return hashlib.sha256("|".join(map(str, (
        CACHE_VERSION, predictor.loaded.sha256, dataset.fingerprint, contract.input_size,
        contract.resize, contract.preprocess, contract.channel_order, contract.output,
        contract.views, cell_size_images, predictor.forward_batch))).encode()).hexdigest()[:32]


def _cache_file(cache_dir: Path, predictor: Predictor, dataset: Dataset,
                cell_size_images: int) -> Path:
    return cache_dir / f"outputs-{cache_key(predictor, dataset, cell_size_images)}.npz"


_CACHE_KEYS = ("logits", "embeddings", "phash")


def _read_cache(path: Path, n_images: int) -> DatasetOutputs | None:
    """The cached outputs, or None (with a warning) when the file is truncated, corrupt
    (zip CRC, unreadable arrays) or does not fit the dataset: it is then recomputed."""
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}  # reading checks every member's CRC
        if not set(_CACHE_KEYS) <= set(arrays) or any(
                len(v) != n_images for v in arrays.values()):
            raise ValueError("arrays missing or of the wrong length")
        if not np.all(np.isfinite(arrays["logits"])):
            raise ValueError("non-finite logits")
        return assemble_outputs([arrays], from_cache=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read means: do not trust it
        warnings.warn(f"cache file '{path}' is unreadable or corrupt ({type(exc).__name__}: "
                      f"{exc}); recomputing it", stacklevel=3)
        return None


def compute_outputs(
    dataset: Dataset,
    *,
    predictor: Predictor,
    cache_dir: str | os.PathLike | None,
    cell_size_images: int = 0,
) -> DatasetOutputs:
    """Outputs for every image of `dataset`, from the cache when present.

    The white-cell mask behind the cell_size property costs about a forward pass per image,
    so with `cell_size_images` > 0 it is measured on a class-stratified sample of that many
    images, seeded by the dataset fingerprint (NaN elsewhere); 0 measures every image.
    """
    cache_path = None
    if cache_dir is not None:
        cache_path = _cache_file(Path(cache_dir), predictor, dataset, cell_size_images)
        if cache_path.is_file():
            cached = _read_cache(cache_path, len(dataset))
            if cached is not None:
                return cached
    measure_cell = cell_size_sample(dataset, cell_size_images)
    batch_size = predictor.batch_size
    batches = iter_batches(dataset, image_size=predictor.image_size, resize=predictor.resize,
                           batch_size=batch_size)
    n_batches = -(-len(dataset) // batch_size)
    parts = []
    for images, indices in progress(batches, desc=f"predict {dataset.name}", total=n_batches,
                                    unit="batch"):
        parts.append(batch_outputs(predictor, images, [dataset.paths[i] for i in indices],
                                   measure_cell=measure_cell[indices],
                                   sizes=None if dataset.sizes is None else dataset.sizes[indices]))
    outputs = assemble_outputs(parts)
    if cache_path is not None:
        try:
            with atomic_path(cache_path, suffix=".npz") as tmp:
                np.savez(tmp, logits=outputs.logits, embeddings=outputs.embeddings,
                         phash=outputs.phash,
                         **{f"prop_{k}": v for k, v in outputs.properties.items()})
        except OutputError as exc:  # the cache only saves time: the audit goes on without it
            warnings.warn(f"outputs of {dataset.name} not cached: {exc}", stacklevel=2)
    return outputs
