"""Finding layers in nested models and cutting a model at one of them.

The pipeline's models nest: fine_tune holds a functional backbone, feature_extraction an
extractor (which holds the backbone) and a head. A layer inside a nested model has no tensor in
the outer model's graph, so `keras.Model(model.input, layer.output)` cannot reach it. This
module instead *replays* a model's graph on a new input, calling the same layer objects (same
weights) and expanding every nested functional model into its own layers. The replayed graph
then exposes any layer's output: `activation_model` ends at a layer, `split_at_layer` cuts the
model in two there (what Grad-CAM needs to differentiate with respect to a nested layer's
activation, on every backend), `activation_maps` reads many layers in one pass.

The replay walks Keras' own node graph (`Functional._nodes_by_depth`, `Node.arguments`), the
structure Keras itself runs a functional model through (keras 3.15).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import keras
from keras import layers

from pipeline.errors import ModelError

CONV_TYPES = (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D)
"""What counts as a convolution layer here: every 2-D convolution with a kernel to look at."""


class ExplainError(ModelError, ValueError):
    """A model cannot be explained as asked: an unknown layer, a graph that branches around it.

    Also a ValueError, so code that skips an optional figure on a ValueError skips this one.
    """


def _is_functional(layer: keras.layers.Layer) -> bool:
    """A nested model whose graph can be walked (Functional and Sequential models)."""
    return isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth")


def _walk_layers(model: keras.Model) -> Iterable[keras.layers.Layer]:
    """Every layer of `model`, nested models' layers included, depth-first in model order."""
    for layer in model.layers:
        yield layer
        if _is_functional(layer):
            yield from _walk_layers(layer)


def conv_layer_names(model: keras.Model) -> list[str]:
    """Every convolution layer's name, nested models included, in the order data meets them."""
    return [layer.name for layer in _walk_layers(model) if isinstance(layer, CONV_TYPES)]


def find_layer(model: keras.Model, name: str) -> keras.layers.Layer:
    """The layer called `name`, searched depth-first through nested models."""
    for layer in _walk_layers(model):
        if layer.name == name:
            return layer
    convs = conv_layer_names(model)
    raise ExplainError(
        f"model {model.name!r} has no layer named {name!r}; its conv layers are: "
        f"{', '.join(convs) if convs else '(none)'}"
    )


def last_conv_layer_name(model: keras.Model) -> str:
    """The last convolution layer (for a VGG16 base: block5_conv3), where Grad-CAM looks."""
    convs = conv_layer_names(model)
    if not convs:
        raise ExplainError(f"model {model.name!r} has no conv layer to explain")
    return convs[-1]


def gradcam_layer_name(model: keras.Model) -> str:
    """The layer Grad-CAM uses by default: the last conv layer if the model can be cut there,
    else the last 4-D output of the nested model holding it (ResNet's conv5_block3_out,
    MobileNetV2's out_relu: their last conv feeds a residual sum or a batch norm)."""
    name = last_conv_layer_name(model)
    if _is_cut_point(model, name):
        return name
    owner = _owner_of(model, find_layer(model, name))
    if owner is not model:
        for layer in reversed(owner.layers):
            if len(layer.output.shape) == 4 and _is_cut_point(model, layer.name):
                return layer.name
    raise ExplainError(
        f"model {model.name!r} branches around its last conv layer {name!r} and has no single "
        f"4-D output to explain instead; pass layer_name explicitly"
    )


def _owner_of(model: keras.Model, target: keras.layers.Layer) -> keras.Model:
    """The innermost model whose own layers include `target`."""
    for layer in model.layers:
        if layer is target:
            return model
        if _is_functional(layer) and any(inner is target for inner in _walk_layers(layer)):
            return _owner_of(layer, target)
    raise ExplainError(f"{target.name!r} is not a layer of {model.name!r}")


