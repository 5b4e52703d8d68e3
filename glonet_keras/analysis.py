"""Early exit and per-block analysis, generic over every GloNet the library builds or glonetifies.

Everything here reads the model through `glonet_keras.skeleton.skeleton(model)`, which recovers
    inputs -> ... -> tap_[0|1]..tap_L -> glonet_aggregation -> [head_dropout] -> head
from the graph by layer names (never by position) and checks that it is a real GloNet. A model
loaded from a `.keras` file has the same names, so it works the same way. A model that is not a
GloNet raises `NotAGloNetError` (a ValueError); `is_glonet(model)` asks without raising.

`recalibrate_batch_norm` (and `batch_norm_layers`) take any functional Keras model, GloNet or not:
what a batch-norm model scores with its exact population statistics, beside what it was trained to.
"""

import keras
import numpy as np

from glonet_keras import skeleton as skeleton_lib
from glonet_keras.layers import GlobalAggregation
from glonet_keras.skeleton import NotAGloNetError, is_glonet, skeleton  # noqa: F401 (re-exported)


def apply_head(parts, z):
    """The skeleton's head (with its dropout) applied to an aggregated `z`: what a k-prefix runs."""
    if parts.dropout is not None:
        z = parts.dropout(z)
    return parts.head(z)


def _single_input(parts):
    return parts.inputs[0] if len(parts.inputs) == 1 else parts.inputs


def truncate(model, k):
    """The first `k` blocks of a GloNet with its trained head: shared weights, no retraining.

    The stem's tap, if the model aggregates it, stays in. The result computes only what it uses:
    its graph holds the first k blocks (a scanned stack runs only k steps). Raises ValueError
    unless 1 <= k <= L.

    What the model carries for serving comes along: its `preprocessing`, and its
    `preset_metadata` (task, class names, ...) with `name` becoming `<name>_first_<k>` (so its
    export never lands in the full model's folder), without `metrics` and `deployment` (the depth
    table and the calibrated anytime threshold: measured on all L blocks), and with
    `truncated_from` recording `{"name", "num_blocks", "depth"}`. So
    `export_saved_model(truncate(model, k), ...)` serves raw inputs as the full model does.
    """
    parts = skeleton(model)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= parts.num_blocks:
        raise ValueError(
            f"`k` must be an integer in [1, {parts.num_blocks}] (the number of blocks of "
            f"{model.name!r}), received {k!r}."
        )
    if parts.stacked:
        taps = _truncated_stack(parts, k)
    else:
        taps = parts.taps[: k + int(parts.includes_stem)]
    z = GlobalAggregation(mode=parts.aggregation.mode, name=skeleton_lib.AGGREGATION,
                          dtype=parts.aggregation.dtype_policy)(taps)
    truncated = keras.Model(_single_input(parts), apply_head(parts, z),
                            name=f"{model.name}_first_{k}")
    return _carry_serving_attributes(model, truncated, k, parts.num_blocks)


def _carry_serving_attributes(model, truncated, k, num_blocks):
    """Gives `truncated` the `preprocessing` and `preset_metadata` of `model` (see `truncate`)."""
    preprocessing = getattr(model, "preprocessing", None)
    if preprocessing is not None:
        truncated.preprocessing = preprocessing
    metadata = getattr(model, "preset_metadata", None)
    if isinstance(metadata, dict):
        # Measured on all L blocks: the metrics, the depth table and the calibrated threshold.
        metadata = {key: value for key, value in metadata.items()
                    if key not in ("metrics", "deployment")}
        name = metadata.get("name")
        if isinstance(name, str):
            metadata["name"] = f"{name}_first_{k}"
        metadata["truncated_from"] = {"name": name if isinstance(name, str) else model.name,
                                      "num_blocks": num_blocks, "depth": k}
        truncated.preset_metadata = metadata
    return truncated


