"""Deploying a GloNet at the depth you can afford: pick k from data, know its cost, or stop early.

Every k-prefix of a GloNet (the first k blocks with the trained head, `analysis.truncate`) is a
model, so one trained network offers L operating points. This module measures them and runs them:

- `choose_depth(model, validation_data, tolerance=0.01)`: the smallest k whose accuracy is within
  `tolerance` (absolute, 0.01 = one percentage point) of the full model's, plus the whole curve.
- `depth_table(model, data)`: per k, the accuracy, the parameters and FLOPs the truncated model
  actually uses, and its measured latency at batch 1 and 64; `depth_within_budget` picks the most
  accurate k that fits a latency budget; `plot_accuracy_latency` draws the trade-off as a PNG.
- `count_parameters(model)`, `count_flops(model)`: what a (truncated) model's graph holds.
- Anytime (confidence-based) inference: run the blocks in order and stop as soon as every example
  of the batch has an exit whose top probability reaches a threshold. `anytime_stages(model)` cuts
  the model into one Keras model per block (what the exported `anytime` signature chains with
  `tf.cond`), `anytime_predict` runs it eagerly on any backend, `first_confident_exits` states the
  rule on precomputed exit logits, and `anytime_report` measures accuracy against blocks computed.

Conventions (decided here, where the issue is silent):
- FLOPs are counted analytically from the graph, per example: 2 x the multiply-accumulates of Dense,
  EinsumDense, Conv (1-3D, depthwise, separable), MultiHeadAttention (projections, scores and the
  weighted sum) and the scanned DenseStack (only the steps it runs); nested models are counted
  through. Biases, activations, normalisation, pooling and the aggregation sum are element-wise,
  a few per cent at most, and not counted (the usual convention of fvcore and ptflops, x 2 for
  multiply + add). A layer with weights of another type is warned about and counted as 0.
- "Parameters used" are the weights of the layers in the truncated graph; a scanned stack run for k
  of its L steps counts k / L of its weights.
- Latency is the median of `repeats` warm calls of the compiled forward pass (a `tf.function` on
  TensorFlow, `jax.jit` on JAX, `predict_on_batch` elsewhere) at each batch size, with the
  interquartile range as its spread. Preprocessing is not included (it is the same for every k).
- Confidence is the top softmax probability; for a single-logit (binary) classifier it is
  max(sigmoid, 1 - sigmoid). A threshold of 1.0 is never reached (a float32 probability of exactly 1
  is a rounding artefact), so it runs every block: the full model. Regression has no confidence.
"""

import dataclasses
import math
import numbers
import statistics
import time
import warnings

import keras
import numpy as np

from glonet_keras import analysis
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


def _trace_nodes(model, input_shapes):
    """(layer, input KerasTensors, call kwargs, output KerasTensors) of every call in `model`'s
    graph, re-run symbolically on inputs of `input_shapes` (batch included); nested models are
    walked through, so their layers appear themselves."""
    records = []

    def record(operation, *args, **kwargs):
        outputs = operation.compute_output_spec(*args, **kwargs)
        if getattr(operation, "_nodes_by_depth", None):  # A functional model used as a layer.
            records.extend(_trace_nodes(operation, [x.shape for x in keras.tree.flatten(args)]))
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
    for layer, inputs, kwargs, outputs in _trace_nodes(model, shapes):
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
    for layer, _, kwargs, _ in _trace_nodes(model, _symbolic_input_shapes(model)):
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
    from glonet_keras import plots

    if not table:
        raise ValueError("`table` is empty: nothing to plot.")
    latency = [row.latency_ms[batch_size] for row in table]
    accuracy = [row.accuracy for row in table]
    figure = plots._figure()
    axes = figure.add_subplot()
    axes.plot(latency, accuracy, marker="o")
    for row, x_value, y_value in zip(table, latency, accuracy):
        axes.annotate(f"k={row.depth}", (x_value, y_value), textcoords="offset points",
                      xytext=(4, -10), fontsize="small")
    axes.set_xlabel(f"latency at batch {batch_size} (ms, median)")
    axes.set_ylabel("accuracy")
    axes.set_title(title or "Accuracy against latency: the first k blocks", fontsize="medium")
    axes.grid(alpha=0.3)
    return plots._save(figure, path)


# -------------------------------------------------------------------------------- anytime


@dataclasses.dataclass(frozen=True)
class AnytimeStages:
    """A GloNet cut into one Keras model per block, for inference that stops early.

    Attributes:
        stages: `stages[k - 1]` maps block k-1's output (the model's input for k = 1) to
            `[block k's output, tap, ...]`: block k's tap, after the stem's tap for k = 1 when the
            model aggregates its stem. Each holds only its own block's layers (and tap layers).
        head: the aggregated taps -> logits (head dropout included, inactive at inference).
        mode: the aggregation, "sum" or "mean".
        includes_stem: the stem's tap is in every prefix.
        num_outputs: the head's outputs.
        exits: the depths where confidence is checked, increasing, ending at L (every block by
            default). Fewer checks cost less where blocks are cheap (see `anytime_stages`).
    """

    stages: list
    head: keras.Model
    mode: str
    includes_stem: bool
    num_outputs: int
    exits: tuple

    @property
    def num_blocks(self):
        return len(self.stages)

    def aggregate(self, total, k):
        """The aggregation of the first k blocks given the running sum of their taps."""
        if self.mode == "sum":
            return total
        return total / (k + int(self.includes_stem))

    def segments(self):
        """`(exit k, [stages run since the previous exit])` for each exit, in order."""
        start = 0
        for k in self.exits:
            yield k, self.stages[start:k]
            start = k


