"""Engines: where the per-image work runs (the only part of an audit that grows with N).

An engine checks every file of a dataset (`scan`, what `load_dataset` skips) and computes its
per-image outputs (`outputs`: logits, embeddings, image properties, hashes) through
`audit.inference.batch_outputs`, so every engine gives the same numbers; the checks then run
on the driver from those outputs. `local` (the default) uses threads on this machine; `ray`
runs a Ray Data pipeline on a local Ray instance or an existing cluster (`pip install
"cellaudit[ray]"`, see docs/scale.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from audit.errors import UsageError

__all__ = ["ENGINES", "Engine", "make_engine"]

ENGINES = ("local", "ray")


class Engine(Protocol):
    name: str

    def scan(self, paths: Sequence[str]) -> list[tuple[str | None, tuple[int, int] | None]]:
        """Why each file cannot be used (None: usable), aligned with `paths`."""

    def outputs(self, datasets: dict, *, predictor, cache_dir, cell_size_images: int) -> dict:
        """{name: `audit.inference.DatasetOutputs`} of every image of each dataset, in order
        (all sets at once, so that a cluster starts its workers once per audit)."""

    def describe(self) -> dict:
        """JSON-able record of where the work ran (audit.json `engine`)."""

    def close(self) -> None:
        """Release what the engine started (a local Ray instance)."""


def make_engine(engine: str | Engine = "local", *, ray_address: str | None = None,
                workers: int | None = None, gpus_per_worker: float | None = None) -> Engine:
    """An engine by name (`local` or `ray`), or `engine` itself when it is one already.

    `ray_address`, `workers` and `gpus_per_worker` are options of the ray engine: giving them
    with `local` is a usage error rather than silently ignored."""
    if not isinstance(engine, str):
        return engine
    if engine not in ENGINES:
        raise UsageError(f"--engine '{engine}': expected one of {', '.join(ENGINES)}")
    if engine == "local":
        given = [name for name, value in (("--ray-address", ray_address), ("--workers", workers),
                                          ("--gpus-per-worker", gpus_per_worker))
                 if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: only with --engine ray (the local engine "
                             "uses this machine's threads)")
        from audit.engines.local import LocalEngine

        return LocalEngine()
    from audit.engines.ray_data import RayEngine

    return RayEngine(address=ray_address, workers=workers,
                     gpus_per_worker=float(gpus_per_worker or 0.0))
