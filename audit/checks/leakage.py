"""Leakage: copies of one cell on both sides of a split, or many times within one set.

An image has a near-copy in a reference set when a file there is byte-identical (SHA-1), its
pHash lies within `max_hash_distance` bits (in any of 8 rotations/mirrorings when the
outputs hold `dihedral_hashes`), or the model's embeddings have cosine similarity of at least
`cosine_min`. Both thresholds are checked against a null measured on the sets at hand -
each image's nearest neighbour of another class, which cannot be its copy - and tightened
until at most `max_null_rate` of that null would count as copies: embeddings that make all
images alike (an untrained model) then match nothing instead of everything.

Evaluation sets are compared with train, shifted sets with the heldout set, and every set
with itself (copies inflate the apparent sample size).
"""

from __future__ import annotations

import os
import re

import numpy as np

from audit.checks.base import AuditContext, Check, DatasetView, register
from audit.duplicates import (
    DEFAULT_MAX_DISTANCE,
    Matches,
    calibrated_cosine_threshold,
    calibrated_hash_threshold,
    cross_class_null,
    file_digests,
    find_matches,
    nearest_embedding_matches,
    nearest_hash_matches,
)
from audit.results import CheckResult, Finding, Status
from audit.stats import bootstrap_ci

__all__ = ["accuracy_by_copy", "leak_gap_share", "LeakageCheck"]

_SPLIT_ACTION = ("use a group-aware validation split (near-duplicate clusters as groups): "
                 "`audit train --group-split near-duplicates`")
_MIN_NULL = 20  # fewer cross-class pairs than this: thresholds are used as configured
_NULL_SAMPLE = 2000  # query images sampled for the null


def accuracy_by_copy(correct: np.ndarray, near_copy: np.ndarray, *, n_boot: int,
                     rng: np.random.Generator, groups: np.ndarray | None, min_n: int) -> dict:
    """Accuracy {value, low, high} on images with and without a near-copy (None if empty);
    the interval only from `min_n` images up, resampling whole groups when known."""
    out = {}
    for key, members in (("with_copy", near_copy), ("without_copy", ~near_copy)):
        idx = np.flatnonzero(members)
        if idx.size == 0:
            out[key] = None
        elif idx.size < min_n:
            out[key] = {"value": float(correct[idx].mean()), "low": None, "high": None}
        else:
            sub = correct[idx]
            out[key] = bootstrap_ci(lambda i, sub=sub: sub[i].mean(), idx.size, n_boot=n_boot,
                                    rng=rng, groups=None if groups is None else groups[idx])
    return out


def leak_gap_share(acc_ref: float, acc_ref_without_copy: float, acc_shifted: float) -> float | None:
    """Fraction of the reference -> shifted gap explained by copies inflating the reference,
    clipped to [0, 1]; None when there is no positive gap."""
    gap = acc_ref - acc_shifted
    if not np.isfinite(gap) or gap <= 0 or not np.isfinite(acc_ref_without_copy):
        return None
    return float(np.clip((acc_ref - acc_ref_without_copy) / gap, 0.0, 1.0))


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.0f}%"


def _key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


class _Set:
    """What the check compares for one view: labels, hashes, embeddings, file digests."""

    def __init__(self, view: DatasetView, use_embeddings: bool):
        self.labels = view.labels
        self.hashes = np.asarray(view.outputs.phash)
        emb = np.asarray(view.outputs.embeddings)
        self.embeddings = emb if use_embeddings and emb.size and np.any(emb) else None
        self.digests = file_digests(view.dataset.paths)


def _thresholds(q: _Set, r: _Set, cfg: dict, rng: np.random.Generator) -> dict:
    """Hash and cosine thresholds for one comparison, tightened against the cross-class null
    (of at most `_NULL_SAMPLE` query images, so the null costs little on large sets)."""
    max_rate, hash_max = float(cfg["max_null_rate"]), int(cfg["max_hash_distance"])
    use_emb = q.embeddings is not None and r.embeddings is not None
    out = {"hash": hash_max, "cosine": float(cfg["cosine_min"]) if use_emb else None,
           "n_null": 0, "null_hash_rate": None, "null_cosine_rate": None}
    if not cfg["calibrate"]:
        return out
    sample = np.arange(len(q.labels))
    if sample.size > _NULL_SAMPLE:
        sample = np.sort(rng.choice(sample, _NULL_SAMPLE, replace=False))
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


