"""The GloNet skeleton: its layer names, the one function that builds its tail, and its recovery.

Every GloNet of the library (and every model `glonetify` makes) ends in the same tail:

    block_1 ... block_L                     (the backbone's block outputs, any shapes)
       |          |
     tap_1  ... tap_L                       linear: [pooling] -> [shared projection] -> identity
        \________/
    glonet_aggregation -> [head_dropout] -> head      (GlobalAggregation; Dense, linear, logits)

`glonet_tail` builds it; `skeleton(model)` recovers it from any loaded model's graph (a `.keras` file
or a preset reads back the same names), checking on the way that the model really is a GloNet:
aggregation and head of the right kinds, nothing nonlinear between them, taps of linear layers only.
Analysis, export and presets read models through `skeleton`, never through `model.layers[i]`.
"""

import dataclasses
import re

import keras

from glonet_keras.layers import GlobalAggregation, TokenPooling

AGGREGATION = "glonet_aggregation"
HEAD = "head"
HEAD_DROPOUT = "head_dropout"
STEM_TAP = "tap_0"
TAP_STACK = "tap_stack"  # the stacked taps (batch, L, width) of a scanned block stack
BLOCK_STACK = "blocks"  # the key of a scanned stack's output in `block_outputs`
TAP_POOLINGS = ("average", "cls", "token_mean")
_TAP_NAME = re.compile(r"tap_(\d+)")


def tap_name(index):
    """`tap_<index>`: the layer whose output enters the sum for block `index` (0 is the stem)."""
    return f"tap_{index}"


def block_key(index):
    """`block_<index>`: the key of block `index` in a model's `block_outputs`."""
    return f"block_{index}"


class NotAGloNetError(ValueError):
    """The model lacks the GloNet skeleton, or has a part that breaks its exact decomposition."""


# --------------------------------------------------------------------------------------------
# Building.


def glonet_tail(
    block_outputs,
    *,
    num_classes,
    stem_output=None,
    aggregation="sum",
    pooling="average",
    width=None,
    dropout=0.0,
    head_initializer=None,
    head_bias_initializer="zeros",
    stacked=False,
    dtype=None,
):
    """Builds taps, `GlobalAggregation` and the linear head over a backbone's block outputs.

    A block's tap is linear, so the head's logits split exactly into per-block terms:
    - `pooling` reduces a block output of rank > 2 to `(batch, channels)`: `"average"` (global
      average pooling over every spatial axis), `"cls"` (the class token of a token sequence) or
      `"token_mean"` (the mean token). Rank-2 outputs are used as they are.
    - A tap whose width differs from the aggregation `width` gets a learned projection (Dense, no
      bias), one per distinct source width, shared by the taps of that width (a CNN stage).

    Args:
        block_outputs: the blocks' output KerasTensors, shallow to deep.
        num_classes: outputs of the head (logits); 1 for regression.
        stem_output: a KerasTensor that also enters the sum, as `tap_0`.
        aggregation: `"sum"` (the paper) or `"mean"`.
        pooling: see above.
        width: the aggregation width; default the last block's channel count.
        dropout: dropout rate before the head (`head_dropout`).
        head_initializer: kernel initializer of the head (None: Keras' default, Glorot uniform).
        head_bias_initializer: bias initializer of the head.
        stacked: `block_outputs` is ONE tensor `(batch, L, width)` holding every block's output (a
            scanned `DenseStack`): its tap is the identity `tap_stack`, summed over axis 1.
        dtype: dtype policy of the new layers.

    Returns:
        `(outputs, taps)`: the head's output and the list of tap tensors (aggregation order).
    """
    if pooling not in TAP_POOLINGS:
        raise ValueError(f"Unknown tap `pooling` {pooling!r}. Allowed: {list(TAP_POOLINGS)}.")
    if stacked:
        if stem_output is not None or width is not None:
            raise ValueError("A stacked tail takes no stem tap and no projection width.")
        taps = [keras.layers.Identity(name=TAP_STACK, dtype=dtype)(block_outputs)]
        return _aggregate_and_head(taps[0], num_classes, aggregation, dropout, head_initializer,
                                   head_bias_initializer, dtype), taps
    blocks = list(block_outputs)
    if not blocks:
        raise ValueError("A GloNet needs at least one block output to aggregate.")
    width = int(blocks[-1].shape[-1]) if width is None else width
    projections = {}

    def make_tap(x, index):
        if len(x.shape) > 2:
            x = _pooling_layer(pooling, len(x.shape), name=f"tap_{index}_pool", dtype=dtype)(x)
        channels = int(x.shape[-1])
        if channels != width:
            if channels not in projections:
                projections[channels] = keras.layers.Dense(
                    width, use_bias=False, kernel_initializer="glorot_uniform",
                    name=f"tap_projection_{channels}_to_{width}", dtype=dtype,
                )
            x = projections[channels](x)
        return keras.layers.Identity(name=tap_name(index), dtype=dtype)(x)

    taps = [make_tap(x, index) for index, x in enumerate(blocks, start=1)]
    if stem_output is not None:
        taps.insert(0, make_tap(stem_output, 0))
    return _aggregate_and_head(taps, num_classes, aggregation, dropout, head_initializer,
                               head_bias_initializer, dtype), taps


