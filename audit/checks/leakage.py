"""Leakage: copies of one cell on both sides of a split, or many times within one set.

One module over 400 lines because its findings (per-image, set-level, within-set) read the
same per-comparison entries the run builds and share its wording; the engines that compute
those entries are in `audit.leakage`.

An image has a near-copy in a reference set when a file there is byte-identical (SHA-1), its
pHash lies within `max_hash_distance` bits (in any of 8 rotations/mirrorings when the
outputs hold `dihedral_hashes`), or the model's embeddings have cosine similarity of at least
`cosine_min`. Both thresholds are checked against a null measured on the sets at hand -
each image's nearest neighbour of another class, which cannot be its copy - and tightened
until at most `max_null_rate` of that null would count as copies: embeddings that make all
images alike (an untrained model) then match nothing instead of everything.

Evaluation sets are compared with train, shifted sets with the heldout set, and every set
with itself (copies inflate the apparent sample size).

Per-image thresholds miss augmented copies (rotation, shift, shear), so each comparison
also gets a set-level estimate: the share of copies read from the distribution of
nearest-neighbour scores against a class-matched null, a lower bound with a bootstrap
interval and a Mann-Whitney p-value, capped by `closer_in_reference`; how and why, with
the measurements behind it: `audit.leakage.set_level`. The engines behind this check live
in `audit.leakage` (per-image pairing, the set level, accuracy with and without copies).

With `source_groups` on (off by default: about 0.1 s per image), keypoint matching with
geometric verification (`audit.checks.source_copies`, `audit.groups`) says which images are
copies: each evaluation set's share with a verified copy in train and accuracy with and
without one (`verified`), its source groups (`sources`: how many distinct cells stand behind
each class; a class on a handful of cells is a `few_cells` finding, ranked first), and the
discovered groups as every check's bootstrap groups where a set has no group column.
"""

from __future__ import annotations

import re
from functools import partial

import numpy as np

from audit.checks.base import AuditContext, Check, DatasetView, register
from audit.checks.source_copies import (
    HOW_TO_ENABLE,
    SourceDiscovery,
    attach_sources,
    few_cell_classes,
    groups_summary,
    verified_copies,
)
from audit.checks.source_findings import few_cells_findings, verified_leak_findings
from audit.checks.source_findings import pct as _pct
from audit.leakage.accuracy import accuracy_by_copy, leak_gap_share
from audit.leakage.duplicates import DEFAULT_MAX_DISTANCE
from audit.leakage.neighbors import EXACT_MAX_PAIRS, SET_LEVEL_MAX_REFS
from audit.leakage.pairing import (
    ComparedSet,
    calibrated_thresholds,
    comparison_summary,
    distrust_class_clustered_embeddings,
    match_pairs,
    nearest_pairs,
)
from audit.leakage.set_level import estimate_set_level
from audit.options import between, count, fraction, one_of
from audit.results import CheckResult, Finding, Status

__all__ = ["LeakageCheck"]

_SPLIT_ACTION = ("use a group-aware validation split (near-duplicate clusters as groups): "
                 "`audit train --group-split near-duplicates`")
# Copies seen only in the similarity distribution are too altered (rotated, sheared, shifted)
# for near-duplicate clustering to group: on the Kaggle BCCD set it made 1,516 groups of 2,000
# images from 274 source cells, so copies still crossed the split.
_SOURCE_SPLIT_ACTION = ("split validation by source: give each image the cell, smear or patient "
                        "it comes from as its group (CSV manifest path,label,group) and train "
                        "with `audit train --group-split manifest`; near-duplicate clusters "
                        "cannot find copies this altered")


def _key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


