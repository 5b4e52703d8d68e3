"""Fully connected models: GloNetMLP and its baselines ResNetMLP (pre-activation, v2) and PlainMLP.

All three share one layout: a linear `stem` (Flatten + Dense to `width`), then `num_blocks` blocks
of constant width, then a linear `head`. They differ only in how blocks are connected and what the
head reads:

- GloNetMLP: block i = act(norm(Dense(x_{i-1}))); the head reads the sum of every block's output.
- ResNetMLP: block i = x_{i-1} + Dense(act(norm(x_{i-1}))) (ResNet-v2, BN by default); the head
  reads act(norm(x_L)).
- PlainMLP: the GloNet chain with the head on the last block only.

`GloNetMLP(scan=True)` holds its blocks as one `DenseStack` (stacked weights run by
`keras.ops.scan`), so build and compile time do not grow with depth; `to_scanned` / `to_unrolled`
convert a model between the two forms with the same weights and the same outputs.
"""

import math

import keras

from glonet_keras import skeleton
from glonet_keras.layers import DenseStack
from glonet_keras.models import common
from glonet_keras.presets import registry


class _MLPBase(common.GloNetModelBase):
    input_name = "features"
    size_arguments = ("num_blocks", "width", "num_classes", "input_shape", "scan")

    @classmethod
    def estimate_size(cls, config):
        c = cls._config_with_defaults(config)
        blocks, width, classes = (common.size_int(c.get(k)) for k in
                                  ("num_blocks", "width", "num_classes"))
        features = math.prod(common.size_shape(c.get("input_shape")))
        parameters = (features * width + width + blocks * (width * width + 3 * width)
                      + width * classes + classes)
        return {"parameters": parameters, "blocks": blocks, "unrolled": c.get("scan") is not True}

    def _setup(self, args):
        """Validates the constructor arguments (in place); returns the input and the stem's output."""
        args["num_blocks"] = common.check_positive_int("num_blocks", args["num_blocks"])
        args["width"] = common.check_positive_int("width", args["width"])
        common.check_common(args)
        args["input_shape"] = common.check_shape(args["input_shape"], "an MLP", allow_none=False)
        inputs = keras.Input(shape=args["input_shape"], name=self.input_name)
        x = inputs
        if len(args["input_shape"]) > 1:
            x = keras.layers.Flatten(name="stem_flatten", dtype=args["dtype"])(x)
        x = common.dense(
            x, args["width"], initializer=args["initializer"], name="stem", dtype=args["dtype"]
        )
        return inputs, x

    @staticmethod
    def _plain_blocks(x, args):
        """The chain x_i = act(norm(Dense(x_{i-1}))), returning each block's output."""
        outputs = []
        for i in range(1, args["num_blocks"] + 1):
            x = common.dense(
                x, args["width"], initializer=args["initializer"], name=f"block_{i}_dense",
                dtype=args["dtype"],
            )
            x = common.norm(x, args["normalization"], name=f"block_{i}_norm", dtype=args["dtype"])
            x = common.activation(x, f"block_{i}_act", act=args["activation"], dtype=args["dtype"])
            outputs.append(x)
        return outputs



