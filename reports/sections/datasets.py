"""Report section 3: Datasets."""

from __future__ import annotations

from collections.abc import Mapping

from reports import figures
from reports.sections.common import (
    THUMBNAIL_PIXELS,
    audit_class_names,
    datasets_in_order,
    lookup,
    pick,
    unavailable,
)
from reports.sections.registry import register_section

EXAMPLES_PER_CLASS = 4


def datasets_section(audit: Mapping, assets=None) -> dict:
    datasets = audit.get("datasets") or {}
    if not datasets:
        return unavailable("audit.json lists no datasets")
    classes = audit_class_names(audit)
    names = datasets_in_order(audit)
    training = lookup(audit, "model", "metadata", "training_data", "class_counts", default=None)
    columns = [*names] + (["model training data"] if training and "train" not in
                          {datasets[n].get("role") for n in names} else [])
    counts = []
    for cls in classes:
        row = [(datasets[n].get("class_counts") or {}).get(cls) for n in names]
        if len(columns) > len(names):
            row.append(training.get(cls))
        counts.append({"class": cls, "counts": row})
    totals = [datasets[n].get("n_images") for n in names]
    if len(columns) > len(names):
        totals.append(sum(v for v in training.values() if isinstance(v, int)))
    rows, galleries = [], []
    for name in names:
        d = datasets[name]
        skipped = d.get("skipped") or []
        rows.append({"name": name, "role": d.get("role", ""), "source": d.get("source", ""),
                     "root": d.get("root", ""), "n": d.get("n_images"),
                     "groups": d.get("n_groups") if d.get("has_groups") else None,
                     "skipped": len(skipped) if isinstance(skipped, list) else skipped,
                     "skipped_files": [pick(f, "path", "reason") for f in skipped[:10]]
                     if isinstance(skipped, list) else [],
                     "fingerprint": d.get("fingerprint") or "", "from_cache": d.get("from_cache")})
        examples, reason = (assets.examples(name, classes, per_class=EXAMPLES_PER_CLASS,
                                            size=THUMBNAIL_PIXELS)
                            if assets is not None else (None, "no artifacts were given"))
        galleries.append({"name": name, "reason": reason,
                          "rows": figures.thumbnail_rows(name, examples, size=THUMBNAIL_PIXELS)
                          if examples else []})
    absent = [{"dataset": n, "classes": [c for c in classes
                                         if not (datasets[n].get("class_counts") or {}).get(c)]}
              for n in names]
    return {"available": True, "reason": "", "rows": rows, "columns": columns,
            "counts": counts, "totals": totals, "galleries": galleries,
            "absent": [a for a in absent if a["classes"]]}


register_section("datasets", "Datasets", datasets_section, "_datasets.html.j2", order=30)
