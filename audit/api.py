"""The Python API: audit a model file or a live `keras.Model` on folders, arrays or tf.data.

The `audit` command line is a thin layer over these functions, so a notebook and the CLI get
the same `audit.json` from the same inputs. Bad arguments raise `audit.UsageError` (a
`ValueError`) with one sentence naming the argument; nothing is written to `out` on failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

from audit.errors import UsageError
from audit.results import AuditResult

__all__ = ["run", "predict", "gate"]

Source = object  # a path, an (images, labels) pair of arrays, or a tf.data.Dataset


def _contract_options(*, classes, classes_from, input_size, preprocess, resize, channel_order,
                      views=None):
    from model.contract import parse_classes
    from model.loaded import ContractOptions

    if isinstance(classes, str):
        classes = parse_classes(classes)
    return ContractOptions(
        classes=tuple(classes) if classes is not None else None,
        classes_from=os.fspath(classes_from) if classes_from is not None else None,
        input_size=input_size, preprocess=preprocess, resize=resize,
        channel_order=channel_order, views=views)


def _load(model, options):
    """A `LoadedModel` from a path, a Keras model object or a LoadedModel."""
    from model.loaded import LoadedModel, from_keras_model, load_model

    if isinstance(model, (str, os.PathLike)):
        return load_model(model, options)
    if isinstance(model, LoadedModel):
        if options.declared():
            raise UsageError("model: a LoadedModel already has its contract; pass the model "
                             "path or object to declare classes, preprocess, resize or views")
        return model
    try:
        import keras
    except ImportError:  # pragma: no cover - Keras is a dependency
        keras = None
    if keras is not None and isinstance(model, keras.Model):
        return from_keras_model(model, options)
    raise UsageError(f"model: expected a model path (.keras, .h5, SavedModel folder) or a "
                     f"keras.Model, received {type(model).__name__}")


def _overrides(*, seed, batch_size, checks, explain, report, cache) -> list[str]:
    """Keyword options as `--set` overrides, exactly as the CLI's flags become them."""
    out = []
    if seed is not None:
        out.append(f"audit.seed={int(seed)}")
    if batch_size is not None:
        out.append(f"audit.batch_size={int(batch_size)}")
    if checks is not None:
        names = [checks] if isinstance(checks, str) else list(checks)
        names = [n.strip() for name in names for n in name.split(",") if n.strip()]
        out.append("audit.checks=[" + ", ".join(f'"{n}"' for n in names) + "]")
    if explain is not None:
        out.append(f"audit.explain={'true' if explain else 'false'}")
    if report is not None:
        out.append(f"audit.report={'true' if report else 'false'}")
    if cache is False:
        out.append('audit.cache_dir=""')
    elif cache not in (None, True):
        out.append(f'audit.cache_dir="{Path(cache).as_posix()}"')
    return out


def _config(config, overrides: Sequence[str]) -> dict:
    from audit.config import load_config

    if config is None or isinstance(config, (str, os.PathLike)):
        return load_config(config, list(overrides))
    if isinstance(config, Mapping):
        return load_config(None, list(overrides), table=dict(config))
    raise UsageError(f"config: expected a TOML path or a dict, received {type(config).__name__}")


def _label_map(label_map):
    from audit.labels import LabelMap, load_label_map

    if label_map is None or isinstance(label_map, LabelMap):
        return label_map
    if isinstance(label_map, Mapping):
        return LabelMap.from_dict(label_map, source="label_map")
    return load_label_map(label_map)


def run(
    model,
    *,
    heldout: Source,
    shifted: Mapping[str, Source] | None = None,
    train: Source | None = None,
    out: str | os.PathLike | None = None,
    config: Mapping | str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    classes: Sequence[str] | str | None = None,
    classes_from: str | os.PathLike | None = None,
    input_size: int | None = None,
    preprocess: str | None = None,
    resize: str | None = None,
    channel_order: str | None = None,
    views: str | None = None,
    label_map=None,
    strict: bool = False,
    force: bool = False,
    seed: int | None = None,
    batch_size: int | None = None,
    checks: Sequence[str] | str | None = None,
    explain: bool | None = None,
    report: bool | None = None,
    cache: bool | str | os.PathLike | None = None,
    engine="local",
    command: Sequence[str] | None = None,
) -> AuditResult:
    """Audit `model` on a held-out set and any shifted sets; return the `AuditResult`.

    `model`: a path (.keras, a tf.keras 2.x .h5, a SavedModel folder) or a `keras.Model` in
    memory, with its input contract as keywords when the model does not carry it (`classes`
    in output order or `classes_from` a class-per-folder path, `input_size`, `preprocess`
    none|unit|symmetric|caffe|torch, `resize` crop|stretch|pad, `channel_order` RGB|BGR,
    `views` single|dihedral8: the mean probability over the image's 8 rotations and mirrors).
    Each dataset: a class-per-folder path, a CSV manifest, an `(images, labels)` pair (uint8
    or float pixels, N x H x W x 3; labels as class indices or names) or a `tf.data.Dataset`
    of `(image, label)`; `shifted` maps names to datasets. `config`: a dict or TOML path of
    the `audit run` settings, checked as the CLI checks them (`overrides`: KEY=VALUE strings).
    `out`: the folder for audit.json, artifacts/ and report.html; None keeps them in a
    temporary folder for as long as the result lives (`result.save(dir)` copies them).
    `engine`: where the per-image work runs: "local" (threads), "ray" (a local Ray instance)
    or an engine object, e.g. `audit.engines.make_engine("ray", ray_address="auto")`; the
    numbers are the same with every engine (docs/scale.md).

    Example (the built-in synthetic cells, a model from `audit demo`):

        >>> import audit
        >>> result = audit.run("demo-out/model.keras", heldout="demo-out/data/heldout",
        ...                    shifted={"site_b": "demo-out/data/site_b"}, explain=False)
        >>> result.status, result.findings[0].text
        >>> result.checks["calibration"].metrics["temperature"]
        >>> result          # in Jupyter: the report inline
    """
    from audit.runner import DataSpec, run_audit
    from audit.sources import materialise

    try:
        options = _contract_options(classes=classes, classes_from=classes_from,
                                    input_size=input_size, preprocess=preprocess, resize=resize,
                                    channel_order=channel_order, views=views)
        settings = _config(config, [*overrides, *_overrides(
            seed=seed, batch_size=batch_size, checks=checks, explain=explain, report=report,
            cache=cache)])
        labels = _label_map(label_map)
        if shifted is not None and not isinstance(shifted, Mapping):
            raise UsageError(f"shifted: expected a dict of name -> dataset, received "
                             f"{type(shifted).__name__}")
        loaded = _load(model, options)
        scratch = Path(tempfile.mkdtemp(prefix="cellaudit-"))
        try:
            roles = [("heldout", "heldout", heldout)]
            roles += [("train", "train", train)] if train is not None else []
            roles += [("shifted", str(name), source) for name, source in (shifted or {}).items()]
            specs = []
            for role, name, source in roles:
                argument = role if role != "shifted" else f"shifted['{name}']"
                path, _ = materialise(source, scratch / "data" / name,
                                      class_names=loaded.contract.class_names, argument=argument)
                specs.append(DataSpec(role=role, name=name, source=path))
            target = Path(out) if out is not None else scratch / "audit"
            result = run_audit(loaded, specs, config=settings, out_dir=target, label_map=labels,
                               strict=strict, command=list(command or []), force=force,
                               engine=engine)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    except UsageError as exc:  # one sentence, without the library's call stack
        raise exc.with_traceback(None) from None
    result.location = target
    if out is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        weakref.finalize(result, shutil.rmtree, scratch, True)
    return result