@register
class LeakageCheck(Check):
    name = "leakage"
    description = "Exact and near-duplicate images shared between train, heldout and shifted sets"
    DEFAULTS = {
        "max_hash_distance": DEFAULT_MAX_DISTANCE,  # pHash bits (measured: audit.leakage.duplicates)
        "use_embeddings": True,      # also match by the model's embedding cosine similarity
        # Cosine at or above this: a near-copy. Unrelated PBC cells reach 0.953 (99th pct
        # 0.94) in ImageNet MobileNetV2 features; augmented copies (kaggle_bloodcells, random
        # rotation/shift/shear/flip) mostly lie at 0.90-0.97, so lower it (e.g. 0.92) for
        # heavily augmented data: calibration keeps false matches in check.
        "cosine_min": 0.95,
        "calibrate": True,           # tighten thresholds against the cross-class null
        "max_null_rate": 0.005,      # ... until at most this share of unrelated pairs match
        # Share of an evaluation set with a copy in train (per image, or the set level's
        # lower bound when significant) above this: WARN; above `leak_share_fail`: FAIL.
        "leak_share_warn": 0.01,
        "leak_share_fail": 0.10,
        "max_examples": 10,          # example pairs listed per comparison
        "n_boot": 1000,              # bootstrap resamples (accuracy with/without copy, set level)
        # Set level: share of copies estimated from the distribution of nearest-train
        # similarity against a class-matched null (see the module docstring).
        "set_level_quantile": 0.5,   # null quantile t of Storey's 1 - F_obs(t)/F_null(t)
        "set_level_alpha": 0.01,     # Mann-Whitney p below this: the CI's lower bound counts
        "set_level_min_n": 20,       # fewer images with both values: no estimate
        "min_ci_n": 10,              # fewer images: accuracy without an interval
        # Source groups (audit.checks.source_copies): keypoint matching with geometric
        # verification finds copies that rotation, shift and shear hide from hashes and
        # embeddings. Off by default: about 0.1 s per image, +75% on the PBC case-study
        # audit (source_copies docstring); on, bounded by `source_groups_max_images` per set.
        "source_groups": False,
        "source_groups_max_images": 2000,  # per set; beyond it, a seeded sample
        "source_groups_image_size": 224,   # px at which keypoints are found (not the model's)
        # A class whose images come from at most this many discovered cells (copies at least
        # doubling its size) is a first-rank finding: its recall says little about the class.
        "few_cells_max": 10,
        "max_group_pairs": 12,       # verified pairs per set kept for the report's thumbnails
    }
    LIMITS = {"max_hash_distance": count(0), "cosine_min": between(-1.0, 1.0),
              "max_null_rate": fraction(), "leak_share_warn": fraction(),
              "leak_share_fail": fraction(), "max_examples": count(0), "n_boot": count(100),
              "set_level_quantile": fraction(open_low=True), "set_level_alpha": fraction(open_low=True),
              "set_level_min_n": count(2), "min_ci_n": count(2),
              "source_groups": one_of(True, False), "source_groups_max_images": count(10),
              "source_groups_image_size": count(32), "few_cells_max": count(1),
              "max_group_pairs": count(0)}
    ORDER = (("leak_share_warn", "leak_share_fail"),)

    def run(self, ctx: AuditContext) -> CheckResult:
        opts = self.options(ctx)
        sets = {name: ComparedSet(v, opts.use_embeddings) for name, v in ctx.views.items()}
        # Within-set first: its clusters are the bootstrap groups of the cross-set comparisons.
        pairs = [(v.name, v.name) for v in ctx.views.values()]
        if ctx.train is not None:
            pairs += [(v.name, ctx.train.name) for v in ctx.evaluated]
        pairs += [(v.name, ctx.reference.name) for v in ctx.shifted]
        datasets = {name: {"role": v.role, "n": len(v), "against": {}}
                    for name, v in ctx.views.items()}
        arrays, groups, within, search_by_pair = {}, {}, {}, {}
        sources = attach_sources(ctx, check=self.name) if opts.source_groups else None
        for q_name, r_name in pairs:
            q, r = ctx.views[q_name], ctx.views[r_name]
            thresholds = calibrated_thresholds(sets[q_name], sets[r_name], opts,
                                     ctx.rng(self.name, "null", q_name, r_name))
            searches = {}
            nearest = nearest_pairs(sets[q_name], sets[r_name], q_name == r_name, searches)
            search_by_pair[f"within {q_name}" if q_name == r_name
                           else f"{q_name} against {r_name}"] = {
                k: v.describe() for k, v in searches.items()}
            set_level = None
            if q_name != r_name:
                set_level, set_arrays = estimate_set_level(
                    sets[q_name], sets[r_name], thresholds, opts,
                    partial(ctx.rng, self.name, "set_level", q_name, r_name),
                    groups.get(q_name, q.groups), within[q_name], nearest)
                arrays.update({f"{_key(q_name)}__{_key(r_name)}__{k}": v
                               for k, v in set_arrays.items()})
            distrust_class_clustered_embeddings(thresholds, set_level, opts)
            m = match_pairs(sets[q_name], sets[r_name], thresholds, same_set=q_name == r_name,
                            nearest=nearest)
            entry = comparison_summary(q, r, m, thresholds, opts)
            if q_name == r_name:
                within[q_name] = {"embedding": m.cosine, "hash": m.hash_distance}
                clusters = m.clusters()
                groups[q_name], datasets[q_name]["bootstrap_groups"] = _bootstrap_groups(
                    q, clusters)
                n_unique = int(clusters.max() + 1) if len(q) else 0
                entry.update(n_unique=n_unique, effective_share=n_unique / max(len(q), 1))
            if q.role != "train":
                entry["accuracy"] = accuracy_by_copy(
                    q.correct, m.near_copy, n_boot=opts.n_boot,
                    rng=ctx.rng(self.name, q_name, r_name), groups=groups[q_name],
                    min_n=opts.min_ci_n)
            if q_name == r_name:
                datasets[q_name]["within"] = entry
            else:
                entry["set_level"] = set_level
                datasets[q_name]["against"][r_name] = entry
            for field in ("hash_index", "hash_distance", "embedding_index", "cosine",
                          "exact_index", "near_copy", "match_index"):
                arrays[f"{_key(q_name)}__{_key(r_name)}__{field}"] = getattr(m, field)
        few_cells = _add_sources(ctx, datasets, sources, opts) if sources is not None else {}
        cross = [(q, r, d["against"][r]) for q, d in datasets.items() for r in d["against"]]
        leaked = max((e["share"] for _, _, e in cross), default=0.0)
        set_leaked = max((e["set_level"]["counted_share"] for _, _, e in cross), default=0.0)
        verified = max((_verified_share(e) for _, _, e in cross), default=0.0)
        worst = max(leaked, set_leaked, verified)
        status = (Status.FAIL if worst > opts.leak_share_fail else
                  Status.WARN if worst > opts.leak_share_warn or few_cells else Status.PASS)
        ref_set = sets[ctx.reference.name]
        metrics = {"max_hash_distance": opts.max_hash_distance,
                   "hash_orientations": int(ref_set.hashes.shape[1]) if ref_set.hashes.ndim == 2
                   else 1,
                   "cosine_min": opts.cosine_min if ref_set.embeddings is not None
                   else None,
                   "uninformative_embeddings": [
                       f"within {q}" if q == r else f"{q} against {r}"
                       for q, d in datasets.items()
                       for r, e in [(q, d["within"]), *d["against"].items()]
                       if e["thresholds"]["embeddings"] in ("uninformative", "class-clustered")],
                   "leaked_share": leaked, "set_level_leaked_share": set_leaked,
                   "verified_leaked_share": verified if sources is not None else None,
                   "source_groups": _sources_state(sources, opts),
                   "neighbor_search": {"exact_max_pairs": EXACT_MAX_PAIRS,
                                       "set_level_max_refs": SET_LEVEL_MAX_REFS,
                                       "by_comparison": search_by_pair},
                   "datasets": datasets}
        summary = _summary(ctx, datasets, cross)
        off = metrics["uninformative_embeddings"]
        if off:
            where = ", ".join(off) if len(off) <= 2 else f"{len(off)} comparisons (e.g. {off[-1]})"
            summary += (f" Embedding matching was off for {where}: in this model's embeddings "
                        "copies cannot be told from other images of the class (or of other "
                        "classes), so only identical files and perceptual hashes count there.")
        findings = [*few_cells_findings(self.name, few_cells),
                    *_findings(self.name, ctx, datasets, opts),
                    *verified_leak_findings(self.name, ctx, datasets, opts)]
        return CheckResult(self.name, status, summary, metrics=metrics, findings=findings,
                           artifacts={"matches": ctx.save_artifact("leakage", **arrays)})


