"""Nearest-neighbour search across sets: exact below a size, an approximate index above it.

Below `EXACT_MAX_PAIRS` query x reference pairs the search is the exact blocked one of
`audit.leakage.duplicates` (today's results, bit for bit). Above it, an all-pairs pass grows as N x M
(a million images against a million is 10^12 pairs of 1,280-dimension dot products), so the
search uses a FAISS HNSW graph (`faiss-cpu`, in the `cellaudit[ray]` extra): inner product
on unit vectors for embeddings, Hamming distance on the 64-bit pHash (FAISS binary index;
the query's 8 dihedral orientations are searched and the smallest distance kept, as the
exact search does). FAISS rather than hnswlib because it has both the float and the binary
(Hamming) index and was as fast and as accurate on embeddings (`bench/bench_neighbors.py`).

An approximate search may miss the true nearest image; its recall is measured on every
approximate search: the exact nearest of a seeded sample of `RECALL_SAMPLE` queries is
computed and the share whose approximate neighbour is as near (ties count) is reported, in
the leakage check's metrics (`neighbor_search`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audit import seeds
from audit.leakage.duplicates import (
    NO_MATCH_DISTANCE,
    nearest_embedding_matches,
    nearest_hash_matches,
    unit_rows,
)
from audit.sampling import subsample

__all__ = ["EXACT_MAX_PAIRS", "RECALL_SAMPLE", "SET_LEVEL_MAX_REFS", "Search", "nearest_cosine",
           "nearest_hamming"]

# 2^31 pairs: 46,000 x 46,000 images; the exact search takes ~a minute per such pair of sets
# of 1,280-d embeddings on 2 cores and a few MB of memory per block.
EXACT_MAX_PAIRS = 2**31
RECALL_SAMPLE = 1000
# The leakage set-level estimate scores each query against K references of its own class and
# K of another (`class_matched_nearest`): K is capped here, so its cost is at most queries x
# 5,000 similarities per signal. Today's sets have fewer references per class (kaggle TRAIN
# ~2,500, PBC ~2,100), so the cap changes nothing there. Above it a copy whose source is left
# out of the K is not seen: the estimate shrinks towards K / (references of the class) of
# the true share (measured in bench/bench_neighbors.py) - still a lower bound, but a looser one.
SET_LEVEL_MAX_REFS = 5000
_HNSW_M = 32
_EF_CONSTRUCTION = 80
_EF_SEARCH = 128


@dataclass(frozen=True)
class Search:
    """How one nearest-neighbour search was done: `exact`, or `approximate` with the recall
    at 1 measured on `n_recall` sampled queries."""

    method: str
    recall: float | None = None
    n_recall: int = 0

    def describe(self) -> dict:
        return {"method": self.method, "recall_at_1": self.recall, "n_recall": self.n_recall}


def _use_exact(n: int, m: int, exact_max_pairs: int) -> bool:
    return n * m <= exact_max_pairs


def _faiss():
    try:
        import faiss
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "nearest-neighbour search above the exact size needs faiss: pip install "
            "'cellaudit[ray]' (or faiss-cpu)") from exc
    return faiss


def _first_other(index: np.ndarray, score: np.ndarray, self_index: np.ndarray | None,
                 fill) -> tuple[np.ndarray, np.ndarray]:
    """Per row of (n, k) results, the first hit that is a real one and not the query itself."""
    ok = index >= 0
    if self_index is not None:
        ok &= index != self_index[:, None]
    first = np.where(ok.any(axis=1), ok.argmax(axis=1), -1)
    rows = np.arange(len(index))
    out_i = np.where(first >= 0, index[rows, np.maximum(first, 0)], -1)
    out_s = np.where(first >= 0, score[rows, np.maximum(first, 0)], fill)
    return out_i.astype(np.int64), out_s


def nearest_cosine(query: np.ndarray, ref: np.ndarray, *, exclude_self: bool = False,
                   exact_max_pairs: int = EXACT_MAX_PAIRS, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, Search]:
    """`nearest_embedding_matches` (index, cosine) and how it was searched."""
    n, m = len(query), len(ref)
    if _use_exact(n, m, exact_max_pairs) or m - exclude_self <= 0:
        index, cosine = nearest_embedding_matches(query, ref, exclude_self=exclude_self)
        return index, cosine, Search("exact")
    faiss = _faiss()
    ref_unit = unit_rows(ref)
    graph = faiss.IndexHNSWFlat(ref_unit.shape[1], _HNSW_M, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = _EF_CONSTRUCTION
    graph.add(ref_unit)
    graph.hnsw.efSearch = _EF_SEARCH
    index = np.empty(n, np.int64)
    cosine = np.empty(n)
    step = 16384  # queries normalised per block: no full copy of a large query set
    for start in range(0, n, step):
        q = unit_rows(query[start:start + step])
        sims, ids = graph.search(q, 2 if exclude_self else 1)
        own = np.arange(start, start + len(q)) if exclude_self else None
        i, s = _first_other(ids, sims, own, np.nan)
        index[start:start + len(q)], cosine[start:start + len(q)] = i, np.clip(s, -1, 1)
    sample = subsample(n, RECALL_SAMPLE, rng=seeds.rng(seed, "recall_sample"))
    exact = _exact_sample_cosine(query, ref, sample, exclude_self)
    hit = np.nan_to_num(cosine[sample], nan=-np.inf) >= exact - 1e-5
    return index, cosine, Search("approximate", float(hit.mean()), int(sample.size))


def _exact_sample_cosine(query, ref, sample, exclude_self) -> np.ndarray:
    """The exact nearest cosine of the sampled queries, references in blocks."""
    q = unit_rows(query[sample])
    best = np.full(len(sample), -np.inf)
    step = max(1, 2**22 // max(1, len(sample)))
    for start in range(0, len(ref), step):
        sims = q @ unit_rows(ref[start:start + step]).T
        if exclude_self:
            cols = sample - start
            rows = np.flatnonzero((cols >= 0) & (cols < sims.shape[1]))
            sims[rows, cols[rows]] = -np.inf
        best = np.maximum(best, sims.max(axis=1))
    return np.clip(best, -1, 1)


def nearest_hamming(query_hashes: np.ndarray, ref_hashes: np.ndarray, *,
                    exclude_self: bool = False, exact_max_pairs: int = EXACT_MAX_PAIRS,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, Search]:
    """`nearest_hash_matches` (index, distance) and how it was searched."""
    query = np.asarray(query_hashes)
    query = query[:, None] if query.ndim == 1 else query
    ref = np.asarray(ref_hashes)
    ref = ref[:, None] if ref.ndim == 1 else ref
    n, m = len(query), len(ref)
    if _use_exact(n, m * query.shape[1], exact_max_pairs) or m - exclude_self <= 0:
        index, distance = nearest_hash_matches(query_hashes, ref_hashes,
                                               exclude_self=exclude_self)
        return index, distance, Search("exact")
    faiss = _faiss()
    graph = faiss.IndexBinaryHNSW(64, _HNSW_M)
    graph.hnsw.efConstruction = _EF_CONSTRUCTION
    graph.add(_as_codes(ref[:, 0]))
    graph.hnsw.efSearch = _EF_SEARCH
    index = np.full(n, -1, np.int64)
    distance = np.full(n, NO_MATCH_DISTANCE, np.int64)
    own = np.arange(n) if exclude_self else None
    for k in range(query.shape[1]):  # the smallest distance over the query's orientations
        dist, ids = graph.search(_as_codes(query[:, k]), 2 if exclude_self else 1)
        i, d = _first_other(ids, dist.astype(np.int64), own, NO_MATCH_DISTANCE)
        better = (i >= 0) & (d < distance)
        index[better], distance[better] = i[better], d[better]
    sample = subsample(n, RECALL_SAMPLE, rng=seeds.rng(seed, "recall_sample"))
    _, exact = nearest_hash_matches(query[sample], ref, exclude_self=False) if not exclude_self \
        else _exact_self_sample(query, ref, sample)
    hit = distance[sample] <= exact
    return index, distance, Search("approximate", float(hit.mean()), int(sample.size))


def _exact_self_sample(query, ref, sample) -> tuple[None, np.ndarray]:
    from audit.leakage.duplicates import hash_distances

    out = np.empty(len(sample), np.int64)
    for row, i in enumerate(sample):
        d = hash_distances(query[i:i + 1], ref).astype(np.int64)[0]
        d[i] = 255
        out[row] = d.min()
    return None, out


def _as_codes(hashes: np.ndarray) -> np.ndarray:
    """(N,) uint64 hashes as the (N, 8) uint8 codes of a FAISS binary index."""
    return np.ascontiguousarray(np.asarray(hashes, np.uint64)).view(np.uint8).reshape(-1, 8)
