"""`audit run` end to end: load, predict once per dataset, run every check, write the result."""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from audit.atomic import atomic_dir, write_json
from audit.checks.base import ROLES, AuditContext, DatasetView, load_builtin_checks
from audit.config import audit_options, validate_config
from audit.data import load_dataset
from audit.errors import InputError, UsageError
from audit.findings import rank_findings
from audit.labels import LabelMap
from audit.progress import status
from audit.results import AuditResult, CheckResult, Status

__all__ = ["DataSpec", "parse_data_spec", "check_specs", "run_audit"]


@dataclass(frozen=True)
class DataSpec:
    role: str
    name: str
    source: str


def parse_data_spec(text: str) -> DataSpec:
    """`train=DIR`, `heldout=DIR` or `shifted:NAME=DIR`."""
    if "=" not in text:
        raise UsageError(f"--data '{text}': expected ROLE=PATH with ROLE train, heldout or "
                         "shifted:NAME")
    key, source = text.split("=", 1)
    role, _, name = key.partition(":")
    if role not in ROLES:
        raise UsageError(f"--data '{text}': unknown role '{role}'; expected train, heldout or "
                         "shifted:NAME")
    if role == "shifted" and not name:
        raise UsageError(f"--data '{text}': a shifted set needs a name, e.g. shifted:site_b=DIR")
    if role != "shifted" and name:
        raise UsageError(f"--data '{text}': only shifted sets take a name")
    if not source:
        raise UsageError(f"--data '{text}': empty path")
    return DataSpec(role=role, name=name or role, source=source)


def check_specs(specs: list[DataSpec]) -> None:
    roles = [s.role for s in specs]
    if roles.count("heldout") != 1:
        raise UsageError("--data: exactly one heldout set is required (the reference), "
                         f"received {roles.count('heldout')}")
    if roles.count("train") > 1:
        raise UsageError("--data: at most one train set")
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"--data: dataset names must be unique, repeated: {duplicates}")


def _prepare_out(out_dir: Path) -> None:
    from audit.atomic import check_writable

    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out '{out_dir}' exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "audit.json").exists():
        raise UsageError(f"--out '{out_dir}' is a non-empty folder without an audit.json; "
                         "refusing to replace it (choose a new or empty folder)")
    check_writable(out_dir)


def run_audit(
    model,
    specs: list[DataSpec],
    *,
    config: dict,
    out_dir: str | os.PathLike,
    label_map: LabelMap | None = None,
    strict: bool = False,
    command: list[str] | None = None,
    declared=None,
    force: bool = False,
    engine="local",
) -> AuditResult:
    """Run the audit and write OUTDIR/audit.json (+ artifacts/, report.html) atomically.

    `model`: a model path (any format `model.loaded.load_model` reads) or a `LoadedModel`;
    `declared`: the input contract options given by the user (`ContractOptions`). The
    declared contract is checked on a sample of the reference set before any expensive work
    (`audit.contract_check`); `force` audits a model that fails that check anyway.
    `engine`: where the per-image work runs, "local" (threads on this machine), "ray" (a
    local Ray instance), or an engine object (`audit.engines.make_engine(...)`, e.g. a
    `RayEngine(address="auto", workers=8)`); the numbers are the same with every engine.
    """
    from audit.engines import make_engine

    own_engine = isinstance(engine, str)
    engine = make_engine(engine)
    try:
        return _run_audit(model, specs, config=config, out_dir=out_dir, label_map=label_map,
                          strict=strict, command=command, declared=declared, force=force,
                          engine=engine)
    finally:
        if own_engine:
            engine.close()


