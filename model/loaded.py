"""A model ready to audit: the network, its input contract, and one forward function.

`load_model(path, declared)` reads any supported format (`model.formats`), resolves the input
contract from what was declared (options, a sidecar file beside the model, CellAudit metadata
inside it) and what the model itself says (input shape, a scaling layer at its start, a final
softmax), and refuses an incomplete or inconsistent contract with one line naming the option
to use. `LoadedModel.forward` is the only way any part of CellAudit feeds the model: raw RGB
pixels 0-255 at the input size in, (logits, embedding) out, the contract's scaling applied
inside.

Logits are the pre-activation of the classifier's last Dense layer when nothing but a softmax
follows it (true logits, so energy scores mean something); otherwise the log of the output
probabilities, which differ from the logits by a per-image constant (same softmax and
temperature scaling). The embedding is the input of that Dense layer. A SavedModel has no
layer graph: its logits are the log of its outputs (or the outputs when they are logits) and
its embedding is that same vector; Grad-CAM, the model-randomisation sanity check and AdaBN
need the layer graph and say so.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from audit.errors import InputError, UsageError
from model.contract import CONTRACT_KEYS, InputContract, scale_images

__all__ = ["ContractOptions", "LoadedModel", "load_model", "from_keras_model", "as_loaded",
           "ModelFile", "read_model_file",
           "sidecar_path", "GraphUnavailable", "CELLAUDIT_IMPLIED", "classes_from_folder"]

# What CellAudit's own models (metadata format cellaudit-model/1, before contracts were
# recorded) always did: raw 0-255 RGB, centre crop, scaling inside the model.
CELLAUDIT_IMPLIED = {"preprocess": "none", "resize": "crop", "channel_order": "RGB"}


class GraphUnavailable(Exception):
    """The model has no Keras layer graph (a SavedModel): the message says what is not possible."""


@dataclass(frozen=True)
class ContractOptions:
    """What a user declared on the command line or in the Python API (None: not declared)."""

    classes: tuple[str, ...] | None = None
    classes_from: str | None = None
    input_size: int | None = None
    preprocess: str | None = None
    resize: str | None = None
    channel_order: str | None = None

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


@dataclass
class LoadedModel:
    contract: InputContract
    format: str                      # keras, h5, savedmodel, memory
    sha256: str
    path: str | None = None
    metadata: dict = field(default_factory=dict)   # CellAudit training record, if any
    keras_model: object | None = None              # None for a SavedModel
    saved_model: object | None = None              # TFSMLayer of a SavedModel
    notes: list[str] = field(default_factory=list)
    _forward: object | None = field(default=None, repr=False)
    _compiled: object | None = field(default=None, repr=False)

    # -- what the graph says ---------------------------------------------------------------
    @property
    def has_graph(self) -> bool:
        return self.keras_model is not None

    def require_graph(self, what: str):
        if self.keras_model is None:
            raise GraphUnavailable(f"{what} needs the model's layer graph, which a "
                                   f"{self.format} model loaded for inference does not have")
        return self.keras_model

    def graph_summary(self) -> dict:
        """Where the logits, embedding and Grad-CAM maps come from (for inspect and the card)."""
        if self.keras_model is None:
            return {"layers": None, "own_scaling_layer": None,
                    "logits": "log of the outputs" if self.contract.output == "probabilities"
                    else "the outputs",
                    "embedding": "the logits (a SavedModel has no layer graph)",
                    "gradcam_layer": None,
                    "gradcam_unavailable": "Grad-CAM needs the layer graph, which a SavedModel "
                                           "loaded for inference does not have"}
        from model.graph import find_feature_layer, iter_layer_paths, own_scaling_layer, path_name

        head, logits_from = self._head()
        try:
            gradcam, unavailable = path_name(find_feature_layer(self.keras_model)), None
        except ValueError as exc:
            gradcam, unavailable = None, str(exc)
        return {"layers": sum(1 for _ in iter_layer_paths(self.keras_model)),
                "own_scaling_layer": own_scaling_layer(self.keras_model),
                "logits": logits_from, "embedding": f"input of '{path_name(head)}'",
                "gradcam_layer": gradcam, "gradcam_unavailable": unavailable}

    def _head(self) -> tuple[tuple, str]:
        from model.graph import classifier_head, iter_layer_paths, path_name

        model = self.keras_model
        head = classifier_head(model)
        if head is None:
            raise InputError(f"model '{self.path or model.name}' has no Dense layer: CellAudit "
                             "takes the logits and embedding from the classifier's last Dense "
                             "layer")
        after = list(iter_layer_paths(model))
        after = after[[p[-1] for p in after].index(head[-1]) + 1:]
        passthrough = all(_passes_logits(p[-1]) for p in after)
        if passthrough:
            return head, f"pre-activation of '{path_name(head)}'"
        return head, ("log of the outputs" if self.contract.output == "probabilities"
                      else "the outputs")

    # -- the one forward pass --------------------------------------------------------------
    def forward(self):
        """A function (float32 RGB 0-255 images at the input size) -> (logits, embedding)."""
        if self._forward is None:
            self._forward = self._build_forward()
        return self._forward

    def compiled_forward(self):
        """`forward` as one graph function for every batch size, traced once per model
        (every Predictor of this model shares it: tracing costs seconds on a CPU)."""
        if self._compiled is None:
            import tensorflow as tf

            size = self.contract.input_size
            spec = tf.TensorSpec((None, size, size, 3), tf.float32)
            self._compiled = tf.function(self.forward(), input_signature=[spec])
        return self._compiled

    def _build_forward(self):
        from keras import ops

        contract = self.contract

        def scaled(x):
            return scale_images(x, preprocess=contract.preprocess,
                                channel_order=contract.channel_order)

        if self.keras_model is None:
            layer = self.saved_model

            def forward(x):
                out = layer(scaled(x))
                if isinstance(out, dict):
                    out = next(iter(out.values()))
                logits = ops.cast(_outputs_as_logits(ops.convert_to_tensor(out), contract),
                                  "float32")
                return logits, logits
            return forward

        from model.graph import tap

        head, logits_from = self._head()
        dense = head[-1]
        pre_activation = logits_from.startswith("pre-activation")
        # With true logits the graph stops at the classifier's input (the logits are computed
        # once, below, from the embedding): the Dense layer and what follows it are not run.
        run = tap(self.keras_model, tuple(head[:-1]), [dense], at="input",
                  head=dense if pre_activation else None)

        def forward(x):
            (embedding,), out = run(scaled(x))
            embedding = ops.reshape(embedding, (ops.shape(embedding)[0], -1))
            logits = (_pre_activation(embedding, dense) if pre_activation
                      else _outputs_as_logits(out, contract))
            return ops.cast(logits, "float32"), ops.cast(embedding, "float32")
        return forward

    def feature_head(self, *, min_grid: int = 4) -> tuple[str, object]:
        """(layer path, function raw images -> (last feature map, logits)) for Grad-CAM.

        The logits are the classifier's pre-activation where the graph has it (gradients of
        softmax outputs saturate on confident predictions, logits do not)."""
        from keras import ops

        from model.graph import find_feature_layer, path_name, tap

        model = self.require_graph("Grad-CAM")
        path = find_feature_layer(model, min_grid=min_grid)
        head, logits_from = self._head()
        dense = head[-1] if logits_from.startswith("pre-activation") else None
        run = tap(model, tuple(path[:-1]), [path[-1]], at="output", head=dense)
        contract = self.contract

        def forward(x):
            (feature,), final = run(scale_images(x, preprocess=contract.preprocess,
                                                 channel_order=contract.channel_order))
            if dense is not None:
                return feature, _pre_activation(ops.reshape(final, (ops.shape(final)[0], -1)),
                                                dense)
            return feature, _outputs_as_logits(final, contract)
        return path_name(path), forward

    def with_keras_model(self, keras_model) -> LoadedModel:
        """The same contract around another network (a randomised or adapted copy)."""
        return LoadedModel(contract=self.contract, format=self.format, sha256=weights_hash(
            keras_model), path=None, metadata=self.metadata, keras_model=keras_model,
            notes=list(self.notes))

    def describe(self) -> dict:
        """JSON-able `model` record of audit.json (without the training metadata)."""
        return {"format": self.format, "path": self.path, "sha256": self.sha256,
                "contract": self.contract.describe(), "graph": self.graph_summary(),
                "notes": list(self.notes)}


def _pre_activation(embedding, dense):
    """The classifier's logits from its (flattened) input: `dense` without its activation."""
    from keras import ops

    logits = ops.matmul(embedding, dense.kernel)
    return logits + dense.bias if dense.use_bias else logits


