"""Leakage check: planted copies (hash, embedding, identical files) are found, a null has none,
share/accuracy/gap arithmetic by hand, thresholds, edge cases, artifact and JSON; the set-level
estimate finds a planted share of copies too altered to match one by one, and reads a set of
distinct cells as none even where same-class images are much alike."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import logits_for, make_context, make_view

from audit.checks.leakage import LeakageCheck
from audit.leakage.accuracy import accuracy_by_copy, leak_gap_share
from audit.leakage.duplicates import exact_matches, file_digests, find_matches
from audit.leakage.nulls import class_matched_nearest
from audit.leakage.set_level import (
    cap_share,
    closer_in_reference,
    excess_share,
    nearest_excess,
    set_level_share,
)
from audit.results import Status

AB = ("a", "b")
ABCD = ("a", "b", "c", "d")
FAST = "checks.leakage.n_boot=200"


def _hashes(n, seed):
    return np.random.default_rng(seed).integers(0, 2**64, n, dtype=np.uint64)


def _near(hashes, bits=2):
    return hashes ^ np.uint64(2**bits - 1)  # flip the lowest `bits` bits


def _view(name, role, correct, *, phash, seed=0, labels=None, **kw):
    rng = np.random.default_rng(seed)
    correct = np.asarray(correct, bool)
    labels = rng.integers(0, 2, len(correct)) if labels is None else np.asarray(labels)
    preds = np.where(correct, labels, 1 - labels)
    return make_view(name, role, labels, logits_for(labels, preds, 2), class_names=AB,
                     phash=phash, **kw)


def _run(views, tmp_path, *overrides, seed=0):
    ctx = make_context(views, tmp_path=tmp_path, seed=seed, overrides=[FAST, *overrides])
    result = LeakageCheck().run(ctx)
    return result, json.loads(json.dumps(result.to_dict(), allow_nan=False)), ctx


def _leaky_setup():
    """Heldout: 20 of 50 images are near-copies of train (all correct), the other 30 are 50%
    correct -> accuracy 0.70, 0.50 without copies. Shifted: 16/40 = 0.40, no copies."""
    train_h = _hashes(100, 1)
    held_h = _hashes(50, 2)
    held_h[:20] = _near(train_h[:20])
    held_correct = np.r_[np.ones(20, bool), np.arange(30) % 2 == 0]
    train_labels, held_labels = np.arange(100) % 2, np.arange(50) % 2  # copies share a label
    train = _view("train", "train", np.ones(100, bool), phash=train_h, labels=train_labels)
    held = _view("heldout", "heldout", held_correct, phash=held_h, labels=held_labels)
    shifted = _view("site_b", "shifted", np.arange(40) < 16, phash=_hashes(40, 3), seed=3)
    return train, held, shifted


def test_gap_share_arithmetic():
    assert leak_gap_share(0.9, 0.5, 0.4) == pytest.approx(0.8)
    assert leak_gap_share(0.9, 0.3, 0.5) == 1.0       # clipped
    assert leak_gap_share(0.9, 0.95, 0.5) == 0.0      # copies did not help
    assert leak_gap_share(0.9, 0.5, 0.95) is None     # no gap to explain
    assert leak_gap_share(0.9, float("nan"), 0.5) is None


def test_planted_leak_found_with_hand_computed_numbers(tmp_path):
    train, held, shifted = _leaky_setup()
    result, data, ctx = _run([train, held, shifted], tmp_path)
    assert result.status == Status.FAIL  # 40% leaked > 10%
    entry = data["metrics"]["datasets"]["heldout"]["against"]["train"]
    assert entry["n_with_copy"] == 20 and entry["share"] == pytest.approx(0.4)
    assert entry["by_criterion"]["hash"] == 20 and entry["by_criterion"]["exact"] == 0
    assert entry["accuracy"]["with_copy"]["value"] == 1.0
    assert entry["accuracy"]["without_copy"]["value"] == pytest.approx(0.5)
    low, high = entry["accuracy"]["without_copy"]["low"], entry["accuracy"]["without_copy"]["high"]
    assert low < 0.5 < high
    assert data["metrics"]["datasets"]["site_b"]["against"]["train"]["n_with_copy"] == 0
    assert data["metrics"]["datasets"]["site_b"]["against"]["heldout"]["n_with_copy"] == 0
    leak = [f for f in result.findings if f.kind == "train_leak"]
    assert len(leak) == 1 and leak[0].dataset == "site_b"
    assert leak[0].gap_share == pytest.approx((0.7 - 0.5) / (0.7 - 0.4))
    assert leak[0].text.startswith("40% of heldout images have a near-copy in train; on the "
                                   "others accuracy is 50% (95% CI")
    assert "close to site_b accuracy of 40% (70% on all heldout images)" in leak[0].text
    assert "--group-split near-duplicates" in leak[0].action
    examples = entry["examples"]
    assert len(examples) == 10 and examples[0]["hash_distance"] == 2
    assert examples[0]["path"].startswith("heldout/") and examples[0]["match_path"].startswith(
        "train/")
    # The artifact holds the nearest matches of every comparison.
    with np.load(ctx.artifacts_dir / "leakage.npz") as arrays:
        assert arrays["heldout__train__near_copy"].sum() == 20
        np.testing.assert_array_equal(arrays["heldout__train__hash_index"][:20], np.arange(20))
    assert result.artifacts == {"matches": "artifacts/leakage.npz"}


def test_null_has_no_copies(tmp_path):
    train = _view("train", "train", np.ones(200, bool), phash=_hashes(200, 5))
    held = _view("heldout", "heldout", np.ones(100, bool), phash=_hashes(100, 6))
    result, data, _ = _run([train, held], tmp_path)
    assert result.status == Status.PASS and result.findings == []
    assert data["metrics"]["leaked_share"] == 0.0
    assert data["metrics"]["datasets"]["heldout"]["within"]["n_unique"] == 100


def test_warn_between_thresholds_and_without_shifted(tmp_path):
    train_h, held_h = _hashes(100, 1), _hashes(100, 2)
    held_h[:5] = train_h[:5]
    correct = np.r_[np.ones(5, bool), np.arange(95) % 5 != 0]
    train = _view("train", "train", np.ones(100, bool), phash=train_h, labels=np.arange(100) % 2)
    held = _view("heldout", "heldout", correct, phash=held_h, labels=np.arange(100) % 2)
    result, data, _ = _run([train, held], tmp_path)
    assert result.status == Status.WARN
    finding = next(f for f in result.findings if f.kind == "train_leak")
    assert finding.gap_share is None and finding.dataset == "heldout"
    assert finding.impact == pytest.approx(correct.mean() - 76 / 95)
    _, data, _ = _run([train, held], tmp_path, "checks.leakage.leak_share_warn=0.06")
    assert data["status"] == "PASS"


def test_dihedral_hashes_and_embeddings_and_shifted_overlap(tmp_path):
    train_h = np.stack([_hashes(60, s) for s in range(8)], axis=1)   # (N, 8) orientations
    held_h = np.stack([_hashes(30, 10 + s) for s in range(8)], axis=1)
    held_h[:6, 3] = train_h[:6, 0]           # a rotated copy: only orientation 3 matches
    rng = np.random.default_rng(0)
    train_e, held_e = rng.normal(size=(60, 16)), rng.normal(size=(30, 16))
    held_e[6:18] = 2 * train_e[40:52] + rng.normal(scale=0.01, size=(12, 16))  # embedding copies
    shift_h = np.stack([_hashes(20, 30 + s) for s in range(8)], axis=1)
    shift_h[:4, 0] = held_h[20:24, 0]       # the shifted set shares 4 cells with heldout
    held_labels = np.arange(30) % 2
    train_labels = np.arange(60) % 2
    train_labels[:6], train_labels[40:52] = held_labels[:6], held_labels[6:18]
    shift_labels = np.arange(20) % 2
    shift_labels[:4] = held_labels[20:24]
    train = _view("train", "train", np.ones(60, bool), phash=train_h, embeddings=train_e,
                  labels=train_labels)
    held = _view("heldout", "heldout", np.ones(30, bool), phash=held_h, embeddings=held_e,
                 labels=held_labels)
    shifted = _view("site_b", "shifted", np.arange(20) < 10, phash=shift_h,
                    embeddings=rng.normal(size=(20, 16)), labels=shift_labels)
    result, data, _ = _run([train, held, shifted], tmp_path)
    against = data["metrics"]["datasets"]["heldout"]["against"]["train"]
    # 12 of 30 embedding copies: enough for the set-level test that embedding matches need.
    assert against["set_level"]["counted_share"] > 0
    assert against["by_criterion"] == {"exact": 0, "hash": 6, "embedding": 12}
    assert against["n_with_copy"] == 18
    overlap = data["metrics"]["datasets"]["site_b"]["against"]["heldout"]
    assert overlap["n_with_copy"] == 4
    assert any(f.kind == "test_overlap" and f.dataset == "site_b" for f in result.findings)
    assert data["metrics"]["hash_orientations"] == 8 and data["metrics"]["cosine_min"] == 0.95
    assert against["thresholds"]["embeddings"] == "used" and against["thresholds"]["hash"] == 4
    _, no_emb, _ = _run([train, held, shifted], tmp_path, "checks.leakage.use_embeddings=false")
    assert no_emb["metrics"]["datasets"]["heldout"]["against"]["train"]["n_with_copy"] == 6
    assert no_emb["metrics"]["cosine_min"] is None


def test_identical_files_and_label_conflicts(tmp_path):
    files = []
    for i, content in enumerate([b"cell-1", b"cell-2", b"cell-1", b"cell-3"]):
        path = tmp_path / f"{i}.png"
        path.write_bytes(content)
        files.append(str(path))
    digests = file_digests(files + [str(tmp_path / "missing.png")])
    assert digests[0] == digests[2] and digests[4] is None
    assert exact_matches(digests, digests, exclude_self=True).tolist() == [2, -1, 0, -1, -1]
    labels = np.array([0, 1, 1, 0])
    view = make_view("heldout", "heldout", labels, logits_for(labels, labels, 2), class_names=AB,
                     phash=_hashes(4, 0), paths=files)
    result, data, _ = _run([view], tmp_path)
    within = data["metrics"]["datasets"]["heldout"]["within"]
    assert within["by_criterion"]["exact"] == 2 and within["n_unique"] == 3
    assert within["label_conflicts"] == 2  # the copies carry different labels
    assert result.status == Status.PASS   # no other set: nothing leaks
    assert "at most 3 distinct of 4" in result.summary
    assert [f.kind for f in result.findings] == ["within_duplicates"]


def test_find_matches_and_accuracy_by_copy_units():
    ref = _hashes(10, 0)
    m = find_matches(_near(ref[:3], bits=5), ref, query_digests=[None] * 3,
                     ref_digests=[None] * 10, max_hash_distance=4)
    assert not m.near_copy.any() and m.hash_distance.tolist() == [5, 5, 5]
    assert m.match_index.tolist() == [-1, -1, -1]
    rng = np.random.default_rng(0)
    out = accuracy_by_copy(np.array([1, 1, 0, 1], bool), np.array([1, 1, 0, 0], bool),
                           n_boot=50, rng=rng, groups=None, min_n=3)
    assert out["with_copy"] == {"value": 1.0, "low": None, "high": None}
    assert out["without_copy"]["value"] == 0.5
    assert accuracy_by_copy(np.ones(2, bool), np.zeros(2, bool), n_boot=5, rng=rng, groups=None,
                            min_n=1)["with_copy"] is None


def test_tiny_single_set_and_determinism(tmp_path):
    view = _view("heldout", "heldout", [True], phash=_hashes(1, 0))
    result, data, _ = _run([view], tmp_path)
    assert result.status == Status.PASS
    assert data["metrics"]["datasets"]["heldout"]["within"]["n_unique"] == 1
    train, held, shifted = _leaky_setup()
    _, first, _ = _run([train, held, shifted], tmp_path, seed=3)
    _, second, _ = _run([train, held, shifted], tmp_path, seed=3)
    assert first == second


def test_collapsed_embeddings_match_nothing_instead_of_everything(tmp_path):
    """An untrained model maps every image to nearly the same vector: cosine ~1 between
    unrelated images of different classes, so the embedding criterion is switched off."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=16)
    train = _view("train", "train", np.ones(80, bool), phash=_hashes(80, 1),
                  embeddings=base + rng.normal(scale=1e-3, size=(80, 16)))
    held = _view("heldout", "heldout", np.arange(40) % 3 == 0, phash=_hashes(40, 2),
                 embeddings=base + rng.normal(scale=1e-3, size=(40, 16)))
    result, data, _ = _run([train, held], tmp_path)
    against = data["metrics"]["datasets"]["heldout"]["against"]["train"]
    assert against["nearest_cosine"]["min"] > 0.99 and against["n_with_copy"] == 0
    assert against["thresholds"]["embeddings"] == "uninformative"
    assert against["thresholds"]["null_cosine_rate"] == 1.0
    assert result.status == Status.PASS
    assert "Embedding matching was off for 3 comparisons (e.g. heldout against train)" in \
        result.summary
    assert data["metrics"]["uninformative_embeddings"] == ["within train", "within heldout",
                                                           "heldout against train"]
    _, raw, _ = _run([train, held], tmp_path, "checks.leakage.calibrate=false")
    assert raw["metrics"]["datasets"]["heldout"]["against"]["train"]["share"] == 1.0