def _truncated_stack(parts, k):
    """The stacked taps of the first k blocks: the scanned stack called again for k steps only."""
    stack_output = parts.block_outputs[skeleton_lib.BLOCK_STACK]
    history = stack_output._keras_history
    stack = history.operation
    (stack_input,) = stack._inbound_nodes[history.node_index].input_tensors
    truncated = stack(stack_input, steps=k)
    return keras.layers.Identity(name=skeleton_lib.TAP_STACK, dtype=stack.dtype_policy)(truncated)


def _aggregation_input(parts):
    """What GlobalAggregation takes: the list of taps, or the one stacked tap tensor."""
    return parts.taps[0] if parts.stacked else parts.taps


def early_exit_model(model):
    """A model returning the outputs of every k-prefix, shape (batch, L, outputs), in one pass.

    Entry k - 1 on axis 1 equals `truncate(model, k)(x)`. With `include_stem`, every prefix also
    contains the stem's tap (as in `truncate`).
    """
    parts = skeleton(model)
    prefixes = GlobalAggregation(
        mode=parts.aggregation.mode, cumulative=True, name="glonet_prefix_aggregation",
        dtype=parts.aggregation.dtype_policy,
    )(_aggregation_input(parts))
    if parts.includes_stem:
        # Prefix 0 is the stem alone: drop it, so that entry k - 1 holds blocks 1..k (and the stem).
        prefixes = keras.layers.Cropping1D((1, 0), name="drop_stem_prefix")(prefixes)
    return keras.Model(
        _single_input(parts), apply_head(parts, prefixes), name=f"{model.name}_early_exits"
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
    """A model returning the taps (aggregation order): a list of `(batch, width)` tensors, or for a
    scanned stack the one stacked `(batch, L, width)` tensor."""
    parts = skeleton(model)
    return keras.Model(_single_input(parts), _aggregation_input(parts), name=f"{model.name}_taps")


def head_kernel_and_bias(model):
    """The head's kernel `(width, outputs)` and bias `(outputs,)` as float32 numpy arrays.

    Raises:
        ValueError: the head is quantized (its kernel holds int8 / float8 codes, and it quantizes
            its input, the sum, so no per-block split of its logits is exact).
    """
    head = skeleton(model).head
    if head.quantization_mode is not None:
        raise ValueError(
            f"The head of {model.name!r} is quantized ({head.quantization_mode}): a quantized "
            "layer also quantizes its input, the GloNet sum, so the logits do not split exactly "
            "into block contributions. Leave the head out of quantization (a library GloNet's "
            "`quantize` does; elsewhere pass `filters=` that skip 'head')."
        )
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
    parts = skeleton(model)
    kernel, _ = head_kernel_and_bias(model)
    taps = taps_model(model).predict(x, batch_size=batch_size, verbose=0)
    if parts.stacked:
        taps = np.asarray(taps, dtype="float32")
    else:
        if not isinstance(taps, (list, tuple)):
            taps = [taps]
        taps = np.stack([np.asarray(t, dtype="float32") for t in taps], axis=1)
    contributions = np.einsum("bnw,wo->bno", taps, kernel)  # taps: (batch, n, width)
    if parts.aggregation.mode == "mean":
        contributions /= np.float32(taps.shape[1])
    return contributions


def contribution_shares(model, x, batch_size=256):
    """Each block's share of the total contribution norm over the data: float32 numpy `(n,)`.

    share_i = sum over examples of ||c_i(x)||_2, divided by the same sum over all blocks; the shares
    add up to 1. `n` as in `block_contributions` (the stem first, when aggregated).
    """
    return _norm_shares(block_contributions(model, x, batch_size=batch_size))


def block_updates(model, x, batch_size=256):
    """What each block CHANGES in its tap, through the head: `(batch, L, outputs)` float32.

    update_i = W (t_i - t_{i-1}), with t_0 the stem's tap when the model aggregates it, else 0.
    In a residual stream (a ViT, a glonetified ResNet) tap i holds every earlier block's update as
    well, so `block_contributions` (W t_i) grows with depth by construction; the update is what
    block i itself adds. The updates of blocks 1..k add up to W t_k, and in sum mode
    logits = sum_i (L - i + 1) update_i (+ (L + 1) W t_0 with a stem) + b. For a plain chain (MLP, CNN
    GloNets) a tap is not a stream and `block_contributions` is the measure to use.
    """
    parts = skeleton(model)
    contributions = block_contributions(model, x, batch_size=batch_size)
    if parts.includes_stem:
        previous, blocks = contributions[:, :-1], contributions[:, 1:]
    else:
        blocks = contributions
        previous = np.concatenate([np.zeros_like(blocks[:, :1]), blocks[:, :-1]], axis=1)
    return blocks - previous


def update_shares(model, x, batch_size=256):
    """Each block's share of the total norm of `block_updates` over the data: float32 `(L,)`."""
    return _norm_shares(block_updates(model, x, batch_size=batch_size))


def _norm_shares(per_block):
    norms = np.linalg.norm(per_block, axis=-1).sum(0)
    total = norms.sum()
    if total == 0:
        return np.full(norms.shape, 1.0 / len(norms), dtype="float32")
    return (norms / total).astype("float32")


def early_exit_accuracy(model, x, y, batch_size=256):
    """Accuracy of every k-prefix (k = 1..L) from one forward pass: float numpy `(L,)`.

    `y` holds integer class labels `(batch,)` (or one-hot `(batch, classes)`). A single-output
    model is read as a binary classifier with its logit thresholded at 0 (labels 0 or 1).

    Raises:
        ValueError: `x` is not finite, the counts of `x` and `y` differ, or a label is not an integer
            class of the model (a label out of range would silently count as a wrong answer).
    """
    x_array = np.asarray(x) if not isinstance(x, (list, tuple, dict)) else None
    if x_array is not None and x_array.dtype.kind == "f" and not np.all(np.isfinite(x_array)):
        raise ValueError("`x` contains NaN or infinite values: accuracies over them mean nothing.")
    logits = np.asarray(early_exit_logits(model, x, batch_size=batch_size), dtype="float32")
    if not np.all(np.isfinite(logits)):
        raise ValueError("The model's outputs on `x` are not finite (NaN or inf).")
    labels = class_labels(y, num_outputs=logits.shape[-1])
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"`x` and `y` must hold the same number of examples, received {logits.shape[0]} inputs "
            f"and {labels.shape[0]} labels."
        )
    if logits.shape[-1] == 1:
        predictions = (logits[..., 0] > 0).astype(labels.dtype)
    else:
        predictions = logits.argmax(-1)
    return (predictions == labels[:, None]).mean(0)


