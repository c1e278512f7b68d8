"""Reading a Keras classifier's layer graph: where its logits, embedding and feature maps are.

Works on any functional or Sequential Keras model, including backbones nested as sub-models
(a notebook's `Sequential([MobileNetV2(include_top=False), pooling, Dense])`, or CellAudit's own
`image -> preprocess -> backbone -> pool -> logits -> probs`). A layer is addressed by its
*path*: the nested models that hold it, outer first, then the layer.

`tap(model, container_path, layers)` builds a function images -> (values at those layers,
the model's outputs, or the classifier Dense layer's input) that descends into nested models by
splitting the outer graph where the sub-model is called, following each layer's path on its
own: the feature map and the classifier may sit at different depths (a top-level convolution
before a nested `Sequential([pooling, Dense])` head). It serves the forward pass (logits +
embedding), Grad-CAM (the last feature map) and AdaBN (every BatchNorm input) alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

__all__ = ["iter_layer_paths", "classifier_head", "find_feature_layer", "own_scaling_layer",
           "final_activation", "tap", "path_name", "check_single_image_input"]

# Layers that put a model's input on its own scale: a model starting with one takes 0-255.
_SCALING_LAYERS = ("Rescaling", "Normalization", "ReinhardNormalization")
# Layers that only pass values through or reshape them on the way to the first scaling layer.
_TRANSPARENT_LAYERS = ("InputLayer", "Resizing", "CenterCrop", "Cropping2D")


def _keras():
    import keras

    return keras


def _is_model(layer) -> bool:
    return isinstance(layer, _keras().Model)


def iter_layer_paths(model, prefix: tuple = ()) -> Iterator[tuple]:
    """Every layer as a path (nested models..., layer), in graph order, sub-models inlined."""
    for layer in model.layers:
        if _is_model(layer):
            yield from iter_layer_paths(layer, (*prefix, layer))
        else:
            yield (*prefix, layer)


def path_name(path) -> str:
    return "/".join(layer.name for layer in path)


def check_single_image_input(model, *, where: str) -> None:
    """One input of shape (batch, H, W, 3) and one output of shape (batch, classes)."""
    from audit.errors import InputError

    inputs = model.inputs if getattr(model, "inputs", None) else []
    if len(inputs) != 1:
        raise InputError(f"model '{where}' has {len(inputs)} inputs; CellAudit audits image "
                         "classifiers with one image input")
    shape = tuple(inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise InputError(f"model '{where}' takes input of shape {shape}; expected (batch, "
                         "height, width, 3) RGB images")
    outputs = model.outputs
    if len(outputs) != 1 or len(outputs[0].shape) != 2:
        shapes = [tuple(o.shape) for o in outputs]
        raise InputError(f"model '{where}' has outputs {shapes}; expected one output of shape "
                         "(batch, classes)")


def _class_name(layer) -> str:
    return type(layer).__name__


def own_scaling_layer(model) -> str | None:
    """Path name of the scaling layer the model starts with (Rescaling, Normalization, ...),
    looking through input and reshaping layers and into a nested first sub-model; None when
    the first layer that computes anything is not one."""
    for path in iter_layer_paths(model):
        name = _class_name(path[-1])
        if name in _SCALING_LAYERS:
            return path_name(path)
        if name not in _TRANSPARENT_LAYERS:
            return None
    return None


def final_activation(model) -> str | None:
    """'softmax' when the model's last computing layer ends in a softmax, else its activation
    name, or None when it cannot be told."""
    keras = _keras()
    for path in reversed(list(iter_layer_paths(model))):
        layer = path[-1]
        if isinstance(layer, keras.layers.Softmax):
            return "softmax"
        if isinstance(layer, (keras.layers.Activation, keras.layers.Dense)):
            return getattr(layer.activation, "__name__", None)
        if isinstance(layer, (keras.layers.Dropout, keras.layers.InputLayer)):
            continue
        return None
    return None


def classifier_head(model) -> tuple | None:
    """Path to the model's last Dense layer (the classifier), or None."""
    keras = _keras()
    dense = [p for p in iter_layer_paths(model) if isinstance(p[-1], keras.layers.Dense)]
    return dense[-1] if dense else None


def _grid(layer) -> int:
    shape = layer.output.shape
    return int(min(shape[1] or 0, shape[2] or 0))


def _is_feature_map(layer) -> bool:
    keras = _keras()
    try:
        rank = len(layer.output.shape)
    except (AttributeError, ValueError):  # several outputs, or never called
        return False
    # Padding layers add a border of zeros: their grid is not aligned with the image.
    return rank == 4 and not isinstance(layer, (keras.layers.InputLayer,
                                                keras.layers.ZeroPadding2D))


