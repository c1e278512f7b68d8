"""The Ray engine: the per-image pass as a Ray Data pipeline, on one machine or a cluster.

    driver: Dataset (paths, labels)  ->  rows of one batch each (first index, paths, where to
            measure the cell size)  ->  ray.data.from_arrow
    workers: map_batches(_ImagePass, concurrency=N)  - an actor per worker loads the model
            once (bytes shipped through the object store, so workers need no shared copy of
            the model file), decodes its batch with `audit.data.read_images` at the
            contract's size and resize, and returns `audit.inference.batch_outputs`
    driver: each returned block is written as one Parquet shard (every output but the
            embeddings, with the image index) plus its rows of a memory-mapped
            `embeddings.npy` (the embeddings' only copy), in a staging folder renamed into the
            cache when every image came back exactly once (`audit.engines.shards`).

A batch of the Ray pipeline is the local engine's batch (`batch_size` images from the same
first index), so every image goes through the same forward pass in the same company and both
engines give identical numbers. Ray restarts a worker that dies and retries its batch
(`max_restarts=-1`, `max_task_retries=-1`, Ray Data's defaults for actor pools); the driver
checks that every index arrives exactly once and fails loudly otherwise.

Files are checked (`scan`) by Ray tasks with the very function the local engine uses, so the
same files are skipped with the same reasons. Images must be readable by the workers at the
paths the driver lists (local disk for a local instance, shared storage on a cluster); the
cache stays on the driver.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from audit.engines.shards import DONE_FILE, ShardWriter, check_all, check_once, read_shards
from audit.errors import UsageError

__all__ = ["RayEngine", "SHARD_FOLDER_SUFFIX"]

SHARD_FOLDER_SUFFIX = ".ray"
_SCAN_BLOCK = 256            # paths per scan task


def _require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ModuleNotFoundError as exc:
        raise UsageError("--engine ray needs Ray Data, which is not installed: "
                         "pip install 'cellaudit[ray]'") from exc
    return ray


class RayEngine:
    """`address`: None starts a local Ray instance (`workers` CPUs, else this machine's);
    'auto' joins the cluster this machine belongs to; 'ray://HOST:PORT' connects through Ray
    Client. An instance already started in this process (e.g. by a notebook) is used as is.
    `workers`: actors running the model (default: the cluster's CPUs divided by the CPUs a
    worker takes, 1); `gpus_per_worker`: GPUs reserved for each."""

    name = "ray"

    def __init__(self, *, address: str | None = None, workers: int | None = None,
                 gpus_per_worker: float = 0.0):
        if workers is not None and workers < 1:
            raise UsageError(f"--workers {workers}: expected a positive number of workers")
        if gpus_per_worker < 0:
            raise UsageError(f"--gpus-per-worker {gpus_per_worker}: expected 0 or more")
        if address is not None and not (address == "auto" or address.startswith("ray://")):
            raise UsageError(f"--ray-address '{address}': expected 'auto' or ray://HOST:PORT")
        self.address = address
        self.workers = workers
        self.gpus_per_worker = float(gpus_per_worker)
        self._started = False
        self._worker_class = _ImagePass  # tests substitute a subclass that dies mid-run

    # -- the Ray instance ------------------------------------------------------------------
    def _ray(self):
        ray = _require_ray()
        if not ray.is_initialized():
            # Worker logs stay in Ray's session folder; a worker's error reaches the driver
            # as an exception all the same.
            kwargs = {"include_dashboard": False, "logging_level": "ERROR",
                      "log_to_driver": False,
                      "runtime_env": {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}}}
            try:
                if self.address is None:
                    ray.init(num_cpus=self.workers or os.cpu_count() or 1, **kwargs)
                    self._started = True
                else:
                    ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UsageError(f"--ray-address '{self.address}': cannot start or join Ray "
                                 f"({exc})") from exc
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = sys.stderr.isatty()
        context.verbose_stats_logs = False
        if not sys.stderr.isatty():  # Ray Data's per-pipeline INFO lines: only on a terminal
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        return ray

    def _n_workers(self, ray) -> int:
        if self.workers is not None:
            return self.workers
        resources = ray.cluster_resources()
        n = int(resources.get("CPU", 1))
        if self.gpus_per_worker > 0:
            n = min(n, int(resources.get("GPU", 0) // self.gpus_per_worker))
        return max(n, 1)

    def describe(self) -> dict:
        out = {"name": self.name, "address": self.address or "local",
               "workers": self.workers, "gpus_per_worker": self.gpus_per_worker}
        try:
            import ray

            out["ray_version"] = ray.__version__
            if ray.is_initialized():
                out["workers"] = self._n_workers(ray)
        except ModuleNotFoundError:
            pass
        return out

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    # -- the work --------------------------------------------------------------------------
    def scan(self, paths: Sequence[str]) -> list[tuple[str | None, tuple[int, int] | None]]:
        import pyarrow as pa

        ray = self._ray()
        if not paths:
            return []
        blocks = [pa.table({"index": np.arange(s, min(s + _SCAN_BLOCK, len(paths))),
                            "path": list(paths[s:s + _SCAN_BLOCK])})
                  for s in range(0, len(paths), _SCAN_BLOCK)]
        ds = ray.data.from_arrow(blocks).map_batches(_scan_batch, batch_size=None,
                                                     batch_format="numpy")
        scanned: list = [(None, None)] * len(paths)
        seen = np.zeros(len(paths), bool)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            idx = np.asarray(batch["index"], np.int64)
            check_once(seen, idx)
            for i, reason, w, h in zip(idx, batch["reason"], batch["width"], batch["height"],
                                       strict=True):
                scanned[i] = (str(reason) or None, (int(w), int(h)) if w >= 0 else None)
        check_all(seen)
        return scanned

    def outputs(self, datasets: dict, *, predictor, cache_dir, cell_size_images: int) -> dict:
        """Every set through one pipeline, so each worker loads the model once per audit."""
        from audit.inference import cache_key, cell_size_sample

        results, todo = {}, {}
        for name, dataset in datasets.items():
            folder = None
            if cache_dir is not None:
                key = cache_key(predictor, dataset, cell_size_images)
                folder = Path(cache_dir) / f"outputs-{key}{SHARD_FOLDER_SUFFIX}"
                if (folder / DONE_FILE).is_file():
                    results[name] = read_shards(folder, from_cache=True)
                    continue
            todo[name] = (dataset, folder, cell_size_sample(dataset, cell_size_images))
        if not todo:
            return results
        parent = Path(cache_dir) if cache_dir is not None else None
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        staging = {name: Path(tempfile.mkdtemp(prefix=".outputs-", dir=parent)) for name in todo}
        try:
            self._run_pass(todo, predictor, staging)
            for name, (_, folder, _) in todo.items():
                if folder is None:
                    results[name] = read_shards(staging[name], from_cache=False, in_memory=True)
                    continue
                if folder.exists():  # an interrupted run's leftovers: never mixed with new
                    shutil.rmtree(folder)
                os.replace(staging[name], folder)
                results[name] = read_shards(folder, from_cache=False)
        finally:
            for path in staging.values():
                shutil.rmtree(path, ignore_errors=True)
        return {name: results[name] for name in datasets}

    def _run_pass(self, todo: dict, predictor, staging: dict) -> None:
        import pyarrow as pa

        from audit.progress import progress, status

        ray = self._ray()
        size = predictor.batch_size
        status("predicting " + ", ".join(f"{name} ({len(todo[name][0])} images)" for name in todo)
               + f" on Ray ({self._n_workers(ray)} workers)")
        names = list(todo)
        # One row per batch of the local engine (same first index, same images together):
        # one row per block, so every batch can go to any worker.
        # The sizes on disk the scan read (`Dataset.sizes`) travel with the paths, so workers
        # do not open the headers again (None: the worker reads them).
        blocks = [pa.Table.from_pylist([{"set": k, "start": s,
                                         "paths": list(dataset.paths[s:s + size]),
                                         "measure": measure[s:s + size].tolist(),
                                         "sizes": None if dataset.sizes is None
                                         else dataset.sizes[s:s + size].reshape(-1).tolist()}])
                  for k, (dataset, _, measure) in enumerate(todo.values())
                  for s in range(0, len(dataset), size)]
        with tempfile.TemporaryDirectory() as tmp:
            model = self._model_source(ray, predictor.loaded, Path(tmp))
            ds = ray.data.from_arrow(blocks).map_batches(
                self._worker_class, batch_size=1, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=min(self._n_workers(ray), len(blocks))),
                num_cpus=1, num_gpus=self.gpus_per_worker or None,
                fn_constructor_kwargs={"model": model,
                                       "contract": _contract_fields(predictor.contract),
                                       "batch_size": size,
                                       "forward_batch": predictor.forward_batch})
            writers = [ShardWriter(staging[name], len(todo[name][0])) for name in names]
            desc = f"predict {', '.join(names)} (ray)"
            for batch in progress(ds.iter_batches(batch_size=None, batch_format="numpy"),
                                  desc=desc, total=len(blocks), unit="batch"):
                sets = np.asarray(batch.pop("set"))
                for k in np.unique(sets):
                    rows = sets == k
                    writers[int(k)].add({c: np.asarray(v)[rows] for c, v in batch.items()})
            for writer in writers:
                writer.close()

    def _model_source(self, ray, loaded, tmp: Path) -> dict:
        """How workers get the model: its path on a local instance (the workers share this
        machine's disk), its bytes through the object store on a cluster."""
        local = self.address is None
        if loaded.path is not None and local:
            return {"path": loaded.path}
        if loaded.path is None:
            if loaded.keras_model is None:
                raise UsageError("--engine ray: this in-memory model cannot be saved for the "
                                 "workers")
            path = tmp / "model.keras"
            loaded.keras_model.save(path)
            if local:
                return {"path": str(path)}
        else:
            path = Path(loaded.path)
        blob, name = _model_blob(path)
        return {"blob": [ray.put(blob)], "name": name}


# -- workers ---------------------------------------------------------------------------------

def _scan_batch(batch: dict) -> dict:
    from audit.data import scan_files

    scanned = scan_files([str(p) for p in batch["path"]], max_workers=2)
    return {"index": batch["index"],
            "reason": np.array([r or "" for r, _ in scanned], object),
            "width": np.array([size[0] if size else -1 for _, size in scanned], np.int64),
            "height": np.array([size[1] if size else -1 for _, size in scanned], np.int64)}


class _ImagePass:
    """One Ray actor: the model loaded once, then one batch of images per call."""

    def __init__(self, *, model: dict, contract: dict, batch_size: int, forward_batch: int):
        from audit.inference import Predictor
        from model.contract import InputContract
        from model.loaded import ContractOptions, load_model

        if "path" in model:
            path = model["path"]
        else:
            import ray

            self._dir = tempfile.mkdtemp(prefix="cellaudit-model-")
            path = _unpack_model(ray.get(model["blob"][0]), model["name"], Path(self._dir))
        loaded = load_model(path, ContractOptions(
            classes=tuple(contract["class_names"]), input_size=contract["input_size"],
            preprocess=contract["preprocess"], resize=contract["resize"],
            channel_order=contract["channel_order"], views=contract["views"]))
        expected = InputContract(**{**contract, "class_names": tuple(contract["class_names"])})
        if loaded.contract != expected:
            raise RuntimeError(f"the worker resolved another input contract "
                               f"({loaded.contract.summary()}) than the driver "
                               f"({expected.summary()})")
        self.predictor = Predictor(loaded, batch_size=batch_size, forward_batch=forward_batch)

    def __call__(self, batch: dict) -> dict:
        from audit.data import read_images
        from audit.inference import batch_outputs

        (k,), (start,) = batch["set"], batch["start"]
        (paths,), (measure,), (sizes,) = batch["paths"], batch["measure"], batch["sizes"]
        paths = [str(p) for p in paths]
        images = read_images(paths, self.predictor.image_size, resize=self.predictor.resize)
        out = batch_outputs(self.predictor, images, paths, measure_cell=np.asarray(measure, bool),
                            sizes=None if sizes is None else np.asarray(sizes, np.int64))
        return {"set": np.full(len(paths), k), "index": np.arange(
            int(start), int(start) + len(paths), dtype=np.int64), **out}

    def __del__(self):
        shutil.rmtree(getattr(self, "_dir", ""), ignore_errors=True)


def _contract_fields(contract) -> dict:
    """Every field of the contract (not where each came from), as plain values for a worker."""
    from dataclasses import fields

    out = {f.name: getattr(contract, f.name) for f in fields(contract) if f.name != "sources"}
    return out | {"class_names": list(contract.class_names)}


def _model_blob(path: Path) -> tuple[bytes, str]:
    """(the model as bytes, its file name; "" for a zipped SavedModel folder)."""
    if path.is_file():  # Keras reads by extension: keep the name
        return path.read_bytes(), path.name
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for item in sorted(path.rglob("*")):
            if item.is_file():
                archive.write(item, item.relative_to(path).as_posix())
    return buffer.getvalue(), ""


def _unpack_model(blob: bytes, name: str, where: Path) -> Path:
    if name:
        path = where / name
        path.write_bytes(blob)
        return path
    path = where / "saved_model"
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        archive.extractall(path)
    return path