def _compare(q: _Set, r: _Set, thresholds: dict, same_set: bool) -> Matches:
    cosine = thresholds["cosine"]
    return find_matches(q.hashes, r.hashes, query_digests=q.digests, ref_digests=r.digests,
                        query_embeddings=q.embeddings, ref_embeddings=r.embeddings,
                        max_hash_distance=thresholds["hash"],
                        cosine_min=np.inf if cosine is None else cosine, same_set=same_set)


def _examples(q: DatasetView, r: DatasetView, m: Matches, limit: int) -> list[dict]:
    idx = np.flatnonzero(m.near_copy)
    cos = np.nan_to_num(m.cosine, nan=-1.0)
    idx = idx[np.lexsort((-cos[idx], m.hash_distance[idx], m.exact_index[idx] < 0))][:limit]
    match = m.match_index
    return [{"path": os.path.relpath(q.dataset.paths[i], q.dataset.root),
             "match_path": os.path.relpath(r.dataset.paths[match[i]], r.dataset.root),
             "exact": bool(m.exact_index[i] >= 0), "hash_distance": int(m.hash_distance[i]),
             "cosine": float(m.cosine[i])} for i in idx]


def _summary_of(q: DatasetView, r: DatasetView, m: Matches, thresholds: dict, cfg: dict) -> dict:
    match, near = m.match_index, m.near_copy
    copies = np.flatnonzero(near)
    return {"n_with_copy": int(copies.size), "share": float(near.mean()) if near.size else 0.0,
            "by_criterion": {"exact": int((m.exact_index >= 0).sum()), "hash": int(m.by_hash.sum()),
                             "embedding": int(m.by_embedding.sum())},
            "thresholds": {**thresholds, "embeddings": _embedding_use(thresholds["cosine"])},
            "label_conflicts": int((q.labels[copies] != r.labels[match[copies]]).sum()),
            "nearest_hash_distance": _quartiles(m.hash_distance),
            "nearest_cosine": _quartiles(m.cosine),
            "examples": _examples(q, r, m, int(cfg["max_examples"]))}


def _embedding_use(cosine: float | None) -> str:
    """'used', 'unused' (none, or switched off) or 'uninformative' (calibrated above 1)."""
    return "unused" if cosine is None else "uninformative" if cosine > 1 else "used"


def _quartiles(values: np.ndarray) -> dict | None:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    q = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0])
    return dict(zip(("min", "q25", "median", "q75", "max"), q.tolist(), strict=True))