def test_calibration_lowers_the_hash_threshold_for_look_alike_images(tmp_path):
    """Images whose hashes sit 3 bits from an image of another class: 3 bits is no evidence."""
    train_h = _hashes(60, 1)
    labels = np.arange(60) % 2
    held_h = train_h ^ np.uint64(0b111)         # each 3 bits from a train image ...
    held_labels = 1 - labels                     # ... of the other class: unrelated
    held_h[:2] = train_h[:2] ^ np.uint64(1)      # two genuine copies (same class), 1 bit
    held_labels[:2] = labels[:2]
    train = _view("train", "train", np.ones(60, bool), phash=train_h, labels=labels)
    held = _view("heldout", "heldout", np.ones(60, bool), phash=held_h, labels=held_labels)
    _, data, _ = _run([train, held], tmp_path)
    against = data["metrics"]["datasets"]["heldout"]["against"]["train"]
    assert against["thresholds"]["hash"] == 2 and against["n_with_copy"] == 2


def test_null_is_sampled_on_large_sets(tmp_path, monkeypatch):
    import audit.leakage.pairing as pairing

    monkeypatch.setattr(pairing, "_NULL_SAMPLE", 30)
    train, held, shifted = _leaky_setup()
    result, data, _ = _run([train, held, shifted], tmp_path)
    against = data["metrics"]["datasets"]["heldout"]["against"]["train"]
    assert against["thresholds"]["n_null"] == 30 and against["n_with_copy"] == 20
    _, again, _ = _run([train, held, shifted], tmp_path)
    assert again["metrics"] == data["metrics"]


