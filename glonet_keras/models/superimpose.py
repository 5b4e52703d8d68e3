"""`glonetify`: superimpose a GloNet layer on any functional Keras model.

The paper's GloNet layer "can be superimposed on any model": sum the outputs of its blocks into a
new linear head. `glonetify` does that for a functional model given the names of its block-output
layers (e.g. every `convN_blockM_out` of `keras.applications.ResNet50`):

    backbone (unchanged, keeps its own skips) -> block outputs
        -> tap_i = [global average pooling] -> [learned linear projection, no bias]
        -> GlobalAggregation "glonet_aggregation" -> [Dropout "head_dropout"] -> Dense "head"

This is superimposition, not the skip-free GloNet backbone the library's own builders make: a
ResNet50 keeps its residual connections and its batch norms, and the new head reads the sum of
every tapped block instead of the last one only. The taps are linear, so the result has the same
skeleton as every GloNet of the library and works with `truncate`, `early_exit_logits`,
`block_contributions` and the plots. The backbone's original head (if any) is dropped.
"""

import difflib

import keras

from glonet_keras.layers import AGGREGATION_MODES, GlobalAggregation
from glonet_keras.models import common

_POOLING = {
    3: keras.layers.GlobalAveragePooling1D,
    4: keras.layers.GlobalAveragePooling2D,
    5: keras.layers.GlobalAveragePooling3D,
}


def _check_functional(model):
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"glonetify expects a functional keras.Model, received {type(model).__name__}."
        )
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            f"glonetify needs a functional keras.Model (built with keras.Model(inputs, outputs) or "
            f"a built Sequential); {model.name!r} ({type(model).__name__}) has no symbolic inputs. "
            "Subclassed models have no graph to tap: rebuild the model functionally."
        )
    return inputs


def _resolve_layer_names(model, block_outputs):
    """Turns names, KerasTensors or a dict of either into layer names, in order."""
    if isinstance(block_outputs, dict):
        block_outputs = list(block_outputs.values())
    if isinstance(block_outputs, str) or not isinstance(block_outputs, (list, tuple)):
        raise ValueError(
            "`block_outputs` must be a list of layer names (or KerasTensors) of the model, in depth "
            f"order, received {type(block_outputs).__name__}: {block_outputs!r}."
        )
    if not block_outputs:
        raise ValueError("`block_outputs` is empty: name at least one block-output layer to tap.")
    names = []
    for item in block_outputs:
        if isinstance(item, str):
            names.append(item)
        elif hasattr(item, "_keras_history"):
            names.append(item._keras_history.operation.name)
        else:
            raise ValueError(
                f"Each entry of `block_outputs` must be a layer name or a KerasTensor, received "
                f"{item!r}."
            )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"`block_outputs` names these layers more than once: {duplicates}.")
    return names


def _layer_output(model, name, all_names):
    if name not in all_names:
        close = difflib.get_close_matches(name, all_names, n=5, cutoff=0.6)
        hint = f" Close names: {close}." if close else ""
        raise ValueError(f"Model {model.name!r} has no layer named {name!r}.{hint}")
    layer = model.get_layer(name)
    try:
        output = layer.output
    except (AttributeError, ValueError) as error:
        raise ValueError(
            f"Layer {name!r} of {model.name!r} has no single symbolic output (is it shared or "
            "unused?): it cannot be tapped."
        ) from error
    if isinstance(output, (list, tuple)) or len(output.shape) not in (2, 3, 4, 5):
        raise ValueError(
            f"Layer {name!r} must output one tensor of shape (batch, [spatial...,] channels), "
            f"received {getattr(output, 'shape', output)}."
        )
    if output.shape[-1] is None:
        raise ValueError(f"Layer {name!r} has an unknown channel count: {output.shape}.")
    return output


