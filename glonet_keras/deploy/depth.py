"""Choosing a GloNet's depth from data: accuracy, parameters, FLOPs and latency of every k-prefix.

See the package docstring for the conventions (FLOPs, parameters used, latency, confidence)."""

import dataclasses
import math
import numbers
import statistics
import time
import warnings

import keras
import numpy as np

from glonet_keras import analysis, plots
from glonet_keras.layers import ClassToken, DenseStack, PositionEmbedding
from glonet_keras.skeleton import skeleton

DEFAULT_BATCH_SIZES = (1, 64)
DEFAULT_THRESHOLDS = (0.5, 0.8, 0.9, 0.95, 0.99, 1.0)
_ACCURACY_EPSILON = 1e-9  # 0.95 - 0.01 is 0.9399999999999999 in floats; a tie is within tolerance.


# ------------------------------------------------------------------------------------ data


def _as_arrays(data, what):
    """`(x, y)` numpy arrays from a tuple `(x, y)` or an iterable (tf.data) of (x, y) batches."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        return np.asarray(x), np.asarray(y)
    if isinstance(data, (tuple, list, dict, str, bytes, np.ndarray)) or not hasattr(data, "__iter__"):
        raise ValueError(
            f"`{what}` must be a tuple (x, y) of arrays or an iterable (e.g. a tf.data.Dataset) of "
            f"(x, y) batches, received {type(data).__name__}."
        )
    xs, ys = [], []
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(f"Each batch of `{what}` must be (x, y[, weights]), received "
                             f"{type(batch).__name__}.")
        xs.append(np.asarray(batch[0]))
        ys.append(np.asarray(batch[1]))
    if not xs:
        raise ValueError(f"`{what}` holds no batches.")
    return np.concatenate(xs), np.concatenate(ys)


def _check_classifier(model):
    task = (getattr(model, "preset_metadata", None) or {}).get("task")
    if task == "regression":
        raise ValueError(
            f"{model.name!r} is a regression model: accuracy and confidence mean nothing for it. "
            "Choose its depth from `analysis.early_exit_logits` and your own error metric."
        )


def check_probability(value, name):
    """`value` as a float if it is a number in [0, 1]; ValueError naming `name` otherwise."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or not 0.0 <= value <= 1.0):
        raise ValueError(f"`{name}` must be a number in [0, 1], received {value!r}.")
    return float(value)


# ---------------------------------------------------------------------------- choose depth


@dataclasses.dataclass(frozen=True)
class DepthChoice:
    """The depth `choose_depth` picked, and the curve it picked it from.

    Attributes:
        depth: the chosen k (1..num_blocks).
        num_blocks: L.
        tolerance: the allowed accuracy drop (absolute).
        full_accuracy: accuracy of all L blocks (the full model).
        accuracies: accuracy of the first k blocks, k = 1..L (`accuracies[k - 1]`).
    """

    depth: int
    num_blocks: int
    tolerance: float
    full_accuracy: float
    accuracies: tuple

    @property
    def accuracy(self):
        """Accuracy of the chosen depth."""
        return self.accuracies[self.depth - 1]

    def to_dict(self):
        return {**dataclasses.asdict(self), "accuracies": list(self.accuracies),
                "accuracy": self.accuracy}


def choose_depth(model, validation_data, tolerance=0.01, batch_size=256):
    """The smallest k whose accuracy is within `tolerance` of the full model's, and the curve.

    All L prefixes come from one forward pass (`analysis.early_exit_accuracy`), each equal to
    `truncate(model, k)`. Choose on a validation split, never on the test split you report.

    Args:
        model: a GloNet classifier (any the library builds, loads or glonetifies).
        validation_data: `(x, y)` (model inputs, already preprocessed, and integer or one-hot labels)
            or an iterable such as a `tf.data.Dataset` of `(x, y)` batches.
        tolerance: the accuracy drop allowed, absolute, in [0, 1] (0.01: one percentage point).
        batch_size: batch size of the forward pass.

    Returns:
        A `DepthChoice`.

    Raises:
        NotAGloNetError: the model is not a GloNet.
        ValueError: a regression model, a bad tolerance, or bad data (see `early_exit_accuracy`).

    Example:
    >>> choice = choose_depth(model, (x_val, y_val), tolerance=0.01)
    >>> choice.depth, choice.accuracy, choice.full_accuracy
    (5, 0.944, 0.951)
    """
    tolerance = check_probability(tolerance, "tolerance")
    _check_classifier(model)
    x, y = _as_arrays(validation_data, "validation_data")
    curve = analysis.early_exit_accuracy(model, x, y, batch_size=batch_size)
    accuracies = [float(a) for a in curve]
    full = accuracies[-1]
    depth = next(k for k, accuracy in enumerate(accuracies, start=1)
                 if accuracy + _ACCURACY_EPSILON >= full - tolerance)
    return DepthChoice(depth=depth, num_blocks=len(accuracies), tolerance=tolerance,
                       full_accuracy=full, accuracies=tuple(accuracies))


