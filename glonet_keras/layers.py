"""Custom layers of glonet-keras: the GloNet layer, the scanned block stack, the ViT's pieces.

Every layer here uses `keras.ops` only, so it runs on the TensorFlow, JAX and PyTorch backends.
"""

import random

import keras
import numpy as np
from keras import ops

AGGREGATION_MODES = ("sum", "mean")


@keras.saving.register_keras_serializable(package="glonet_keras")
class GlobalAggregation(keras.layers.Layer):
    """The GloNet layer: aggregates the outputs (taps) of every block.

    `z = sum_i x_i` (`mode="sum"`, the paper) or `z = mean_i x_i` (`mode="mean"`). The head reads
    `z`, so every block receives the head's gradient through a path of length one.

    With `cumulative=True` the layer returns all prefix aggregates stacked on axis 1, shape
    `(batch, L, ...)`, where entry `k` aggregates the first `k + 1` inputs. Applying the head to that
    tensor yields the outputs of every early exit from a single forward pass.

    The taps come as a list of L tensors of one shape, or as ONE stacked tensor `(batch, L, ...)`
    (what a scanned block stack, `DenseStack`, produces): the blocks are then axis 1.

    Precision: under a mixed policy (`"mixed_float16"`, `"mixed_bfloat16"`) the layer computes in
    the policy like every other layer (keras-hub's convention: its output is float16/bfloat16), but
    it accumulates the sum in float32 and rounds once: L taps summed in half precision would round
    L times, and the one-pass early exits (`cumulative=True`) would then differ from the truncated
    sums by that rounding. The head after it follows the model's policy too (see docs/precision.md).

    Args:
        mode: `"sum"` (default) or `"mean"`.
        cumulative: return the prefix aggregates instead of the full one.
        **kwargs: standard layer arguments (`name`, `dtype`, ...).

    Example:
    >>> taps = [keras.ops.ones((2, 3)), 2 * keras.ops.ones((2, 3))]
    >>> GlobalAggregation()(taps)[0]      # [3., 3., 3.]
    >>> GlobalAggregation(cumulative=True)(taps).shape   # (2, 2, 3)
    """

    def __init__(self, mode="sum", cumulative=False, **kwargs):
        super().__init__(**kwargs)
        if mode not in AGGREGATION_MODES:
            raise ValueError(
                f"Unknown aggregation mode {mode!r}. Allowed modes: {list(AGGREGATION_MODES)}."
            )
        if not isinstance(cumulative, (bool, np.bool_)):
            # bool("no") is True: a string or number here is a mistake, not a truthy flag.
            raise ValueError(f"`cumulative` must be True or False, received {cumulative!r}.")
        self.mode = mode
        self.cumulative = bool(cumulative)
        self.supports_masking = False

    def build(self, input_shape):
        input_shape = _as_shapes(input_shape)
        if _is_single_shape(input_shape):
            if len(input_shape) < 3:
                raise ValueError(
                    "GlobalAggregation takes a non-empty list of tensors (one per block) or one "
                    f"stacked tensor (batch, blocks, ...) of rank >= 3; received shape "
                    f"{tuple(input_shape)}."
                )
            self.built = True
            return
        if not isinstance(input_shape, (list, tuple)) or not input_shape or not isinstance(
            input_shape[0], (list, tuple)
        ):
            raise ValueError(
                "GlobalAggregation expects a non-empty list of tensors (one per block), "
                f"received input shape {input_shape}."
            )
        reference = tuple(input_shape[0])
        for index, shape in enumerate(input_shape[1:], start=1):
            if not _shapes_compatible(reference, tuple(shape)):
                raise ValueError(
                    "GlobalAggregation inputs must all have the same shape: input 0 has shape "
                    f"{reference} but input {index} has shape {tuple(shape)}."
                )
        self.built = True

    def call(self, inputs):
        accumulate = "float32" if self.compute_dtype in ("float16", "bfloat16") else None
        if accumulate is None:
            return self._aggregate(inputs)
        inputs = keras.tree.map_structure(lambda x: ops.cast(x, accumulate), inputs)
        return ops.cast(self._aggregate(inputs), self.compute_dtype)

    def _aggregate(self, inputs):
        if not isinstance(inputs, (list, tuple)):
            return self._aggregate_stacked(inputs)
        if self.cumulative:
            stacked = ops.stack(inputs, axis=1)
            prefix = ops.cumsum(stacked, axis=1)
            if self.mode == "mean":
                counts = ops.arange(1, len(inputs) + 1, dtype=prefix.dtype)
                counts = ops.reshape(counts, (1, len(inputs)) + (1,) * (len(stacked.shape) - 2))
                prefix = prefix / counts
            return prefix
        total = inputs[0]
        for tensor in inputs[1:]:
            total = ops.add(total, tensor)
        if self.mode == "mean":
            total = total / ops.cast(len(inputs), total.dtype)
        return total

    def _aggregate_stacked(self, stacked):
        if self.cumulative:
            prefix = ops.cumsum(stacked, axis=1)
            if self.mode == "mean":
                steps = ops.shape(stacked)[1]
                counts = ops.cast(ops.arange(1, steps + 1), prefix.dtype)
                prefix = prefix / ops.reshape(counts, (1, -1) + (1,) * (len(stacked.shape) - 2))
            return prefix
        reduce = ops.sum if self.mode == "sum" else ops.mean
        return reduce(stacked, axis=1)

    def compute_output_shape(self, input_shape):
        input_shape = _as_shapes(input_shape)
        if _is_single_shape(input_shape):
            shape = tuple(input_shape)
            return shape if self.cumulative else shape[:1] + shape[2:]
        shape = _merged_shape(input_shape)
        if self.cumulative:
            return (shape[0], len(input_shape)) + shape[1:]
        return shape

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "cumulative": self.cumulative})
        return config


