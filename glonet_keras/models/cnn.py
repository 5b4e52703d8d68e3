"""Convolutional models in ResNet layouts: GloNetCNN and its baselines ResNetCNN (v2) and PlainCNN.

Layouts (`layout=`):
- `"cifar"`: 3x3 stem conv, three stages of `width * (1, 2, 4)` channels (16/32/64 by default) with
  n basic blocks each; depth = 6n + 2 (20, 32, 44, 56, 110, ...).
- `"imagenet"`: 7x7 stride-2 stem conv and 3x3 stride-2 max-pool, four stages of
  `width * (1, 2, 4, 8)` channels (64/128/256/512); depth 10, 18 or 34 (basic blocks [1,1,1,1],
  [2,2,2,2], [3,4,6,3]).
Every stage after the first starts with a stride-2 block. `blocks_per_stage` overrides the block
counts of `depth`. A 2-tuple `input_shape` such as `(40, 1)` builds the same models from 1-D
convolutions (signals); spatial sizes may be `None`.

GloNet taps: a basic block is conv-act-conv-act (norm after each conv when enabled) with no skip.
Its tap is global average pooling followed by a learned linear projection (no bias) to the last
stage's width, shared by the blocks of a stage (the last stage needs none). Pooling and a 1x1
projection are linear and commute, so this equals summing spatially aligned feature maps, at a
fraction of the cost, and keeps the per-block decomposition of the logits exact.
"""

import keras

from glonet_keras.models import common

LAYOUTS = {
    # layout: (default width, stage width multipliers, {depth: blocks per stage})
    "cifar": (16, (1, 2, 4), None),
    "imagenet": (64, (1, 2, 4, 8), {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}),
}