# ---------------------------------------------------------------------- parameters and FLOPs


def trace_nodes(model, input_shapes):
    """(layer, input KerasTensors, call kwargs, output KerasTensors) of every call in `model`'s
    graph, re-run symbolically on inputs of `input_shapes` (batch included); nested models are
    walked through, so their layers appear themselves."""
    records = []

    def record(operation, *args, **kwargs):
        outputs = operation.compute_output_spec(*args, **kwargs)
        if getattr(operation, "_nodes_by_depth", None):  # A functional model used as a layer.
            records.extend(trace_nodes(operation, [x.shape for x in keras.tree.flatten(args)]))
        else:
            records.append((operation, keras.tree.flatten(args), kwargs,
                            keras.tree.flatten(outputs)))
        return outputs

    inputs = [keras.KerasTensor(shape, x.dtype) for shape, x in zip(input_shapes, model.inputs)]
    model._run_through_graph(inputs, call_fn=record)  # Private Keras API: the functional graph walk.
    return records


def _symbolic_input_shapes(model, input_shape=None, *, require_known=False):
    """The model's input shapes at batch 1, `input_shape` replacing the model's own if given."""
    if input_shape is not None:
        if len(model.inputs) != 1:
            raise ValueError("`input_shape` can only be given for a model with one input.")
        shapes = [(1,) + tuple(input_shape)]
    else:
        shapes = [(1,) + tuple(x.shape[1:]) for x in model.inputs]
    for shape in shapes:
        if require_known and any(d is None for d in shape):
            raise ValueError(
                f"FLOPs depend on the input size, and {model.name!r} takes inputs of shape "
                f"{shape[1:]}: pass `input_shape` (without the batch dimension)."
            )
    return shapes


def _size(shape):
    return int(np.prod(list(shape), dtype="int64"))


def _einsum_flops(layer, inputs, outputs):
    """2 x the product of the sizes of every index of the einsum equation."""
    operands, output = layer.equation.split("->")
    input_indices, kernel_indices = operands.split(",")
    sizes = {}
    for indices, shape in ((input_indices, inputs[0].shape), (kernel_indices, layer.kernel.shape),
                           (output, outputs[0].shape)):
        sizes.update({index: size for index, size in zip(indices, shape) if index != "."})
    return 2 * _size(sizes.values())


def _attention_flops(layer, inputs, kwargs):
    # MultiHeadAttention(query, value, key=None): positionally or by keyword.
    named = dict(zip(("query", "value", "key"), inputs))
    named.update({name: kwargs[name] for name in ("query", "value", "key")
                  if kwargs.get(name) is not None})
    query = named["query"].shape
    value = named.get("value", named["query"]).shape
    key = named.get("key", named.get("value", named["query"])).shape
    heads, key_dim = layer.num_heads, layer.key_dim
    value_dim = layer.value_dim or key_dim
    query_length, value_length = _size(query[1:-1]), _size(value[1:-1])
    output_shape = layer.get_config().get("output_shape")
    output_dim = _size(keras.tree.flatten(output_shape)) if output_shape else query[-1]
    projections = heads * (query_length * query[-1] * key_dim + value_length * key[-1] * key_dim
                           + value_length * value[-1] * value_dim)
    attention = heads * query_length * value_length * (key_dim + value_dim)
    output = query_length * heads * value_dim * output_dim
    return 2 * (projections + attention + output)


_CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
                 keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE_CONVOLUTIONS = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_TRANSPOSED_CONVOLUTIONS = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                            keras.layers.Conv3DTranspose)
# Layers whose weights are used element-wise or looked up: no multiply-accumulates to count.
_ELEMENT_WISE_WEIGHTED = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
                          keras.layers.GroupNormalization, keras.layers.Embedding, ClassToken,
                          PositionEmbedding)


