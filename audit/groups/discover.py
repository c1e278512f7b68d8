"""`discover_groups` (one set) and `match_sources` (a set against a reference set)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from audit import seeds
from audit.data import Dataset
from audit.groups.calibrate import NullStatistics, calibrate_threshold
from audit.groups.candidates import bow_embeddings, fit_vocabulary, nearest_pairs
from audit.groups.features import Keypoints, extract_keypoints
from audit.groups.graph import GraphSummary, guarded_components
from audit.groups.verify import VerifyConfig, verify_pairs
from audit.parallel import map_chunks
from audit.progress import progress
from audit.sampling import subsample

__all__ = ["GroupConfig", "VerifiedPair", "SourceGroups", "SourceMatches", "discover_groups",
           "match_sources", "groups_from_keypoints", "matches_from_keypoints"]

_VERIFY_CHUNK = 64  # pairs per worker task


@dataclass(frozen=True)
class GroupConfig:
    """Options of source-group discovery; the defaults are the ones measured in
    `bench/bench_groups.py` (kaggle_bloodcells at 224 px)."""

    image_size: int = 224          # working size: images decoded by audit.data at this size
    batch_size: int = 64
    max_keypoints: int = 500       # SIFT keypoints per image (strongest first)
    contrast_threshold: float = 0.02  # SIFT's; lower than OpenCV's 0.04: smears are pale
    vocabulary_words: int = 256
    neighbours: int = 10           # candidate pairs per image (its most similar images)
    rounds: int = 3                # 1 + rounds looking beyond each image's current group
    beyond_neighbours: int = 5     # candidates per image in those rounds
    max_pairs: int | None = None   # budget of candidate pairs; None: neighbours x images
    null_neighbours: int = 2       # null pairs per image: its most similar other-class images
    max_null_images: int = 2000    # images (seeded sample) that contribute null pairs
    within_class: bool = True      # candidates only within a class (copies share the label)
    min_inliers: int = 12          # the threshold is never below this
    max_null_rate: float = 0.001   # ... and at most this share of null pairs reach it
    strong_factor: float = 2.0     # edges with >= factor x threshold inliers need no triangle
    ratio: float = 0.8
    ransac_pixels: float = 3.0
    sample_pairs: int = 24
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("image_size", "batch_size", "max_keypoints", "vocabulary_words",
                     "neighbours", "rounds", "beyond_neighbours", "min_inliers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32 px, got {self.image_size}")
        if not 0.0 < self.max_null_rate < 1.0:
            raise ValueError(f"max_null_rate must be in (0, 1), got {self.max_null_rate}")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ValueError(f"max_pairs must be >= 1 or None, got {self.max_pairs}")

    def verify_config(self) -> VerifyConfig:
        return VerifyConfig(ratio=self.ratio, ransac_pixels=self.ransac_pixels)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VerifiedPair:
    """One verified pair: image indices (query, reference), inlier count, and whether the
    query matched mirrored."""

    query: int
    reference: int
    inliers: int
    mirrored: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SourceGroups:
    """Source groups of one set. See the `audit.groups` docstring for what each number means."""

    group: np.ndarray               # (N,) int64 group id per image, 0.., numbered by first image
    threshold: int                  # inliers a verified pair needs to link two images
    null: NullStatistics            # the null the threshold was calibrated on
    graph: GraphSummary             # edges found, kept, dropped by the chaining guard
    pairs_examined: int             # candidate pairs verified (all rounds)
    null_pairs_examined: int        # null (other-class) pairs verified
    rounds: int                     # candidate rounds run (the last found no new link)
    sample: tuple[VerifiedPair, ...]  # verified pairs: seeded sample + the weakest links kept
    timings: dict[str, float]       # seconds per stage
    keypoints_median: float         # median SIFT keypoints per image
    config: GroupConfig = field(default_factory=GroupConfig)

    @property
    def n_groups(self) -> int:
        return int(self.group.max()) + 1 if len(self.group) else 0

    @property
    def sizes(self) -> np.ndarray:
        """(n_groups,) images per group, by group id."""
        return np.bincount(self.group, minlength=self.n_groups)

    def size_distribution(self) -> dict:
        sizes = self.sizes
        if sizes.size == 0:
            return {"singletons": 0, "median": None, "p90": None, "max": None}
        return {"singletons": int(np.sum(sizes == 1)), "median": float(np.median(sizes)),
                "p90": float(np.quantile(sizes, 0.9)), "max": int(sizes.max())}

    def per_class(self, dataset: Dataset) -> dict[str, dict[str, int]]:
        """{class: {"images", "groups"}}: how many distinct source cells stand behind each
        class of `dataset` (the set these groups were discovered on)."""
        if len(dataset) != len(self.group):
            raise ValueError(f"{len(dataset)} images in '{dataset.name}', groups for "
                             f"{len(self.group)}")
        labels = np.asarray(dataset.labels)
        return {name: {"images": int(np.sum(labels == c)),
                       "groups": int(len(np.unique(self.group[labels == c])))}
                for c, name in enumerate(dataset.class_names)}

    def labels(self, prefix: str = "src") -> np.ndarray:
        """Group names per image ("src-<id>") for a manifest or a group-aware split."""
        return np.array([f"{prefix}-{g}" for g in self.group], dtype=object)

    def to_dict(self) -> dict:
        """JSON-able summary (no per-image arrays)."""
        return {"n_images": int(len(self.group)), "n_groups": self.n_groups,
                "sizes": self.size_distribution(), "threshold": self.threshold,
                "null": self.null.to_dict(), "graph": self.graph.to_dict(),
                "pairs_examined": self.pairs_examined,
                "null_pairs_examined": self.null_pairs_examined, "rounds": self.rounds,
                "keypoints_median": self.keypoints_median,
                "sample": [p.to_dict() for p in self.sample],
                "timings": self.timings, "config": self.config.to_dict()}


@dataclass(frozen=True)
class SourceMatches:
    """Per query image: the reference image it is a verified copy of (-1: none) and the best
    inlier count among its candidates (0 when none verified)."""

    index: np.ndarray      # (N,) int64
    inliers: np.ndarray    # (N,) int64, best over the candidates
    threshold: int
    null: NullStatistics
    pairs_examined: int
    null_pairs_examined: int
    timings: dict[str, float]
    config: GroupConfig = field(default_factory=GroupConfig)

    @property
    def has_copy(self) -> np.ndarray:
        return self.index >= 0

    @property
    def share(self) -> float:
        """Share of the query set with a verified copy in the reference set."""
        return float(self.has_copy.mean()) if len(self.index) else float("nan")

    def to_dict(self) -> dict:
        return {"n_images": int(len(self.index)), "with_copy": int(self.has_copy.sum()),
                "share": self.share if len(self.index) else None, "threshold": self.threshold,
                "null": self.null.to_dict(), "pairs_examined": self.pairs_examined,
                "null_pairs_examined": self.null_pairs_examined, "timings": self.timings,
                "config": self.config.to_dict()}


def _verify(query: Keypoints, reference: Keypoints, rows: np.ndarray, cols: np.ndarray,
            config: GroupConfig, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Verify pairs on worker threads (OpenCV releases the GIL), in fixed chunks."""
    verify = config.verify_config()
    starts = list(range(0, len(rows), _VERIFY_CHUNK * 8))
    inliers, mirrored = [], []
    for start in progress(starts, desc=desc, total=len(starts), unit="block"):
        stop = min(start + _VERIFY_CHUNK * 8, len(rows))
        index = np.arange(start, stop)
        parts = map_chunks(lambda part: verify_pairs(query, reference, rows[part], cols[part],
                                                     verify), index, chunk=_VERIFY_CHUNK)
        inliers += [p[0] for p in parts]
        mirrored += [p[1] for p in parts]
    if not inliers:
        return np.empty(0, np.int64), np.empty(0, bool)
    return np.concatenate(inliers), np.concatenate(mirrored)


