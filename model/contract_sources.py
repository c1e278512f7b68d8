"""Where a model's input contract comes from, and one contract from all of it.

Highest priority first: what the user declared (options: `ContractOptions`, the classes
possibly read from a class-per-folder dataset), a sidecar file `<model>.json`
beside the model, CellAudit metadata inside a .keras file, then what the model itself shows
(its input shape, a scaling layer at its start). `resolve_contract` merges them, records
each field's source, and refuses an incomplete contract naming the option to add.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

from audit.errors import InputError, UsageError
from model.contract import CONTRACT_KEYS, InputContract

__all__ = ["CELLAUDIT_IMPLIED", "ContractOptions", "classes_from_folder", "sidecar_path",
           "read_json_object", "embedded_metadata", "resolve_contract"]

# What CellAudit's own models (metadata format cellaudit-model/1, before contracts were
# recorded) always did: raw 0-255 RGB, centre crop, scaling inside the model.
CELLAUDIT_IMPLIED = {"preprocess": "none", "resize": "crop", "channel_order": "RGB"}


@dataclass(frozen=True)
class ContractOptions:
    """What a user declared on the command line or in the Python API (None: not declared)."""

    classes: tuple[str, ...] | None = None
    classes_from: str | None = None
    input_size: int | None = None
    preprocess: str | None = None
    resize: str | None = None
    channel_order: str | None = None
    views: str | None = None

    def declared(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out = {k: v for k, v in out.items() if v is not None}
        if "classes_from" in out:
            if "classes" in out:
                raise UsageError("--classes and --classes-from: give one of them, not both")
            out["class_names"] = classes_from_folder(out.pop("classes_from"))
        if "classes" in out:
            out["class_names"] = tuple(out.pop("classes"))
        if "channel_order" in out:
            out["channel_order"] = str(out["channel_order"]).upper()
        return out


def classes_from_folder(folder: str | os.PathLike) -> tuple[str, ...]:
    """Sorted sub-folder names: the class order of `image_dataset_from_directory` and
    `flow_from_directory` (alphanumeric order, hidden folders ignored)."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"--classes-from '{folder}' is not a folder; expected a class-per-folder "
                         "dataset whose sub-folder names are the classes")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) < 2:
        raise UsageError(f"--classes-from '{folder}' has {len(names)} class sub-folder(s); "
                         "expected one sub-folder per class")
    return tuple(names)


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """`<model>.json` beside the model (for a SavedModel folder, beside the folder)."""
    path = Path(model_path)
    return path.with_name(path.name + ".json")


def read_json_object(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {what} '{path}': {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} '{path}' is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{what} '{path}' must hold a JSON object, received "
                         f"{type(data).__name__}")
    return data


def embedded_metadata(path: Path, fmt: str) -> dict:
    if fmt != "keras":
        return {}
    import zipfile

    with zipfile.ZipFile(path) as archive:
        if "cellaudit.json" not in archive.namelist():
            return {}
        try:
            return json.loads(archive.read("cellaudit.json"))
        except json.JSONDecodeError as exc:
            raise InputError(f"model '{path}': metadata is not valid JSON: {exc}") from exc


def _contract_fields(data: dict, source: str) -> dict:
    """The contract fields a sidecar or metadata dict declares, as {field: (value, source)}."""
    out = {}
    nested = data.get("input_contract") if isinstance(data.get("input_contract"), dict) else {}
    for key in CONTRACT_KEYS:
        value = nested.get(key, data.get(key))
        if value is not None and key != "output":
            out[key] = (value, source)
    if data.get("format", "").startswith("cellaudit-model/") and not nested:
        out.update({k: (v, "metadata (CellAudit model)") for k, v in CELLAUDIT_IMPLIED.items()
                    if k not in out})
    return out


def resolve_contract(*, declared: dict, sidecar: dict, metadata: dict, input_shape: tuple,
                     own_scaling: str | None, output_kind: str, where: str,
                     fallback: dict | None = None) -> InputContract:
    """One contract from every source, highest priority first: options, sidecar, metadata,
    then what the model shows. Incomplete -> UsageError naming the option to add."""
    fields_ = {**_contract_fields(metadata, "metadata"), **_contract_fields(sidecar, "sidecar"),
               **{k: (v, "option") for k, v in declared.items()}}
    height, width = (input_shape[1], input_shape[2]) if len(input_shape) == 4 else (None, None)
    if height is not None and height == width:
        shape_size = int(height)
        if "input_size" in fields_ and int(fields_["input_size"][0]) != shape_size:
            raise UsageError(f"--input-size {fields_['input_size'][0]} ({fields_['input_size'][1]}) "
                             f"does not match model '{where}', whose input is {shape_size} x "
                             f"{shape_size} pixels")
        fields_.setdefault("input_size", (shape_size, "model input shape"))
    elif height is not None and width is not None:
        raise InputError(f"model '{where}' takes {height} x {width} images; CellAudit audits "
                         "models with square inputs")
    if own_scaling is not None:
        declared_pp = fields_.get("preprocess")
        if declared_pp is None:
            fields_["preprocess"] = ("none", f"model graph (starts with '{own_scaling}')")
    for key, value in (fallback or {}).items():
        fields_.setdefault(key, (value, "candidate"))
    fields_.setdefault("resize", ("crop", "default"))
    fields_.setdefault("channel_order", ("RGB", "default"))
    fields_.setdefault("views", ("single", "default"))
    missing = []
    if "class_names" not in fields_:
        missing.append("class names (--classes a,b,c in output order, or --classes-from DIR: "
                       "the sorted sub-folders Keras' directory loaders use)")
    if "input_size" not in fields_:
        missing.append("the input size (--input-size PX; the model's input shape does not fix it)")
    if "preprocess" not in fields_:
        missing.append("the pixel scaling (--preprocess none|unit|symmetric|caffe|torch; the "
                       "model does not start with its own Rescaling/Normalization layer)")
    if missing:
        raise UsageError(f"model '{where}': the input contract is incomplete: "
                         + "; ".join(missing) + ". `audit inspect MODEL --data DIR --write` "
                         "finds and saves them")
    classes = fields_["class_names"][0]
    if isinstance(classes, str):
        from model.contract import parse_classes

        classes = parse_classes(classes)
    try:
        size = int(fields_["input_size"][0])
    except (TypeError, ValueError):
        raise UsageError(f"input_size ({fields_['input_size'][1]}) must be a whole number, "
                         f"received {fields_['input_size'][0]!r}") from None
    contract = InputContract(
        class_names=tuple(str(c) for c in classes), input_size=size,
        preprocess=fields_["preprocess"][0], resize=fields_["resize"][0],
        channel_order=str(fields_["channel_order"][0]).upper(), output=output_kind,
        views=str(fields_["views"][0]),
        sources={k: v[1] for k, v in fields_.items()} | {"output": "model outputs"})
    return contract
