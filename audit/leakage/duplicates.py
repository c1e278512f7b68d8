"""Near-duplicate images: perceptual-hash and embedding matches within a set and across sets.

Blood-cell datasets are often built by augmenting a few hundred crops (rotations, flips,
shifts, shear), so one cell appears many times, sometimes on both sides of a split. A plain
pHash changes completely under a 90-degree rotation or a flip, so each image is hashed in
its 8 dihedral orientations (`dihedral_hashes`); the distance from a query to a reference
image is the smallest over the query's orientations against the reference as it is.
pHash finds re-encoded, resized, recoloured, rotated-by-90 and mirrored copies; it does not
survive crops, shifts or small rotations (see `DEFAULT_MAX_DISTANCE`), which embedding
similarity covers in part.

Everything is chunked so 20,000 x 20,000 comparisons stay within a few tens of MB.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from audit.data import Dataset, iter_batches
from audit.imaging import hamming_distance_matrix, hash_thumbnail, hash_thumbnails

__all__ = [
    "DEFAULT_MAX_DISTANCE",
    "NO_MATCH_DISTANCE",
    "N_DIHEDRAL",
    "dihedral_transforms",
    "dihedral_hashes",
    "nearest_hash_matches",
    "hash_distances",
    "nearest_embedding_matches",
    "unit_rows",
    "hash_pairs",
    "clusters_from_pairs",
    "near_duplicate_clusters",
    "file_digests",
    "exact_matches",
    "Matches",
    "find_matches",
    "near_duplicate_groups",
]

# The threshold, measured (dihedral-minimum distance, 224 px; 64 px hashes differ from 224 px
# ones by 0 bits at the median and 2 at the 99th percentile):
# - what it catches (200 PBC images, distance to their own original, median / 99th pct):
#   JPEG q60 0/2, half resolution 0/2, saturation +30% 0/2, brightness +15% 2/6, 90-degree
#   rotation 0/2, mirror 0/0. What it misses: a 5% crop 10/16, 5% shift 12/20, 5-degree
#   rotation 12/20 - so augmented copies (kaggle_bloodcells TEST vs the TEST_SIMPLE cells
#   they come from, verified by ORB keypoint matching) lie at median 26, no nearer than
#   unrelated cells; those are left to embedding similarity.
# - false matches: share of images whose nearest *unrelated* image lies within t bits:
#       t =               4       6       8      10
#   PBC (2,400, within)   0.04%   0.04%   0.8%   20%
#   kaggle TEST->TRAIN    0.08%   1.9%    11%    38%   (disjoint cells, 2,000 references)
# Smear crops are alike at low frequencies, so unrelated images lie only ~12 bits apart
# (median nearest): 4 bits keeps false matches below 0.1%.
DEFAULT_MAX_DISTANCE = 4
NO_MATCH_DISTANCE = 65  # "farther than any pair": the distance reported when there is no reference
N_DIHEDRAL = 8
_BLOCK_ELEMENTS = 2**22  # query rows x reference columns per block (~4 MB of uint8 distances)


def dihedral_transforms(images: np.ndarray) -> list[np.ndarray]:
    """The 8 rotations (0, 90, 180, 270 degrees) of the images and of their mirror images,
    identity first, as contiguous (N, S, S, 3) batches (images must be square)."""
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be square (N, S, S, C) batches, got shape {images.shape}")
    mirrored = images[:, :, ::-1]
    return [np.ascontiguousarray(np.rot90(base, k, axes=(1, 2)))
            for base in (images, mirrored) for k in range(4)]


def dihedral_hashes(images: np.ndarray) -> np.ndarray:
    """(N, 8) uint64 pHashes of each image's 8 orientations; column 0 is `perceptual_hash`.

    The orientations are taken of the 32x32 hash thumbnail rather than of the image: one
    resize per image instead of eight (15x faster at 224 px). Lanczos resampling is symmetric,
    so this equals hashing the turned image up to the thumbnail's 8-bit round-off (a bit or
    two in a few percent of the hashes, far below the match threshold).
    """
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be square (N, S, S, C) batches, got shape {images.shape}")
    small = hash_thumbnail(images)
    return np.stack([hash_thumbnails(t[..., 0]) for t in dihedral_transforms(small[..., None])], axis=1)


def _hash_table(hashes: np.ndarray, name: str) -> np.ndarray:
    """(N,) or (N, K) hashes as (N, K) uint64."""
    arr = np.asarray(hashes)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or not (arr.dtype.kind in "ui" or arr.size == 0):
        raise ValueError(f"{name} must be (N,) or (N, K) integer hashes, got dtype {arr.dtype} "
                         f"shape {np.shape(hashes)}")
    return arr.astype(np.uint64)


def _distance_block(query: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(len(query), len(ref)) uint8: the smallest distance over the query's K orientations."""
    best = None
    for k in range(query.shape[1]):
        xor = query[:, k, None] ^ ref[None, :]
        if hasattr(np, "bitwise_count"):  # numpy >= 2: a popcount instruction, ~20x faster
            dist = np.bitwise_count(xor)
        else:
            dist = hamming_distance_matrix(query[:, k], ref).astype(np.uint8)
        best = dist if best is None else np.minimum(best, dist, out=best)
    return best