def resolve_stages(layout, depth, blocks_per_stage, width):
    """Returns (blocks per stage, channels per stage) or raises a ValueError saying what is allowed."""
    common.check_choice("layout", layout, LAYOUTS)
    default_width, multipliers, depths = LAYOUTS[layout]
    width = default_width if width is None else common.check_positive_int("width", width)
    if blocks_per_stage is not None:
        if depth is not None:
            raise ValueError("Pass either `depth` or `blocks_per_stage`, not both.")
        blocks_per_stage = tuple(blocks_per_stage)
        if len(blocks_per_stage) != len(multipliers) or not all(
            isinstance(n, int) and n >= 1 for n in blocks_per_stage
        ):
            raise ValueError(
                f"`blocks_per_stage` of the {layout!r} layout must be {len(multipliers)} integers "
                f">= 1, received {blocks_per_stage!r}."
            )
    elif layout == "cifar":
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"The 'cifar' layout needs depth = 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, "
                f"...), received depth={depth!r}."
            )
        blocks_per_stage = ((depth - 2) // 6,) * 3
    else:
        if depth not in depths:
            raise ValueError(
                f"The {layout!r} layout supports depth {sorted(depths)} (or pass "
                f"`blocks_per_stage`), received depth={depth!r}."
            )
        blocks_per_stage = depths[depth]
    return blocks_per_stage, tuple(width * m for m in multipliers)


def _check_image_shape(input_shape):
    if (
        not isinstance(input_shape, (tuple, list))
        or len(input_shape) not in (2, 3)
        or input_shape[-1] is None
        or any(d is not None and int(d) < 1 for d in input_shape)
    ):
        raise ValueError(
            "`input_shape` of a CNN must be (height, width, channels) or (length, channels) with a "
            f"known channel count; spatial sizes may be None. Received {input_shape!r}."
        )
    return tuple(input_shape)


def _stem(x, layout, filters, *, activation, normalization, initializer, dtype, activate):
    if layout == "cifar":
        x = common.conv(x, filters, 3, initializer=initializer, name="stem_conv", dtype=dtype)
    else:
        x = common.conv(x, filters, 7, strides=2, initializer=initializer, name="stem_conv", dtype=dtype)
    if activate:
        x = common.norm(x, normalization, name="stem_norm", dtype=dtype)
        x = common.activation(x, "stem_act", act=activation, dtype=dtype)
    if layout == "imagenet":
        pool_class = {3: keras.layers.MaxPooling1D, 4: keras.layers.MaxPooling2D}[len(x.shape)]
        x = pool_class(3, strides=2, padding="same", name="stem_pool", dtype=dtype)(x)
    return x


def _chain(x, blocks_per_stage, stage_widths, *, activation, normalization, initializer, dtype):
    """The skip-free chain shared by GloNetCNN and PlainCNN. Returns [(stage, block output)]."""
    outputs = []
    index = 0
    for stage, (num_blocks, filters) in enumerate(zip(blocks_per_stage, stage_widths), start=1):
        for block in range(num_blocks):
            index += 1
            strides = 2 if stage > 1 and block == 0 else 1
            for part, stride in ((1, strides), (2, 1)):
                x = common.conv(
                    x, filters, 3, strides=stride, initializer=initializer,
                    name=f"block_{index}_conv_{part}", dtype=dtype,
                )
                x = common.norm(x, normalization, name=f"block_{index}_norm_{part}", dtype=dtype)
                x = common.activation(x, f"block_{index}_act_{part}", act=activation, dtype=dtype)
            outputs.append((stage, x))
    return outputs


class _CNNBase(common.GloNetModelBase):
    input_name = "images"

    def _setup(self, args):
        """Validates the constructor arguments; returns (input, blocks per stage, stage widths)."""
        common.check_common(
            activation=args["activation"], normalization=args["normalization"],
            initializer=args["initializer"], dropout=args["dropout"], num_classes=args["num_classes"],
        )
        blocks_per_stage, stage_widths = resolve_stages(
            args["layout"], args["depth"], args["blocks_per_stage"], args["width"]
        )
        inputs = keras.Input(shape=_check_image_shape(args["input_shape"]), name=self.input_name)
        return inputs, blocks_per_stage, stage_widths

    def _skip_free_chain(self, args):
        """Input, stem output and [(stage, block output)] of the chain GloNetCNN and PlainCNN share."""
        inputs, blocks_per_stage, stage_widths = self._setup(args)
        options = dict(activation=args["activation"], normalization=args["normalization"],
                       initializer=args["initializer"], dtype=args["dtype"])
        stem = _stem(inputs, args["layout"], stage_widths[0], activate=True, **options)
        return inputs, stem, _chain(stem, blocks_per_stage, stage_widths, **options), stage_widths

    def _constructor_config(self, local_args, extra=()):
        names = ["depth", "layout", "width", "blocks_per_stage", "num_classes", "input_shape",
                 "activation", "normalization", "initializer", *extra, "dropout", "dtype"]
        config = {name: local_args[name] for name in names}
        config["input_shape"] = tuple(config["input_shape"])
        if config["blocks_per_stage"] is not None:
            config["blocks_per_stage"] = tuple(config["blocks_per_stage"])
        return config


@keras.saving.register_keras_serializable(package="glonet_keras")
class GloNetCNN(_CNNBase):
    """A convolutional GloNet in a ResNet layout, BN-free by default (see the module docstring).

    Args:
        depth: 6n + 2 for `layout="cifar"` (default 20); 10, 18 or 34 for `"imagenet"`.
        layout: `"cifar"` or `"imagenet"`.
        width: channels of the first stage (default 16 for cifar, 64 for imagenet); stages double it.
        blocks_per_stage: explicit blocks per stage instead of `depth`.
        num_classes: outputs of the linear head (logits); 1 for regression.
        input_shape: `(H, W, C)` (spatial sizes may be None) or `(length, channels)` for 1-D.
        activation, normalization, initializer, aggregation, include_stem, dropout, dtype: as in
            `GloNetMLP`.

    Example:
    >>> model = GloNetCNN(depth=20, input_shape=(32, 32, 3), num_classes=10)   # ~0.27 M params
    >>> model.num_blocks                                                        # 9
    """

    def __init__(
        self,
        depth=20,
        layout="cifar",
        width=None,
        blocks_per_stage=None,
        num_classes=10,
        input_shape=(32, 32, 3),
        activation="relu",
        normalization=None,
        initializer="he",
        aggregation="sum",
        include_stem=False,
        dropout=0.0,
        dtype=None,
        **kwargs,
    ):
        args = dict(locals())
        inputs, stem, blocks, stage_widths = self._skip_free_chain(args)
        aggregation_width = stage_widths[-1]
        projections = {
            stage: keras.layers.Dense(
                aggregation_width, use_bias=False, kernel_initializer="glorot_uniform",
                name=f"stage_{stage}_projection", dtype=dtype,
            )
            for stage, filters in enumerate(stage_widths, start=1)
            if filters != aggregation_width
        }

        def make_tap(x, stage, index):
            x = common.global_pool(x, name=f"tap_{index}_pool", dtype=dtype)
            if stage in projections:
                x = projections[stage](x)
            return common.tap(x, index, dtype=dtype)

        taps = [make_tap(x, stage, i) for i, (stage, x) in enumerate(blocks, start=1)]
        if include_stem:
            taps.insert(0, make_tap(stem, 1, 0))
        outputs = self._glonet_outputs(taps, args)
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)
        self._finish(
            self._constructor_config(args, extra=("aggregation", "include_stem")),
            [x for _, x in blocks],
        )