def class_labels(y, num_outputs):
    """Integer labels `(batch,)` from integer or one-hot `y`, checked against the model's classes."""
    y = np.asarray(y)
    if y.ndim > 2 or (y.ndim == 2 and y.shape[1] == 0):
        raise ValueError(
            "Labels must be integer classes (batch,) or one-hot (batch, classes), received shape "
            f"{y.shape}."
        )
    if y.ndim == 2 and y.shape[1] > 1:
        if y.shape[1] != num_outputs:
            raise ValueError(
                f"One-hot labels have {y.shape[1]} classes but the model has {num_outputs} outputs."
            )
        y = y.argmax(-1)
    y = y.reshape(-1)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError("Labels must be integer class indices; `y` holds non-integer values.")
        y = y.astype("int64")
    elif y.dtype.kind not in "iub":
        raise ValueError(f"Labels must be integer class indices, received dtype {y.dtype}.")
    classes = 2 if num_outputs == 1 else num_outputs
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise ValueError(
            f"Labels must lie in [0, {classes - 1}] for a model with {num_outputs} output(s); `y` "
            f"holds values in [{y.min()}, {y.max()}]."
        )
    return y.astype("int64")


# ---------------------------------------------------------------------------------------------
# Batch-norm recalibration. A BatchNormalization layer's moving statistics are an exponential
# average over the training steps, taken while the weights before it still moved; after training
# they need not be the statistics of what the trained layers feed it. Recalibrating replaces them
# by the exact population mean and variance, layer by layer in graph order, each BN's input
# computed in inference mode through the already-recalibrated layers before it.
# ---------------------------------------------------------------------------------------------