def check_anytime_exits(exits, num_blocks):
    """The exits where anytime inference checks confidence: sorted, distinct, ending at L."""
    if exits is None:
        return tuple(range(1, num_blocks + 1))
    if not isinstance(exits, (list, tuple, range)) or any(
            isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= num_blocks
            for k in exits):
        raise ValueError(
            f"`anytime_exits` must be a list of integers in [1, {num_blocks}], received {exits!r}."
        )
    return tuple(sorted({int(k) for k in exits} | {num_blocks}))  # The last block always answers.


def anytime_stages(model, exits=None):
    """Cuts a GloNet into per-block Keras models (see `AnytimeStages`).

    Args:
        model: a GloNet whose blocks are separate layers.
        exits: the depths where inference may stop (confidence is checked there only); default
            every block. L is always one. Each check costs the head and a softmax: with cheap
            blocks (a narrow MLP at batch 1) checking every block can cost more than the blocks, so
            check every few (e.g. `range(10, L + 1, 10)`).

    Raises:
        NotAGloNetError: not a GloNet.
        ValueError: a scanned block stack (one layer for all blocks: convert it with
            `glonet_keras.models.mlp.to_unrolled` first), a block that reads more than the previous
            block's output (then no prefix can stop between them), or bad `exits`.
    """
    parts = skeleton(model)
    if parts.stacked:
        raise ValueError(
            f"{model.name!r} holds its blocks in one scanned DenseStack, which runs them in one "
            "loop and cannot stop between them: convert it with "
            "`glonet_keras.models.mlp.to_unrolled(model)` (same weights, same outputs) for anytime "
            "inference. Its exit_k exports work as they are."
        )
    exits = check_anytime_exits(exits, parts.num_blocks)
    blocks = list(parts.block_outputs.values())
    taps = list(parts.taps)
    stem_taps = [taps.pop(0)] if parts.includes_stem else []
    (model_input,) = parts.inputs
    stages = []
    for k, (block, tap) in enumerate(zip(blocks, taps), start=1):
        source = model_input if k == 1 else blocks[k - 2]
        outputs = [block] + (stem_taps if k == 1 else []) + [tap]
        try:
            stages.append(keras.Model(source, outputs, name=f"{model.name}_stage_{k}"))
        except ValueError as error:
            raise ValueError(
                f"Block {k} of {model.name!r} does not read only block {k - 1}'s output, so "
                f"inference cannot stop between them: {error}"
            ) from None
    z = keras.Input(shape=tuple(taps[0].shape[1:]), dtype=taps[0].dtype, name="aggregated_taps")
    head = keras.Model(z, analysis._apply_head(parts, z), name=f"{model.name}_head")
    return AnytimeStages(stages=stages, head=head, mode=parts.aggregation.mode,
                         includes_stem=parts.includes_stem,
                         num_outputs=int(parts.head.units), exits=exits)