def _is_cut_point(model: keras.Model, name: str) -> bool:
    try:
        split_at_layer(model, name)
    except ExplainError:
        return False
    return True


# --- chains ---------------------------------------------------------------------------------


def _ordered_nodes(model: keras.Model) -> list:
    """The model's call nodes (inputs left out) in the order Keras runs them."""
    nodes = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                nodes.append(node)
    return nodes


def _is_chain(model: keras.Model) -> bool:
    """Each layer takes only the previous layer's output (several times is fine: gray_to_rgb
    concatenates one tensor three times) and nothing else."""
    previous = {id(tensor) for tensor in model.inputs}
    for node in _ordered_nodes(model):
        if not node.input_tensors or any(id(t) not in previous for t in node.input_tensors):
            return False
        previous = {id(tensor) for tensor in node.outputs}
    return len(model.outputs) == 1 and id(model.outputs[0]) in previous


def layer_chain(model: keras.Model, allow_opaque: bool = False) -> list[keras.layers.Layer]:
    """The layers data goes through, in order, nested chain-shaped models expanded.

    A nested model that branches inside (ResNet, MobileNetV2) is kept as one opaque step when
    `allow_opaque`, else it is an error; so is a top-level model that branches.
    """
    if not _is_chain(model):
        raise ExplainError(
            f"model {model.name!r} is not a chain of layers (some layer takes more than the "
            f"previous layer's output)"
        )
    chain: list[keras.layers.Layer] = []
    for node in _ordered_nodes(model):
        layer = node.operation
        if _is_functional(layer) and _is_chain(layer):
            chain.extend(layer_chain(layer, allow_opaque))
        elif _is_functional(layer) and not allow_opaque:
            raise ExplainError(
                f"the nested model {layer.name!r} inside {model.name!r} branches (residual "
                f"connections); keep it as one step with allow_opaque=True"
            )
        else:
            chain.append(layer)
    return chain


# --- replaying a graph ----------------------------------------------------------------------


class _Reached(Exception):
    """Raised inside a replay once the layer it stops at has run; carries its output."""

    def __init__(self, output) -> None:
        super().__init__()
        self.output = output


@dataclass
class _Replay:
    """What a replay does at chosen layers: stop after one, swap one's output, record some."""

    stop_at: keras.layers.Layer | None = None
    replace: keras.layers.Layer | None = None
    replacement: object = None
    record: tuple[keras.layers.Layer, ...] = ()
    recorded: dict[str, object] = field(default_factory=dict)


def _replay(model: keras.Model, inputs: list, plan: _Replay):
    """Run `model`'s graph on new symbolic `inputs`, expanding nested models; the output."""
    tensors = {id(reference): value for reference, value in zip(model.inputs, inputs, strict=True)}
    for node in _ordered_nodes(model):
        if any(id(tensor) not in tensors for tensor in node.input_tensors):
            continue  # A branch that does not lead from these inputs.
        args, kwargs = node.arguments.fill_in(tensors)
        layer = node.operation
        if layer is plan.replace:
            outputs = plan.replacement
        elif _is_functional(layer):
            outputs = _replay(layer, [tensors[id(t)] for t in node.input_tensors], plan)
        else:
            outputs = layer(*args, **kwargs)
        for reference, value in zip(node.outputs, keras.tree.flatten(outputs), strict=True):
            tensors[id(reference)] = value
        if any(layer is wanted for wanted in plan.record):
            plan.recorded[layer.name] = outputs
        if layer is plan.stop_at:
            raise _Reached(outputs)
    outputs = [tensors[id(reference)] for reference in model.outputs]
    return outputs[0] if len(outputs) == 1 else outputs


def _new_input(model: keras.Model, input_shape, input_dtype) -> keras.KerasTensor:
    if len(model.inputs) != 1:
        raise ExplainError(
            f"model {model.name!r} has {len(model.inputs)} inputs; explain needs one"
        )
    shape = tuple(model.inputs[0].shape[1:]) if input_shape is None else tuple(input_shape)
    dtype = model.inputs[0].dtype if input_dtype is None else input_dtype
    return keras.Input(shape=shape, dtype=dtype, name="explain_input")