def glonetify(
    model,
    block_outputs,
    num_classes,
    *,
    width=None,
    aggregation="sum",
    stem_output=None,
    dropout=0.0,
    name=None,
):
    """Superimposes GloNet on a functional Keras model: its tapped blocks are summed into a new head.

    Args:
        model: a functional `keras.Model` (e.g. `keras.applications.ResNet50(weights=None)`), or a
            built `keras.Sequential`. Its weights are shared with the result, not copied.
        block_outputs: the block-output layers to tap, shallow to deep: layer names, KerasTensors
            of the model's graph, or a dict of them (e.g. a library baseline's `.block_outputs`).
        num_classes: outputs of the new linear head (logits).
        width: the aggregation width. Default: the channel count of the last tapped block.
            Taps of another width get a learned linear projection (Dense without bias), one per
            distinct source width, shared by the taps of that width (i.e. per stage).
        aggregation: `"sum"` (default, the paper) or `"mean"`.
        stem_output: optionally, the name of a layer whose output enters the sum as `tap_0`.
        dropout: dropout rate before the head.
        name: name of the new model (default `<model.name>_glonet`).

    Returns:
        A functional `keras.Model` with taps `tap_1..tap_L` (and `tap_0`), `glonet_aggregation` and
        `head`, and attributes `num_blocks` and `block_outputs` ("block_i" -> KerasTensor).

    Raises:
        ValueError: for a non-functional model, an empty or malformed `block_outputs`, unknown layer
        names (close names are listed), or untappable outputs.

    Example:
    >>> backbone = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
    >>> names = [l.name for l in backbone.layers if l.name.endswith("_out") and "block" in l.name]
    >>> model = glonetify(backbone, names, num_classes=10)       # 16 taps, one per bottleneck
    >>> truncate(model, 4)                                       # the first stage, same head
    """
    inputs = _check_functional(model)
    common.check_positive_int("num_classes", num_classes)
    common.check_choice("aggregation", aggregation, AGGREGATION_MODES)
    common.check_dropout(dropout)
    if width is not None:
        common.check_positive_int("width", width)
    names = _resolve_layer_names(model, block_outputs)
    if stem_output is not None:
        if not isinstance(stem_output, str):
            raise ValueError(f"`stem_output` must be a layer name, received {stem_output!r}.")
        if stem_output in names:
            raise ValueError(f"`stem_output` {stem_output!r} is also listed in `block_outputs`.")
    all_names = [layer.name for layer in model.layers]
    blocks = [_layer_output(model, n, all_names) for n in names]
    stem = _layer_output(model, stem_output, all_names) if stem_output is not None else None

    dtype = common.dtype_name(model.dtype_policy)
    width = blocks[-1].shape[-1] if width is None else width
    projections = {}

    def make_tap(x, index):
        if len(x.shape) > 2:
            x = _POOLING[len(x.shape)](name=f"tap_{index}_pool", dtype=dtype)(x)
        channels = x.shape[-1]
        if channels != width:
            if channels not in projections:
                projections[channels] = keras.layers.Dense(
                    width, use_bias=False, kernel_initializer="glorot_uniform",
                    name=f"tap_projection_{channels}_to_{width}", dtype=dtype,
                )
            x = projections[channels](x)
        return keras.layers.Identity(name=f"tap_{index}", dtype=dtype)(x)

    taps = [make_tap(x, i) for i, x in enumerate(blocks, start=1)]
    if stem is not None:
        taps.insert(0, make_tap(stem, 0))
    z = GlobalAggregation(mode=aggregation, name="glonet_aggregation", dtype=dtype)(taps)
    if dropout > 0:
        z = keras.layers.Dropout(dropout, name="head_dropout", dtype=dtype)(z)
    outputs = keras.layers.Dense(num_classes, name="head", dtype=dtype)(z)
    model_inputs = inputs[0] if len(inputs) == 1 else inputs
    try:
        glonet = keras.Model(model_inputs, outputs, name=name or f"{model.name}_glonet")
    except ValueError as error:
        raise ValueError(
            f"Could not superimpose GloNet on {model.name!r}: {error} (a backbone layer on the "
            "tapped path may already use one of the names tap_i, tap_i_pool, glonet_aggregation, "
            "head_dropout or head)."
        ) from error
    glonet.num_blocks = len(blocks)
    glonet.block_outputs = {f"block_{i}": x for i, x in enumerate(blocks, start=1)}
    return glonet