def _outputs_as_logits(out, contract: InputContract):
    """A model's outputs as logits: the log of probabilities (up to a per-image constant)."""
    from keras import ops

    return ops.log(ops.maximum(out, 1e-12)) if contract.output == "probabilities" else out


def _check_class_count(n_outputs: int, contract: InputContract, where: str) -> None:
    if n_outputs != contract.n_classes:
        raise UsageError(f"model '{where}' outputs {n_outputs} classes but the contract names "
                         f"{contract.n_classes} ({', '.join(contract.class_names)}; from "
                         f"{contract.sources.get('class_names')})")


def _passes_logits(layer) -> bool:
    """Layers that may follow the classifier Dense without changing which class wins."""
    import keras

    if isinstance(layer, (keras.layers.Dropout, keras.layers.Softmax, keras.layers.InputLayer)):
        return True
    if isinstance(layer, keras.layers.Activation):
        return getattr(layer.activation, "__name__", "") in ("softmax", "linear")
    return False


# -- loading and resolving the contract ------------------------------------------------------

def _read_json(path: Path, what: str) -> dict:
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


def _embedded_metadata(path: Path, fmt: str) -> dict:
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
        sources={k: v[1] for k, v in fields_.items()} | {"output": "model outputs"})
    return contract


@dataclass
class ModelFile:
    """A model file read but not yet given a contract: what `audit inspect` looks at."""

    path: Path
    format: str
    keras_model: object | None
    saved_model: object | None
    input_shape: tuple
    own_scaling: str | None
    output_kind: str
    n_outputs: int
    metadata: dict
    sidecar: dict
    notes: list[str]

    def resolve(self, declared: ContractOptions | None = None, **fallback) -> LoadedModel:
        """The LoadedModel under the contract resolved from every source; `fallback` fields
        (e.g. a candidate's preprocess) fill in what nothing declares."""
        from model.formats import file_hash

        options = (declared or ContractOptions()).declared()
        contract = resolve_contract(declared=options, sidecar=self.sidecar,
                                    metadata=self.metadata, input_shape=self.input_shape,
                                    own_scaling=self.own_scaling, output_kind=self.output_kind,
                                    where=str(self.path), fallback=fallback)
        _check_class_count(self.n_outputs, contract, str(self.path))
        return LoadedModel(contract=contract, format=self.format, sha256=file_hash(self.path),
                           path=str(self.path.resolve()), metadata=self.metadata,
                           keras_model=self.keras_model, saved_model=self.saved_model,
                           notes=list(self.notes))


