"""Small copies of the images the report shows, so the report renders without the dataset.

Per dataset: the first few images of each class (the report's dataset gallery), the most
confident errors (its error gallery) and both sides of near-copy examples and of verified
source-copy pairs (its leakage section): the model's view of each (from the run's pixel store)
shrunk to at most `THUMBNAIL_SIZE` pixels, in
`artifacts/thumbnails_<name>.npz` with their dataset-relative paths.
"""

from __future__ import annotations

import numpy as np

from audit.checks.base import AuditContext
from audit.pixels import shrink

__all__ = ["save_thumbnails", "THUMBNAIL_SIZE", "PER_CLASS"]

THUMBNAIL_SIZE = 128
PER_CLASS = 4


def _wanted(ctx: AuditContext, name: str) -> list[str]:
    view = ctx.views[name]
    relative = view.dataset.relative_paths
    wanted: list[str] = []
    for c in range(len(ctx.class_names)):
        wanted += [relative[i] for i in np.flatnonzero(view.labels == c)[:PER_CLASS]]
    errors = ctx.results.get("errors")
    if errors is not None:
        entry = (errors.metrics.get("datasets") or {}).get(name) or {}
        wanted += [e["path"] for e in entry.get("confident_errors") or [] if e.get("path")]
    leakage = ctx.results.get("leakage")
    if leakage is not None:
        for query, entry in (leakage.metrics.get("datasets") or {}).items():
            for other, comparison in (entry.get("against") or {}).items():
                for example in comparison.get("examples") or []:
                    if query == name:
                        wanted.append(example.get("path"))
                    if other == name:
                        wanted.append(example.get("match_path"))
                verified = (comparison.get("verified") or {}).get("examples") or []
                for example in verified:  # verified copies (source groups) in training
                    if query == name:
                        wanted.append(example.get("path"))
                    if other == name:
                        wanted.append(example.get("match_path"))
            if query == name:
                for example in (entry.get("within") or {}).get("examples") or []:
                    wanted += [example.get("path"), example.get("match_path")]
                for pair in (entry.get("sources") or {}).get("sample") or []:
                    wanted += [pair.get("path"), pair.get("match_path")]
    return list(dict.fromkeys(p for p in wanted if p))


def save_thumbnails(ctx: AuditContext) -> dict[str, str]:
    """Write one thumbnails artifact per dataset; returns {dataset: artifact path}."""
    out = {}
    size = min(THUMBNAIL_SIZE, ctx.image_size)
    for name, view in ctx.views.items():
        relative = _wanted(ctx, name)
        index = {p: i for i, p in enumerate(view.dataset.relative_paths)}
        paths = [view.dataset.paths[index[p]] for p in relative if p in index]
        kept = [p for p in relative if p in index]
        out[name] = ctx.save_artifact(f"thumbnails_{name}", paths=np.array(kept, dtype=str),
                                      images=shrink(ctx.read_images(paths), size))
    return out
