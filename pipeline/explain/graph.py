"""Finding layers in the pipeline's models and cutting a model at one of them, through Keras'
public functional API only (as the keras-io Grad-CAM example does).

A model is either flat (scratch: every layer its own, cut directly) or assembled from named
parts (`pipeline.models.heads.model_parts`: preprocessing, base, head). A layer is reached
inside the part that holds it, `keras.Model(part.inputs, part.get_layer(name).output)`, after
the parts before it. What follows the layer is the part's later layers called again, in order,
on a new `keras.Input`, then the later parts. That needs the part to be a chain after the layer
(each layer takes only the previous one's output): a layer inside a residual block (ResNet's
shortcuts) cannot be cut at, and gets an ExplainError naming it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import keras
from keras import layers

from pipeline.errors import ModelError
from pipeline.models.heads import model_parts

CONV_TYPES = (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D)
"""What counts as a convolution layer here: every 2-D convolution with a kernel to look at."""


class ExplainError(ModelError, ValueError):
    """A model cannot be explained as asked: an unknown layer, a graph that branches around it.

    Also a ValueError, so code that skips an optional figure on a ValueError skips this one.
    """


# --- finding layers -------------------------------------------------------------------------


def _walk_layers(model: keras.Model) -> Iterable[keras.layers.Layer]:
    """Every layer of `model`, nested models' layers included, depth-first in model order."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _walk_layers(layer)


def conv_layer_names(model: keras.Model) -> list[str]:
    """Every convolution layer's name, nested models included, in the order data meets them."""
    return [layer.name for layer in _walk_layers(model) if isinstance(layer, CONV_TYPES)]


def _unknown_layer(model: keras.Model, name: str) -> ExplainError:
    convs = conv_layer_names(model)
    return ExplainError(
        f"model {model.name!r} has no layer named {name!r}; its conv layers are: "
        f"{', '.join(convs) if convs else '(none)'}"
    )


def find_layer(model: keras.Model, name: str) -> keras.layers.Layer:
    """The layer called `name`, searched depth-first through nested models."""
    for layer in _walk_layers(model):
        if layer.name == name:
            return layer
    raise _unknown_layer(model, name)


def owner_of(model: keras.Model, name: str) -> keras.Model:
    """The innermost model (`model` itself, or a nested one such as the base) whose own
    layers include the layer called `name`."""
    if any(layer.name == name for layer in model.layers):
        return model
    for layer in model.layers:
        if isinstance(layer, keras.Model) and any(
            inner.name == name for inner in _walk_layers(layer)
        ):
            return owner_of(layer, name)
    raise _unknown_layer(model, name)


def last_conv_layer_name(model: keras.Model) -> str:
    """The last convolution layer (for a VGG16 base: block5_conv3), where Grad-CAM looks."""
    convs = conv_layer_names(model)
    if not convs:
        raise ExplainError(f"model {model.name!r} has no conv layer to explain")
    return convs[-1]


def gradcam_layer_name(model: keras.Model) -> str:
    """The layer Grad-CAM uses by default: the last conv layer if the model can be cut there,
    else the last 4-D output of the nested model holding it that can be (ResNet's
    conv5_block3_out: its last conv feeds a residual sum)."""
    name = last_conv_layer_name(model)
    if _is_cut_point(model, name):
        return name
    owner = owner_of(model, name)
    if owner is not model:
        for layer in reversed(owner.layers):
            if len(layer.output.shape) == 4 and _is_cut_point(model, layer.name):
                return layer.name
    raise ExplainError(
        f"model {model.name!r} branches around its last conv layer {name!r} and has no single "
        f"4-D output to explain instead; pass layer_name explicitly"
    )


# --- parts and chains -----------------------------------------------------------------------


def _parts(model: keras.Model) -> tuple[keras.Model, ...]:
    """The models data goes through, in order: an assembled model's three parts, or the
    model itself when it is flat."""
    parts = model_parts(model)
    return (model,) if parts is None else parts.in_order()


def _locate(model: keras.Model, name: str) -> tuple[tuple[keras.Model, ...], int]:
    """(parts, index): the part whose own layers include `name`."""
    find_layer(model, name)  # An unknown name: the error that lists the conv layers.
    parts = _parts(model)
    for index, part in enumerate(parts):
        if any(layer.name == name for layer in part.layers):
            return parts, index
    raise ExplainError(
        f"layer {name!r} sits in a nested model of {model.name!r} that explanations cannot "
        f"reach: only flat models and models assembled from preprocessing, base and head "
        f"(pipeline.models.heads) can be cut"
    )


def _takes_only(layer: keras.layers.Layer, tensor) -> bool:
    """Whether `layer` was called on `tensor` alone (once, or several times in a list:
    gray_to_rgb concatenates one tensor three times)."""
    inputs = keras.tree.flatten(layer.input)
    return bool(inputs) and all(item is tensor for item in inputs)


def _call_again(layer: keras.layers.Layer, x):
    """`layer` called on `x` the way it was called on the previous layer's output."""
    return layer(keras.tree.map_structure(lambda _: x, layer.input))


def _chain(part: keras.Model, name: str, start: int, stop: int | None = None) -> list:
    """`part.layers[start:stop]`, checked to be a chain (each takes only the previous layer's
    output, the last the part's output when `stop` is None); else an ExplainError naming the
    layer `name` that was asked for and the layer that branches."""
    previous = part.layers[start - 1].output
    for layer in part.layers[start:stop]:
        if not _takes_only(layer, previous):
            raise ExplainError(
                f"model {part.name!r} cannot be cut at {name!r}: {layer.name!r} takes more than "
                f"the previous layer's output (a shortcut, as in a residual block). Choose a "
                f"layer every path goes through, such as the last layer of the base"
            )
        previous = layer.output
    if stop is None and (len(part.outputs) != 1 or previous is not part.outputs[0]):
        raise ExplainError(f"model {part.name!r} does not end in one chain after {name!r}")
    return part.layers[start:stop]