def _functional(inputs, outputs, name: str) -> keras.Model:
    try:
        return keras.Model(inputs, outputs, name=name)
    except ValueError as exc:
        raise ExplainError(f"cannot build {name!r} from the replayed graph: {exc}") from exc


def activation_model(
    model: keras.Model,
    layer_name: str,
    input_shape: tuple[int, ...] | None = None,
    input_dtype: str | None = None,
) -> keras.Model:
    """A model from a new input to `layer_name`'s output, sharing `model`'s layers (weights).

    Default input: `model`'s own shape and dtype. Filter patterns pass a bigger float32 shape:
    conv and pooling layers do not care about the size they are given.
    """
    target = find_layer(model, layer_name)
    inputs = _new_input(model, input_shape, input_dtype)
    try:
        _replay(model, [inputs], _Replay(stop_at=target))
    except _Reached as reached:
        return _functional(inputs, reached.output, name=f"{model.name}_to_{layer_name}")
    raise ExplainError(f"layer {layer_name!r} is not on the path from {model.name!r}'s input")


def multi_activation_model(model: keras.Model, layer_names: list[str]) -> keras.Model:
    """One model from `model`'s input to the outputs of `layer_names` (a dict by name), so many
    layers' activations come from one forward pass."""
    targets = tuple(find_layer(model, name) for name in layer_names)
    inputs = _new_input(model, None, None)
    plan = _Replay(record=targets)
    _replay(model, [inputs], plan)
    missing = [name for name in layer_names if name not in plan.recorded]
    if missing:
        raise ExplainError(f"layers {missing} are not on the path from {model.name!r}'s input")
    outputs = {name: plan.recorded[name] for name in layer_names}
    return _functional(inputs, outputs, name=f"{model.name}_activations")


def split_at_layer(model: keras.Model, layer_name: str) -> tuple[keras.Model, keras.Model]:
    """(features_model, head_model): input -> `layer_name`'s activation -> `model`'s output.

    `head_model(features_model(x))` is `model(x)`. Only possible where every path through the
    model goes through that layer: not inside a residual block.
    """
    features_model = activation_model(model, layer_name)
    activation = features_model.outputs[0]
    head_input = keras.Input(
        shape=tuple(activation.shape[1:]), dtype=activation.dtype, name="explain_activation"
    )
    plan = _Replay(replace=find_layer(model, layer_name), replacement=head_input)
    outputs = _replay(model, [_new_input(model, None, None)], plan)
    try:
        head_model = keras.Model(head_input, outputs, name=f"{layer_name}_to_{model.name}_output")
    except ValueError as exc:
        raise ExplainError(
            f"model {model.name!r} cannot be cut at {layer_name!r}: some path (a residual "
            f"connection) goes around it. Choose a layer every path goes through, such as a "
            f"nested backbone's last layer"
        ) from exc
    return features_model, head_model


def split_before_activation(model: keras.Model) -> tuple[keras.Model, keras.layers.Layer] | None:
    """(penultimate_model, output_layer) when `model` (a flat model, as `split_at_layer` gives)
    ends with a Dense layer with a softmax or sigmoid: the model up to that layer's input, and
    the layer, whose kernel and bias give the logits. None for any other ending."""
    nodes = _ordered_nodes(model)
    if not nodes or len(model.outputs) != 1:
        return None
    last = nodes[-1]
    layer = last.operation
    squashing = (keras.activations.softmax, keras.activations.sigmoid)
    if not isinstance(layer, layers.Dense) or layer.activation not in squashing:
        return None
    if len(last.input_tensors) != 1:
        return None
    penultimate = _functional(model.inputs, last.input_tensors[0], name=f"{model.name}_logits")
    return penultimate, layer