def _run_audit(model, specs, *, config, out_dir, label_map, strict, command, declared, force,
               engine) -> AuditResult:
    from audit.contract_check import check_contract, enforce
    from audit.inference import Predictor
    from model.io import library_versions
    from model.loaded import LoadedModel, load_model

    validate_config(config)   # a config dict built in code gets the checks a config file gets
    check_specs(specs)
    out_dir = Path(out_dir)
    _prepare_out(out_dir)
    settings = audit_options(config["audit"])
    timings: dict[str, float] = {}
    started = time.perf_counter()

    loaded = model if isinstance(model, LoadedModel) else load_model(model, declared)
    contract = loaded.contract
    class_names = contract.class_names
    image_size = contract.input_size
    if label_map is None and config.get("labels"):
        label_map = LabelMap.from_dict(config["labels"], source="config [labels]")
    datasets = {}
    for spec in specs:
        datasets[spec.name] = (spec, load_dataset(spec.source, name=spec.name, label_map=label_map,
                                                  class_names=class_names, strict=strict,
                                                  input_size=image_size, scan=engine.scan))
    timings["load"] = time.perf_counter() - started

    reference = next(ds for spec, ds in datasets.values() if spec.role == "heldout")
    where = loaded.path or "in memory"
    status(f"checking how the model takes images ({contract.summary()})")
    t0 = time.perf_counter()
    contract_check = check_contract(loaded, reference, seed=settings.seed,
                                    n_images=settings.contract_check_images,
                                    batch_size=settings.batch_size,
                                    forward_batch=settings.forward_batch)
    enforce(contract_check, force=force, where=where)
    timings["contract_check"] = time.perf_counter() - t0

    predictor = Predictor(loaded, batch_size=settings.batch_size,
                          forward_batch=settings.forward_batch)
    views = {}
    t0 = time.perf_counter()
    outputs = engine.outputs({name: ds for name, (_, ds) in datasets.items()},
                             predictor=predictor, cache_dir=settings.cache_dir or None,
                             cell_size_images=settings.cell_size_images)
    for name, (spec, dataset) in datasets.items():
        views[name] = DatasetView(name=name, role=spec.role, dataset=dataset,
                                  outputs=outputs[name])
    timings["predict"] = time.perf_counter() - t0

    with atomic_dir(out_dir) as staging:
        ctx = AuditContext(views=views, class_names=class_names, config=config,
                           seed=settings.seed, artifacts_dir=staging / "artifacts",
                           image_size=image_size, predictor=predictor, resize=contract.resize)
        registry = load_builtin_checks()
        selected = settings.checks or list(registry)
        unknown = sorted(set(selected) - set(registry))
        if unknown:
            raise UsageError(f"[audit] checks: unknown check(s) {unknown}; known: {list(registry)}")
        if "leakage" in selected and ctx.options("leakage").source_groups:
            timings["source_groups"] = _attach_sources(ctx)
        prediction_files = {name: _save_predictions(ctx, view) for name, view in views.items()}
        for name in selected:
            ctx.results[name] = _run_check(registry[name](), ctx)
            timings[f"check.{name}"] = ctx.results[name].seconds

        from audit.thumbnails import save_thumbnails

        thumbnails = save_thumbnails(ctx)
        explanations = {}
        if settings.explain:
            t0 = time.perf_counter()
            explanations = _run_explanations(ctx)
            timings["explain"] = time.perf_counter() - t0

        timings["total"] = time.perf_counter() - started
        # Cache hits vary between identical runs, so they live with the timings.
        timings.update({f"cache_hit.{n}": float(v.outputs.from_cache) for n, v in views.items()})
        # What the checks, explanations and thumbnails decoded (each image once unless evicted).
        timings.update({f"pixels.{k}": float(v) for k, v in ctx.pixels.summary().items()})
        result = AuditResult(
            model={**loaded.describe(), "class_names": list(class_names),
                   "input_size": image_size, "forward_batch": predictor.forward_batch,
                   "metadata": loaded.metadata,
                   "contract_check": {**contract_check.describe(), "forced": bool(
                       force and contract_check.verdict == "wrong")}},
            datasets={name: {"role": spec.role, "source": spec.source, **ds.describe(),
                             "predictions": prediction_files[name],
                             "thumbnails": thumbnails[name]}
                      for name, (spec, ds) in datasets.items()},
            config=config,
            checks=ctx.results,
            findings=rank_findings(ctx.results),
            versions=library_versions(),
            timings={k: round(v, 3) for k, v in timings.items()},
            command=list(command or []),
            explanations=explanations,
            engine=engine.describe(),
        )
        write_json(staging / "audit.json", result.to_dict())
        if settings.report:
            _render_report(staging)
    return result


def _attach_sources(ctx: AuditContext) -> float:
    """Discover source groups before any check, so that every check's intervals (and the
    predictions artifact the gate resamples) count discovered cells, not images. A failure
    here is left to the leakage check, which reports it as its ERROR."""
    from audit.checks.source_copies import attach_sources

    status("discovering source groups (checks.leakage.source_groups)")
    t0 = time.perf_counter()
    try:
        attach_sources(ctx)
    except Exception as exc:  # noqa: BLE001 - the leakage check reports it
        ctx.sources_error = exc
        status(f"source-group discovery failed ({type(exc).__name__}: {exc}); "
               "the leakage check will report it")
    return time.perf_counter() - t0


def _save_predictions(ctx: AuditContext, view: DatasetView) -> str:
    """Per-image labels, logits and relative paths (what the gate pairs images by), and the
    groups when the dataset has them (what the gate resamples)."""
    import numpy as np

    groups = {} if view.groups is None else {"groups": np.asarray(view.groups, dtype=str)}
    return ctx.save_artifact(
        f"predictions_{view.name}", labels=view.labels, logits=view.logits,
        paths=np.array(view.dataset.relative_paths), **groups,
    )


def _run_check(check, ctx: AuditContext) -> CheckResult:
    status(f"check {check.name}")
    t0 = time.perf_counter()
    try:
        result = check.run(ctx)
    except (UsageError, InputError):
        raise
    except Exception as exc:  # noqa: BLE001 - a crashing check becomes an ERROR result
        detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        result = CheckResult(name=check.name, status=Status.ERROR,
                             summary=f"the check crashed: {detail}", error=detail)
        print(f"warning: check {check.name} crashed: {detail}", file=sys.stderr)
    result.seconds = time.perf_counter() - t0
    return result


def _run_explanations(ctx: AuditContext) -> dict:
    try:
        from audit.explain.runner import explain_audit
    except ModuleNotFoundError:
        return {}
    try:
        return explain_audit(ctx)
    except Exception as exc:  # noqa: BLE001 - explanations must not sink the audit
        detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        print(f"warning: explanations failed: {detail}", file=sys.stderr)
        return {"error": detail}


def _render_report(staging: Path) -> None:
    from audit import render_step

    if not render_step.available():
        return
    try:
        render_step.render_report(staging / "audit.json", staging / "report.html")
    except Exception as exc:  # noqa: BLE001 - the audit stands without its report
        detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        print(f"warning: report not written ({detail}); re-render with `audit report`",
              file=sys.stderr)