@keras.saving.register_keras_serializable(package="glonet_keras")
class PlainCNN(_CNNBase):
    """GloNetCNN's skip-free chain with global pooling and the head on the last block only.

    Args: as `GloNetCNN`, without `aggregation` and `include_stem`.
    """

    def __init__(
        self,
        depth=20,
        layout="cifar",
        width=None,
        blocks_per_stage=None,
        num_classes=10,
        input_shape=(32, 32, 3),
        activation="relu",
        normalization=None,
        initializer="he",
        dropout=0.0,
        dtype=None,
        **kwargs,
    ):
        args = dict(locals())
        inputs, _, blocks, _ = self._skip_free_chain(args)
        x = common.global_pool(blocks[-1][1], name="pool", dtype=dtype)
        outputs = common.head(
            x, num_classes=num_classes, dropout=dropout, initializer=initializer, dtype=dtype
        )
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)
        self._finish(self._constructor_config(args), [x for _, x in blocks])


@keras.saving.register_keras_serializable(package="glonet_keras")
class ResNetCNN(_CNNBase):
    """Pre-activation ResNet (v2) with basic blocks, in the same layouts as GloNetCNN.

    Block: norm-act, then conv-norm-act-conv, plus the identity (or a strided 1x1 projection of the
    pre-activated input where the shape changes). After the last block: norm-act, global pooling,
    linear head. Batch norm by default; `normalization=None` gives the BN-free ResNet.

    Args: as `PlainCNN`; `normalization` defaults to `"batch"`.
    """

    def __init__(
        self,
        depth=20,
        layout="cifar",
        width=None,
        blocks_per_stage=None,
        num_classes=10,
        input_shape=(32, 32, 3),
        activation="relu",
        normalization="batch",
        initializer="he",
        dropout=0.0,
        dtype=None,
        **kwargs,
    ):
        args = dict(locals())
        inputs, blocks_per_stage, stage_widths = self._setup(args)
        x = _stem(
            inputs, layout, stage_widths[0], activation=activation, normalization=normalization,
            initializer=initializer, dtype=dtype, activate=False,
        )
        blocks = {}
        index = 0
        for stage, (num_blocks, filters) in enumerate(zip(blocks_per_stage, stage_widths), start=1):
            for block in range(num_blocks):
                index += 1
                strides = 2 if stage > 1 and block == 0 else 1
                name = f"block_{index}"
                preact = common.norm(x, normalization, name=f"{name}_norm_1", dtype=dtype)
                preact = common.activation(preact, f"{name}_act_1", act=activation, dtype=dtype)
                if strides != 1 or x.shape[-1] != filters:
                    shortcut = common.conv(
                        preact, filters, 1, strides=strides, initializer=initializer,
                        name=f"{name}_shortcut", dtype=dtype,
                    )
                else:
                    shortcut = x
                y = common.conv(
                    preact, filters, 3, strides=strides, initializer=initializer,
                    name=f"{name}_conv_1", dtype=dtype,
                )
                y = common.norm(y, normalization, name=f"{name}_norm_2", dtype=dtype)
                y = common.activation(y, f"{name}_act_2", act=activation, dtype=dtype)
                y = common.conv(
                    y, filters, 3, initializer=initializer, name=f"{name}_conv_2", dtype=dtype
                )
                x = keras.layers.Add(name=f"{name}_add", dtype=dtype)([shortcut, y])
                blocks[name] = x
        x = common.norm(x, normalization, name="post_norm", dtype=dtype)
        x = common.activation(x, "post_act", act=activation, dtype=dtype)
        x = common.global_pool(x, name="pool", dtype=dtype)
        outputs = common.head(
            x, num_classes=num_classes, dropout=dropout, initializer=initializer, dtype=dtype
        )
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)
        self._finish(self._constructor_config(args), blocks)