@keras.saving.register_keras_serializable(package="glonet_keras")
class GloNetMLP(_MLPBase):
    """A fully connected GloNet: a plain chain of dense blocks whose outputs are summed into the head.

    Args:
        num_blocks: number of dense blocks L (the depth; the model has L + 2 Dense layers).
        width: width of the stem and every block.
        num_classes: outputs of the linear head (logits); 1 for regression.
        input_shape: shape of one example, e.g. `(64,)` or `(8, 8, 1)` (flattened by the stem).
        activation: any `keras.activations` name. The paper uses `"leaky_relu"` (slope 0.2).
        normalization: `None` (default, the paper's BN-free GloNet), `"batch"` or `"layer"`.
        initializer: `"he"` (default) or `"torch"` (PyTorch's default init, as the paper's code).
        aggregation: `"sum"` (default, the paper) or `"mean"`.
        include_stem: also feed the stem's output into the aggregation (as `tap_0`).
        dropout: dropout rate before the head.
        head_initializer: `None` (default: the head follows `initializer`) or `"zeros"` (kernel
            and bias zero, so training starts from uniform logits; the per-block split stays exact).
        scan: hold the blocks as one scanned `DenseStack` (layer `blocks`): the graph, build and
            compile time stay flat in depth (1,000 blocks build in about a second). Its taps are one
            stacked tensor (`tap_stack`, `(batch, L, width)`) that analysis and export read like L
            taps. Needs `normalization` None or `"layer"` and `include_stem=False`. On TensorFlow it
            trains without XLA (TF cannot compile the scan's gradient).
        dtype: dtype or dtype policy name (e.g. `"mixed_float16"`).
        name: the model's name (default `"glonet_mlp"`).

    Example:
    >>> model = GloNetMLP(num_blocks=30, width=32, num_classes=10, input_shape=(64,))
    >>> logits = model.predict(np.zeros((2, 64)))          # (2, 10)
    >>> model.block_outputs["block_30"]                     # the last block's KerasTensor
    """

    default_name = "glonet_mlp"

    def __init__(
        self,
        num_blocks=10,
        width=32,
        num_classes=10,
        input_shape=(784,),
        activation="relu",
        normalization=None,
        initializer="he",
        aggregation="sum",
        include_stem=False,
        dropout=0.0,
        head_initializer=None,
        scan=False,
        dtype=None,
        **kwargs,
    ):
        args, model_kwargs = self._arguments(locals())
        inputs, stem = self._setup(args)
        if scan is True:
            blocks = self._scanned_blocks(stem, args)
            outputs = self._glonet_outputs(blocks, args, stacked=True)
        elif scan is False:
            blocks = self._plain_blocks(stem, args)
            outputs = self._glonet_outputs(blocks, args, stem=stem)
        else:
            raise ValueError(f"`scan` must be True or False, received {scan!r}.")
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **model_kwargs)
        if scan:
            self._finish(args, {skeleton.BLOCK_STACK: blocks}, num_blocks=args["num_blocks"])
        else:
            self._finish(args, blocks)

    @staticmethod
    def _scanned_blocks(stem, args):
        if args["normalization"] not in (None, "layer"):
            raise ValueError(
                f"scan=True supports normalization None or 'layer', not {args['normalization']!r} "
                "(batch norm's moving statistics cannot live in a scan); use scan=False."
            )
        if args["include_stem"]:
            raise ValueError("scan=True does not aggregate the stem: use include_stem=False.")
        return DenseStack(
            args["num_blocks"], args["width"], activation=args["activation"],
            normalization=args["normalization"],
            kernel_initializer=common.kernel_initializer(args["initializer"]),
            bias_initializer=common.bias_initializer(args["initializer"], args["width"]),
            name=skeleton.BLOCK_STACK, dtype=args["dtype"],
        )(stem)


@keras.saving.register_keras_serializable(package="glonet_keras")
class PlainMLP(_MLPBase):
    """The GloNet MLP's chain with the head on the last block only (the paper's plain baseline).

    Args: as `GloNetMLP`, without `aggregation` and `include_stem`.
    """

    default_name = "plain_mlp"

    def __init__(
        self,
        num_blocks=10,
        width=32,
        num_classes=10,
        input_shape=(784,),
        activation="relu",
        normalization=None,
        initializer="he",
        dropout=0.0,
        dtype=None,
        **kwargs,
    ):
        args, model_kwargs = self._arguments(locals())
        inputs, stem = self._setup(args)
        blocks = self._plain_blocks(stem, args)
        outputs = common.head(
            blocks[-1], num_classes=args["num_classes"], dropout=args["dropout"],
            initializer=initializer, dtype=dtype,
        )
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **model_kwargs)
        self._finish(args, blocks)