def _node_flops(layer, inputs, kwargs, outputs):
    """FLOPs of one call of `layer` at batch 1 (see the module docstring), or None if unknown."""
    if isinstance(layer, DenseStack):
        steps = kwargs.get("steps") or layer.num_blocks
        return 2 * _size(inputs[0].shape[1:-1]) * steps * layer.units * layer.units
    if isinstance(layer, keras.layers.Dense):
        return 2 * _size(inputs[0].shape[1:-1]) * _size(layer.kernel.shape)
    if isinstance(layer, keras.layers.EinsumDense):
        return _einsum_flops(layer, inputs, outputs)
    if isinstance(layer, keras.layers.MultiHeadAttention):
        return _attention_flops(layer, inputs, kwargs)
    if isinstance(layer, _CONVOLUTIONS):
        return 2 * _size(outputs[0].shape[1:-1]) * _size(layer.kernel.shape)
    if isinstance(layer, _SEPARABLE_CONVOLUTIONS):
        kernels = _size(layer.depthwise_kernel.shape) + _size(layer.pointwise_kernel.shape)
        return 2 * _size(outputs[0].shape[1:-1]) * kernels
    if isinstance(layer, _TRANSPOSED_CONVOLUTIONS):
        return 2 * _size(inputs[0].shape[1:-1]) * _size(layer.kernel.shape)
    if not layer.weights or isinstance(layer, _ELEMENT_WISE_WEIGHTED):
        return 0
    return None


def count_flops(model, input_shape=None):
    """FLOPs of one example through `model` (2 x multiply-accumulates; see the module docstring).

    Args:
        model: a functional keras.Model (e.g. `analysis.truncate(model, k)`).
        input_shape: the shape of one example, without the batch dimension; needed only when the
            model's input has unknown (None) sizes.

    Returns:
        An int. Layers with weights that no rule covers count 0, with a warning naming them.

    Example:
    >>> count_flops(GloNetMLP(num_blocks=2, width=4, input_shape=(5,), num_classes=3))
    96   # 2 * (5*4 + 2*4*4 + 4*3)
    """
    shapes = _symbolic_input_shapes(model, input_shape, require_known=True)
    uncounted, total = set(), 0
    for layer, inputs, kwargs, outputs in trace_nodes(model, shapes):
        flops = _node_flops(layer, inputs, kwargs, outputs)
        if flops is None:
            uncounted.add(f"{layer.name} ({type(layer).__name__})")
        total += flops or 0
    if uncounted:
        warnings.warn(f"count_flops: no FLOP rule for {sorted(uncounted)}; counted as 0.",
                      stacklevel=2)
    return int(total)


def count_parameters(model):
    """The weights a (truncated) model's graph uses. Shared layers count once; a scanned stack run
    for k of its L steps counts k / L of its weights.

    Example:
    >>> count_parameters(truncate(GloNetMLP(num_blocks=4, width=8, input_shape=(5,)), 1))
    210   # stem 5*8+8, block_1 8*8+8, head 8*10+10
    """
    used = {}
    for layer, _, kwargs, _ in trace_nodes(model, _symbolic_input_shapes(model)):
        count = int(layer.count_params()) if layer.weights else 0
        if isinstance(layer, DenseStack) and kwargs.get("steps"):
            count = count * int(kwargs["steps"]) // layer.num_blocks
        used[id(layer)] = max(used.get(id(layer), 0), count)
    return sum(used.values())


# --------------------------------------------------------------------------------- latency


