"""Early exit and per-block analysis, generic over every GloNet the library builds or glonetifies.

Everything here reads the skeleton by layer names, never by position:
    inputs -> ... -> tap_[0|1]..tap_L -> glonet_aggregation -> [head_dropout] -> head
The aggregation layer's recorded inputs are the taps, in order (`tap_0` first when the stem is
included). A model loaded from a `.keras` file has the same names, so it works the same way.
"""

import dataclasses

import keras
import numpy as np

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


# ---------------------------------------------------------------------------------------------
# Exact per-block explanations. With a linear head (kernel W, bias b) and taps t_i:
#     sum mode:  logits = sum_i t_i W + b          mean mode:  logits = sum_i (t_i W) / n + b
# where n counts every aggregated tap (the stem's too). Dropout before the head is the identity at
# inference, so the decomposition is exact for `model.predict`.
# ---------------------------------------------------------------------------------------------


def taps_model(model):
    """A model returning the list of taps (aggregation order), each `(batch, width)`."""
    parts = glonet_parts(model)
    return keras.Model(_single_input(parts), list(parts.taps), name=f"{model.name}_taps")


def head_kernel_and_bias(model):
    """The head's kernel `(width, outputs)` and bias `(outputs,)` as float32 numpy arrays."""
    head = glonet_parts(model).head
    kernel = np.asarray(keras.ops.convert_to_numpy(head.kernel), dtype="float32")
    if head.use_bias:
        bias = np.asarray(keras.ops.convert_to_numpy(head.bias), dtype="float32")
    else:
        bias = np.zeros((kernel.shape[1],), dtype="float32")
    return kernel, bias


def head_bias(model):
    """The head's bias, float32 numpy `(outputs,)`: what `block_contributions` leaves out."""
    return head_kernel_and_bias(model)[1]


def block_contributions(model, x, batch_size=256):
    """The exact contribution of every block to every output: numpy float32 `(batch, n, outputs)`.

    `n` is the number of blocks L, plus one when the model aggregates its stem (entry 0 is then the
    stem, entry i block i). Contributions summed over axis 1 plus `head_bias(model)` equal
    `model.predict(x)`: to float32 rounding (about 1e-6 relative) for float32 models. For
    mixed-precision models the taps are computed by the model in its compute dtype (float16 or
    bfloat16) and the decomposition is done in float32, so it matches the model's own (half
    precision) head to that dtype's rounding: within 2e-2 relative (the tests' tolerance; typically
    a few 1e-3 for float16).
    """
    parts = glonet_parts(model)
    kernel, _ = head_kernel_and_bias(model)
    taps = taps_model(model).predict(x, batch_size=batch_size, verbose=0)
    if not isinstance(taps, (list, tuple)):
        taps = [taps]
    taps = np.stack([np.asarray(t, dtype="float32") for t in taps], axis=1)  # (batch, n, width)
    contributions = np.einsum("bnw,wo->bno", taps, kernel)
    if parts.aggregation.mode == "mean":
        contributions /= np.float32(len(parts.taps))
    return contributions


def contribution_shares(model, x, batch_size=256):
    """Each block's share of the total contribution norm over the data: float32 numpy `(n,)`.

    share_i = sum over examples of ||c_i(x)||_2, divided by the same sum over all blocks; the shares
    add up to 1. `n` as in `block_contributions` (the stem first, when aggregated).
    """
    norms = np.linalg.norm(block_contributions(model, x, batch_size=batch_size), axis=-1).sum(0)
    total = norms.sum()
    if total == 0:
        return np.full(norms.shape, 1.0 / len(norms), dtype="float32")
    return (norms / total).astype("float32")


def early_exit_accuracy(model, x, y, batch_size=256):
    """Accuracy of every k-prefix (k = 1..L) from one forward pass: float numpy `(L,)`.

    `y` holds integer class labels `(batch,)` (or one-hot `(batch, classes)`). A single-output
    model is read as a binary classifier with its logit thresholded at 0.
    """
    logits = np.asarray(early_exit_logits(model, x, batch_size=batch_size), dtype="float32")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(-1)
    y = y.reshape(-1)
    if y.shape[0] != logits.shape[0]:
        raise ValueError(
            f"`x` and `y` must hold the same number of examples, received {logits.shape[0]} inputs "
            f"and {y.shape[0]} labels."
        )
    if logits.shape[-1] == 1:
        predictions = (logits[..., 0] > 0).astype(y.dtype)
    else:
        predictions = logits.argmax(-1)
    return (predictions == y[:, None]).mean(0)