# --- set level -------------------------------------------------------------------------------

def _embedding_sets(seed, *, share, n_train=600, n_held=300, d=64, sep=0.3, noise=0.8):
    """4 classes (means `sep` x N(0, I) apart) of N(0, I) images; the first `share` of the
    held-out vectors are a same-class train vector + `noise` x N(0, I): cosine ~0.91 to their
    source, below the per-image threshold of 0.95, above the ~0.79 of unrelated cells."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(4, d)) * sep
    train_labels, held_labels = np.arange(n_train) % 4, np.arange(n_held) % 4
    train = means[train_labels] + rng.normal(size=(n_train, d))
    held = means[held_labels] + rng.normal(size=(n_held, d))
    k = int(share * n_held)
    source = np.array([rng.choice(np.flatnonzero(train_labels == c)) for c in held_labels[:k]],
                      dtype=int)
    held[:k] = train[source] + noise * rng.normal(size=(k, d))
    return train_labels, train, held_labels, held


def _emb_view(name, role, labels, embeddings, *, seed, correct=None):
    correct = np.ones(len(labels), bool) if correct is None else correct
    preds = np.where(correct, labels, (labels + 1) % 4)
    return make_view(name, role, labels, logits_for(labels, preds, 4), class_names=ABCD,
                     embeddings=embeddings, phash=_hashes(len(labels), seed))


def test_set_level_finds_copies_the_per_image_threshold_misses(tmp_path):
    train_labels, train, held_labels, held = _embedding_sets(0, share=0.4)
    _, _, site_labels, site = _embedding_sets(100, share=0.0, n_held=200)
    held_correct = np.arange(300) % 2 == 0                     # 50% against 100% on train
    views = [_emb_view("train", "train", train_labels, train, seed=1),
             _emb_view("heldout", "heldout", held_labels, held, seed=2, correct=held_correct),
             _emb_view("site_b", "shifted", site_labels, site, seed=3)]
    result, data, ctx = _run(views, tmp_path, FAST)
    entry = data["metrics"]["datasets"]["heldout"]["against"]["train"]
    s = entry["set_level"]
    assert entry["share"] < 0.02                  # one by one, the copies go unnoticed
    assert s["signal"] == "embedding" and abs(s["estimated_share"] - 0.4) < 0.1
    assert s["low"] <= 0.4 <= s["high"] and s["low"] > 0.1
    assert s["p_value"] < 1e-6 and s["statistic"] > 0.6 and s["n"] == 300
    assert s["counted_share"] == s["low"] and set(s["signals"]) == {"embedding", "hash"}
    assert "Storey" in s["method"]
    # Fresh cells from the same distribution: nothing counted.
    for r in ("train", "heldout"):
        null = data["metrics"]["datasets"]["site_b"]["against"][r]["set_level"]
        assert null["estimated_share"] < 0.2 and null["counted_share"] == 0.0
    assert result.status == Status.FAIL         # lower bound > leak_share_fail
    assert data["metrics"]["leaked_share"] < 0.02
    assert data["metrics"]["set_level_leaked_share"] == s["low"]
    pct = f"{100 * s['estimated_share']:.0f}%"
    assert f"0% of heldout images have a near-copy in train (about {pct} by nearest-" in \
        result.summary
    leak = [f for f in result.findings if f.kind == "train_leak"]
    assert len(leak) == 1 and leak[0].dataset == "heldout" and leak[0].gap_share is None
    assert leak[0].text.startswith(f"Nearest-neighbour similarity shows about {pct} (95% CI "
                                   f"{100 * s['low']:.0f}%-{100 * s['high']:.0f}%) of heldout "
                                   "images are likely copies of train images, though only 0% "
                                   "can be matched individually")
    assert leak[0].impact == pytest.approx(s["estimated_share"] * (1.0 - 0.5))
    # Copies too altered to match one by one are too altered to cluster: split by source.
    assert "--group-split manifest" in leak[0].action and "source" in leak[0].action
    with np.load(ctx.artifacts_dir / "leakage.npz") as arrays:
        same = arrays["heldout__train__embedding_same_class"]
        other = arrays["heldout__train__embedding_other_class"]
    assert same.shape == other.shape == (300,)
    assert np.median(same[:120]) > np.quantile(other, 0.9)  # the copies stand out


def test_set_level_null_with_strong_class_structure_reads_no_copies(tmp_path):
    """Distinct cells, classes far apart: each image's nearest same-class neighbour is far
    more similar than its nearest other-class one, which raw similarity reads as copies."""
    train_labels, train, held_labels, held = _embedding_sets(4, share=0.0, sep=1.5)
    views = [_emb_view("train", "train", train_labels, train, seed=1),
             _emb_view("heldout", "heldout", held_labels, held, seed=2)]
    result, data, _ = _run(views, tmp_path, FAST)
    s = data["metrics"]["datasets"]["heldout"]["against"]["train"]["set_level"]
    assert s["estimated_share"] < 0.1 and s["counted_share"] == 0.0
    assert result.status == Status.PASS and result.findings == []
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    raw_cos = lambda i, j: (unit(held[i]) @ unit(train[j]).T).max(axis=1)  # noqa: E731
    observed, null = class_matched_nearest(held_labels, train_labels, raw_cos,
                                           rng=np.random.default_rng(0))
    assert excess_share(observed, null) > 0.9   # raw nearest cosine: "all copies"


def test_excess_share_and_nearest_excess_by_hand():
    null = np.arange(10.0)                       # median 4.5: F_null = 0.5
    observed = np.r_[0, 1, 2, 3, np.full(6, 20.0)]  # 4 of 10 below: F_obs = 0.4
    assert excess_share(observed, null) == pytest.approx(1 - 0.4 / 0.5)
    assert excess_share(null, null) == 0.0
    assert excess_share(np.zeros(4), null) < 0   # unclipped: fewer than the null
    assert np.isnan(excess_share(np.empty(0), null))
    # Row 0..10: q50 = 5, q90 = 9, max 10 -> (10 - 9) / (9 - 5); a flat row scores 0.
    rows = np.stack([np.arange(11.0), np.full(11, 3.0)])
    np.testing.assert_allclose(nearest_excess(rows, min_spread=0.5), [0.25, 0.0])
    np.testing.assert_allclose(nearest_excess(rows + 100, min_spread=0.5), [0.25, 0.0])
    np.testing.assert_allclose(nearest_excess(3 * rows, min_spread=0.5), [0.25, 0.0])


def test_set_level_share_units():
    rng = np.random.default_rng(0)
    null = np.linspace(0.0, 1.0, 200)
    observed = np.r_[np.linspace(0.0, 1.0, 120), np.full(80, 5.0)]  # 40% far above
    out = set_level_share(observed, null, quantile=0.5, n_boot=200, rng=rng, groups=None,
                          min_n=20)
    assert out["estimated_share"] == pytest.approx(0.4)   # 1 - (60/200) / (100/200)
    assert 0.25 < out["low"] < 0.4 < out["high"] < 0.55
    assert out["p_value"] < 1e-6 and out["n"] == 200
    # Copies resampled as groups of 10: a wider interval than 200 independent images.
    groups = np.arange(200) // 10
    grouped = set_level_share(observed, null, quantile=0.5, n_boot=200,
                              rng=np.random.default_rng(1), groups=groups, min_n=20)
    assert grouped["estimated_share"] == out["estimated_share"]
    assert grouped["high"] - grouped["low"] > out["high"] - out["low"]
    same = set_level_share(null, null, quantile=0.5, n_boot=50, rng=rng, groups=None, min_n=20)
    assert same["estimated_share"] == 0.0 and same["p_value"] > 0.4
    observed[:190] = np.nan                      # 10 images with both values < min_n
    few = set_level_share(observed, null, quantile=0.5, n_boot=50, rng=rng, groups=None,
                          min_n=20)
    assert few["n"] == 10 and few["estimated_share"] is None and few["p_value"] is None


def test_set_level_with_a_class_missing_from_train_and_with_one_class(tmp_path):
    train_labels, train, held_labels, held = _embedding_sets(1, share=0.4)
    keep = train_labels != 3                     # class d never trained on
    views = [_emb_view("train", "train", train_labels[keep], train[keep], seed=1),
             _emb_view("heldout", "heldout", held_labels, held, seed=2)]
    _, data, _ = _run(views, tmp_path, FAST)
    s = data["metrics"]["datasets"]["heldout"]["against"]["train"]["set_level"]
    assert s["n"] == 225 and s["estimated_share"] > 0.2   # class-d images have no score
    one = np.zeros(40, int)
    views = [_emb_view("train", "train", one, train[:40], seed=1),
             _emb_view("heldout", "heldout", one[:30], held[:30], seed=2)]
    result, data, _ = _run(views, tmp_path, FAST)
    s = data["metrics"]["datasets"]["heldout"]["against"]["train"]["set_level"]
    assert s["n"] == 0 and s["estimated_share"] is None and s["counted_share"] == 0.0
    assert result.status == Status.PASS


def test_set_level_overlap_of_a_shifted_set_with_heldout(tmp_path):
    rng = np.random.default_rng(7)
    means = rng.normal(size=(4, 64)) * 0.3

    def draw(n):
        labels = np.arange(n) % 4
        return labels, means[labels] + rng.normal(size=(n, 64))

    (train_labels, train), (held_labels, held), (site_labels, site) = draw(600), draw(300), draw(200)
    source = np.array([rng.choice(np.flatnonzero(held_labels == c)) for c in site_labels[:100]])
    site[:100] = held[source] + 0.8 * rng.normal(size=(100, 64))   # half re-use heldout cells
    site_correct = np.arange(200) % 4 != 0                          # 75% against 100%
    views = [_emb_view("train", "train", train_labels, train, seed=1),
             _emb_view("heldout", "heldout", held_labels, held, seed=2),
             _emb_view("site_b", "shifted", site_labels, site, seed=3, correct=site_correct)]
    result, data, _ = _run(views, tmp_path)
    against = data["metrics"]["datasets"]["site_b"]["against"]
    overlap = against["heldout"]["set_level"]
    assert against["heldout"]["share"] < 0.02 and overlap["low"] <= 0.5 <= overlap["high"]
    assert against["train"]["set_level"]["counted_share"] == 0.0
    assert data["metrics"]["datasets"]["heldout"]["against"]["train"]["set_level"][
        "counted_share"] == 0.0
    assert result.status == Status.FAIL
    [finding] = [f for f in result.findings if f.kind == "test_overlap"]
    assert finding.dataset == "site_b" and finding.gap_share is None
    assert "of site_b images are likely copies of heldout images" in finding.text
    assert finding.text.endswith("site_b accuracy (75%) partly re-tests cells of heldout.")
    assert finding.impact == pytest.approx(overlap["estimated_share"] * 0.25)
    assert not any(f.kind == "train_leak" for f in result.findings)


def test_classmates_close_in_a_trained_model_are_not_copies(tmp_path):
    """Class-clustered embeddings (as a trained classifier's are) and no copies: no leak."""
    from conftest import logits_for, make_context, make_view

    from audit.checks.leakage import LeakageCheck

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 16)) * 10

    def view(name, role, n, seed):
        r = np.random.default_rng(seed)
        labels = np.arange(n) % 2
        emb = centres[labels] + r.normal(size=(n, 16)) * 0.3  # cosine to classmates ~0.99
        hashes = r.integers(0, 2**63, size=(n, 8), dtype=np.uint64)
        return make_view(name, role, labels, logits_for(labels, labels, 2), embeddings=emb,
                         phash=hashes)

    ctx = make_context([view("train", "train", 200, 1), view("heldout", "heldout", 100, 2)],
                       tmp_path=tmp_path, overrides=["checks.leakage.n_boot=200"])
    result = LeakageCheck().run(ctx)
    against = result.metrics["datasets"]["heldout"]["against"]["train"]
    assert against["n_with_copy"] == 0, against["by_criterion"]
    assert result.status.value == "PASS"