def _null_queries(labels: np.ndarray, config: GroupConfig) -> np.ndarray:
    """Seeded sample of images whose other-class neighbours make the null."""
    return subsample(len(labels), config.max_null_images,
                     rng=seeds.rng(config.seed, "groups", "null_queries"))


def _dedupe(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unordered pairs once each (i < j), sorted."""
    lo, hi = np.minimum(rows, cols), np.maximum(rows, cols)
    pairs = np.unique(np.stack([lo, hi], axis=1), axis=0) if len(lo) else np.empty((0, 2), int)
    return pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)


def _sample(rows, cols, inliers, mirrored, threshold, config) -> tuple[VerifiedPair, ...]:
    """Half a seeded sample of linked pairs, half the weakest links (what a reviewer checks)."""
    linked = np.flatnonzero(inliers >= threshold)
    if linked.size == 0:
        return ()
    half = max(1, config.sample_pairs // 2)
    rng = seeds.rng(config.seed, "groups", "pair_sample")
    random_part = rng.choice(linked, min(half, linked.size), replace=False)
    weakest = linked[np.lexsort((linked, inliers[linked]))][:half]
    chosen = list(dict.fromkeys([*sorted(random_part.tolist()), *weakest.tolist()]))
    return tuple(VerifiedPair(int(rows[k]), int(cols[k]), int(inliers[k]), bool(mirrored[k]))
                 for k in chosen)


def discover_groups(dataset: Dataset, *, config: GroupConfig | None = None) -> SourceGroups:
    """Group the images of `dataset` by the source cell they are copies of.

    Keypoints (streamed, at `config.image_size`) -> candidate pairs (each image's
    `neighbours` most similar images of its class in a bag-of-words embedding, within
    `max_pairs`) -> geometric verification (inliers of an affine RANSAC fit, the image also
    mirrored) -> threshold calibrated on other-class pairs -> connected components of the
    links, each link strong or confirmed by a triangle -> `rounds - 1` more rounds in which
    each image's candidates are its most similar images *outside* its current group (the
    links that its own copies crowded out of the first round). Deterministic for a seed.
    """
    config = config or GroupConfig()
    started = time.perf_counter()
    keypoints = extract_keypoints(dataset, image_size=config.image_size,
                                  max_keypoints=config.max_keypoints,
                                  contrast_threshold=config.contrast_threshold,
                                  batch_size=config.batch_size, desc="keypoints")
    seconds = time.perf_counter() - started
    return groups_from_keypoints(keypoints, np.asarray(dataset.labels), config=config,
                                 timings={"keypoints": seconds})


def groups_from_keypoints(keypoints: Keypoints, labels: np.ndarray, *, config: GroupConfig,
                          timings: dict[str, float] | None = None) -> SourceGroups:
    """`discover_groups` on keypoints already extracted (labels: int class per image)."""
    timings = dict(timings or {})
    timings.setdefault("keypoints", 0.0)
    for stage in ("candidates", "verification", "grouping"):
        timings[stage] = 0.0
    n = len(keypoints)
    labels = np.asarray(labels)

    started = time.perf_counter()
    vocabulary = fit_vocabulary([keypoints], words=config.vocabulary_words,
                                seed=seeds.child_seed(config.seed, "groups", "vocabulary"))
    (embedding,) = bow_embeddings([keypoints], vocabulary)
    classes = labels if config.within_class else np.zeros(n, np.int64)
    budget = config.max_pairs if config.max_pairs is not None else config.neighbours * n
    k = max(1, min(config.neighbours, budget // max(n, 1)))
    rows, cols = _dedupe(*nearest_pairs(embedding, embedding, classes, classes, k=k,
                                        same_class=True, same_set=True))
    null_q = _null_queries(labels, config)
    n_rows, n_cols = nearest_pairs(embedding[null_q], embedding, labels[null_q], labels,
                                   k=config.null_neighbours, same_class=False, same_set=False)
    n_rows = null_q[n_rows]
    timings["candidates"] += time.perf_counter() - started

    started = time.perf_counter()
    inliers, mirrored = _verify(keypoints, keypoints, rows, cols, config, "verify pairs")
    null_inliers, null_mirrored = _verify(keypoints, keypoints, n_rows, n_cols, config,
                                          "verify null")
    timings["verification"] += time.perf_counter() - started

    started = time.perf_counter()
    threshold, null, cross = calibrate_threshold(null_inliers, minimum=config.min_inliers,
                                                 max_rate=config.max_null_rate)
    strong = int(np.ceil(config.strong_factor * threshold))
    examined = len(rows)
    # copies filed under two labels are copies all the same: they link their groups
    rows, cols = np.r_[rows, n_rows[cross]], np.r_[cols, n_cols[cross]]
    inliers, mirrored = np.r_[inliers, null_inliers[cross]], np.r_[mirrored, null_mirrored[cross]]
    group, graph = guarded_components(n, rows, cols, inliers, threshold=threshold, strong=strong)
    timings["grouping"] += time.perf_counter() - started

    rounds_run = 1
    for _ in range(config.rounds - 1):
        left = budget - examined
        if left < 1:
            break
        started = time.perf_counter()
        k = max(1, min(config.beyond_neighbours, left // max(n, 1)))
        new_rows, new_cols = _dedupe(*nearest_pairs(embedding, embedding, classes, classes, k=k,
                                                     same_class=True, same_set=True,
                                                     groups=group))
        seen = set(zip(np.minimum(rows, cols).tolist(), np.maximum(rows, cols).tolist(),
                       strict=True))
        fresh = np.array([(a, b) not in seen for a, b in zip(new_rows.tolist(),
                                                             new_cols.tolist(), strict=True)],
                         dtype=bool)
        new_rows, new_cols = new_rows[fresh][:left], new_cols[fresh][:left]
        timings["candidates"] += time.perf_counter() - started
        if len(new_rows) == 0:
            break
        started = time.perf_counter()
        new_inliers, new_mirrored = _verify(keypoints, keypoints, new_rows, new_cols, config,
                                            "verify beyond groups")
        timings["verification"] += time.perf_counter() - started
        examined += len(new_rows)
        rounds_run += 1
        started = time.perf_counter()
        rows, cols = np.r_[rows, new_rows], np.r_[cols, new_cols]
        inliers, mirrored = np.r_[inliers, new_inliers], np.r_[mirrored, new_mirrored]
        before = group.max() if n else 0
        group, graph = guarded_components(n, rows, cols, inliers, threshold=threshold,
                                          strong=strong)
        timings["grouping"] += time.perf_counter() - started
        if (group.max() if n else 0) == before:
            break  # no group joined: further rounds would find the same candidates

    counts = keypoints.counts()
    return SourceGroups(group=group, threshold=threshold, null=null, graph=graph,
                        pairs_examined=int(examined), null_pairs_examined=int(len(n_rows)),
                        rounds=rounds_run,
                        sample=_sample(rows, cols, inliers, mirrored, threshold, config),
                        timings={key: round(value, 3) for key, value in timings.items()},
                        keypoints_median=float(np.median(counts)) if len(counts) else 0.0,
                        config=config)


def match_sources(query_dataset: Dataset, reference_dataset: Dataset, *,
                  config: GroupConfig | None = None) -> SourceMatches:
    """For each image of `query_dataset`, a verified copy in `reference_dataset` (or -1).

    Candidates: each query's `neighbours` most similar references of its class; the null:
    its `null_neighbours` most similar references of other classes. The classes are matched
    by name, so the two sets may order them differently.
    """
    config = config or GroupConfig()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    common = dict(image_size=config.image_size, max_keypoints=config.max_keypoints,
                  contrast_threshold=config.contrast_threshold, batch_size=config.batch_size)
    query = extract_keypoints(query_dataset, desc="keypoints (query)", **common)
    reference = extract_keypoints(reference_dataset, desc="keypoints (reference)", **common)
    timings["keypoints"] = time.perf_counter() - started
    names = sorted(set(query_dataset.class_names) | set(reference_dataset.class_names))
    q_labels = np.array([names.index(query_dataset.class_names[c])
                         for c in query_dataset.labels], dtype=np.int64)
    r_labels = np.array([names.index(reference_dataset.class_names[c])
                         for c in reference_dataset.labels], dtype=np.int64)
    return matches_from_keypoints(query, reference, q_labels, r_labels, config=config,
                                  timings=timings)


def matches_from_keypoints(query: Keypoints, reference: Keypoints, query_labels: np.ndarray,
                           reference_labels: np.ndarray, *, config: GroupConfig,
                           timings: dict[str, float] | None = None) -> SourceMatches:
    """`match_sources` on keypoints already extracted (labels: int classes, one numbering)."""
    timings = dict(timings or {})
    timings.setdefault("keypoints", 0.0)
    q_labels, r_labels = np.asarray(query_labels), np.asarray(reference_labels)
    started = time.perf_counter()
    vocabulary = fit_vocabulary([query, reference], words=config.vocabulary_words,
                                seed=seeds.child_seed(config.seed, "groups", "match_vocabulary"))
    q_emb, r_emb = bow_embeddings([query, reference], vocabulary)
    if config.within_class:
        q_cls, r_cls = q_labels, r_labels
    else:
        q_cls, r_cls = np.zeros_like(q_labels), np.zeros_like(r_labels)
    n = len(query)
    budget = config.max_pairs if config.max_pairs is not None else config.neighbours * n
    k = max(1, min(config.neighbours, budget // max(n, 1)))
    rows, cols = nearest_pairs(q_emb, r_emb, q_cls, r_cls, k=k, same_class=True, same_set=False)
    null_q = _null_queries(q_labels, config)
    n_rows, n_cols = nearest_pairs(q_emb[null_q], r_emb, q_labels[null_q], r_labels,
                                   k=config.null_neighbours, same_class=False, same_set=False)
    n_rows = null_q[n_rows]
    timings["candidates"] = time.perf_counter() - started

    started = time.perf_counter()
    inliers, _ = _verify(query, reference, rows, cols, config, "verify pairs")
    null_inliers, _ = _verify(query, reference, n_rows, n_cols, config, "verify null")
    timings["verification"] = time.perf_counter() - started

    threshold, null, _ = calibrate_threshold(null_inliers, minimum=config.min_inliers,
                                             max_rate=config.max_null_rate)
    best = np.zeros(n, np.int64)
    index = np.full(n, -1, np.int64)
    # per query, the best-scoring candidate (ties: the lower reference index)
    order = np.lexsort((cols, -inliers, rows))
    first = np.ones(len(order), bool)
    first[1:] = rows[order][1:] != rows[order][:-1]
    top = order[first]
    best[rows[top]] = inliers[top]
    hit = top[inliers[top] >= threshold]
    index[rows[hit]] = cols[hit]
    timings = {key: round(value, 3) for key, value in timings.items()}
    return SourceMatches(index=index, inliers=best, threshold=threshold, null=null,
                         pairs_examined=int(len(rows)), null_pairs_examined=int(len(n_rows)),
                         timings=timings, config=config)