def _bootstrap_groups(view: DatasetView, clusters: np.ndarray) -> tuple[np.ndarray, str]:
    """The groups a set's intervals resample: its group column, else its discovered source
    groups (`attach_sources`: when every image was examined), else its near-duplicate
    clusters."""
    if view.has_group_column:
        return view.groups, "group column"
    if view.discovered_groups is not None:
        return view.discovered_groups, "discovered sources"
    return clusters, "near-duplicate clusters"


def _add_sources(ctx: AuditContext, datasets: dict, sources: SourceDiscovery,
                 opts) -> dict[str, list[dict]]:
    """Source groups into each evaluation set's entry and verified copies into its comparison
    with train; returns the classes resting on few cells, per set."""
    few = {}
    for view in ctx.evaluated:
        found = sources.sets[view.name]
        summary = groups_summary(view, found, max_pairs=opts.max_group_pairs)
        classes = few_cell_classes(view, found, max_cells=opts.few_cells_max)
        summary["few_cells"] = [{**c, "examined": summary["examined"],
                                 "sampled": summary["sampled"]} for c in classes]
        datasets[view.name]["sources"] = summary
        if summary["few_cells"]:
            few[view.name] = summary["few_cells"]
        if view.name in sources.matches:
            train = ctx.train
            datasets[view.name]["against"][train.name]["verified"] = verified_copies(
                view, train, found, sources.sets[train.name], sources.matches[view.name],
                max_examples=opts.max_examples)
    return few


