"""Nearest-neighbour search: exact below the size limit (identical to audit.leakage.duplicates), the
approximate FAISS index above it finds the planted copies, its recall at 1 is measured on a
seeded sample and reported, and the set level's reference cap."""

from __future__ import annotations

import numpy as np

from audit.leakage.duplicates import nearest_embedding_matches, nearest_hash_matches
from audit.leakage.neighbors import nearest_cosine, nearest_hamming
from audit.leakage.nulls import class_matched_nearest


def _embeddings(n_refs=3000, n_queries=600, dim=64, seed=0):
    """Clustered rectified embeddings; the first third of the queries are near copies of
    references 0, 3, 6, ..."""
    rng = np.random.default_rng(seed)
    centers = rng.gamma(1.0, 1.0, (5, dim)).astype(np.float32)
    ref = np.maximum(centers[rng.integers(0, 5, n_refs)]
                     + rng.normal(0, 0.8, (n_refs, dim)).astype(np.float32), 0)
    query = np.maximum(centers[rng.integers(0, 5, n_queries)]
                       + rng.normal(0, 0.8, (n_queries, dim)).astype(np.float32), 0)
    copies = np.arange(n_queries // 3)
    query[copies] = ref[3 * copies] + rng.normal(0, 0.02, (copies.size, dim)).astype(np.float32)
    return query, ref, copies


def test_exact_below_the_limit_is_the_blocked_search_bit_for_bit():
    query, ref, _ = _embeddings(500, 200)
    index, cosine, search = nearest_cosine(query, ref)
    expected = nearest_embedding_matches(query, ref)
    assert search.method == "exact" and search.recall is None
    np.testing.assert_array_equal(index, expected[0])
    np.testing.assert_array_equal(cosine, expected[1])
    hashes = np.random.default_rng(1).integers(0, 2**63, (300, 8), dtype=np.uint64)
    index, distance, search = nearest_hamming(hashes, hashes, exclude_self=True)
    expected = nearest_hash_matches(hashes, hashes, exclude_self=True)
    assert search.method == "exact"
    np.testing.assert_array_equal(index, expected[0])
    np.testing.assert_array_equal(distance, expected[1])


def test_approximate_search_finds_planted_copies_and_reports_its_recall():
    query, ref, copies = _embeddings()
    exact_index, exact_cos = nearest_embedding_matches(query, ref)
    index, cosine, search = nearest_cosine(query, ref, exact_max_pairs=0, seed=3)
    assert search.method == "approximate" and search.n_recall == len(query)
    true_recall = float(np.mean(cosine >= exact_cos - 1e-5))
    assert search.recall == true_recall  # the sample is every query here
    assert true_recall >= 0.95
    assert np.array_equal(index[copies], 3 * copies)  # every planted copy found
    # Within one set, never the image itself.
    index, _, search = nearest_cosine(ref, ref, exclude_self=True, exact_max_pairs=0)
    assert search.method == "approximate" and not np.any(index == np.arange(len(ref)))


def test_approximate_hash_search_keeps_the_dihedral_minimum():
    rng = np.random.default_rng(2)
    ref = rng.integers(0, 2**63, (2000, 8), dtype=np.uint64)
    query = rng.integers(0, 2**63, (400, 8), dtype=np.uint64)
    query[:100, 5] = ref[:100, 0] ^ np.uint64(0b101)  # a copy, turned: 2 bits in orientation 5
    index, distance, search = nearest_hamming(query, ref, exact_max_pairs=0)
    exact_index, exact_distance = nearest_hash_matches(query, ref)
    assert search.method == "approximate" and search.recall >= 0.95
    assert np.array_equal(index[:100], np.arange(100)) and np.all(distance[:100] == 2)
    assert np.all(distance >= exact_distance)


def test_set_level_reference_cap_bounds_k_and_changes_nothing_below_it():
    labels_q = np.repeat([0, 1], 50)
    labels_r = np.repeat([0, 1], [300, 200])
    seen = []

    def nearest(queries, refs):
        seen.append(len(refs))
        return np.zeros(len(queries))

    args = (labels_q, labels_r, nearest)
    a = class_matched_nearest(*args, rng=np.random.default_rng(0))
    sizes_uncapped = list(seen)
    b = class_matched_nearest(*args, rng=np.random.default_rng(0), max_refs=10_000)
    assert seen[len(sizes_uncapped):] == sizes_uncapped == [200] * 4
    np.testing.assert_array_equal(a[0], b[0])
    seen.clear()
    class_matched_nearest(*args, rng=np.random.default_rng(0), max_refs=64)
    assert seen == [64] * 4
