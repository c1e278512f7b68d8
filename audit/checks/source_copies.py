"""Verified source copies for the leakage check: which images are augmented copies of one cell.

Per-image hashes and embeddings do not see through rotation, shift and shear, and the
set-level estimate gives a share without saying which images are copies. Keypoints with
geometric verification (`audit.groups`) do: each evaluation set gets its source groups
(`discover_groups`: how many distinct cells stand behind each class, and the bootstrap groups
of its intervals) and, when a training set is given, its verified copies in training
(`match_sources`: the share with a copy, accuracy with and without one).

Off by default (`source_groups = false`). Discovery costs about 0.1 s per image on 2 CPU
cores at 224 px on real crops (2,000 images: about 207 s, bench/bench_groups.py; 0.04 s on
the simpler synthetic cells), against under 2 s for all the other leakage work on such sets.
The PBC case-study audit (1,851 images, docs/case-study.md) takes 248 s; discovery would add
about 185 s (75%) to it, and about 17 minutes to an audit of 10,000 images, on every run, for
a problem (sets built from augmented copies) that the near-duplicate and set-level signals
already flag when it is large. The report says it was not run and how to turn it on.
Switched on, it is bounded: at most `source_groups_max_images` images per set, a sample
seeded from the audit seed beyond that (`examined`, `sampled` in audit.json).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np

from audit.checks.base import AuditContext, DatasetView
from audit.groups import GroupConfig, SourceGroups, SourceMatches
from audit.groups.discover import groups_from_keypoints, matches_from_keypoints
from audit.groups.features import Keypoints, extract_keypoints
from audit.sampling import subsample
from audit.stats import rate_ci

__all__ = ["HOW_TO_ENABLE", "FEW_CELLS_COPY_RATIO", "SetSources", "SourceDiscovery",
           "attach_sources", "discover_sources", "groups_summary", "verified_copies",
           "few_cell_classes"]

HOW_TO_ENABLE = ("--set checks.leakage.source_groups=true (or [checks.leakage] source_groups "
                 "= true in the config): about 0.1 s per image at 224 px, at most "
                 "source_groups_max_images images per set")
# A class counts as resting on few cells only when copies at least double its apparent size:
# a class of 8 images from 8 cells is small (the performance check's intervals say so), not
# inflated.
FEW_CELLS_COPY_RATIO = 2.0


@dataclass(frozen=True)
class SetSources:
    """Keypoints and source groups of the examined images of one set."""

    name: str
    examined: np.ndarray          # sorted indices into the set of the images examined
    n_images: int                 # images in the set
    keypoints: Keypoints
    groups: SourceGroups | None   # None for the training set (only matched against)

    @property
    def complete(self) -> bool:
        return len(self.examined) == self.n_images

    def group_labels(self) -> np.ndarray | None:
        """Discovered group per image of the whole set ("src-<id>"), None when only a sample
        was examined (the other images have no group)."""
        if self.groups is None or not self.complete:
            return None
        return self.groups.labels()


@dataclass(frozen=True)
class SourceDiscovery:
    config: GroupConfig
    sets: dict[str, SetSources]
    matches: dict[str, SourceMatches]   # evaluation set -> its copies in training (examined)


def discover_sources(ctx: AuditContext, opts, *, check: str) -> SourceDiscovery:
    """Keypoints of each evaluation set (and train) once; source groups within each
    evaluation set; verified copies of each evaluation set in train."""
    config = GroupConfig(image_size=opts.source_groups_image_size, seed=ctx.seed)
    cap = opts.source_groups_max_images
    views = [*ctx.evaluated, *([ctx.train] if ctx.train is not None else [])]
    sets = {}
    for view in views:
        # Every image up to `cap`, else a uniform (class-blind) seeded sample of `cap`.
        examined = subsample(len(view), cap, rng=ctx.rng(check, "sources", view.name))
        keypoints = extract_keypoints(view.dataset.subset(examined), image_size=config.image_size,
                                      max_keypoints=config.max_keypoints,
                                      contrast_threshold=config.contrast_threshold,
                                      batch_size=config.batch_size,
                                      desc=f"keypoints {view.name}")
        groups = None
        if view.role != "train" and len(examined):
            groups = groups_from_keypoints(keypoints, view.labels[examined], config=config)
        sets[view.name] = SetSources(view.name, examined, len(view), keypoints, groups)
    matches = {}
    if ctx.train is not None:
        train = sets[ctx.train.name]
        for view in ctx.evaluated:
            q = sets[view.name]
            if len(q.examined) and len(train.examined):
                matches[view.name] = matches_from_keypoints(
                    q.keypoints, train.keypoints, view.labels[q.examined],
                    ctx.train.labels[train.examined], config=config)
    return SourceDiscovery(config, sets, matches)


def attach_sources(ctx: AuditContext, *, check: str = "leakage") -> SourceDiscovery:
    """Discover source groups once per audit (`ctx.sources`) and give every set without a
    group column that was examined whole its discovered groups, so every check's intervals
    resample cells rather than images. The runner calls this before any check runs; the
    leakage check calls it when run on its own."""
    if ctx.sources is None and ctx.sources_error is not None:
        raise ctx.sources_error  # the runner's attempt failed: report it, do not redo it
    if ctx.sources is None:
        ctx.sources = discover_sources(ctx, ctx.options(check), check=check)
    for name, found in ctx.sources.sets.items():
        view = ctx.views[name]
        labels = found.group_labels()
        if not view.has_group_column and labels is not None:
            ctx.views[name] = replace(view, discovered_groups=labels)
    return ctx.sources


def _relative(view: DatasetView, index: int) -> str:
    return os.path.relpath(view.dataset.paths[index], view.dataset.root)


def groups_summary(view: DatasetView, sources: SetSources, *, max_pairs: int) -> dict:
    """audit.json entry of one evaluation set's source groups (no timings: they vary between
    identical runs)."""
    g = sources.groups
    out = {"n_images": sources.n_images, "examined": int(len(sources.examined)),
           "sampled": not sources.complete, "n_groups": 0, "sizes": None, "per_class": {},
           "threshold": None, "null": None, "pairs_examined": 0, "sample": []}
    if g is None:
        return out
    subset = view.dataset.subset(sources.examined)
    pick = sources.examined
    out.update(n_groups=g.n_groups, sizes=g.size_distribution(), per_class=g.per_class(subset),
               threshold=g.threshold, null=g.null.to_dict(), pairs_examined=g.pairs_examined,
               graph=g.graph.to_dict(),
               sample=[{"path": _relative(view, pick[p.query]),
                        "match_path": _relative(view, pick[p.reference]),
                        "inliers": p.inliers, "mirrored": p.mirrored}
                       for p in g.sample[:max_pairs]])
    return out


def verified_copies(view: DatasetView, train: DatasetView, sources: SetSources,
                    train_sources: SetSources, matches: SourceMatches, *,
                    max_examples: int) -> dict:
    """Share of the examined images of `view` with a verified copy in training, and accuracy
    with and without one: exact (Clopper-Pearson) intervals, counted in discovered cells
    rather than images (Korn-Graubard effective size over the discovered groups)."""
    has = matches.has_copy
    correct = view.correct[sources.examined]
    groups = sources.groups.group if sources.groups is not None else None

    def rate(hits: np.ndarray, members: np.ndarray) -> dict | None:
        if not members.any():
            return None
        return rate_ci(hits[members], groups=None if groups is None else groups[members])

    everyone = np.ones(len(has), bool)
    strongest = np.flatnonzero(has)[np.argsort(-matches.inliers[has], kind="stable")]
    return {"n_examined": int(len(has)), "n_images": sources.n_images,
            "sampled": not sources.complete,
            "reference_examined": int(len(train_sources.examined)),
            "reference_sampled": not train_sources.complete,
            "n_with_copy": int(has.sum()), "share": rate(has, everyone),
            "accuracy": {"with_copy": rate(correct, has), "without_copy": rate(correct, ~has)},
            "threshold": matches.threshold, "null": matches.null.to_dict(),
            "pairs_examined": matches.pairs_examined,
            "examples": [{"path": _relative(view, sources.examined[i]),
                          "match_path": _relative(train, train_sources.examined[
                              matches.index[i]]),
                          "inliers": int(matches.inliers[i])}
                         for i in strongest[:max_examples]]}


def few_cell_classes(view: DatasetView, sources: SetSources, *, max_cells: int) -> list[dict]:
    """Classes of `view` whose examined images come from at most `max_cells` discovered
    cells, copies at least doubling their size: {class, images, cells, recall} with recall's
    interval counted in cells."""
    if sources.groups is None:
        return []
    labels = view.labels[sources.examined]
    correct = view.correct[sources.examined]
    group = sources.groups.group
    out = []
    for c, name in enumerate(view.dataset.class_names):
        member = labels == c
        images = int(member.sum())
        cells = int(len(np.unique(group[member])))
        if images and cells <= max_cells and images >= FEW_CELLS_COPY_RATIO * cells:
            out.append({"class": name, "images": images, "cells": cells,
                        "recall": rate_ci(correct[member], groups=group[member])})
    return out
