"""The Ray engine's outputs on the driver: one Parquet shard per returned block plus the rows
of a memory-mapped `embeddings.npy`, every image index exactly once, and reading a finished
shard folder back as `DatasetOutputs` (what the cache holds for a Ray run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["DONE_FILE", "ShardWriter", "read_shards", "check_once", "check_all"]

DONE_FILE = "done.json"  # written last: a shard folder without it is incomplete


def check_once(seen: np.ndarray, idx: np.ndarray) -> None:
    if seen[idx].any():
        raise RuntimeError(f"image index {int(idx[seen[idx]][0])} came back twice from the Ray "
                           "pipeline; outputs discarded")
    seen[idx] = True


def check_all(seen: np.ndarray) -> None:
    if not seen.all():
        raise RuntimeError(f"{int((~seen).sum())} image(s) never came back from the Ray pipeline "
                           f"(first index {int(np.flatnonzero(~seen)[0])}); outputs discarded")


def _column(values: np.ndarray):
    """A NumPy column as Arrow: 2-D arrays as fixed-size lists (plain Parquet, any reader)."""
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    if values.ndim == 1:
        return pa.array(values)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


class ShardWriter:
    """Parquet shard per block, embeddings into a memory map; every index exactly once.

    The embeddings go only into the memory map, which is what `read_shards` reads: a copy in
    the shards would never be read (5 KB per image for MobileNetV2, 5 GB per million)."""

    def __init__(self, folder: Path, n_images: int):
        self.folder, self.n = folder, n_images
        self.seen = np.zeros(n_images, bool)
        self.embeddings = None
        self.n_shards = 0

    def add(self, batch: dict) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        idx = np.asarray(batch["index"], np.int64)
        if idx.size == 0:
            return
        check_once(self.seen, idx)
        emb = np.asarray(batch["embeddings"], np.float32)
        if self.embeddings is None:
            self.embeddings = np.lib.format.open_memmap(
                self.folder / "embeddings.npy", mode="w+", dtype=np.float32,
                shape=(self.n, emb.shape[1]))
        self.embeddings[idx] = emb
        table = pa.table({k: _column(np.asarray(v)) for k, v in batch.items()
                          if k != "embeddings"})
        pq.write_table(table, self.folder / f"part-{int(idx.min()):010d}.parquet")
        self.n_shards += 1

    def close(self) -> None:
        check_all(self.seen)
        self.embeddings.flush()
        del self.embeddings
        (self.folder / DONE_FILE).write_text(json.dumps({"n_images": self.n,
                                                     "n_shards": self.n_shards}))


def read_shards(folder: Path, *, from_cache: bool, in_memory: bool = False):
    """`DatasetOutputs` from a shard folder (through `assemble_outputs`, like every cache):
    every column read into memory in image order, the embeddings memory-mapped
    (`in_memory`: copied)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from audit.inference import assemble_outputs

    folder = Path(folder)
    n = json.loads((folder / DONE_FILE).read_text())["n_images"]
    arrays: dict[str, np.ndarray] = {}
    for shard in sorted(folder.glob("part-*.parquet")):
        table = pq.read_table(shard)
        idx = table.column("index").to_numpy()
        for name in table.column_names:
            if name in ("index", "embeddings"):  # older caches also kept the embeddings here
                continue
            column = table.column(name).combine_chunks()
            if pa.types.is_fixed_size_list(column.type):
                values = column.flatten().to_numpy().reshape(len(column), column.type.list_size)
            else:
                values = column.to_numpy(zero_copy_only=False)
            if name not in arrays:
                arrays[name] = np.empty((n, *values.shape[1:]), values.dtype)
            arrays[name][idx] = values
    embeddings = np.load(folder / "embeddings.npy", mmap_mode="r")
    arrays["embeddings"] = np.array(embeddings) if in_memory else embeddings
    return assemble_outputs([arrays], from_cache=from_cache)