def _compiled_forward(model):
    """The forward pass (`training=False`) compiled as the backend serves it: numpy in, numpy out."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        function = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        return lambda x: function(tf.constant(x)).numpy()
    if backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        @jax.jit
        def forward(trainable, non_trainable, x):
            return model.stateless_call(trainable, non_trainable, x, training=False)[0]

        return lambda x: np.asarray(forward(trainable, non_trainable, x))
    return model.predict_on_batch


def inference_latency(model, x, batch_sizes=DEFAULT_BATCH_SIZES, repeats=30, warmup=3):
    """Milliseconds per call of the compiled forward pass: `{batch: (median, q25, q75)}`.

    `x` holds model inputs with their batch dimension; its first example is tiled to each batch
    size. Warm-up calls (tracing, compilation) are not timed.
    """
    example = np.asarray(x)[:1]
    forward = _compiled_forward(model)
    results = {}
    for batch in batch_sizes:
        x = np.repeat(example, int(batch), axis=0)
        for _ in range(warmup):
            forward(x)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            forward(x)
            samples.append(1000.0 * (time.perf_counter() - start))
        quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else samples * 3
        results[int(batch)] = (statistics.median(samples), quartiles[0], quartiles[-1])
    return results


def interleaved_latency(models, x, batch_sizes=DEFAULT_BATCH_SIZES, repeats=30, warmup=3):
    """`inference_latency` of several models, timed in rounds: `{key: {batch: (median, q25, q75)}}`.

    `models` is `{key: model}`. Each round times one call of every model at every batch size, so
    a slow spell of a shared machine (other jobs, frequency scaling) lands on every model alike
    instead of on whichever was being timed then: the ORDER of the medians, which a latency
    budget picks by, is what this protects. Warm-up calls are not timed.
    """
    example = np.asarray(x)[:1]
    batch_sizes = [int(b) for b in batch_sizes]
    inputs = {b: np.repeat(example, b, axis=0) for b in batch_sizes}
    forwards = {key: _compiled_forward(model) for key, model in models.items()}
    for forward in forwards.values():
        for batch in batch_sizes:
            for _ in range(warmup):
                forward(inputs[batch])
    samples = {(key, b): [] for key in forwards for b in batch_sizes}
    for _ in range(repeats):
        for key, forward in forwards.items():
            for batch in batch_sizes:
                start = time.perf_counter()
                forward(inputs[batch])
                samples[key, batch].append(1000.0 * (time.perf_counter() - start))
    results = {}
    for (key, batch), timings in samples.items():
        quartiles = statistics.quantiles(timings, n=4) if len(timings) > 1 else timings * 3
        results.setdefault(key, {})[batch] = (statistics.median(timings), quartiles[0],
                                              quartiles[-1])
    return results


# ----------------------------------------------------------------------------- depth table


@dataclasses.dataclass(frozen=True)
class DepthRow:
    """One operating point of a GloNet: its first `depth` blocks with the trained head.

    Attributes:
        depth: k.
        accuracy: accuracy of the first k blocks on the table's data.
        parameters: weights the truncated model uses (`count_parameters`).
        flops: FLOPs of one example (`count_flops`).
        latency_ms: `{batch size: median ms}` of the compiled truncated model.
        latency_iqr_ms: `{batch size: [q25, q75]}`, the spread of those timings.
    """

    depth: int
    accuracy: float
    parameters: int
    flops: int
    latency_ms: dict
    latency_iqr_ms: dict

    def to_dict(self):
        """JSON-ready (batch sizes become string keys, as JSON requires)."""
        return {
            "depth": self.depth, "accuracy": self.accuracy, "parameters": self.parameters,
            "flops": self.flops,
            "latency_ms": {str(b): round(v, 4) for b, v in self.latency_ms.items()},
            "latency_iqr_ms": {str(b): [round(q, 4) for q in v]
                               for b, v in self.latency_iqr_ms.items()},
        }

    @classmethod
    def from_dict(cls, record):
        return cls(
            depth=int(record["depth"]), accuracy=float(record["accuracy"]),
            parameters=int(record["parameters"]), flops=int(record["flops"]),
            latency_ms={int(b): float(v) for b, v in record["latency_ms"].items()},
            latency_iqr_ms={int(b): list(v) for b, v in record["latency_iqr_ms"].items()},
        )


def default_depths(num_blocks):
    """The depths a table shows by default: every k up to 16 blocks, else k = 1 and 8 even steps."""
    if num_blocks <= 16:
        return list(range(1, num_blocks + 1))
    return sorted({1} | {math.ceil(num_blocks * i / 8) for i in range(1, 9)})


def _check_depths(depths, num_blocks):
    if depths is None:
        return default_depths(num_blocks)
    checked = []
    for k in depths:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= num_blocks:
            raise ValueError(f"`depths` must hold integers in [1, {num_blocks}], received {k!r}.")
        checked.append(int(k))
    return sorted(set(checked))


def _check_batch_sizes(batch_sizes):
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 1
                              for b in batch_sizes):
        raise ValueError(f"`batch_sizes` must be integers >= 1, received {batch_sizes!r}.")
    return [int(b) for b in batch_sizes]


def depth_table(model, data, batch_sizes=DEFAULT_BATCH_SIZES, depths=None, repeats=30,
                batch_size=256):
    """Accuracy, parameters, FLOPs and measured latency of the first k blocks, for each k.

    Args:
        model: a GloNet classifier.
        data: `(x, y)` model inputs (preprocessed) and labels, or an iterable of `(x, y)` batches.
        batch_sizes: batch sizes to time.
        depths: the k to show; default `default_depths(L)` (all k for L <= 16).
        repeats: timed calls per k and batch size (the median is reported).
        batch_size: batch size of the accuracy pass.

    Returns:
        A list of `DepthRow`, by increasing k.

    Example:
    >>> rows = depth_table(model, (x_val, y_val))
    >>> [(r.depth, r.accuracy, r.latency_ms[1]) for r in rows]
    """
    _check_classifier(model)
    parts = skeleton(model)
    depths = _check_depths(depths, parts.num_blocks)
    batch_sizes = _check_batch_sizes(batch_sizes)
    x, y = _as_arrays(data, "data")
    accuracies = analysis.early_exit_accuracy(model, x, y, batch_size=batch_size)
    truncated = {k: analysis.truncate(model, k) for k in depths}
    latencies = interleaved_latency(truncated, x[:1], batch_sizes, repeats=repeats)
    rows = []
    for k in depths:
        latency = latencies[k]
        rows.append(DepthRow(
            depth=k, accuracy=float(accuracies[k - 1]),
            parameters=count_parameters(truncated[k]),
            flops=count_flops(truncated[k], input_shape=x.shape[1:]),
            latency_ms={b: latency[b][0] for b in batch_sizes},
            latency_iqr_ms={b: [latency[b][1], latency[b][2]] for b in batch_sizes},
        ))
    return rows


def depth_within_budget(table, latency_budget_ms, batch_size=1):
    """The most accurate row of `table` whose latency at `batch_size` fits the budget (ties: the
    smallest k). Raises ValueError, naming the fastest depth, when none fits.

    A row's latency counts as at least that of every smaller k (the running maximum over k): the
    first k blocks include the first k - 1, so a deeper prefix measured faster is noise, and a
    pick must not jump to it. Picks whose latency lies near the budget can still differ between
    runs on a noisy machine: `depth_table` times every k in interleaved rounds and reports the
    interquartile range; leave headroom, or raise `repeats`."""
    if (isinstance(latency_budget_ms, bool) or not isinstance(latency_budget_ms, numbers.Real)
            or not latency_budget_ms > 0):
        raise ValueError(
            f"`latency_budget_ms` must be a number > 0, received {latency_budget_ms!r}.")
    if not table or batch_size not in table[0].latency_ms:
        raise ValueError(f"The depth table has no latency at batch size {batch_size}.")
    rows = sorted(table, key=lambda row: row.depth)
    envelope = np.maximum.accumulate([row.latency_ms[batch_size] for row in rows])
    fitting = [row for row, latency in zip(rows, envelope) if latency <= latency_budget_ms]
    if not fitting:
        fastest = rows[0]
        raise ValueError(
            f"No depth fits a budget of {latency_budget_ms} ms at batch size {batch_size}: the "
            f"smallest depth, k={fastest.depth}, takes {fastest.latency_ms[batch_size]:.3f} ms."
        )
    return max(fitting, key=lambda row: (row.accuracy, -row.depth))


def plot_accuracy_latency(table, path, *, batch_size=1, title=None):
    """Accuracy against measured latency at `batch_size`, one point per k (labelled); a PNG."""
    if not table:
        raise ValueError("`table` is empty: nothing to plot.")
    latency = [row.latency_ms[batch_size] for row in table]
    accuracy = [row.accuracy for row in table]
    figure = plots.new_figure()
    axes = figure.add_subplot()
    axes.plot(latency, accuracy, marker="o")
    for row, x_value, y_value in zip(table, latency, accuracy):
        axes.annotate(f"k={row.depth}", (x_value, y_value), textcoords="offset points",
                      xytext=(4, -10), fontsize="small")
    axes.set_xlabel(f"latency at batch {batch_size} (ms, median)")
    axes.set_ylabel("accuracy")
    axes.set_title(title or "Accuracy against latency: the first k blocks", fontsize="medium")
    axes.grid(alpha=0.3)
    return plots.save_figure(figure, path)