def _aggregate_and_head(taps, num_classes, aggregation, dropout, head_initializer,
                        head_bias_initializer, dtype):
    """`taps`: a list of tap tensors, or one stacked tensor (batch, L, width)."""
    z = GlobalAggregation(mode=aggregation, name=AGGREGATION, dtype=dtype)(taps)
    if dropout > 0:
        z = keras.layers.Dropout(dropout, name=HEAD_DROPOUT, dtype=dtype)(z)
    head = keras.layers.Dense(
        num_classes, kernel_initializer=head_initializer or "glorot_uniform",
        bias_initializer=head_bias_initializer, name=HEAD, dtype=dtype,
    )
    return head(z)


def _pooling_layer(pooling, rank, *, name, dtype):
    if pooling == "average":
        pool_class = {
            3: keras.layers.GlobalAveragePooling1D,
            4: keras.layers.GlobalAveragePooling2D,
            5: keras.layers.GlobalAveragePooling3D,
        }.get(rank)
        if pool_class is None:
            raise ValueError(f"Cannot average-pool a block output of rank {rank} into a tap.")
        return pool_class(name=name, dtype=dtype)
    if rank != 3:
        raise ValueError(f"Token pooling {pooling!r} needs (batch, tokens, width), got rank {rank}.")
    return TokenPooling("cls" if pooling == "cls" else "mean", name=name, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Recovering.


@dataclasses.dataclass(frozen=True)
class Skeleton:
    """The parts of a GloNet that analysis, export and presets use.

    Attributes:
        inputs: the model's input KerasTensors.
        taps: the tap KerasTensors in aggregation order (`tap_0`, the stem, first when present); for
            a scanned stack, one stacked tensor `(batch, L, width)` (`stacked` is True).
        block_outputs: `{"block_1": KerasTensor, ...}`: each block's own output, before its tap; for
            a scanned stack `{"blocks": (batch, L, width)}`.
        stem_output: the stem's output when it is aggregated, else None.
        aggregation: the `GlobalAggregation` layer.
        dropout: the `head_dropout` layer, or None.
        head: the linear `Dense` head.
    """

    inputs: list
    taps: list
    block_outputs: dict
    stem_output: object
    aggregation: GlobalAggregation
    dropout: object
    head: keras.layers.Dense

    @property
    def stacked(self):
        return _producer(self.taps[0]).name == TAP_STACK

    @property
    def num_blocks(self):
        if self.stacked:
            return int(self.taps[0].shape[1])
        return len(self.block_outputs)

    @property
    def includes_stem(self):
        return self.stem_output is not None


def is_glonet(model):
    """True when `model` has a valid GloNet skeleton (see `skeleton`)."""
    try:
        skeleton(model)
    except NotAGloNetError:
        return False
    return True


def skeleton(model):
    """Recovers the skeleton of `model` from its graph; raises NotAGloNetError saying what is wrong.

    Checked: one `GlobalAggregation` named `glonet_aggregation`, called once; a linear `Dense` named
    `head` reading it directly or through the `head_dropout` Dropout, whose output is the model's
    only output; taps named `tap_1..tap_L` (after `tap_0` for the stem) made of linear layers only.
    These are what make `logits = sum_i W tap_i + b` exact and every prefix a valid early exit.
    """
    name = getattr(model, "name", type(model).__name__)
    if not isinstance(model, keras.Model):
        raise NotAGloNetError(f"Expected a keras.Model, received {type(model).__name__}.")
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise NotAGloNetError(f"Model {name!r} has no functional graph: it is not a GloNet.")
    hint = ("Build one with glonet_keras (GloNetMLP, GloNetCNN, GloNetViT) or superimpose one "
            "with glonet_keras.glonetify.")
    # Follow the graph back from the output: head <- [head_dropout] <- glonet_aggregation <- taps.
    # Nodes, not `layer.input`: truncate() and the early-exit models reuse the same layers.
    outputs = model.outputs
    head = _producer(outputs[0]) if len(outputs) == 1 else None
    if (
        not isinstance(head, keras.layers.Dense)
        or head.name != HEAD
        or head.activation not in (keras.activations.linear, None)
    ):
        raise NotAGloNetError(
            f"The output of {name!r} is not a linear Dense layer named {HEAD!r} (it comes from "
            f"{getattr(head, 'name', 'several layers')!r}). " + hint
        )
    z = _producer_input(outputs[0])
    dropout = _producer(z)
    if isinstance(dropout, keras.layers.Dropout) and dropout.name == HEAD_DROPOUT:
        z = _producer_input(z)
    else:
        dropout = None
    aggregation = _producer(z)
    if not isinstance(aggregation, GlobalAggregation) or aggregation.name != AGGREGATION:
        raise NotAGloNetError(
            f"In {name!r}, {HEAD!r} reads {getattr(aggregation, 'name', z)!r}, not a "
            f"GlobalAggregation named {AGGREGATION!r} (optionally through a Dropout named "
            f"{HEAD_DROPOUT!r}): something sits between the sum and the head, or there is no sum, "
            "so the per-block decomposition would not be exact. " + hint
        )
    if aggregation.cumulative:
        raise NotAGloNetError(f"{AGGREGATION!r} of {name!r} is cumulative: it has no single sum.")
    taps = list(_node(z).input_tensors)
    if len(taps) == 1 and _producer(taps[0]).name == TAP_STACK:
        return _stacked_skeleton(model, name, inputs, taps, aggregation, dropout, head)
    indices = [_tap_index(tap, name) for tap in taps]
    first = 0 if indices and indices[0] == 0 else 1
    if indices != list(range(first, first + len(taps))):
        raise NotAGloNetError(
            f"The taps of {name!r} are {[tap_name(i) for i in indices]}: expected tap_1..tap_L in "
            "order (after tap_0 for the stem)."
        )
    sources = [_tap_source(tap, name) for tap in taps]
    stem_output = sources.pop(0) if first == 0 else None
    return Skeleton(
        inputs=list(inputs),
        taps=taps,
        block_outputs={block_key(i): x for i, x in enumerate(sources, start=1)},
        stem_output=stem_output,
        aggregation=aggregation,
        dropout=dropout,
        head=head,
    )


def _stacked_skeleton(model, name, inputs, taps, aggregation, dropout, head):
    """The skeleton of a scanned GloNet: one stacked tap, the identity of the stack's output."""
    (stacked,) = taps
    if not isinstance(_producer(stacked), keras.layers.Identity) or len(stacked.shape) != 3:
        raise NotAGloNetError(
            f"{TAP_STACK!r} of {name!r} must be an Identity over a (batch, blocks, width) stack."
        )
    return Skeleton(
        inputs=list(inputs), taps=[stacked],
        block_outputs={BLOCK_STACK: _producer_input(stacked)},
        stem_output=None, aggregation=aggregation, dropout=dropout, head=head,
    )


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else history.operation


def _node(tensor):
    """The node (one call of a layer) that produced `tensor`."""
    history = tensor._keras_history
    return history.operation._inbound_nodes[history.node_index]


def _producer_input(tensor):
    """The single input of the call that produced `tensor` (also for a shared layer)."""
    inputs = _node(tensor).input_tensors
    if len(inputs) != 1:
        raise NotAGloNetError(f"{_producer(tensor).name!r} takes {len(inputs)} inputs, expected 1.")
    return inputs[0]


def _tap_index(tap, name):
    layer = _producer(tap)
    match = _TAP_NAME.fullmatch(getattr(layer, "name", ""))
    if match is None:
        raise NotAGloNetError(
            f"{AGGREGATION!r} of {name!r} reads {getattr(layer, 'name', tap)!r}, which is not a tap "
            "layer named tap_<i>."
        )
    return int(match.group(1))


_LINEAR_TAP_LAYERS = (
    keras.layers.Identity,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
    TokenPooling,
)


def _tap_source(tap, name):
    """Walks back from a tap through its own linear layers (named tap_*) to the block output."""
    tensor = tap
    while True:
        layer = _producer(tensor)
        if layer is None or not layer.name.startswith("tap_"):
            return tensor
        linear = isinstance(layer, _LINEAR_TAP_LAYERS) or (
            isinstance(layer, keras.layers.Dense)
            and not layer.use_bias
            and layer.activation in (keras.activations.linear, None)
        )
        if not linear:
            raise NotAGloNetError(
                f"Tap layer {layer.name!r} of {name!r} ({type(layer).__name__}) is not linear: the "
                "per-block decomposition would not be exact."
            )
        tensor = _producer_input(tensor)