def test_another_laboratory_is_not_read_as_copies(tmp_path):
    """A shifted site whose cells are tight, exaggerated versions of the training classes
    (another lab: no shared cells) shows a set-level 'excess' against train (17-45% over seven
    seeds); none of its images is nearer a training image than one of its own, so the cap
    removes it."""
    train_labels, train, held_labels, held = _embedding_sets(0, share=0.0)
    rng = np.random.default_rng(1)
    class_means = np.stack([train[train_labels == c].mean(axis=0) for c in range(4)])
    site_labels = np.arange(200) % 4
    site = 4 * class_means[site_labels] + 0.5 * rng.normal(size=(200, 64))
    views = [_emb_view("train", "train", train_labels, train, seed=1),
             _emb_view("heldout", "heldout", held_labels, held, seed=2),
             _emb_view("site_b", "shifted", site_labels, site, seed=3)]
    result, data, _ = _run(views, tmp_path)
    s = data["metrics"]["datasets"]["site_b"]["against"]["train"]["set_level"]
    assert s["uncapped_share"] > 0.1 and s["p_value"] < 0.01   # the artifact, uncapped
    assert s["closer_in_reference"] == 0.0
    assert s["estimated_share"] == s["low"] == s["high"] == s["counted_share"] == 0.0
    assert result.status == Status.PASS and "by nearest-neighbour" not in result.summary