def find_feature_layer(model, *, min_grid: int = 4) -> tuple:
    """Path to the last convolutional feature map (a 4-D output), at any nesting depth.

    The last one whose grid is at least `min_grid` cells a side, else the last one. Raises
    ValueError naming the model when it has none.
    """
    candidates = [p for p in reversed(list(iter_layer_paths(model))) if _is_feature_map(p[-1])]
    if not candidates:
        raise ValueError(f"model '{model.name}' has no layer with a 4-D (convolutional) output "
                         "for Grad-CAM")
    fine = [p for p in candidates if _grid(p[-1]) >= min_grid]
    return (fine or candidates)[0]


def _outer_node(sub_model, model):
    """The call of `sub_model` inside `model`'s graph."""
    keras = _keras()
    for node in reversed(sub_model._inbound_nodes):
        try:
            keras.Model(model.inputs, node.output_tensors)
        except ValueError:
            continue
        return node
    raise ValueError(f"cannot find where '{sub_model.name}' is called in model '{model.name}'")


def _holds(model, layer) -> bool:
    """`layer` is in `model`, at any depth."""
    return any(path[-1] is layer for path in iter_layer_paths(model))


def _as_list(values) -> list:
    return list(values) if isinstance(values, (list, tuple)) else [values]


def _one(values):
    """A single tensor for a one-input model, the list otherwise."""
    values = _as_list(values)
    return values[0] if len(values) == 1 else values


def _between(inputs: list, outputs: list) -> Callable:
    """A function (values of `inputs`) -> list of values of `outputs`, in inference mode.

    Outputs that are inputs are passed through: Keras refuses a model whose output is one of
    its non-Input inputs (a head sub-model called straight on a backbone sub-model's output)."""
    ids = [id(t) for t in inputs]
    if all(id(t) in ids for t in outputs):
        return lambda values: [_as_list(values)[ids.index(id(t))] for t in outputs]
    model = _keras().Model(inputs, outputs)
    return lambda values: _as_list(model(_one(values), training=False))


def _toward_final(model, head) -> tuple[list, Callable]:
    """(tensors of `model`'s own graph, function of their values -> final value).

    The final value is the model's output, or with `head` the input of that Dense layer at any
    depth: when it sits in a nested model, the tensors are that model's inputs where the outer
    graph calls it, and the function follows the layer path into it."""
    if head is None:
        return list(model.outputs), lambda values: values[0]
    if any(layer is head for layer in model.layers):
        return [head.input], lambda values: values[0]
    holder = next((layer for layer in model.layers if _is_model(layer) and _holds(layer, head)),
                  None)
    if holder is None:
        raise ValueError(f"layer '{head.name}' is not in model '{model.name}'")
    node = _outer_node(holder, model)
    inner = tap(holder, (), [], head=head)
    return list(node.input_tensors), lambda values: inner(_one(values))[1]


def tap(model, container: tuple, layers: list, *, at: str = "output", head=None) -> Callable:
    """A function images -> (list of values at `layers`, final value).

    `layers` all live in the innermost model of `container` (the path of nested models, outer
    first; empty when they are top-level layers of `model`); `at` is "output" or "input" (the
    tensor entering the layer). The final value is the model's output, or with `head` (the
    classifier Dense, at any depth: in `container`, beside it in another nested model, or
    top-level) the input of `head`, from which the caller computes logits. Every call runs in
    inference mode.
    """
    keras = _keras()
    if not container:
        tensors = [layer.output if at == "output" else layer.input for layer in layers]
        final, finish = _toward_final(model, head)
        probe = keras.Model(model.inputs, [*tensors, *final])
        n = len(tensors)

        def run(x):
            values = _as_list(probe(x, training=False))
            return values[:n], finish(values[n:])
        return run
    sub, rest = container[0], tuple(container[1:])
    node = _outer_node(sub, model)
    before = _between(list(model.inputs), list(node.input_tensors))
    if head is not None and _holds(sub, head):
        inner = tap(sub, rest, layers, at=at, head=head)

        def run(x):
            return inner(_one(before(x)))
        return run
    # The rest of the way (to the outputs, or to the head's input) starts from the sub-model's
    # outputs where the outer graph calls it.
    inner = tap(sub, rest, layers, at=at)
    final, finish = _toward_final(model, head)
    after = _between(list(node.output_tensors), final)

    def run(x):
        values, sub_out = inner(_one(before(x)))
        return values, finish(after(sub_out))
    return run