def _as_shapes(shape):
    """A shape, or a list of shapes, as tuples of ints / None (a `tf.TensorShape` has `as_list`)."""
    if hasattr(shape, "as_list"):
        return tuple(shape.as_list()) if shape.rank is not None else shape
    if isinstance(shape, (list, tuple)) and any(
            hasattr(s, "as_list") or isinstance(s, (list, tuple)) for s in shape):
        return [_as_shapes(s) for s in shape]
    if isinstance(shape, (list, tuple)):
        return tuple(int(d) if isinstance(d, np.integer) else d for d in shape)
    return shape


def _is_single_shape(shape):
    """True for the shape of one tensor (a tuple of ints/None), False for a list of shapes."""
    return (isinstance(shape, (list, tuple)) and len(shape) > 0
            and all(d is None or isinstance(d, int) for d in shape))


def _shapes_compatible(a, b):
    if len(a) != len(b):
        return False
    return all(x is None or y is None or x == y for x, y in zip(a, b))


def _merged_shape(shapes):
    """The common shape of the inputs, keeping any dimension known in at least one of them."""
    merged = list(shapes[0])
    for shape in shapes[1:]:
        merged = [m if m is not None else s for m, s in zip(merged, shape)]
    return tuple(merged)


@keras.saving.register_keras_serializable(package="glonet_keras")
class ClassToken(keras.layers.Layer):
    """Prepends a learned class token to a sequence of patch embeddings: (B, N, D) -> (B, N+1, D)."""

    def __init__(self, initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(f"ClassToken expects (batch, tokens, dim) input, received {input_shape}.")
        self.token = self.add_weight(
            shape=(1, 1, input_shape[-1]), initializer=self.initializer, name="token"
        )

    def call(self, inputs):
        token = ops.cast(self.token, inputs.dtype)
        token = ops.broadcast_to(token, (ops.shape(inputs)[0], 1, ops.shape(inputs)[-1]))
        return ops.concatenate([token, inputs], axis=1)

    def compute_output_shape(self, input_shape):
        tokens = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], tokens, input_shape[2])

    def get_config(self):
        config = super().get_config()
        config["initializer"] = keras.initializers.serialize(self.initializer)
        return config


