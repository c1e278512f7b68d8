"""Nearest-neighbour search for the leakage check: exact blocked search against FAISS HNSW and
hnswlib HNSW, time and recall at 1, on seeded synthetic embeddings and pHashes.

    python bench/bench_neighbors.py                       # 20k references, 5k queries
    python bench/bench_neighbors.py --refs 100000 --queries 10000

Embeddings: 5 classes of 1,280-d rectified Gaussian clusters (the shape of MobileNetV2's
pooled features), a fifth of the queries near copies of a reference (small noise). Hashes:
random 64-bit codes, a fifth of the queries within 3 bits of a reference, 8 orientations.
Recall at 1: share of queries whose returned neighbour is as near as the exact nearest.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, print_table  # noqa: E402


def embeddings(n_refs: int, n_queries: int, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    centers = rng.gamma(1.0, 1.0, (5, dim)).astype(np.float32)
    ref = np.maximum(centers[rng.integers(0, 5, n_refs)]
                     + rng.normal(0, 0.8, (n_refs, dim)).astype(np.float32), 0)
    query = np.maximum(centers[rng.integers(0, 5, n_queries)]
                       + rng.normal(0, 0.8, (n_queries, dim)).astype(np.float32), 0)
    copies = rng.choice(n_queries, n_queries // 5, replace=False)
    query[copies] = ref[rng.integers(0, n_refs, copies.size)] + rng.normal(
        0, 0.05, (copies.size, dim)).astype(np.float32)
    return query, ref


def hashes(n_refs: int, n_queries: int, seed: int):
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 2**63, (n_refs, 8), dtype=np.uint64)
    query = rng.integers(0, 2**63, (n_queries, 8), dtype=np.uint64)
    copies = rng.choice(n_queries, n_queries // 5, replace=False)
    flips = np.uint64(0b111) << rng.integers(0, 60, copies.size).astype(np.uint64)
    query[copies, 3] = ref[rng.integers(0, n_refs, copies.size), 0] ^ flips
    return query, ref


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import hnswlib

    from audit.leakage.duplicates import nearest_embedding_matches, nearest_hash_matches, unit_rows
    from audit.leakage.neighbors import nearest_cosine, nearest_hamming

    print(machine_line())
    query, ref = embeddings(args.refs, args.queries, args.dim, args.seed)
    (_, exact_cos), t_exact = timed(lambda: nearest_embedding_matches(query, ref))
    rows = [["embeddings", "exact blocked (audit.leakage.duplicates)", f"{t_exact:.1f}", "1.000"]]
    (_, cos, search), t_faiss = timed(lambda: nearest_cosine(query, ref, exact_max_pairs=0))
    rows.append(["embeddings", "FAISS HNSW (audit.leakage.neighbors)", f"{t_faiss:.1f}",
                 f"{np.mean(cos >= exact_cos - 1e-5):.3f} (sampled: {search.recall:.3f})"])

    def hnsw():
        graph = hnswlib.Index(space="ip", dim=args.dim)
        graph.init_index(max_elements=len(ref), ef_construction=80, M=32)
        graph.add_items(unit_rows(ref))
        graph.set_ef(128)
        labels, dist = graph.knn_query(unit_rows(query), k=1)
        return 1 - dist[:, 0]
    h_cos, t_h = timed(hnsw)
    rows.append(["embeddings", "hnswlib HNSW", f"{t_h:.1f}",
                 f"{np.mean(h_cos >= exact_cos - 1e-5):.3f}"])
    qh, rh = hashes(args.refs, args.queries, args.seed)
    (_, exact_d), t_hx = timed(lambda: nearest_hash_matches(qh, rh))
    rows.append(["pHash x8", "exact blocked (audit.leakage.duplicates)", f"{t_hx:.1f}", "1.000"])
    (_, dist, search), t_hf = timed(lambda: nearest_hamming(qh, rh, exact_max_pairs=0))
    rows.append(["pHash x8", "FAISS binary HNSW (audit.leakage.neighbors)", f"{t_hf:.1f}",
                 f"{np.mean(dist <= exact_d):.3f} (sampled: {search.recall:.3f}); "
                 f"copies within 4 bits found: "
                 f"{np.mean((dist <= 4)[exact_d <= 4]):.3f}"])
    print(f"{args.refs} references, {args.queries} queries, {args.dim}-d embeddings")
    print_table(["signal", "search", "seconds", "recall at 1"], rows)
    set_level_cap(args.seed)
    return 0


def set_level_cap(seed: int) -> None:
    """The leakage set-level estimate with K capped below the references per class: 4
    isotropic Gaussian classes of 4,000 references (64-d), 1,000 queries of which 40% are
    copies of a reference of their class (noise 0.1 against a class spread of 1)."""
    from audit.leakage.duplicates import unit_rows
    from audit.leakage.nulls import class_matched_nearest
    from audit.leakage.set_level import _excess_scorer, excess_share

    rng = np.random.default_rng(seed)
    n_per, dim, n_q = 4000, 64, 1000
    centers = rng.normal(0, 1.0, (4, dim))  # isotropic classes of equal spread
    r_labels = np.repeat(np.arange(4), n_per)
    ref = centers[r_labels] + rng.normal(0, 1.0, (len(r_labels), dim))
    q_labels = rng.integers(0, 4, n_q)
    query = centers[q_labels] + rng.normal(0, 1.0, (n_q, dim))
    copies = rng.choice(n_q, int(0.4 * n_q), replace=False)
    sources = np.array([rng.choice(np.flatnonzero(r_labels == q_labels[i])) for i in copies])
    query[copies] = ref[sources] + rng.normal(0, 0.1, (copies.size, dim))
    qu, ru = unit_rows(query), unit_rows(ref)
    scorer = _excess_scorer(lambda i, j: -np.arccos(np.clip(qu[i] @ ru[j].T, -1, 1)),
                            min_spread=1e-6)
    rows = []
    for cap in (None, 2000, 1000, 500):
        obs, null = class_matched_nearest(q_labels, r_labels, scorer,
                                          rng=np.random.default_rng(seed), max_refs=cap)
        rows.append([cap or f"{n_per} (no cap)", f"{excess_share(obs, null):.3f}",
                     f"{0.4 * min(1.0, (cap or n_per) / n_per):.3f}"])
    print("\nset level: 40% planted copies, 4,000 references per class")
    print_table(["K (references per class)", "estimated share", "0.4 x K / 4,000"], rows)


if __name__ == "__main__":
    sys.exit(main())
