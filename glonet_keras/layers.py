"""Custom layers of glonet-keras: the GloNet layer and the few pieces the ViT needs.

Every layer here uses `keras.ops` only, so it runs on the TensorFlow, JAX and PyTorch backends.
"""

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

    def compute_output_shape(self, input_shape):
        shape = _merged_shape(input_shape)
        if self.cumulative:
            return (shape[0], len(input_shape)) + shape[1:]
        return shape

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "cumulative": self.cumulative})
        return config


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