@keras.saving.register_keras_serializable(package="glonet_keras")
class ResNetMLP(_MLPBase):
    """Pre-activation (v2) residual MLP: x_i = x_{i-1} + Dense(act(norm(x_{i-1}))).

    The baseline the paper compares GloNet's speed and depth resilience against. Batch norm by
    default (`normalization=None` gives the BN-free ResNet of the paper's depth sweep). After the
    last block: act(norm(x_L)), then the linear head.

    Args: as `PlainMLP`; `normalization` defaults to `"batch"`.
    """

    default_name = "resnet_mlp"

    def __init__(
        self,
        num_blocks=10,
        width=32,
        num_classes=10,
        input_shape=(784,),
        activation="relu",
        normalization="batch",
        initializer="he",
        dropout=0.0,
        dtype=None,
        **kwargs,
    ):
        args, model_kwargs = self._arguments(locals())
        inputs, x = self._setup(args)
        blocks = {}
        for i in range(1, args["num_blocks"] + 1):
            y = common.norm(x, normalization, name=f"block_{i}_norm", dtype=dtype)
            y = common.activation(y, f"block_{i}_act", act=activation, dtype=dtype)
            y = common.dense(y, args["width"], initializer=initializer, name=f"block_{i}_dense",
                             dtype=dtype)
            x = keras.layers.Add(name=f"block_{i}_add", dtype=dtype)([x, y])
            blocks[f"block_{i}"] = x
        x = common.norm(x, normalization, name="post_norm", dtype=dtype)
        x = common.activation(x, "post_act", act=activation, dtype=dtype)
        outputs = common.head(
            x, num_classes=args["num_classes"], dropout=args["dropout"], initializer=initializer,
            dtype=dtype,
        )
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **model_kwargs)
        self._finish(args, blocks)


def to_scanned(model):
    """The same GloNetMLP (same weights, same outputs) with its blocks as one scanned DenseStack."""
    return _convert(model, scan=True)


def to_unrolled(model):
    """The same GloNetMLP (same weights, same outputs) with one Dense layer per block."""
    return _convert(model, scan=False)


def _convert(model, scan):
    if not isinstance(model, GloNetMLP):
        raise ValueError(
            f"Only a GloNetMLP converts between scanned and unrolled, not {type(model).__name__}."
        )
    config = model.get_config()
    if config["scan"] == scan:
        return model
    target = GloNetMLP.from_config({**config, "scan": scan})
    unrolled, stacked = (model, target) if scan else (target, model)
    for name in ("stem", skeleton.HEAD):
        target.get_layer(name).set_weights(model.get_layer(name).get_weights())
    stack = stacked.get_layer(skeleton.BLOCK_STACK)
    # Stacked variable -> (per-block layer suffix, index of the weight in that layer).
    parts = {"kernel": ("dense", 0), "bias": ("dense", 1)}
    if config["normalization"] == "layer":
        parts.update(gamma=("norm", 0), beta=("norm", 1))
    blocks = range(1, config["num_blocks"] + 1)
    for variable_name, (suffix, index) in parts.items():
        variable = getattr(stack, variable_name)
        layers = [unrolled.get_layer(f"block_{i}_{suffix}") for i in blocks]
        if scan:
            variable.assign(keras.ops.stack([layer.get_weights()[index] for layer in layers]))
        else:
            values = keras.ops.convert_to_numpy(variable)
            for layer, value in zip(layers, values):
                weights = layer.get_weights()
                weights[index] = value
                layer.set_weights(weights)
    return target


# The registry (`glonet_keras.presets.registry`): this family's model names, variants and presets.
registry.register_class("glonet_mlp", GloNetMLP)
registry.register_class("resnet_mlp", ResNetMLP)
registry.register_class("plain_mlp", PlainMLP)
registry.register_model("glonet_mlp_30x32", "GloNetMLP",
                        {"num_blocks": 30, "width": 32, "input_shape": (784,)},
                        description="GloNet MLP, 30 dense blocks of width 32, for 28x28 inputs.")
registry.register_pretrained(GloNetMLP, ResNetMLP, PlainMLP)