@keras.saving.register_keras_serializable(package="glonet_keras")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned position embedding to a fixed-length token sequence."""

    def __init__(self, initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.initializer = keras.initializers.get(
            initializer or keras.initializers.RandomNormal(stddev=0.02)
        )

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[1] is None or input_shape[2] is None:
            raise ValueError(
                "PositionEmbedding needs a known sequence length and width, "
                f"received input shape {input_shape}."
            )
        self.embedding = self.add_weight(
            shape=(1, input_shape[1], input_shape[2]), initializer=self.initializer, name="embedding"
        )

    def call(self, inputs):
        return inputs + ops.cast(self.embedding, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["initializer"] = keras.initializers.serialize(self.initializer)
        return config


@keras.saving.register_keras_serializable(package="glonet_keras")
class TokenPooling(keras.layers.Layer):
    """Linear pooling of a token sequence: the class token (`"cls"`) or the token mean (`"mean"`)."""

    def __init__(self, mode="cls", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("cls", "mean"):
            raise ValueError(f"Unknown token pooling {mode!r}. Allowed: ['cls', 'mean'].")
        self.mode = mode

    def call(self, inputs):
        if self.mode == "cls":
            return inputs[:, 0]
        return ops.mean(inputs, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def get_config(self):
        config = super().get_config()
        config["mode"] = self.mode
        return config


@keras.saving.register_keras_serializable(package="glonet_keras")
class TorchBiasUniform(keras.initializers.Initializer):
    """PyTorch's default bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)); fan_in is given explicitly."""

    def __init__(self, fan_in, seed=None):
        self.fan_in = int(fan_in)
        self.seed = seed

    def __call__(self, shape, dtype=None):
        bound = 1.0 / max(self.fan_in, 1) ** 0.5
        return keras.random.uniform(shape, -bound, bound, dtype=dtype, seed=self.seed)

    def get_config(self):
        return {"fan_in": self.fan_in, "seed": self.seed}