def test_closer_in_reference_and_cap_by_hand():
    # Nearest in the reference 0.9, 0.5, 0.7, 0.2; nearest other image of the set 0.8, 0.6,
    # NaN (alone in its set), 0.9: images 0 and 2 are nearer the reference.
    assert closer_in_reference([0.9, 0.5, 0.7, 0.2], [0.8, 0.6, np.nan, 0.9]) == 0.5
    share = {"estimated_share": 0.7, "low": 0.4, "high": 0.9, "p_value": 1e-9}
    capped = cap_share(share, 0.5)
    assert (capped["estimated_share"], capped["low"], capped["high"]) == (0.5, 0.4, 0.5)
    assert capped["uncapped_share"] == 0.7 and capped["closer_in_reference"] == 0.5
    empty = {"estimated_share": None, "low": None, "high": None}
    assert cap_share(empty, 0.0)["estimated_share"] is None


def test_set_level_copies_get_a_share_of_the_gap_to_a_shifted_set(tmp_path):
    train_labels, train, held_labels, held = _embedding_sets(0, share=0.4)
    _, _, site_labels, site = _embedding_sets(100, share=0.0, n_held=200)
    held_correct = np.r_[np.ones(120, bool), np.arange(180) % 3 == 0]   # copies right: 60%
    site_correct = np.arange(200) % 4 == 0                              # 25%
    views = [_emb_view("train", "train", train_labels, train, seed=1),
             _emb_view("heldout", "heldout", held_labels, held, seed=2, correct=held_correct),
             _emb_view("site_b", "shifted", site_labels, site, seed=3, correct=site_correct)]
    result, data, _ = _run(views, tmp_path)
    s = data["metrics"]["datasets"]["heldout"]["against"]["train"]["set_level"]
    [leak] = [f for f in result.findings if f.kind == "train_leak"]
    # Copies taken to score like train (100%): the others at (0.6 - s) / (1 - s).
    share = s["estimated_share"]
    without = (0.6 - share * 1.0) / (1.0 - share)
    assert 0.2 < share < 0.6 and leak.dataset == "site_b"
    assert leak.gap_share == pytest.approx((0.6 - without) / (0.6 - 0.25))
    assert leak.impact == pytest.approx(0.6 - without)
    assert f"at about {100 * without:.0f}%" in leak.text
    assert f"copies explain about {100 * leak.gap_share:.0f}% of the gap" in leak.text
    low, high = leak.evidence["gap"]["without_copy_range"]
    assert low <= without <= high