def _verified_share(entry: dict) -> float:
    share = (entry.get("verified") or {}).get("share")
    return float(share["value"]) if share else 0.0


def _sources_state(sources: SourceDiscovery | None, opts) -> dict:
    """Whether source groups were discovered, with what settings, or how to turn them on."""
    if sources is None:
        return {"run": False, "how_to_enable": HOW_TO_ENABLE}
    return {"run": True, "max_images": opts.source_groups_max_images,
            "image_size": opts.source_groups_image_size,
            "few_cells_max": opts.few_cells_max, "config": sources.config.to_dict()}


def _summary(ctx: AuditContext, datasets: dict, cross: list) -> str:
    if not cross:
        w = datasets[ctx.reference.name]["within"]
        return (f"No train or shifted set to compare; {_pct(w['share'])} of {ctx.reference.name} "
                f"images have a near-copy within the set (at most {w['n_unique']} distinct of "
                f"{len(ctx.reference)}).")
    return "; ".join(f"{_pct(e['share'])} of {q} images have a near-copy in {r}"
                     + (f" (about {_pct(e['set_level']['estimated_share'])} by nearest-neighbour "
                        "similarity)" if e["set_level"]["counted_share"] > e["share"] else "")
                     + (f" ({_pct(_verified_share(e))} verified by keypoint matching)"
                        if e.get("verified") else "")
                     for q, r, e in cross) + "."


def _findings(check: str, ctx: AuditContext, datasets: dict, opts) -> list[Finding]:
    findings, ref, warn = [], ctx.reference, opts.leak_share_warn
    train = ctx.train
    acc = {v.name: float(v.correct.mean()) if len(v) else float("nan")
           for v in ctx.views.values()}
    if train is not None:
        entry = datasets[ref.name]["against"][train.name]
        without = entry["accuracy"]["without_copy"]
        # Keypoint-verified copies (checks.leakage.source_groups) measure per image what the
        # estimates below infer; their own findings (source_findings) replace these. On the
        # Kaggle study the similarity estimate assumed copies are classified like training
        # images; the verified copies were not.
        if entry.get("verified"):
            pass
        elif _set_level_dominates(entry, warn):
            consequence = (f"{ref.name} accuracy ({_pct(acc[ref.name])}) is measured "
                           f"{_extent(entry)} on cells the model was trained on")
            gaps = [(v, _set_level_gap(entry, acc, ref.name, train.name, v.name))
                    for v in ctx.shifted]
            gaps = [(v, g) for v, g in gaps if g is not None]
            for v, g in gaps:
                findings.append(_set_level_finding(
                    check, ref.name, train.name, entry, acc, kind="train_leak",
                    action=_SOURCE_SPLIT_ACTION, gap=g, dataset=v.name,
                    consequence=(
                        f"{consequence}. If the copies are classified as well as {train.name} "
                        f"images ({_pct(acc[train.name])}), the other {ref.name} images are "
                        f"at about {_pct(g['without_copy'])} ({_pct(g['without_copy_range'][0])}"
                        f"-{_pct(g['without_copy_range'][1])} over the interval), "
                        f"{'close to' if g['share'] >= 0.5 else 'against'} "
                        f"{_pct(acc[v.name])} on {v.name}: copies explain about "
                        f"{_pct(g['share'])} of the gap")))
            if not gaps:
                findings.append(_set_level_finding(
                    check, ref.name, train.name, entry, acc, kind="train_leak",
                    action=_SOURCE_SPLIT_ACTION, consequence=consequence))
        elif entry["share"] > warn:
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
            if entry.get("verified"):  # measured per image: source_findings reports it
                continue
            if _set_level_dominates(entry, warn):
                findings.append(_set_level_finding(
                    check, v.name, r_name, entry, acc, kind="test_overlap",
                    action=_dedupe_action(v.name, r_name),
                    consequence=f"{v.name} accuracy ({_pct(acc[v.name])}) {_extent(entry)} "
                                f"re-tests cells of {r_name}"))
                continue
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
                action=_dedupe_action(v.name, r_name),
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