def predict(model, images, *, audit: AuditResult | str | os.PathLike | None = None,
            batch_size: int = 64, classes: Sequence[str] | str | None = None,
            classes_from: str | os.PathLike | None = None, input_size: int | None = None,
            preprocess: str | None = None, resize: str | None = None,
            channel_order: str | None = None, views: str | None = None):
    """Classify images: a pandas DataFrame when pandas is installed, else a list of dicts.

    `images`: image files or folders (a path or a list of them), or an array of pixels
    (N x H x W x 3). With `audit` (the model's AuditResult or audit.json), probabilities are
    temperature-calibrated and `refer_to_human` applies the audit's referral threshold and
    safety flags (images that are not usable cell images are referred with or without it).
    One row per image: path, predicted_class, probability, refer_to_human, refer_reason,
    status (unreadable files say why), p_<class>...

        >>> table = audit.predict("model.keras", "new_images/", audit=result)
    """
    from audit.prediction import Referral, audit_referral, collect_images, predict_rows

    try:
        loaded = _load(model, _contract_options(
            classes=classes, classes_from=classes_from, input_size=input_size,
            preprocess=preprocess, resize=resize, channel_order=channel_order, views=views))
        scratch = None
        if isinstance(images, (str, os.PathLike)):
            paths = collect_images([os.fspath(images)])
        elif isinstance(images, (list, tuple)) and all(isinstance(i, (str, os.PathLike))
                                                       for i in images):
            paths = collect_images([os.fspath(i) for i in images])
        else:
            import numpy as np

            from audit.sources import materialise

            pixels = np.asarray(images)
            scratch = Path(tempfile.mkdtemp(prefix="cellaudit-predict-"))
            names = loaded.contract.class_names
            manifest, _ = materialise((pixels, np.zeros(len(pixels), int)), scratch,
                                      class_names=names, argument="images")
            paths = sorted(str(p) for p in Path(manifest).parent.glob("*.png"))
        referral = Referral()
        if audit is not None:
            where = audit.location if isinstance(audit, AuditResult) else audit
            referral = audit_referral(where, loaded.sha256, loaded.contract)
        rows = list(predict_rows(loaded, paths, referral=referral, batch_size=batch_size))
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
            for i, row in enumerate(rows):
                row["path"] = f"images[{i}]"
    except UsageError as exc:
        raise exc.with_traceback(None) from None
    try:
        import pandas
    except ImportError:
        return rows
    return pandas.DataFrame(rows)


def gate(baseline: AuditResult | str | os.PathLike, current: AuditResult | str | os.PathLike,
         *, policy=None, allow_dataset_change: bool = False):
    """Judge `current` against `baseline` (AuditResults or audit.json paths) under `policy`
    (a TOML path, a `audit.gating.policy.Policy` or None for the defaults); returns the
    gate's `GateReport` (`.passed`, `.status`, `.failures`, `.results`, `.exit_code`).

        >>> decision = audit.gate(first, second)
        >>> decision.passed
    """
    from audit.gating.decision import run_gate

    def path(value, argument):
        if isinstance(value, AuditResult):
            if value.location is None:
                raise UsageError(f"{argument}: this AuditResult has no audit.json on disk; "
                                 "save it first (result.save(folder))")
            return Path(value.location) / "audit.json"
        value = Path(value)
        return value / "audit.json" if value.is_dir() else value

    try:
        return run_gate(path(baseline, "baseline"), path(current, "current"), policy=policy,
                        allow_dataset_change=allow_dataset_change)
    except UsageError as exc:
        raise exc.with_traceback(None) from None