@register
class LeakageCheck(Check):
    name = "leakage"
    description = "Exact and near-duplicate images shared between train, heldout and shifted sets"
    DEFAULTS = {
        "max_hash_distance": DEFAULT_MAX_DISTANCE,  # pHash bits (measured: audit.duplicates)
        "use_embeddings": True,      # also match by the model's embedding cosine similarity
        # Cosine at or above this: a near-copy. Unrelated PBC cells reach 0.953 (99th pct
        # 0.94) in ImageNet MobileNetV2 features; augmented copies (kaggle_bloodcells, random
        # rotation/shift/shear/flip) mostly lie at 0.90-0.97, so lower it (e.g. 0.92) for
        # heavily augmented data: calibration keeps false matches in check.
        "cosine_min": 0.95,
        "calibrate": True,           # tighten thresholds against the cross-class null
        "max_null_rate": 0.005,      # ... until at most this share of unrelated pairs match
        "leak_share_warn": 0.01,     # share of an evaluation set with a copy in train: WARN
        "leak_share_fail": 0.10,     # ... above this: FAIL
        "max_examples": 10,          # example pairs listed per comparison
        "n_boot": 1000,              # bootstrap resamples for accuracy with/without copy
        "min_ci_n": 10,              # fewer images: accuracy without an interval
    }

    def run(self, ctx: AuditContext) -> CheckResult:
        cfg = ctx.check_config(self.name)
        sets = {name: _Set(v, bool(cfg["use_embeddings"])) for name, v in ctx.views.items()}
        # Within-set first: its clusters are the bootstrap groups of the cross-set comparisons.
        pairs = [(v.name, v.name) for v in ctx.views.values()]
        if ctx.train is not None:
            pairs += [(v.name, ctx.train.name) for v in ctx.evaluated]
        pairs += [(v.name, ctx.reference.name) for v in ctx.shifted]
        datasets = {name: {"role": v.role, "n": len(v), "against": {}}
                    for name, v in ctx.views.items()}
        arrays, groups = {}, {}
        for q_name, r_name in pairs:
            q, r = ctx.views[q_name], ctx.views[r_name]
            thresholds = _thresholds(sets[q_name], sets[r_name], cfg,
                                     ctx.rng(self.name, "null", q_name, r_name))
            m = _compare(sets[q_name], sets[r_name], thresholds, same_set=q_name == r_name)
            entry = _summary_of(q, r, m, thresholds, cfg)
            if q_name == r_name:
                clusters = m.clusters()
                groups[q_name] = q.groups if q.groups is not None else clusters
                n_unique = int(clusters.max() + 1) if len(q) else 0
                entry.update(n_unique=n_unique, effective_share=n_unique / max(len(q), 1))
            if q.role != "train":
                entry["accuracy"] = accuracy_by_copy(
                    q.correct, m.near_copy, n_boot=int(cfg["n_boot"]),
                    rng=ctx.rng(self.name, q_name, r_name), groups=groups[q_name],
                    min_n=int(cfg["min_ci_n"]))
            if q_name == r_name:
                datasets[q_name]["within"] = entry
            else:
                datasets[q_name]["against"][r_name] = entry
            for field in ("hash_index", "hash_distance", "embedding_index", "cosine",
                          "exact_index", "near_copy", "match_index"):
                arrays[f"{_key(q_name)}__{_key(r_name)}__{field}"] = getattr(m, field)
        cross = [(q, r, d["against"][r]["share"]) for q, d in datasets.items()
                 for r in d["against"]]
        leaked = max((s for _, _, s in cross), default=0.0)
        status = (Status.FAIL if leaked > cfg["leak_share_fail"] else
                  Status.WARN if leaked > cfg["leak_share_warn"] else Status.PASS)
        ref_set = sets[ctx.reference.name]
        metrics = {"max_hash_distance": int(cfg["max_hash_distance"]),
                   "hash_orientations": int(ref_set.hashes.shape[1]) if ref_set.hashes.ndim == 2
                   else 1,
                   "cosine_min": float(cfg["cosine_min"]) if ref_set.embeddings is not None
                   else None,
                   "uninformative_embeddings": [
                       f"within {q}" if q == r else f"{q} against {r}"
                       for q, d in datasets.items()
                       for r, e in [(q, d["within"]), *d["against"].items()]
                       if e["thresholds"]["embeddings"] == "uninformative"],
                   "leaked_share": leaked, "datasets": datasets}
        summary = _summary(ctx, datasets, cross)
        off = metrics["uninformative_embeddings"]
        if off:
            where = ", ".join(off) if len(off) <= 2 else f"{len(off)} comparisons (e.g. {off[-1]})"
            summary += (f" Embedding matching was off for {where}: images of different classes "
                        "are as alike as copies in this model's embeddings.")
        return CheckResult(self.name, status, summary, metrics=metrics,
                           findings=_findings(self.name, ctx, datasets, cfg),
                           artifacts={"matches": ctx.save_artifact("leakage", **arrays)})


def _summary(ctx: AuditContext, datasets: dict, cross: list) -> str:
    if not cross:
        w = datasets[ctx.reference.name]["within"]
        return (f"No train or shifted set to compare; {_pct(w['share'])} of {ctx.reference.name} "
                f"images have a near-copy within the set (at most {w['n_unique']} distinct of "
                f"{len(ctx.reference)}).")
    return "; ".join(f"{_pct(s)} of {q} images have a near-copy in {r}" for q, r, s in cross) + "."