def _checked_logits(logits, rank, what, axes):
    """`logits` as a float32 numpy array of `rank` dimensions, each non-empty but the batch, finite.

    The anytime rule indexes exits on axis 1 and classes on the last axis: an array of another
    rank would be read along the wrong axes and answer silently wrong, so it is refused."""
    try:
        array = np.asarray(logits)
    except (ValueError, TypeError) as error:  # Ragged nested lists.
        raise ValueError(f"`{what}` must be a numeric array {axes}: {error}") from None
    if array.dtype.kind not in "fiu":
        raise ValueError(f"`{what}` must hold numbers {axes}, received dtype {array.dtype}.")
    if array.ndim != rank:
        raise ValueError(
            f"`{what}` must have {rank} dimensions {axes}, received shape {array.shape}.")
    if any(size == 0 for size in array.shape[1:]):
        raise ValueError(f"`{what}` has an empty dimension {axes}: shape {array.shape}.")
    with np.errstate(over="ignore"):  # Beyond float32 becomes inf, refused just below.
        array = array.astype("float32")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{what}` holds NaN or infinite values (or values beyond float32).")
    return array


def top_probability(logits):
    """The confidence of each row of `logits` (numpy `(batch, outputs)`): the top softmax
    probability, or max(sigmoid, 1 - sigmoid) for one logit. float32 `(batch,)`.

    Raises ValueError for another rank, an empty class axis, or non-finite logits."""
    logits = _checked_logits(logits, 2, "logits", "(batch, outputs)")
    if logits.shape[-1] == 1:
        probability = 1.0 / (1.0 + np.exp(-logits[..., 0]))
        return np.maximum(probability, 1.0 - probability)
    shifted = logits - logits.max(-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(-1, keepdims=True)).max(-1)


def _confident(logits, threshold):
    if threshold >= 1.0:  # Never reached: run every block.
        return np.zeros(len(logits), dtype=bool)
    return top_probability(logits) >= threshold


def first_confident_exits(exit_logits, threshold, exits=None):
    """The anytime rule on precomputed exits: `(exits, logits)` for `exit_logits (batch, L, outputs)`.

    `exits[i]` is the first candidate exit k (`exits`, default every block; L always) whose
    prediction for example i reaches `threshold`, else L; `logits[i]` is that exit's prediction.
    What the `anytime` signature returns for a batch.

    Raises:
        ValueError: `exit_logits` is not a finite numeric array of rank 3 with at least one exit
            and one output, or a bad `threshold` or `exits`.
    """
    threshold = check_probability(threshold, "threshold")
    exit_logits = _checked_logits(exit_logits, 3, "exit_logits", "(batch, exits, outputs)")
    batch, num_blocks = exit_logits.shape[:2]
    chosen = np.full(batch, num_blocks, dtype="int32")
    done = np.zeros(batch, dtype=bool)
    for k in check_anytime_exits(exits, num_blocks):
        newly = _confident(exit_logits[:, k - 1], threshold) & ~done
        chosen[newly] = k
        done |= newly
    return chosen, exit_logits[np.arange(batch), chosen - 1]


def anytime_predict(model, x, threshold=0.9, stages=None, exits=None):
    """Runs `x` as one batch block by block, stopping once every example has a confident exit.

    Blocks after the stop are never called. Works on every backend (the exported `anytime`
    signature does the same inside a TensorFlow graph).

    Args:
        model: a GloNet classifier.
        x: model inputs (preprocessed), one batch.
        threshold: the confidence to reach, in [0, 1] (1.0: never, i.e. the full model).
        stages: `anytime_stages(model, exits)`, to reuse across calls (then `exits` is its own).
        exits: the candidate exits (see `anytime_stages`); default every block.

    Returns:
        A dict of numpy arrays: `logits` and `probabilities` `(batch, outputs)` of each example's
        exit, `exit` `(batch,)` (1..L), and `blocks_computed` (an int: the blocks this batch ran).
    """
    _check_classifier(model)
    threshold = check_probability(threshold, "threshold")
    stages = stages or anytime_stages(model, exits)
    hidden, total = x, None
    chosen, chosen_exits, done = None, None, None
    for k, segment in stages.segments():
        for stage in segment:
            outputs = stage(hidden, training=False)
            hidden = outputs[0]
            for tap in outputs[1:]:
                total = tap if total is None else total + tap
        logits = keras.ops.convert_to_numpy(stages.head(stages.aggregate(total, k), training=False))
        logits = logits.astype("float32")
        if chosen is None:
            chosen = np.zeros_like(logits)
            chosen_exits = np.zeros(len(logits), dtype="int32")
            done = np.zeros(len(logits), dtype=bool)
        newly = _confident(logits, threshold) & ~done
        chosen[newly], chosen_exits[newly] = logits[newly], k
        done |= newly
        if done.all():
            break
    if not done.all():  # The last block answers for everyone still unsure.
        chosen[~done], chosen_exits[~done] = logits[~done], k
    return {"logits": chosen, "probabilities": _probabilities(chosen), "exit": chosen_exits,
            "blocks_computed": k}


def _probabilities(logits):
    if logits.shape[-1] == 1:
        return 1.0 / (1.0 + np.exp(-logits))
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def anytime_report(model, x, y, thresholds=DEFAULT_THRESHOLDS, batch_size=256, exits=None):
    """Accuracy and blocks computed per example of anytime inference at each threshold.

    Served one example at a time, an example costs `exit` blocks; `mean_blocks` is their mean over
    `x` (a batch stops at its slowest example, so batching costs more). From one early-exit pass;
    `exits` are the candidate exits (default every block).

    Returns:
        A list of dicts `{"threshold", "accuracy", "mean_blocks", "num_blocks"}`, and a last entry
        for the full model (threshold None).
    """
    _check_classifier(model)
    exit_logits = analysis.early_exit_logits(model, x, batch_size=batch_size)
    labels = analysis._class_labels(y, num_outputs=exit_logits.shape[-1])
    num_blocks = exit_logits.shape[1]

    def accuracy(logits):
        predictions = (logits[:, 0] > 0) if logits.shape[-1] == 1 else logits.argmax(-1)
        return float(np.mean(predictions == labels))

    report = []
    for threshold in thresholds:
        chosen, logits = first_confident_exits(exit_logits, threshold, exits)
        report.append({"threshold": float(threshold), "accuracy": accuracy(logits),
                       "mean_blocks": float(chosen.mean()), "num_blocks": num_blocks})
    report.append({"threshold": None, "accuracy": accuracy(exit_logits[:, -1]),
                   "mean_blocks": float(num_blocks), "num_blocks": num_blocks})
    return report
