"""Early exit and per-block analysis, generic over every GloNet the library builds or glonetifies.

Everything here reads the skeleton by layer names, never by position:
    inputs -> ... -> tap_[0|1]..tap_L -> glonet_aggregation -> [head_dropout] -> head
The aggregation layer's recorded inputs are the taps, in order (`tap_0` first when the stem is
included). A model loaded from a `.keras` file has the same names, so it works the same way.
"""

import dataclasses

import keras

from glonet_keras.layers import GlobalAggregation


@dataclasses.dataclass(frozen=True)
class GloNetParts:
    """The pieces of a GloNet's skeleton that analysis needs."""

    inputs: object
    taps: list  # KerasTensors, aggregation order
    aggregation: GlobalAggregation
    head: keras.layers.Dense
    dropout: object  # the `head_dropout` layer or None
    includes_stem: bool

    @property
    def num_blocks(self):
        return len(self.taps) - int(self.includes_stem)


def glonet_parts(model):
    """Finds the skeleton of `model`; raises ValueError naming what is missing."""
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs") or model.inputs is None:
        raise ValueError(
            f"Expected a functional keras.Model built by glonet_keras, received {type(model).__name__}."
        )
    names = {layer.name: layer for layer in model.layers}
    for required in ("glonet_aggregation", "head"):
        if required not in names:
            raise ValueError(
                f"Model {model.name!r} has no layer named {required!r}: it is not a GloNet "
                "(build one with glonet_keras or superimpose one with glonet_keras.glonetify)."
            )
    aggregation = names["glonet_aggregation"]
    taps = aggregation.input
    if not isinstance(taps, (list, tuple)):
        taps = [taps]
    includes_stem = taps[0]._keras_history.operation.name == "tap_0"
    return GloNetParts(
        inputs=model.inputs,
        taps=list(taps),
        aggregation=aggregation,
        head=names["head"],
        dropout=names.get("head_dropout"),
        includes_stem=includes_stem,
    )


def _apply_head(parts, z):
    if parts.dropout is not None:
        z = parts.dropout(z)
    return parts.head(z)


def _single_input(parts):
    return parts.inputs[0] if len(parts.inputs) == 1 else parts.inputs


def truncate(model, k):
    """The first `k` blocks of a GloNet with its trained head: shared weights, no retraining.

    The stem's tap, if the model aggregates it, stays in. Raises ValueError unless 1 <= k <= L.
    """
    parts = glonet_parts(model)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= parts.num_blocks:
        raise ValueError(
            f"`k` must be an integer in [1, {parts.num_blocks}] (the number of blocks of "
            f"{model.name!r}), received {k!r}."
        )
    taps = parts.taps[: k + int(parts.includes_stem)]
    z = GlobalAggregation(mode=parts.aggregation.mode, name="glonet_aggregation",
                          dtype=parts.aggregation.dtype_policy)(taps)
    return keras.Model(_single_input(parts), _apply_head(parts, z), name=f"{model.name}_first_{k}")


def early_exit_model(model):
    """A model returning the outputs of every k-prefix, shape (batch, L, outputs), in one pass.

    Entry k - 1 on axis 1 equals `truncate(model, k)(x)`. With `include_stem`, every prefix also
    contains the stem's tap (as in `truncate`).
    """
    parts = glonet_parts(model)
    prefixes = GlobalAggregation(
        mode=parts.aggregation.mode, cumulative=True, name="glonet_prefix_aggregation",
        dtype=parts.aggregation.dtype_policy,
    )(parts.taps)
    if parts.includes_stem:
        # Prefix 0 is the stem alone: drop it, so that entry k - 1 holds blocks 1..k (and the stem).
        prefixes = keras.layers.Cropping1D((1, 0), name="drop_stem_prefix")(prefixes)
    return keras.Model(
        _single_input(parts), _apply_head(parts, prefixes), name=f"{model.name}_early_exits"
    )


def early_exit_logits(model, x, batch_size=256):
    """Outputs of all L prefixes for inputs `x` from one forward pass: (batch, L, outputs) numpy."""
    return early_exit_model(model).predict(x, batch_size=batch_size, verbose=0)