def _findings(check: str, ctx: AuditContext, datasets: dict, cfg: dict) -> list[Finding]:
    findings, ref, warn = [], ctx.reference, cfg["leak_share_warn"]
    train = ctx.train
    acc = {v.name: float(v.correct.mean()) for v in ctx.evaluated}
    if train is not None:
        entry = datasets[ref.name]["against"][train.name]
        without = entry["accuracy"]["without_copy"]
        if entry["share"] > warn:
            acc_without = without["value"] if without else float("nan")
            ci = (f" (95% CI {_pct(without['low'])}-{_pct(without['high'])})"
                  if without and without["low"] is not None else "")
            base = (f"{_pct(entry['share'])} of {ref.name} images have a near-copy in "
                    f"{train.name}; on the others accuracy is {_pct(acc_without)}{ci}")
            gaps = [(v, leak_gap_share(acc[ref.name], acc_without, acc[v.name]))
                    for v in ctx.shifted]
            gaps = [(v, g) for v, g in gaps if g is not None]
            evidence = {"share": entry["share"], "accuracy": entry["accuracy"],
                        "reference_accuracy": acc[ref.name]}
            for v, g in gaps:
                findings.append(Finding(
                    check=check, dataset=v.name, kind="train_leak", gap_share=g,
                    impact=max(acc[ref.name] - acc_without, 0.0) if np.isfinite(acc_without) else 0.0,
                    text=f"{base}, {'close to' if g >= 0.5 else 'against'} {v.name} accuracy "
                         f"of {_pct(acc[v.name])} ({_pct(acc[ref.name])} on all {ref.name} "
                         f"images): copies explain {_pct(g)} of the gap.",
                    action=_SPLIT_ACTION, evidence={**evidence, "shifted_accuracy": acc[v.name]}))
            if not gaps:
                inflation = acc[ref.name] - acc_without if np.isfinite(acc_without) else 0.0
                findings.append(Finding(
                    check=check, dataset=ref.name, kind="train_leak", impact=max(inflation, 0.0),
                    text=f"{base}, against {_pct(acc[ref.name])} on all {ref.name} images.",
                    action=_SPLIT_ACTION,
                    evidence=evidence))
    for v in ctx.shifted:
        for r_name, entry in datasets[v.name]["against"].items():
            if entry["share"] <= warn:
                continue
            acc_with, acc_without = entry["accuracy"]["with_copy"], entry["accuracy"]["without_copy"]
            inflation = (acc_with["value"] - acc_without["value"]) * entry["share"] \
                if acc_with and acc_without else 0.0
            findings.append(Finding(
                check=check, dataset=v.name, kind="test_overlap", impact=max(inflation, 0.0),
                text=(f"{_pct(entry['share'])} of {v.name} images have a near-copy in {r_name}: "
                      f"accuracy {_pct(acc_with['value'] if acc_with else None)} on those, "
                      f"{_pct(acc_without['value'] if acc_without else None)} on the others."),
                action=f"remove images of cells already in {r_name} from {v.name} (deduplicate "
                       "test sets by source cell)",
                evidence={k: entry[k] for k in ("n_with_copy", "share", "accuracy")}))
    for name, d in datasets.items():
        w = d["within"]
        if w["share"] > warn and ctx.views[name].groups is None:
            findings.append(Finding(
                check=check, dataset=name, kind="within_duplicates", impact=0.0,
                text=(f"{name} holds {d['n']} images, of which at least {_pct(w['share'])} "
                      f"have a near-copy in the same set (at most {w['n_unique']} distinct "
                      "cells): intervals that treat them as independent are too narrow."),
                action="give each image its source cell or slide as a group (CSV manifest "
                       "path,label,group) so intervals and splits keep copies together",
                evidence={k: w[k] for k in ("n_with_copy", "share", "n_unique",
                                            "label_conflicts")}))
    return findings
