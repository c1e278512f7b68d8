"""Near-duplicate search: hand-made hashes and embeddings, dihedral invariance, chunking,
clusters, and group labels for a dataset of tiny images on disk."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import audit.leakage.duplicates as dup
from audit.data import load_dataset
from audit.imaging import perceptual_hash
from audit.leakage.duplicates import (
    NO_MATCH_DISTANCE,
    dihedral_hashes,
    dihedral_transforms,
    find_matches,
    hash_distances,
    hash_pairs,
    near_duplicate_clusters,
    near_duplicate_groups,
    nearest_embedding_matches,
    nearest_hash_matches,
)
from audit.leakage.nulls import (
    calibrated_cosine_threshold,
    calibrated_hash_threshold,
    class_matched_nearest,
    cross_class_null,
)


def _flip_bits(h: int, bits) -> int:
    for b in bits:
        h ^= 1 << b
    return h


def _random_hashes(n, seed):
    return np.random.default_rng(seed).integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + \
        np.uint64(1)


def test_nearest_hash_hand_made():
    ref = np.array([0, 2**64 - 1, 0b1111], dtype=np.uint64)
    query = np.array([0b1, 0b0111_0000, 2**64 - 2], dtype=np.uint64)
    index, distance = nearest_hash_matches(query, ref)
    assert index.tolist() == [0, 0, 1]
    assert distance.tolist() == [1, 3, 1]


def test_orientations_take_the_minimum_and_reference_uses_identity_only():
    ref = np.array([[0, 5], [2**64 - 1, 7]], dtype=np.uint64)  # (M, K): column 0 counts
    query = np.array([[2**64 - 1, 0b11]], dtype=np.uint64)     # 2nd orientation is 2 bits from ref 0
    index, distance = nearest_hash_matches(query, ref)
    assert index.tolist() == [1] and distance.tolist() == [0]
    index, distance = nearest_hash_matches(query[:, 1], ref)
    assert index.tolist() == [0] and distance.tolist() == [2]


def test_planted_duplicates_found_across_sets_and_none_in_null():
    ref = _random_hashes(500, 0)
    query = _random_hashes(300, 1)
    planted = np.array([5, 77, 299])
    query[planted] = [_flip_bits(int(ref[j]), bits) for j, bits in
                      zip([10, 20, 30], [(0,), (3, 9, 40), ()], strict=True)]
    index, distance = nearest_hash_matches(query, ref)
    assert index[planted].tolist() == [10, 20, 30]
    assert distance[planted].tolist() == [1, 3, 0]
    others = np.setdiff1d(np.arange(300), planted)
    assert distance[others].min() > 12  # random 64-bit hashes lie ~32 bits apart


def test_exclude_self_and_chunking_agree_with_brute_force(monkeypatch):
    monkeypatch.setattr(dup, "_BLOCK_ELEMENTS", 64)  # force many small blocks
    hashes = _random_hashes(40, 2)
    hashes[7] = hashes[3] ^ np.uint64(1 << 5)
    index, distance = nearest_hash_matches(hashes, hashes, exclude_self=True)
    full = np.bitwise_count(hashes[:, None] ^ hashes[None, :]).astype(int)
    np.fill_diagonal(full, 99)
    assert distance.tolist() == full.min(1).tolist()
    assert index[3] == 7 and index[7] == 3
    with pytest.raises(ValueError, match="same length"):
        nearest_hash_matches(hashes, hashes[:5], exclude_self=True)


def test_no_reference_gives_no_match():
    index, distance = nearest_hash_matches(np.array([1], np.uint64), np.array([], np.uint64))
    assert index.tolist() == [-1] and distance.tolist() == [NO_MATCH_DISTANCE]
    index, distance = nearest_hash_matches(np.array([1], np.uint64), np.array([1], np.uint64),
                                           exclude_self=True)
    assert index.tolist() == [-1]
    index, cosine = nearest_embedding_matches(np.ones((2, 3)), np.zeros((0, 3)))
    assert index.tolist() == [-1, -1] and np.isnan(cosine).all()


def test_bad_hash_shape_is_rejected():
    with pytest.raises(ValueError, match=r"\(N,\) or \(N, K\)"):
        nearest_hash_matches(np.zeros((2, 2, 2), np.uint64), np.zeros(2, np.uint64))


def test_embedding_matches_hand_made(monkeypatch):
    monkeypatch.setattr(dup, "_BLOCK_ELEMENTS", 3)
    ref = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 0]])
    query = np.array([[2.0, 0.1, 0], [0, 0, 5.0], [0, 0, 0]])
    index, cosine = nearest_embedding_matches(query, ref)
    assert index[0] == 0 and cosine[0] == pytest.approx(2 / np.hypot(2, 0.1))
    assert cosine[1] == pytest.approx(0.0) and cosine[2] == pytest.approx(0.0)
    index, cosine = nearest_embedding_matches(ref[:2], ref[:2], exclude_self=True)
    assert index.tolist() == [1, 0] and cosine.tolist() == [0.0, 0.0]


def test_planted_embedding_copy_found_and_null_not():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 64))
    query = rng.normal(size=(50, 64))
    query[4] = 3 * ref[17] + rng.normal(scale=0.05, size=64)
    index, cosine = nearest_embedding_matches(query, ref)
    assert index[4] == 17 and cosine[4] > 0.99
    assert np.delete(cosine, 4).max() < 0.6


def test_clusters_chain_copies_and_number_by_first_image():
    base = _random_hashes(3, 4)
    hashes = np.array([base[0], base[1], base[0] ^ np.uint64(0b111), base[2],
                       base[0] ^ np.uint64(0b111_000_000), base[1] ^ np.uint64(1)], np.uint64)
    clusters = near_duplicate_clusters(hashes, max_distance=4)
    # 4 and 2 are 6 bits apart but both within 3 of image 0: one chained cluster
    assert clusters.tolist() == [0, 1, 0, 2, 0, 1]
    assert near_duplicate_clusters(hashes, max_distance=0).tolist() == [0, 1, 2, 3, 4, 5]
    assert near_duplicate_clusters(np.empty(0, np.uint64)).tolist() == []


def test_hash_pairs_either_direction_counts():
    ref_side = np.array([[0, 0], [2**64 - 1, 0]], np.uint64)  # image 1 rotated equals image 0
    i, j = hash_pairs(ref_side, max_distance=0)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(1, 0)]
    assert near_duplicate_clusters(ref_side, max_distance=0).tolist() == [0, 0]


def _cell_images(rng, n, size=48):
    """Smooth random patterns: unrelated ones differ in about half their pHash bits."""
    coarse = rng.integers(0, 256, (n, 6, 6, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(c).resize((size, size), Image.Resampling.BICUBIC))
                     for c in coarse])


def test_dihedral_hashes_make_rotations_and_flips_match():
    rng = np.random.default_rng(0)
    images = _cell_images(rng, 6)
    hashes = dihedral_hashes(images)
    assert hashes.shape == (6, 8) and hashes.dtype == np.uint64
    np.testing.assert_array_equal(hashes[:, 0], perceptual_hash(images))
    transformed = dihedral_transforms(images)
    assert len(transformed) == 8 and np.array_equal(transformed[0], images)
    for k, variant in enumerate(transformed[1:], start=1):
        _, plain = nearest_hash_matches(perceptual_hash(variant), hashes[:, 0])
        index, distance = nearest_hash_matches(dihedral_hashes(variant), hashes)
        assert index.tolist() == list(range(6)) and distance.max() <= 2, k
    assert plain.max() > 2  # without orientations a flip is not found
    with pytest.raises(ValueError, match="square"):
        dihedral_transforms(np.zeros((1, 4, 6, 3), np.uint8))


def test_dihedral_hashes_equal_hashing_each_turned_image_up_to_round_off():
    # Orientations are taken of the 32x32 thumbnail, not of the image; Lanczos is symmetric,
    # so only the thumbnail's 8-bit rounding can move a coefficient across the median.
    images = _cell_images(np.random.default_rng(3), 40, size=96)
    fast = dihedral_hashes(images)
    slow = np.stack([perceptual_hash(t) for t in dihedral_transforms(images)], axis=1)
    bits = np.bitwise_count(fast ^ slow)
    assert (bits[:, 0] == 0).all() and bits.max() <= 2 and (bits == 0).mean() >= 0.9


def test_near_duplicate_groups_on_disk(tmp_path):
    rng = np.random.default_rng(1)
    images = _cell_images(rng, 4, size=64)
    copies = {"a/0.png": images[0], "a/1.png": images[1], "a/0_rot.png": np.rot90(images[0]),
              "b/2.png": images[2], "b/1_flip.png": images[1][:, ::-1], "b/3.png": images[3]}
    for rel, image in copies.items():
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        Image.fromarray(np.ascontiguousarray(image)).save(tmp_path / rel)
    dataset = load_dataset(tmp_path)
    groups = near_duplicate_groups(dataset, image_size=64, batch_size=4)
    by_name = dict(zip(dataset.relative_paths, groups, strict=True))
    assert by_name["a/0.png"] == by_name["a/0_rot.png"]
    assert by_name["a/1.png"] == by_name["b/1_flip.png"]
    assert len(set(groups)) == 4 and all(g.startswith("dup-") for g in groups)


def test_cross_class_null_uses_other_classes_only():
    ref = np.array([0, 0b1, 2**64 - 1], np.uint64)
    ref_labels = np.array([0, 0, 1])
    query = np.array([0, 2**64 - 1], np.uint64)
    query_labels = np.array([0, 1])
    null = cross_class_null(query_labels, ref_labels,
                            lambda i, j: nearest_hash_matches(query[i], ref[j])[1])
    # class 0 query (hash 0) may only see ref 2 (64 bits away); class 1 sees refs 0, 1 (63, 64)
    assert sorted(null.tolist()) == [63, 64]
    assert cross_class_null(np.zeros(3), np.zeros(4), lambda i, j: i).size == 0


def test_class_matched_nearest_pairs_own_class_with_as_many_of_one_other():
    ref_labels = np.r_[np.zeros(6, int), np.ones(10, int), np.full(3, 2)]
    count = {0: 6, 1: 10, 2: 3}
    query_labels = np.array([0, 0, 1, 1, 1, 1, 3])  # class 3 has no reference images
    calls = []

    def nearest(queries, refs):
        ref_classes = set(ref_labels[refs].tolist())
        assert len(ref_classes) == 1 and len(set(query_labels[queries].tolist())) == 1
        calls.append((int(query_labels[queries][0]), ref_classes.pop(), refs.size))
        return np.full(queries.size, float(calls[-1][0] == calls[-1][1]))

    observed, null = class_matched_nearest(query_labels, ref_labels, nearest,
                                           rng=np.random.default_rng(0))
    assert observed[:6].tolist() == [1.0] * 6 and null[:6].tolist() == [0.0] * 6
    assert np.isnan(observed[6]) and np.isnan(null[6])
    for (q_class, own, k_own), (q_again, other, k_other) in zip(calls[::2], calls[1::2],
                                                                strict=True):
        # Own class, then one other class, each with min(own, other) references.
        assert q_class == own == q_again != other
        assert k_own == k_other == min(count[own], count[other])
    again = class_matched_nearest(query_labels, ref_labels, nearest, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(again[0], observed)


def test_hash_distances_block_matches_nearest_hash_matches():
    rng = np.random.default_rng(0)
    query = rng.integers(0, 2**63, (7, 8), dtype=np.uint64)
    ref = rng.integers(0, 2**63, (5, 8), dtype=np.uint64)
    block = hash_distances(query, ref)
    assert block.shape == (7, 5) and block.dtype == np.uint8
    index, distance = nearest_hash_matches(query, ref)
    np.testing.assert_array_equal(block.argmin(axis=1), index)
    np.testing.assert_array_equal(block.min(axis=1), distance)
    assert hash_distances(query[:, 0], ref[:, 0])[0, 0] == bin(int(query[0, 0] ^ ref[0, 0])).count("1")


def test_calibrated_thresholds():
    null = np.array([3] * 2 + [20] * 198)  # 1% of unrelated images lie 3 bits apart
    assert calibrated_hash_threshold(null, max_distance=4, max_rate=0.005) == 2
    assert calibrated_hash_threshold(null, max_distance=4, max_rate=0.01) == 4
    assert calibrated_hash_threshold(np.zeros(10), max_distance=4, max_rate=0.005) == -1
    assert calibrated_hash_threshold(np.empty(0), max_distance=4, max_rate=0.005) == 4
    cosines = np.linspace(0.5, 0.96, 200)
    raised = calibrated_cosine_threshold(cosines, minimum=0.95, max_rate=0.005)
    assert 0.955 < raised <= 0.96 + 1e-9 and np.mean(cosines >= raised) <= 0.005
    assert calibrated_cosine_threshold(cosines, minimum=0.97, max_rate=0.005) == 0.97
    assert calibrated_cosine_threshold(np.full(50, 0.999), minimum=0.95, max_rate=0.005) == np.inf
    assert calibrated_cosine_threshold(np.empty(0), minimum=0.95, max_rate=0.005) == 0.95


def test_find_matches_combines_criteria():
    ref = _random_hashes(5, 0)
    query = np.r_[ref[:2] ^ np.uint64(1), _random_hashes(3, 1)]
    ref_emb = np.eye(5)
    query_emb = np.r_[np.eye(5)[[3, 4]], np.eye(5)[[2]], np.ones((2, 5))]
    m = find_matches(query, ref, query_digests=[None, None, None, "x", None],
                     ref_digests=[None, "x", None, None, None], query_embeddings=query_emb,
                     ref_embeddings=ref_emb, max_hash_distance=4, cosine_min=0.95)
    assert m.by_hash.tolist() == [True, True, False, False, False]
    assert m.by_embedding.tolist() == [True, True, True, False, False]
    assert m.near_copy.tolist() == [True, True, True, True, False]
    assert m.match_index.tolist() == [0, 1, 2, 1, -1]  # hash before embedding; exact first
    plain = find_matches(query, ref, query_digests=[None] * 5, ref_digests=[None] * 5)
    assert np.isnan(plain.cosine).all() and plain.near_copy.tolist() == [True, True] + [False] * 3


def test_near_duplicate_groups_with_embeddings(tmp_path):
    rng = np.random.default_rng(2)
    images = _cell_images(rng, 3, size=64)
    for i, image in enumerate(images):
        (tmp_path / "a").mkdir(exist_ok=True)
        Image.fromarray(image).save(tmp_path / "a" / f"{i}.png")
    dataset = load_dataset(tmp_path)
    assert len(set(near_duplicate_groups(dataset))) == 3
    embeddings = np.array([[1.0, 0], [0, 1.0], [0.99, 0.05]])  # image 2 looks like image 0
    groups = near_duplicate_groups(dataset, embeddings=embeddings)
    assert groups[0] == groups[2] != groups[1]
