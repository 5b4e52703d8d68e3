"""Pieces shared by every model family: argument checks, initialisers, norms, heads, the base class."""

import keras

from glonet_keras.layers import AGGREGATION_MODES, GlobalAggregation, TorchBiasUniform

INITIALIZERS = ("he", "torch")
NORMALIZATIONS = (None, "batch", "layer")


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, received {value!r}.")
    return value


def check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"Unknown `{name}` {value!r}. Allowed values: {list(allowed)}.")
    return value


def check_activation(activation):
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"Unknown `activation` {activation!r}: use a name from keras.activations "
            "(e.g. 'relu', 'leaky_relu', 'gelu')."
        ) from error
    return activation


def check_dropout(dropout):
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be a float in [0, 1), received {dropout!r}.")
    return float(dropout)


def check_common(*, activation, normalization, initializer, dropout, num_classes):
    check_activation(activation)
    check_choice("normalization", normalization, NORMALIZATIONS)
    check_choice("initializer", initializer, INITIALIZERS)
    check_dropout(dropout)
    check_positive_int("num_classes", num_classes)


def kernel_initializer(initializer):
    """He (good practice, keeps a deep ReLU chain's activations stable) or PyTorch's default."""
    if initializer == "he":
        return keras.initializers.HeNormal()
    # PyTorch's default (kaiming_uniform with a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def bias_initializer(initializer, fan_in):
    if initializer == "he":
        return "zeros"
    return TorchBiasUniform(fan_in)


def dense(x, units, *, initializer, name, dtype, use_bias=True):
    fan_in = x.shape[-1]
    return keras.layers.Dense(
        units,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer(initializer),
        bias_initializer=bias_initializer(initializer, fan_in),
        name=name,
        dtype=dtype,
    )(x)


def conv(x, filters, kernel_size, *, strides=1, initializer, name, dtype, use_bias=True):
    """A 'same'-padded convolution of the input's rank (1-D signals or 2-D images)."""
    spatial_rank = len(x.shape) - 2
    layer_class = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D}[spatial_rank]
    fan_in = kernel_size**spatial_rank * x.shape[-1]
    return layer_class(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=use_bias,
        kernel_initializer=kernel_initializer(initializer),
        bias_initializer=bias_initializer(initializer, fan_in),
        name=name,
        dtype=dtype,
    )(x)


def norm(x, kind, *, name, dtype):
    if kind is None:
        return x
    if kind == "batch":
        return keras.layers.BatchNormalization(name=name, dtype=dtype)(x)
    return keras.layers.LayerNormalization(epsilon=1e-6, name=name, dtype=dtype)(x)


def activation(x, name, *, act, dtype):
    return keras.layers.Activation(act, name=name, dtype=dtype)(x)


def global_pool(x, *, name, dtype):
    layer_class = {3: keras.layers.GlobalAveragePooling1D, 4: keras.layers.GlobalAveragePooling2D}
    return layer_class[len(x.shape)](name=name, dtype=dtype)(x)


def tap(x, index, *, dtype):
    """Names a block's (already linear, aggregation-shaped) tap `tap_{index}`."""
    return keras.layers.Identity(name=f"tap_{index}", dtype=dtype)(x)


def head(x, *, num_classes, dropout, initializer, dtype):
    """The linear head (after optional dropout) that every model in the library ends with."""
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="head_dropout", dtype=dtype)(x)
    return dense(x, num_classes, initializer=initializer, name="head", dtype=dtype)


def glonet_head(taps, *, aggregation, num_classes, dropout, initializer, dtype):
    """GlobalAggregation over the taps, then the linear head. Nothing nonlinear in between."""
    check_choice("aggregation", aggregation, AGGREGATION_MODES)
    z = GlobalAggregation(mode=aggregation, name="glonet_aggregation", dtype=dtype)(taps)
    return head(z, num_classes=num_classes, dropout=dropout, initializer=initializer, dtype=dtype)


def dtype_name(dtype):
    if dtype is None or isinstance(dtype, str):
        return dtype
    if isinstance(dtype, keras.DTypePolicy):
        return dtype.name
    return keras.backend.standardize_dtype(dtype)


class GloNetModelBase(keras.Model):
    """Base of every model the library builds (keras-hub pattern).

    Subclasses build a functional graph in `__init__` and call `_finish(...)`. `get_config()` returns
    exactly the constructor arguments, so `from_config(get_config())` rebuilds the same model.
    """

    def _finish(self, constructor_args, block_outputs):
        """Records the constructor arguments and the block outputs (a list, or a dict by name)."""
        self._constructor_args = dict(constructor_args)
        # keras.Model does not keep a functional model's `dtype` argument: record it here.
        self._constructor_args["dtype"] = dtype_name(self._constructor_args.get("dtype"))
        # Stable keys ("block_1", ...) so downstream code never slices `model.layers`.
        if not isinstance(block_outputs, dict):
            block_outputs = {f"block_{i}": x for i, x in enumerate(block_outputs, start=1)}
        self.block_outputs = dict(block_outputs)
        self.num_blocks = len(self.block_outputs)
        # Keras' default spec lets a wrong channel count through when the expected last axis is 1
        # (it allows squeezing that axis); an exact spec names both shapes at the model's boundary.
        (model_input,) = self.inputs
        self.input_spec = keras.InputSpec(
            shape=(None,) + tuple(model_input.shape[1:]), name=model_input.name
        )

    @staticmethod
    def _glonet_outputs(taps, args):
        """The GloNet head over `taps`, configured by a GloNet class's constructor arguments."""
        return glonet_head(
            taps, aggregation=args["aggregation"], num_classes=args["num_classes"],
            dropout=args["dropout"], initializer=args["initializer"], dtype=args["dtype"],
        )

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            **self._constructor_args,
        }

    @classmethod
    def from_preset(cls, preset, *, cache_dir=None, origin=None, **overrides):
        """Loads a pretrained model: a registered name, a preset directory or `.keras` file, or a URL.

        Called on a subclass (e.g. `GloNetCNN.from_preset`), the preset must hold that class.
        `**overrides` are constructor arguments (e.g. `num_classes=3` for a fresh head), exactly as
        in `glonet_keras.create_model(name, pretrained=True, **overrides)`.
        Example: `GloNetModelBase.from_preset("glonet_cnn_digits")` (see `glonet_keras.presets`).
        """
        from glonet_keras import presets  # Lazy: presets imports the model classes.

        expected = None if cls is GloNetModelBase else cls
        return presets.from_preset(preset, expected, cache_dir=cache_dir, origin=origin, **overrides)

    def save_to_preset(self, preset_dir):
        """Writes config.json, model.weights.h5 and metadata.json to `preset_dir` (from_preset reads it)."""
        from glonet_keras import presets

        return presets.save_preset(self, preset_dir)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        if isinstance(config.get("input_shape"), list):
            config["input_shape"] = tuple(config["input_shape"])
        return cls(**config)
