"""One comparison of a query set with a reference set, image by image.

Each image's nearest reference by hash and by embedding is searched once per pair of sets
(`nearest_pairs`); an image has a near-copy when a file there is byte-identical, its pHash
lies within the hash threshold or its embedding within the cosine threshold. Both thresholds
start from the configuration and are tightened against a cross-class null (each image's
nearest neighbour of another class, which cannot be its copy) until at most `max_null_rate`
of that null would count (`calibrated_thresholds`): embeddings that make all images alike then
match nothing instead of everything.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from audit.leakage.duplicates import (
    Matches,
    file_digests,
    find_matches,
    nearest_embedding_matches,
    nearest_hash_matches,
)
from audit.leakage.neighbors import nearest_cosine, nearest_hamming
from audit.leakage.nulls import (
    calibrated_cosine_threshold,
    calibrated_hash_threshold,
    cross_class_null,
)
from audit.sampling import subsample

if TYPE_CHECKING:
    from audit.checks.base import DatasetView

__all__ = ["ComparedSet", "embedding_use", "calibrated_thresholds", "nearest_pairs",
           "distrust_class_clustered_embeddings", "match_pairs", "comparison_summary"]

_MIN_NULL = 20  # fewer cross-class pairs than this: thresholds are used as configured
_NULL_SAMPLE = 2000  # query images sampled for the null


class ComparedSet:
    """What the check compares for one view: labels, hashes, embeddings, file digests."""

    def __init__(self, view: DatasetView, use_embeddings: bool):
        self.labels = view.labels
        self.hashes = np.asarray(view.outputs.phash)
        emb = np.asarray(view.outputs.embeddings)
        self.embeddings = emb if use_embeddings and emb.size and np.any(emb) else None
        self.digests = file_digests(view.dataset.paths)


def embedding_use(cosine: float | None) -> str:
    """'used', 'unused' (none, or switched off) or 'uninformative' (calibrated above 1)."""
    return "unused" if cosine is None else "uninformative" if cosine > 1 else "used"


def calibrated_thresholds(q: ComparedSet, r: ComparedSet, opts, rng: np.random.Generator) -> dict:
    """Hash and cosine thresholds for one comparison, tightened against the cross-class null
    (of at most `_NULL_SAMPLE` query images, so the null costs little on large sets)."""
    max_rate, hash_max = opts.max_null_rate, opts.max_hash_distance
    use_emb = q.embeddings is not None and r.embeddings is not None
    out = {"hash": hash_max, "cosine": opts.cosine_min if use_emb else None,
           "n_null": 0, "null_hash_rate": None, "null_cosine_rate": None}
    if not opts.calibrate:
        return out
    sample = subsample(len(q.labels), _NULL_SAMPLE, rng=rng)
    labels = q.labels[sample]
    null_hash = cross_class_null(labels, r.labels, lambda i, j: nearest_hash_matches(
        q.hashes[sample[i]], r.hashes[j])[1])
    out["n_null"] = int(null_hash.size)
    if null_hash.size < _MIN_NULL:
        return out
    out["null_hash_rate"] = float(np.mean(null_hash <= hash_max))
    out["hash"] = calibrated_hash_threshold(null_hash, max_distance=hash_max, max_rate=max_rate)
    if use_emb:
        null_cos = cross_class_null(labels, r.labels, lambda i, j: nearest_embedding_matches(
            q.embeddings[sample[i]], r.embeddings[j])[1])
        out["null_cosine_rate"] = float(np.mean(null_cos >= out["cosine"]))
        out["cosine"] = calibrated_cosine_threshold(null_cos, minimum=out["cosine"],
                                                    max_rate=max_rate)
    return out


def nearest_pairs(q: ComparedSet, r: ComparedSet, same_set: bool, searches: dict) -> dict:
    """Each query's nearest reference by hash and by embedding, computed once per pair for
    both the set level and the per-image matches (exact, or approximate on large sets:
    `audit.leakage.neighbors`); how each was searched goes into `searches`."""
    *out_hash, searches["hash"] = nearest_hamming(q.hashes, r.hashes, exclude_self=same_set)
    out = {"hash": tuple(out_hash)}
    if q.embeddings is not None and r.embeddings is not None:
        *out_emb, searches["embedding"] = nearest_cosine(q.embeddings, r.embeddings,
                                                         exclude_self=same_set)
        out["embedding"] = tuple(out_emb)
    return out


def distrust_class_clustered_embeddings(thresholds: dict, set_level: dict | None,
                                         opts) -> None:
    """Switch per-image embedding matching off where it would count classmates as copies.

    A trained classifier's penultimate features put every image close to its classmates, far
    above the cross-class null the cosine threshold is calibrated on: on fresh synthetic sets
    (no copies at all) 92% of images then 'matched'. Embedding matches are kept only where the
    set-level test (classmates as the null) finds excess similarity; within one set there is no
    such test, so duplicates there are counted from identical files and hashes only.
    """
    if embedding_use(thresholds["cosine"]) != "used" or not opts.calibrate:
        return  # no embeddings, or no calibration asked for: thresholds as configured
    trusted = (set_level is not None and set_level.get("signal") == "embedding"
               and set_level["counted_share"] > 0)
    if not trusted:
        thresholds["embeddings"] = "class-clustered"
        thresholds["cosine"] = None


def match_pairs(q: ComparedSet, r: ComparedSet, thresholds: dict, same_set: bool, nearest: dict) -> Matches:
    cosine = thresholds["cosine"]
    return find_matches(q.hashes, r.hashes, query_digests=q.digests, ref_digests=r.digests,
                        query_embeddings=q.embeddings, ref_embeddings=r.embeddings,
                        max_hash_distance=thresholds["hash"],
                        cosine_min=np.inf if cosine is None else cosine, same_set=same_set,
                        nearest=nearest)


def comparison_summary(q: DatasetView, r: DatasetView, m: Matches, thresholds: dict, opts) -> dict:
    match, near = m.match_index, m.near_copy
    copies = np.flatnonzero(near)
    return {"n_with_copy": int(copies.size), "share": float(near.mean()) if near.size else 0.0,
            "by_criterion": {"exact": int((m.exact_index >= 0).sum()), "hash": int(m.by_hash.sum()),
                             "embedding": int(m.by_embedding.sum())},
            "thresholds": {**thresholds, "embeddings": _embedding_state(thresholds)},
            "label_conflicts": int((q.labels[copies] != r.labels[match[copies]]).sum()),
            "nearest_hash_distance": _quartiles(m.hash_distance),
            "nearest_cosine": _quartiles(m.cosine),
            "examples": _examples(q, r, m, opts.max_examples)}


def _examples(q: DatasetView, r: DatasetView, m: Matches, limit: int) -> list[dict]:
    idx = np.flatnonzero(m.near_copy)
    cos = np.nan_to_num(m.cosine, nan=-1.0)
    idx = idx[np.lexsort((-cos[idx], m.hash_distance[idx], m.exact_index[idx] < 0))][:limit]
    match = m.match_index
    return [{"path": os.path.relpath(q.dataset.paths[i], q.dataset.root),
             "match_path": os.path.relpath(r.dataset.paths[match[i]], r.dataset.root),
             "exact": bool(m.exact_index[i] >= 0), "hash_distance": int(m.hash_distance[i]),
             "cosine": float(m.cosine[i])} for i in idx]


def _embedding_state(thresholds: dict) -> str:
    return thresholds.get("embeddings") or embedding_use(thresholds["cosine"])


def _quartiles(values: np.ndarray) -> dict | None:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    q = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0])
    return dict(zip(("min", "q25", "median", "q75", "max"), q.tolist(), strict=True))
