"""Report section 15: Reproducibility."""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from reports.format import toml_text
from reports.sections.common import lookup
from reports.sections.registry import register_section


def reproducibility_section(audit: Mapping, assets=None) -> dict:
    command = audit.get("command") or []
    config = audit.get("config") or {}
    meta = lookup(audit, "model", "metadata", default={}) or {}
    audit_versions = audit.get("versions") or {}
    train_versions = meta.get("versions") or {}
    packages = sorted(set(audit_versions) | set(train_versions))
    return {
        "available": True, "reason": "",
        "command": shlex.join(str(c) for c in command) if command else None,
        "config": toml_text(config) if config else "",
        "seeds": [("audit seed ([audit] seed)", lookup(config, "audit", "seed")),
                  ("training seed", meta.get("seed"))],
        "versions": [{"package": p, "audit": audit_versions.get(p),
                      "training": train_versions.get(p)} for p in packages],
        "model_path": lookup(audit, "model", "path"), "model_sha256": lookup(audit, "model", "sha256"),
        "schema_version": audit.schema_version,
        "datasets": [(n, d.get("source", ""), d.get("fingerprint", ""))
                     for n, d in (audit.get("datasets") or {}).items()],
        "timings": sorted((k, v) for k, v in (audit.get("timings") or {}).items()
                          if not k.startswith("cache_hit")),
        "cache_hits": [k.split(".", 1)[1] for k, v in (audit.get("timings") or {}).items()
                       if k.startswith("cache_hit") and v],
    }


register_section("reproducibility", "Reproducibility", reproducibility_section,
                 "_reproducibility.html.j2", order=150)