def _dedupe_action(name: str, ref_name: str) -> str:
    return (f"remove images of cells already in {ref_name} from {name} (deduplicate test sets "
            "by source cell)")


def _set_level_dominates(entry: dict, warn: float) -> bool:
    """The significant set-level lower bound is above both WARN and the matched share: the
    per-image matches undercount the copies."""
    return entry["set_level"]["counted_share"] > max(warn, entry["share"])


def _extent(entry: dict) -> str:
    return "largely" if entry["set_level"]["estimated_share"] >= 0.5 else "partly"


def _set_level_gap(entry: dict, acc: dict, name: str, train_name: str, shifted_name: str
                   ) -> dict | None:
    """The share of the `name` -> `shifted_name` gap the set-level copies explain, taking
    the copies to be classified as well as the training images: with a share s of copies,
    the others' accuracy is (acc - s * acc_train) / (1 - s). None without a positive gap or
    when (nearly) every image is a copy."""
    s = entry["set_level"]

    def without(share: float) -> float:
        return float(np.clip((acc[name] - share * acc[train_name]) / (1.0 - share), 0.0, 1.0))

    if s["estimated_share"] is None or s["high"] >= 0.98:
        return None
    share = leak_gap_share(acc[name], without(s["estimated_share"]), acc[shifted_name])
    if share is None:
        return None
    ends = sorted((without(s["low"]), without(s["high"])))
    return {"share": share, "without_copy": without(s["estimated_share"]),
            "without_copy_range": ends,
            "share_range": sorted(leak_gap_share(acc[name], w, acc[shifted_name]) or 0.0
                                  for w in ends)}


def _set_level_finding(check: str, name: str, ref_name: str, entry: dict, acc: dict, *,
                       kind: str, action: str, consequence: str, gap: dict | None = None,
                       dataset: str | None = None) -> Finding:
    """Copies too altered to match one by one, seen in the similarity distribution. Impact:
    the estimated share times how much better the copied set is classified (copies assumed
    classified like the images they copy); a gap share (`gap`, from `_set_level_gap`) only
    where that assumption gives one."""
    s = entry["set_level"]
    lift = acc[ref_name] - acc[name]
    impact = float(s["estimated_share"] * lift) if np.isfinite(lift) and lift > 0 else 0.0
    if gap is not None:  # then the accuracy at stake is the inflation itself
        impact = max(acc[name] - gap["without_copy"], 0.0)
    return Finding(
        check=check, dataset=dataset or name, kind=kind,
        gap_share=None if gap is None else gap["share"], impact=impact,
        text=(f"Nearest-neighbour similarity shows about {_pct(s['estimated_share'])} (95% CI "
              f"{_pct(s['low'])}-{_pct(s['high'])}) of {name} images are likely copies of "
              f"{ref_name} images, though only {_pct(entry['share'])} can be matched "
              f"individually: {consequence}."),
        action=action,
        evidence={"set_level": {k: v for k, v in s.items() if k != "signals"},
                  "share": entry["share"], "accuracy": acc[name],
                  "copied_set_accuracy": acc[ref_name],
                  **({"gap": gap} if gap is not None else {})})