def _blocks(n_query: int, n_ref: int, n_orient: int = 1):
    step = max(1, _BLOCK_ELEMENTS // max(1, n_ref * n_orient))
    for start in range(0, n_query, step):
        yield start, min(start + step, n_query)


def _check_self(n_query: int, n_ref: int, exclude_self: bool) -> None:
    if exclude_self and n_query != n_ref:
        raise ValueError(f"exclude_self compares a set with itself: query and reference must have "
                         f"the same length, got {n_query} and {n_ref}")


def nearest_hash_matches(query_hashes: np.ndarray, ref_hashes: np.ndarray, *,
                         exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the nearest reference image by Hamming distance: (index, distance).

    `query_hashes` (N,) or (N, K): with K orientations (`dihedral_hashes`) the smallest
    distance over them counts. `ref_hashes` (M,) or (M, K): only column 0 (as is) is used.
    `exclude_self`: query and reference are one set; an image never matches itself.
    Without any reference: index -1, distance `NO_MATCH_DISTANCE`.
    """
    query, ref = _hash_table(query_hashes, "query_hashes"), _hash_table(ref_hashes, "ref_hashes")[:, 0]
    n, m = len(query), len(ref)
    _check_self(n, m, exclude_self)
    index = np.full(n, -1, dtype=np.int64)
    distance = np.full(n, NO_MATCH_DISTANCE, dtype=np.int64)
    if m - exclude_self <= 0:
        return index, distance
    for start, stop in _blocks(n, m, query.shape[1]):
        block = _distance_block(query[start:stop], ref)
        if exclude_self:
            rows = np.arange(stop - start)
            block[rows, rows + start] = 255
        index[start:stop] = block.argmin(axis=1)
        distance[start:stop] = block[np.arange(stop - start), index[start:stop]]
    return index, distance


def hash_distances(query_hashes: np.ndarray, ref_hashes: np.ndarray) -> np.ndarray:
    """(N, M) uint8 distances, the smallest over the query's orientations against reference
    column 0 (as `nearest_hash_matches`), in one block: the caller chunks."""
    query, ref = _hash_table(query_hashes, "query_hashes"), _hash_table(ref_hashes, "ref_hashes")
    return _distance_block(query, ref[:, 0]).astype(np.uint8)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32; a zero row stays zero (cosine 0 with
    everything). The one normalisation behind every cosine of embeddings or visual words."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def nearest_embedding_matches(query_emb: np.ndarray, ref_emb: np.ndarray, *,
                              exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the reference with the highest cosine similarity: (index, cosine).

    A zero vector has cosine 0 with everything. Without any reference: index -1, cosine NaN.
    """
    query, ref = unit_rows(query_emb), unit_rows(ref_emb)
    n, m = len(query), len(ref)
    _check_self(n, m, exclude_self)
    index = np.full(n, -1, dtype=np.int64)
    cosine = np.full(n, np.nan)
    if m - exclude_self <= 0:
        return index, cosine
    for start, stop in _blocks(n, m):
        sims = query[start:stop] @ ref.T
        if exclude_self:
            rows = np.arange(stop - start)
            sims[rows, rows + start] = -np.inf
        index[start:stop] = sims.argmax(axis=1)
        cosine[start:stop] = np.clip(sims[np.arange(stop - start), index[start:stop]], -1, 1)
    return index, cosine


def hash_pairs(hashes: np.ndarray, *, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j), i != j, of one set within `max_distance` (either direction counts)."""
    table = _hash_table(hashes, "hashes")
    ref = table[:, 0]
    rows, cols = [], []
    for start, stop in _blocks(len(table), len(table), table.shape[1]):
        block = _distance_block(table[start:stop], ref)
        i, j = np.nonzero(block <= max_distance)
        keep = i + start != j
        rows.append(i[keep] + start)
        cols.append(j[keep])
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64)


def clusters_from_pairs(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Cluster id per item (0..k-1): connected components of the pairs, numbered in order of
    each cluster's first item, so ids are stable for the same input."""
    if n == 0:
        return np.empty(0, np.int64)
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=True, connection="weak")
    _, first = np.unique(labels, return_index=True)
    renumber = np.empty(len(first), np.int64)
    renumber[np.argsort(np.argsort(first))] = np.arange(len(first))
    return renumber[labels]


def near_duplicate_clusters(hashes: np.ndarray, *, max_distance: int = DEFAULT_MAX_DISTANCE
                            ) -> np.ndarray:
    """Cluster id per image: connected components of the graph of near-copy pairs.

    Copies of one cell chain together even when two augmentations are farther apart than
    `max_distance`, as long as a path of near copies links them.
    """
    i, j = hash_pairs(hashes, max_distance=max_distance)
    return clusters_from_pairs(len(np.asarray(hashes)), i, j)


def file_digests(paths: list[str] | tuple[str, ...]) -> list[str | None]:
    """SHA-1 of each file's bytes (byte-identical copies share it); None when unreadable."""
    out: list[str | None] = []
    for path in paths:
        try:
            with open(path, "rb") as fh:
                out.append(hashlib.sha1(fh.read()).hexdigest())
        except OSError:
            out.append(None)
    return out


def exact_matches(query: list[str | None], ref: list[str | None], *, exclude_self: bool = False
                  ) -> np.ndarray:
    """Index of a byte-identical reference file per query digest (-1: none; None never
    matches). `exclude_self`: one set, so an image is not its own copy."""
    where: dict[str, list[int]] = {}
    for j, digest in enumerate(ref):
        if digest is not None:
            where.setdefault(digest, []).append(j)
    out = np.full(len(query), -1, dtype=np.int64)
    for i, digest in enumerate(query):
        candidates = [j for j in where.get(digest, []) if not (exclude_self and j == i)] \
            if digest is not None else []
        if candidates:
            out[i] = candidates[0]
    return out


@dataclass(frozen=True)
class Matches:
    """The nearest reference image of every query image by each criterion, and the verdict."""

    hash_index: np.ndarray
    hash_distance: np.ndarray
    embedding_index: np.ndarray
    cosine: np.ndarray        # NaN without embeddings
    exact_index: np.ndarray   # -1: no byte-identical file
    max_hash_distance: int
    cosine_min: float         # inf: embeddings not used

    @property
    def by_hash(self) -> np.ndarray:
        return self.hash_distance <= self.max_hash_distance

    @property
    def by_embedding(self) -> np.ndarray:
        return np.nan_to_num(self.cosine, nan=-np.inf) >= self.cosine_min

    @property
    def near_copy(self) -> np.ndarray:
        return (self.exact_index >= 0) | self.by_hash | self.by_embedding

    @property
    def match_index(self) -> np.ndarray:
        """The reference image each copy matches (exact, else by hash, else by embedding);
        -1 for images without a copy."""
        index = np.where(self.by_hash, self.hash_index, self.embedding_index)
        index = np.where(self.exact_index >= 0, self.exact_index, index)
        return np.where(self.near_copy, index, -1)

    def clusters(self) -> np.ndarray:
        """For a set matched against itself: cluster ids linking every copy to its match."""
        copies = np.flatnonzero(self.near_copy)
        return clusters_from_pairs(len(self.near_copy), copies, self.match_index[copies])


def find_matches(query_hashes: np.ndarray, ref_hashes: np.ndarray, *,
                 query_digests: list[str | None], ref_digests: list[str | None],
                 query_embeddings: np.ndarray | None = None,
                 ref_embeddings: np.ndarray | None = None,
                 max_hash_distance: int = DEFAULT_MAX_DISTANCE, cosine_min: float = np.inf,
                 same_set: bool = False, nearest: dict | None = None) -> Matches:
    """Near-copies of the query images among the reference images (`same_set`: one set).

    `nearest`: {"hash": (index, distance), "embedding": (index, cosine)} already computed by
    `nearest_hash_matches` / `nearest_embedding_matches` with the same `exclude_self`."""
    nearest = nearest or {}
    h_index, h_dist = nearest.get("hash") or nearest_hash_matches(
        query_hashes, ref_hashes, exclude_self=same_set)
    if query_embeddings is not None and ref_embeddings is not None:
        e_index, cosine = nearest.get("embedding") or nearest_embedding_matches(
            query_embeddings, ref_embeddings, exclude_self=same_set)
    else:
        e_index, cosine = np.full(len(h_index), -1, np.int64), np.full(len(h_index), np.nan)
    exact = exact_matches(query_digests, ref_digests, exclude_self=same_set)
    return Matches(h_index, h_dist, e_index, cosine, exact, int(max_hash_distance),
                   float(cosine_min))


def near_duplicate_groups(dataset: Dataset, *, image_size: int = 64,
                          max_distance: int = DEFAULT_MAX_DISTANCE, batch_size: int = 256,
                          embeddings: np.ndarray | None = None, cosine_min: float = 0.95
                          ) -> np.ndarray:
    """Group label per image ("dup-<cluster>") for group-aware splitting of `dataset`.

    Images are read small (pHash works on a 32x32 grey thumbnail anyway; 64 px hashes agree
    with 224 px ones to within 2 bits) and hashed in 8 orientations. With `embeddings`
    (N, D), e.g. from a pretrained backbone, an image is also linked to its most similar
    other image when their cosine similarity is at least `cosine_min`.
    """
    batches = iter_batches(dataset, image_size=image_size, resize="crop", batch_size=batch_size)
    hashes = (np.concatenate([dihedral_hashes(images) for images, _ in batches]) if len(dataset)
              else np.empty((0, N_DIHEDRAL), np.uint64))
    rows, cols = hash_pairs(hashes, max_distance=max_distance)
    if embeddings is not None:
        nearest, cosine = nearest_embedding_matches(embeddings, embeddings, exclude_self=True)
        linked = np.flatnonzero(cosine >= cosine_min)
        rows, cols = np.r_[rows, linked], np.r_[cols, nearest[linked]]
    clusters = clusters_from_pairs(len(dataset), rows, cols)
    return np.array([f"dup-{c}" for c in clusters], dtype=object)