def batch_norm_layers(model):
    """Every `keras.layers.BatchNormalization` inside `model` (nested models' too), each once."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def recalibrate_batch_norm(model, x, batch_size=256):
    """Sets every BatchNormalization layer's moving statistics to their exact values over `x`.

    In place, as `model.fit` and `load_weights` change a model: for each BN layer, in graph order,
    `moving_mean` and `moving_variance` become the mean and the (population, ddof 0) variance of
    that layer's input over all of `x` (every axis but the layer's `axis`), the input computed in
    inference mode through the layers before it, whose BN layers are already recalibrated. The
    statistics are computed in float64 from the layer's actual inputs. Nothing else changes
    (gamma, beta, epsilon, every other weight).

    The model runs node by node over all of `x` at once (each layer applied in batches of
    `batch_size`), holding the live activations of every example in memory: pass a sample (a few
    thousand examples), not a whole data set. Nested functional models and `Sequential`s are
    walked into; a BN layer hidden inside a subclassed layer cannot be reached in order and is
    refused, as is a BN layer called more than once (its statistics would be ambiguous).

    Args:
        model: a functional (or Sequential) Keras model with BatchNormalization layers.
        x: the inputs, preprocessed as the model takes them: one array (a list of arrays for a
            multi-input model) of shape `(examples, *input_shape)`.
        batch_size: how many examples each layer processes per call.

    Returns:
        The recalibrated BatchNormalization layers, in the order they were recalibrated.

    Raises:
        ValueError: the model has no BatchNormalization layer (nothing to recalibrate: ask
            `batch_norm_layers` first), is not functional, hides a BN layer where it cannot be
            reached in order; or `x` is empty, not numeric, not finite or of the wrong shape; or
            `batch_size` is not a positive integer.

    Example:
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
    ...                           keras.layers.BatchNormalization()])
    >>> x = np.random.default_rng(0).normal(size=(100, 4)).astype("float32")
    >>> [layer.name for layer in recalibrate_batch_norm(model, x)]
    ['batch_normalization']
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, received {batch_size!r}.")
    if not batch_norm_layers(model):
        raise ValueError(
            f"The model {model.name!r} has no BatchNormalization layer: there is nothing to "
            "recalibrate (`batch_norm_layers(model)` tells which models have one).")
    graph = _functional_graph(model)
    if graph is None:
        raise ValueError(
            f"The model {model.name!r} is not a functional (or built Sequential) model: its "
            "BatchNormalization layers cannot be recalibrated in graph order.")
    inputs = _recalibration_inputs(graph, x)
    recalibrated = []
    _run_recalibrating(graph, inputs, int(batch_size), recalibrated)
    return recalibrated


def _functional_graph(model):
    """The Functional that runs `model`'s layers (a Sequential's inner one), or None."""
    graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    return graph if hasattr(graph, "_nodes_by_depth") and hasattr(graph, "inputs") else None


def _recalibration_inputs(graph, x):
    """`x` as a list of numpy arrays, one per model input, checked and cast to its dtype."""
    arrays = list(x) if isinstance(x, (list, tuple)) else [x]
    if len(arrays) != len(graph.inputs):
        raise ValueError(f"`x` must hold {len(graph.inputs)} array(s), one per model input, "
                         f"received {len(arrays)}.")
    checked = []
    for array, tensor in zip(arrays, graph.inputs):
        array = np.asarray(array)
        if array.dtype.kind not in "iuf":
            raise ValueError(f"`x` must hold numbers (integer or float), received dtype {array.dtype}.")
        expected = tuple(tensor.shape[1:])
        if array.ndim != len(expected) + 1 or any(
                e is not None and e != g for e, g in zip(expected, array.shape[1:])):
            wanted = ", ".join(["examples", *("any" if e is None else str(e) for e in expected)])
            raise ValueError(f"`x` must have shape ({wanted}) for this model's input, received "
                             f"{array.shape}.")
        if array.shape[0] == 0:
            raise ValueError("`x` is empty: statistics over no examples are undefined.")
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise ValueError("`x` contains NaN or infinite values.")
        checked.append(array.astype(keras.backend.standardize_dtype(tensor.dtype), copy=False))
    return checked