def read_model_file(path: str | os.PathLike) -> ModelFile:
    """Read a model of any supported format, with what it says about itself."""
    from model.formats import detect_format, load_keras_file, load_saved_model

    path = Path(path)
    fmt = detect_format(path)
    metadata = _embedded_metadata(path, fmt)
    side = sidecar_path(path)
    sidecar = _read_json(side, "sidecar") if side.is_file() else {}
    if fmt == "savedmodel":
        layer, endpoint, shape = load_saved_model(path)
        output_kind, n_outputs = _probe_outputs(layer, shape)
        return ModelFile(path, fmt, None, layer, shape, None, output_kind, n_outputs, metadata,
                         sidecar, [f"SavedModel endpoint '{endpoint}', loaded for inference"])
    from model.graph import check_single_image_input, final_activation, own_scaling_layer

    keras_model, notes = load_keras_file(path, fmt)
    check_single_image_input(keras_model, where=str(path))
    return ModelFile(path, fmt, keras_model, None, tuple(keras_model.inputs[0].shape),
                     own_scaling_layer(keras_model),
                     "probabilities" if final_activation(keras_model) == "softmax" else "logits",
                     int(keras_model.outputs[0].shape[-1]), metadata, sidecar, notes)


def load_model(path: str | os.PathLike, declared: ContractOptions | None = None) -> LoadedModel:
    """Load a model of any supported format with its resolved input contract."""
    return read_model_file(path).resolve(declared)


def from_keras_model(model, declared: ContractOptions | None = None, *,
                     metadata: dict | None = None) -> LoadedModel:
    """A model object already in memory (the Python API), with its declared contract."""
    from model.graph import check_single_image_input, final_activation, own_scaling_layer

    check_single_image_input(model, where=model.name)
    metadata = dict(metadata or {})
    contract = resolve_contract(
        declared=(declared or ContractOptions()).declared(), sidecar={}, metadata=metadata,
        input_shape=tuple(model.inputs[0].shape), own_scaling=own_scaling_layer(model),
        output_kind="probabilities" if final_activation(model) == "softmax" else "logits",
        where=model.name)
    _check_class_count(int(model.outputs[0].shape[-1]), contract, model.name)
    return LoadedModel(contract=contract, format="memory", sha256=weights_hash(model),
                       metadata=metadata, keras_model=model)


def as_loaded(model) -> LoadedModel:
    """`model` if already loaded; else a Keras model object fed pixels exactly as the caller
    passes them (preprocess none, generic class names): for internal callers and tests that
    build a network by hand. Users' models go through `load_model` / `from_keras_model`."""
    if isinstance(model, LoadedModel):
        return model
    n = int(model.outputs[0].shape[-1])
    return from_keras_model(model, ContractOptions(
        classes=tuple(f"class_{i}" for i in range(n)), preprocess="none"))


def weights_hash(model) -> str:
    """SHA-256 over an in-memory model's architecture and weights (its cache key)."""
    digest = hashlib.sha256(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(np.asarray(weight)).tobytes())
    return digest.hexdigest()


def _probe_outputs(layer, shape: tuple) -> tuple[str, int]:
    """(output kind, number of outputs) of a SavedModel from one call on varied inputs:
    'probabilities' when its outputs are non-negative and sum to 1 (a softmax at its end),
    else 'logits'."""
    size = shape[1] if shape[1] is not None else 64
    rng = np.random.default_rng(0)
    probe = rng.uniform(-1, 255, (4, size, shape[2] or size, 3)).astype(np.float32)
    out = layer(probe)
    out = np.asarray(next(iter(out.values())) if isinstance(out, dict) else out, np.float64)
    if out.ndim != 2:
        raise InputError(f"SavedModel output has shape {out.shape}; expected (batch, classes)")
    is_prob = bool(np.all(out >= -1e-6) and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))
    return ("probabilities" if is_prob else "logits"), int(out.shape[-1])
