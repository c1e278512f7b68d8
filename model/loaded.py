"""A model ready to audit: the network, its input contract, and one forward function.

`load_model(path, declared)` reads any supported format (`model.formats`), resolves the input
contract (`model.contract_sources`) from what was declared (options, a sidecar file beside
the model, CellAudit metadata inside it) and what the model itself says (input shape, a
scaling layer at its start, a final softmax), and refuses an incomplete or inconsistent
contract with one line naming the option to use. `LoadedModel.forward` is the only way any
part of CellAudit feeds the model: raw RGB pixels 0-255 at the input size in, (logits,
embedding) out, the contract's scaling applied inside.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audit.errors import InputError, UsageError
from model.contract import InputContract, scale_images
from model.contract_sources import (  # the declarations' types, re-exported for callers
    ContractOptions,
    classes_from_folder,
    embedded_metadata,
    read_json_object,
    resolve_contract,
    sidecar_path,
)
from model.views import apply_views, map_views, mean_over_views, split_views

__all__ = ["ContractOptions", "LoadedModel", "load_model", "from_keras_model", "as_loaded",
           "ModelFile", "read_model_file", "GraphUnavailable", "classes_from_folder"]


class GraphUnavailable(Exception):
    """The model has no Keras layer graph (a SavedModel): the message says what is not possible."""


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
            summary = {"layers": None, "own_scaling_layer": None,
                       "logits": "log of the outputs" if self.contract.output == "probabilities"
                       else "the outputs",
                       "embedding": "the logits (a SavedModel has no layer graph)",
                       "gradcam_layer": None,
                       "gradcam_unavailable": "Grad-CAM needs the layer graph, which a "
                                              "SavedModel loaded for inference does not have"}
            return self._views_summary(summary)
        from model.graph import find_feature_layer, iter_layer_paths, own_scaling_layer, path_name

        head, logits_from = self._head()
        try:
            gradcam, unavailable = path_name(find_feature_layer(self.keras_model)), None
        except ValueError as exc:
            gradcam, unavailable = None, str(exc)
        return self._views_summary({
            "layers": sum(1 for _ in iter_layer_paths(self.keras_model)),
            "own_scaling_layer": own_scaling_layer(self.keras_model), "logits": logits_from,
            "embedding": f"input of '{path_name(head)}'", "gradcam_layer": gradcam,
            "gradcam_unavailable": unavailable})

    def _views_summary(self, summary: dict) -> dict:
        """With test-time views, the audit's logits and embedding are the views' averages."""
        views = self.contract.views
        if views == "single":
            return summary
        return summary | {
            "logits": f"softmax: the mean probability over the {views} views; logsumexp: "
                      f"the views' mean (each view: {summary['logits']})",
            "embedding": f"mean over the {views} views of the {summary['embedding']}"}

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

        def scaled(x):  # once per image: scaling is per pixel, so it commutes with the views
            return scale_images(x, preprocess=contract.preprocess,
                                channel_order=contract.channel_order)

        if self.keras_model is None:
            layer = self.saved_model

            def forward(x):
                out = map_views(layer, scaled(x), contract.views)
                if isinstance(out, dict):
                    out = next(iter(out.values()))
                logits = ops.cast(_outputs_as_logits(ops.convert_to_tensor(out), contract),
                                  "float32")
                logits = mean_over_views(logits, contract.views)
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
            (embedding,), out = map_views(run, scaled(x), contract.views)
            embedding = ops.reshape(embedding, (ops.shape(embedding)[0], -1))
            logits = (_pre_activation(embedding, dense) if pre_activation
                      else _outputs_as_logits(out, contract))
            if contract.views != "single":
                logits = mean_over_views(logits, contract.views)
                embedding = ops.mean(split_views(embedding, contract.views), axis=0)
            return ops.cast(logits, "float32"), ops.cast(embedding, "float32")
        return forward

    def feature_head(self, *, min_grid: int = 4) -> tuple[str, object]:
        """(layer path, function raw images -> (last feature map, logits)) for Grad-CAM.

        The logits are the classifier's pre-activation where the graph has it (gradients of
        softmax outputs saturate on confident predictions, logits do not). With test-time
        views both are every view's (view-major; `model.views.merge_views` turns maps back)."""
        from keras import ops

        from model.graph import find_feature_layer, path_name, tap

        model = self.require_graph("Grad-CAM")
        path = find_feature_layer(model, min_grid=min_grid)
        head, logits_from = self._head()
        dense = head[-1] if logits_from.startswith("pre-activation") else None
        run = tap(model, tuple(path[:-1]), [path[-1]], at="output", head=dense)
        contract = self.contract

        def forward(x):
            (feature,), final = run(apply_views(scale_images(
                x, preprocess=contract.preprocess, channel_order=contract.channel_order),
                contract.views))
            if dense is not None:
                logits = _pre_activation(ops.reshape(final, (ops.shape(final)[0], -1)), dense)
            else:
                logits = _outputs_as_logits(final, contract)
            return feature, logits
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
    metadata = embedded_metadata(path, fmt)
    side = sidecar_path(path)
    sidecar = read_json_object(side, "sidecar") if side.is_file() else {}
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