def _run_recalibrating(graph, inputs, batch_size, recalibrated):
    """Runs `graph` node by node over all of `inputs` (numpy), recalibrating each BN layer before
    applying it; an activation is dropped once its last consumer has run. Returns the outputs."""
    nodes = [node for depth in sorted(graph._nodes_by_depth, reverse=True)
             for node in graph._nodes_by_depth[depth] if node.operation and not node.is_input]
    for node in nodes:
        hidden = [] if _functional_graph(node.operation) is not None or isinstance(
            node.operation, keras.layers.BatchNormalization) else (
            batch_norm_layers(node.operation) if isinstance(node.operation, keras.layers.Layer)
            else [])
        if hidden:
            raise ValueError(
                f"The BatchNormalization layer(s) {[layer.name for layer in hidden]} sit inside "
                f"{node.operation.name!r}, a layer that is not a functional model: they cannot be "
                "reached in graph order to recalibrate them.")
    remaining = {}
    for node in nodes:
        for tensor in node.input_tensors:
            remaining[id(tensor)] = remaining.get(id(tensor), 0) + 1
    kept = {id(tensor) for tensor in graph.outputs}
    values = {id(tensor): value for tensor, value in zip(graph.inputs, inputs)}
    for node in nodes:
        if any(id(tensor) not in values for tensor in node.input_tensors):
            continue  # Not computable from these inputs (as Keras' own graph runner skips it).
        args, kwargs = node.arguments.fill_in(values)
        operation = node.operation
        inner = _functional_graph(operation)
        if inner is not None and batch_norm_layers(operation):
            outputs = _run_recalibrating(inner, keras.tree.flatten(args), batch_size, recalibrated)
        else:
            if isinstance(operation, keras.layers.BatchNormalization):
                if any(layer is operation for layer in recalibrated):
                    raise ValueError(
                        f"The BatchNormalization layer {operation.name!r} is called more than "
                        "once in the model: its population statistics are ambiguous.")
                _set_population_statistics(operation, args[0])
                recalibrated.append(operation)
            if getattr(operation, "_call_has_training_arg", False):
                kwargs = {**kwargs, "training": False}
            outputs = _apply_in_batches(operation, args, kwargs, batch_size)
        for tensor, value in zip(node.outputs, keras.tree.flatten(outputs)):
            values[id(tensor)] = value
        for tensor in node.input_tensors:
            remaining[id(tensor)] -= 1
            if remaining[id(tensor)] == 0 and id(tensor) not in kept:
                values.pop(id(tensor), None)
    return [values[id(tensor)] for tensor in graph.outputs]


def _apply_in_batches(operation, args, kwargs, batch_size):
    """`operation(*args, **kwargs)` over whole-data numpy args, `batch_size` examples per call:
    the flat list of its outputs, as numpy arrays."""
    count = next(value.shape[0] for value in keras.tree.flatten(args)
                 if isinstance(value, np.ndarray))
    pieces = []
    for start in range(0, count, batch_size):
        def batch(value, start=start):
            return value[start:start + batch_size] if isinstance(value, np.ndarray) else value

        outputs = operation(*keras.tree.map_structure(batch, args),
                            **keras.tree.map_structure(batch, kwargs))
        pieces.append([keras.ops.convert_to_numpy(output) for output in keras.tree.flatten(outputs)])
    return [np.concatenate(parts, axis=0) for parts in zip(*pieces)]


def _set_population_statistics(layer, inputs):
    """A BN layer's moving mean and variance := those of `inputs` over every axis but its own."""
    inputs = np.asarray(inputs)
    axis = layer.axis % inputs.ndim
    reduce = tuple(i for i in range(inputs.ndim) if i != axis)
    mean = inputs.mean(axis=reduce, dtype="float64")
    variance = inputs.var(axis=reduce, dtype="float64")
    layer.moving_mean.assign(mean.astype(keras.backend.standardize_dtype(layer.moving_mean.dtype)))
    layer.moving_variance.assign(
        variance.astype(keras.backend.standardize_dtype(layer.moving_variance.dtype)))