@keras.saving.register_keras_serializable(package="glonet_keras")
class DenseStack(keras.layers.Layer):
    """L dense blocks of one width as ONE layer, run by `keras.ops.scan`: a graph that does not grow.

    Block i computes `h_i = act(norm(h_{i-1} W_i + b_i))` (the GloNetMLP block) with the weights of
    all blocks stacked, `kernel (L, w, w)` and `bias (L, w)` (and, with `normalization="layer"`,
    `gamma`, `beta (L, w)`). The output is every block's output, stacked: `(batch, L, w)`, what
    `GlobalAggregation` sums over axis 1. Build and compile time stay flat in L; the numbers equal
    the unrolled blocks with the same weights.

    `steps=k` in a call runs only the first k blocks (shared weights): how a truncated scanned
    GloNet computes nothing beyond its exit.

    Args:
        num_blocks: L.
        units: the width w (the input must have it too).
        activation: a `keras.activations` name.
        normalization: None or `"layer"` (batch norm's moving statistics have no place in a scan).
        kernel_initializer, bias_initializer: applied to each block's slice.

    On TensorFlow the layer cannot be compiled with XLA (`supports_jit` is False): a model holding
    it trains with `jit_compile=False` (what "auto" gives), or on the JAX backend with XLA.
    """

    def __init__(self, num_blocks, units, activation="relu", normalization=None,
                 kernel_initializer="he_normal", bias_initializer="zeros", epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        if normalization not in (None, "layer"):
            raise ValueError(
                f"DenseStack supports normalization None or 'layer', received {normalization!r}."
            )
        self.num_blocks = int(num_blocks)
        self.units = int(units)
        self.activation = keras.activations.get(activation)
        self.normalization = normalization
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.epsilon = float(epsilon)
        # TensorFlow's XLA cannot compile the gradient of a scan (a while loop's accumulators fail
        # with "XLA compilation requires a fixed tensor list size"). Keras reads this flag for any
        # model holding the layer: jit_compile="auto" then resolves to False, and jit_compile=True
        # warns and runs without XLA (a GloNet model refuses it with the fix; common.py).
        if keras.backend.backend() == "tensorflow":
            self.supports_jit = False

    def build(self, input_shape):
        if input_shape[-1] != self.units:
            raise ValueError(
                f"DenseStack of width {self.units} needs inputs of width {self.units}, received "
                f"shape {tuple(input_shape)}."
            )
        blocks, units = self.num_blocks, self.units
        self.kernel = self.add_weight(
            shape=(blocks, units, units), initializer=_PerBlock(self.kernel_initializer),
            name="kernel",
        )
        self.bias = self.add_weight(
            shape=(blocks, units), initializer=_PerBlock(self.bias_initializer), name="bias"
        )
        if self.normalization == "layer":
            self.gamma = self.add_weight(shape=(blocks, units), initializer="ones", name="gamma")
            self.beta = self.add_weight(shape=(blocks, units), initializer="zeros", name="beta")

    def _parameters(self, steps):
        names = ["kernel", "bias"] + (["gamma", "beta"] if self.normalization else [])
        # JAX cannot scan over Keras Variables directly: convert them to tensors first.
        return [ops.cast(ops.convert_to_tensor(getattr(self, n))[:steps], self.compute_dtype)
                for n in names]

    def call(self, inputs, steps=None):
        steps = self.num_blocks if steps is None else _check_steps(steps, self.num_blocks)

        def block(hidden, parameters):
            hidden = ops.matmul(hidden, parameters[0]) + parameters[1]
            if self.normalization == "layer":
                mean = ops.mean(hidden, axis=-1, keepdims=True)
                variance = ops.var(hidden, axis=-1, keepdims=True)
                hidden = (hidden - mean) * ops.rsqrt(variance + self.epsilon)
                hidden = hidden * parameters[2] + parameters[3]
            hidden = self.activation(hidden)
            return hidden, hidden

        _, outputs = ops.scan(block, inputs, self._parameters(steps))
        return ops.transpose(outputs, (1, 0, 2))

    def compute_output_spec(self, inputs, steps=None):
        steps = self.num_blocks if steps is None else steps
        return keras.KerasTensor((inputs.shape[0], steps, self.units), dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_blocks": self.num_blocks,
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "normalization": self.normalization,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "epsilon": self.epsilon,
        })
        return config


def _check_steps(steps, num_blocks):
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_blocks:
        raise ValueError(f"`steps` must be an integer in [1, {num_blocks}], received {steps!r}.")
    return steps


class _PerBlock(keras.initializers.Initializer):
    """Initialises a stacked (L, ...) weight one block slice at a time, as L separate layers would.

    Fan-in based initialisers (He, PyTorch's) must see one block's `(w, w)` shape, not `(L, w, w)`,
    and each block needs its own draw: a Keras initializer called twice returns the same values, so
    block i gets a copy of the initializer seeded with `base + i` (the base drawn from Python's
    `random`, which `keras.utils.set_random_seed` seeds).
    """

    def __init__(self, initializer):
        self.initializer = initializer

    def __call__(self, shape, dtype=None):
        config = self.initializer.get_config()
        if "seed" not in config:  # Constant initialisers (zeros, ones): one draw fits every block.
            return ops.stack([self.initializer(shape[1:], dtype=dtype)] * shape[0])
        base = config["seed"] if isinstance(config["seed"], int) else random.randint(0, 2**30)
        return ops.stack([
            type(self.initializer).from_config({**config, "seed": base + block})(shape[1:], dtype=dtype)
            for block in range(shape[0])
        ])
