"""Report section 6: Leakage and duplicates."""

from __future__ import annotations

from collections.abc import Mapping

from reports.sections.common import (
    THUMBNAIL_PIXELS,
    check_header,
    computed_check,
    findings_of,
    pick,
)
from reports.sections.registry import register_section

LEAK_EXAMPLES = 6


def _copy_row(query: str, against: str, entry: Mapping, n: int | None) -> dict:
    accuracy = entry.get("accuracy") or {}
    return {"query": query, "against": against, "n": n, "n_with_copy": entry.get("n_with_copy"),
            "share": entry.get("share"),
            "by": pick(entry.get("by_criterion"), "exact", "hash", "embedding"),
            "label_conflicts": entry.get("label_conflicts"),
            "n_unique": entry.get("n_unique"),
            "with_copy": accuracy.get("with_copy"), "without_copy": accuracy.get("without_copy")}


def leakage_section(audit: Mapping, assets=None) -> dict:
    result, missing = computed_check(audit, "leakage")
    if missing:
        return missing
    m = result.metrics
    cross, within, examples = [], [], []
    for name, d in result.per_set().items():
        n = d.required("n")
        if isinstance(d.get("within"), Mapping):   # optional: sets compared with themselves
            within.append(_copy_row(name, name, d["within"], n))
        for other, entry in (d.get("against") or {}).items():   # optional: train has none
            cross.append(_copy_row(name, other, entry, n))
            pairs = (assets.copy_pairs(name, other, entry.get("examples") or [],
                                       limit=LEAK_EXAMPLES, size=THUMBNAIL_PIXELS)
                     if assets is not None else [])
            if entry.get("examples"):
                examples.append({"query": name, "against": other, "pairs": pairs,
                                 "n_listed": len(entry["examples"])})
    criteria = ["a byte-identical file", f"a perceptual hash within {m.required('max_hash_distance')} "
                "bits" + (f" in any of {m['hash_orientations']} rotations/mirrorings"
                           if (m.get("hash_orientations") or 1) > 1 else "")]
    if m.get("cosine_min") is not None:
        criteria.append(f"an embedding cosine similarity of at least {m['cosine_min']:.2f}")
    return {"available": True, "reason": "", **check_header(result),
            "criteria": ", or ".join(criteria), "leaked_share": m.required("leaked_share"),
            "cross": cross, "within": within, "examples": examples,
            "sources": _source_groups(m, assets),
            "findings": findings_of(audit, "leakage")}


SOURCE_PAIRS = 6  # verified pairs shown per set


def _source_groups(m: Mapping, assets) -> dict:
    """Discovered source groups (checks.leakage.source_groups): per set how many groups and
    their sizes, distinct cells per class, verified copies in training, and pictures of
    verified pairs so a reviewer can see the groups are real; or how to turn it on."""
    state = m.section("source_groups")
    if not state.get("run"):
        return {"run": False, "how_to_enable": state.get("how_to_enable") or
                "--set checks.leakage.source_groups=true"}
    sets, classes, copies, galleries = [], {}, [], []
    for name, d in (m.get("datasets") or {}).items():
        src = d.get("sources")
        if not isinstance(src, Mapping):
            continue
        sizes = src.get("sizes") or {}
        sets.append({"name": name, "n": src.get("n_images"), "examined": src.get("examined"),
                     "sampled": src.get("sampled"), "n_groups": src.get("n_groups"),
                     "singletons": sizes.get("singletons"), "median": sizes.get("median"),
                     "p90": sizes.get("p90"), "max": sizes.get("max"),
                     "threshold": src.get("threshold"),
                     "bootstrap_groups": d.get("bootstrap_groups")})
        few = {c.get("class") for c in src.get("few_cells") or []}
        for cls, counts in (src.get("per_class") or {}).items():
            classes.setdefault(cls, {})[name] = {**counts, "few": cls in few}
        pairs = (assets.copy_pairs(name, name, src.get("sample") or [], limit=SOURCE_PAIRS,
                                   size=THUMBNAIL_PIXELS) if assets is not None else [])
        galleries.append({"query": name, "against": name, "pairs": pairs,
                          "n_listed": len(src.get("sample") or [])})
        for other, entry in (d.get("against") or {}).items():
            v = entry.get("verified")
            if not isinstance(v, Mapping):
                continue
            accuracy = v.get("accuracy") or {}
            copies.append({"query": name, "against": other, "n_examined": v.get("n_examined"),
                           "n_with_copy": v.get("n_with_copy"), "share": v.get("share"),
                           "sampled": v.get("sampled") or v.get("reference_sampled"),
                           "with_copy": accuracy.get("with_copy"),
                           "without_copy": accuracy.get("without_copy")})
            pairs = (assets.copy_pairs(name, other, v.get("examples") or [],
                                       limit=SOURCE_PAIRS, size=THUMBNAIL_PIXELS)
                     if assets is not None else [])
            galleries.append({"query": name, "against": other, "pairs": pairs,
                              "n_listed": len(v.get("examples") or [])})
    names = [s["name"] for s in sets]
    return {"run": True, "max_images": state.get("max_images"),
            "few_cells_max": state.get("few_cells_max"), "sets": sets, "set_names": names,
            "classes": [{"name": cls, "cells": [by_set.get(n) for n in names]}
                        for cls, by_set in classes.items()],
            "copies": copies, "galleries": [g for g in galleries if g["n_listed"]]}


register_section("leakage", "Leakage and duplicates", leakage_section, "_leakage.html.j2",
                 order=60, check="leakage")