def _index(part: keras.Model, name: str) -> int:
    return [layer.name for layer in part.layers].index(name)


def _expanded(part: keras.Model) -> list:
    """A later part as steps: its layers when it is a chain (the head: so its output layer
    shows, for logits), else the part as one step."""
    try:
        return _chain(part, part.layers[0].name, 1)
    except ExplainError:
        return [part]


def _new_input(model: keras.Model, shape=None, dtype=None) -> keras.KerasTensor:
    """A new input like `model`'s, or of another shape and dtype."""
    if len(model.inputs) != 1:
        raise ExplainError(f"model {model.name!r} has {len(model.inputs)} inputs; explain needs 1")
    reference = model.inputs[0]
    return keras.Input(
        shape=tuple(reference.shape[1:]) if shape is None else tuple(shape),
        dtype=reference.dtype if dtype is None else dtype,
        name="explain_input",
    )


def _is_cut_point(model: keras.Model, name: str) -> bool:
    try:
        parts, index = _locate(model, name)
        _chain(parts[index], name, _index(parts[index], name) + 1)
    except ExplainError:
        return False
    return True


# --- models cut at a layer ------------------------------------------------------------------


def _to_layer(part: keras.Model, name: str) -> keras.Model:
    """The part from its input to `name`'s output: keras-io's `Model(inputs, layer.output)`."""
    return keras.Model(part.input, part.get_layer(name).output, name=f"{part.name}_to_{name}")


def _features(model: keras.Model, name: str) -> keras.Model:
    """`model`'s input -> `name`'s activation: a flat model cut directly, an assembled one
    through the parts before the one holding the layer, then that part up to it."""
    parts, index = _locate(model, name)
    if len(parts) == 1:
        return _to_layer(model, name)
    inputs = _new_input(model)
    x = inputs
    for part in parts[:index]:
        x = part(x)
    return keras.Model(inputs, _to_layer(parts[index], name)(x), name=f"{model.name}_to_{name}")


@dataclass(frozen=True)
class Cut:
    """A model cut at a layer: `features` (the model's input -> the layer's activation) and
    `rest`, the steps (layers, or whole parts) that take the activation to the model's output."""

    features: keras.Model
    rest: tuple

    def head(self, steps: Sequence | None = None, name: str = "explain_head") -> keras.Model:
        """A model from a new input of the activation's shape through `steps` (default: all of
        `rest`), calling the same layers (the same weights)."""
        activation = self.features.outputs[0]
        inputs = keras.Input(
            shape=tuple(activation.shape[1:]), dtype=activation.dtype, name="explain_activation"
        )
        x = inputs
        for step in self.rest if steps is None else steps:
            x = _call_again(step, x)
        return keras.Model(inputs, x, name=name)


def cut_at_layer(model: keras.Model, layer_name: str) -> Cut:
    """`model` cut at `layer_name`: `cut.head()(cut.features(x))` is `model(x)`. Only possible
    where every path after that layer goes through it: not inside a residual block."""
    parts, index = _locate(model, layer_name)
    rest = list(_chain(parts[index], layer_name, _index(parts[index], layer_name) + 1))
    for part in parts[index + 1 :]:
        rest.extend(_expanded(part))
    return Cut(_features(model, layer_name), tuple(rest))


def activation_model(
    model: keras.Model,
    layer_name: str,
    input_shape: tuple[int, ...] | None = None,
    input_dtype: str | None = None,
) -> keras.Model:
    """A model from a new input to `layer_name`'s output, sharing `model`'s layers (weights).

    Default input: `model`'s own shape and dtype, through any graph. Filter patterns pass a
    bigger float32 shape (conv and pooling layers do not care about the size they are given):
    then `model` must hold the layer itself (see `owner_of`) and be a chain up to it, whose
    layers are called again on the new input.
    """
    if input_shape is None and input_dtype is None:
        return _features(model, layer_name)
    if owner_of(model, layer_name) is not model:
        raise ExplainError(
            f"{layer_name!r} is inside a nested model of {model.name!r}: pass that model "
            f"(owner_of) to read it at another input size"
        )
    chain = _chain(model, layer_name, 1, _index(model, layer_name) + 1)
    inputs = _new_input(model, input_shape, input_dtype)
    x = inputs
    for layer in chain:
        x = _call_again(layer, x)
    return keras.Model(inputs, x, name=f"{model.name}_to_{layer_name}")


def multi_activation_model(model: keras.Model, layer_names: list[str]) -> keras.Model:
    """One model from `model`'s input to the outputs of `layer_names` (a dict by name), so many
    layers' activations come from one forward pass: each part is read at its layers
    (keras-io's `Model(part.inputs, [layer outputs..., part output])`)."""
    owners = {name: _locate(model, name)[1] for name in layer_names}
    parts = _parts(model)
    inputs = _new_input(model)
    x, outputs = inputs, {}
    for index, part in enumerate(parts[: max(owners.values(), default=-1) + 1]):
        wanted = [name for name in layer_names if owners[name] == index]
        if not wanted:
            x = part(x)
            continue
        probe = keras.Model(
            part.input, [*(part.get_layer(name).output for name in wanted), part.outputs[0]]
        )
        *activations, x = probe(x)
        outputs.update(zip(wanted, activations, strict=True))
    return keras.Model(
        inputs, {name: outputs[name] for name in layer_names}, name=f"{model.name}_activations"
    )
