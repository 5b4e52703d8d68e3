"""Convolutional models: GloNetCNN and its baselines ResNetCNN (v2) and PlainCNN, in three layouts.

Layouts (`layout=`):
- `"cifar"`: 3x3 stem conv, three stages of `width * (1, 2, 4)` channels (16/32/64 by default) with
  n basic blocks each; depth = 6n + 2 (20, 32, 44, 56, 110, ...).
- `"imagenet"`: 7x7 stride-2 stem conv and 3x3 stride-2 max-pool, four stages of
  `width * (1, 2, 4, 8)` channels (64/128/256/512); depth 10, 18 (default) or 34 (basic blocks
  [1,1,1,1], [2,2,2,2], [3,4,6,3]).
- `"isotropic"`: a patch stem (a `patch_size` x `patch_size` convolution with that stride, 2 by
  default), then n basic blocks at ONE width (64 by default) and resolution; depth = 2n + 2. Every
  block's output lives in the same space, so a GloNet's taps need no projection.
In the cifar and imagenet layouts every stage after the first starts with a stride-2 block.
`blocks_per_stage` (alone, without `depth`) sets the block counts directly. A 2-tuple `input_shape`
such as `(40, 1)` builds the same models from 1-D convolutions (signals); spatial sizes may be None.

GloNet taps: a basic block is conv-act-conv-act (norm after each conv when enabled) with no skip.
Its tap is global average pooling followed, where the stage is narrower than the last one, by a
learned linear projection (no bias) to the last stage's width, shared by the blocks of a stage.
Pooling and a 1x1 projection are linear and commute, so this equals summing spatially aligned
feature maps, at a fraction of the cost, and keeps the per-block decomposition of the logits exact.
"""

import numbers

import keras

from glonet_keras.models import common
from glonet_keras.presets import registry

LAYOUTS = {
    # layout: (default width, stage width multipliers, {depth: blocks per stage} or None, default depth)
    "cifar": (16, (1, 2, 4), None, 20),
    "imagenet": (64, (1, 2, 4, 8), {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}, 18),
    "isotropic": (64, (1,), None, 20),
}
DEFAULT_PATCH_SIZE = 2  # of the isotropic layout's stem


def resolve_stages(layout, depth, blocks_per_stage, width):
    """Returns (blocks per stage, channels per stage) or raises a ValueError saying what is allowed.

    `depth` counts weight layers as ResNet does (two convolutions per block, plus stem and head).
    With neither `depth` nor `blocks_per_stage`, the layout's default depth is used.
    """
    common.check_choice("layout", layout, LAYOUTS)
    default_width, multipliers, depths, default_depth = LAYOUTS[layout]
    width = default_width if width is None else common.check_positive_int("width", width)
    widths = tuple(width * m for m in multipliers)
    if blocks_per_stage is not None:
        if depth is not None:
            raise ValueError(
                f"Pass either `depth` or `blocks_per_stage`, not both (depth={depth!r}, "
                f"blocks_per_stage={blocks_per_stage!r})."
            )
        if not isinstance(blocks_per_stage, (tuple, list)) or len(blocks_per_stage) != len(widths):
            raise ValueError(
                f"`blocks_per_stage` of the {layout!r} layout must be {len(widths)} integers >= 1, "
                f"received {blocks_per_stage!r}."
            )
        counts = tuple(common.check_positive_int("blocks_per_stage", n) for n in blocks_per_stage)
        return counts, widths
    depth = default_depth if depth is None else depth
    if depths is not None:
        if isinstance(depth, bool) or depth not in depths:
            raise ValueError(
                f"The {layout!r} layout supports depth {sorted(depths)}, or any `blocks_per_stage` "
                f"of {len(widths)} integers (without depth); received depth={depth!r}."
            )
        return depths[depth], widths
    per_n = 2 * len(widths)  # each n adds one two-convolution block to every stage
    if (isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < per_n + 2
            or (depth - 2) % per_n):
        raise ValueError(
            f"The {layout!r} layout needs depth = {per_n}n + 2 with n >= 1 (e.g. "
            f"{', '.join(str(per_n * n + 2) for n in (1, 2, 3, 9))}), or `blocks_per_stage` "
            f"(without depth); received depth={depth!r}."
        )
    return ((int(depth) - 2) // per_n,) * len(widths), widths


def _stem(x, args, filters, *, activate):
    options = dict(initializer=args["initializer"], name="stem_conv", dtype=args["dtype"])
    layout = args["layout"]
    if layout == "cifar":
        x = common.conv(x, filters, 3, **options)
    elif layout == "isotropic":
        patch = args["patch_size"]
        x = common.conv(x, filters, patch, strides=patch, **options)
    else:
        x = common.conv(x, filters, 7, strides=2, **options)
    if activate:
        x = common.norm(x, args["normalization"], name="stem_norm", dtype=args["dtype"])
        x = common.activation(x, "stem_act", act=args["activation"], dtype=args["dtype"])
    if layout == "imagenet":
        pool_class = {3: keras.layers.MaxPooling1D, 4: keras.layers.MaxPooling2D}[len(x.shape)]
        x = pool_class(3, strides=2, padding="same", name="stem_pool", dtype=args["dtype"])(x)
    return x


def _block_strides(blocks_per_stage, stage_widths):
    """(index, stage width, stride) of every block: stride 2 where a later stage begins."""
    index = 0
    for stage, (num_blocks, filters) in enumerate(zip(blocks_per_stage, stage_widths), start=1):
        for block in range(num_blocks):
            index += 1
            yield index, filters, 2 if stage > 1 and block == 0 else 1


class _CNNBase(common.GloNetModelBase):
    input_name = "images"
    size_arguments = ("depth", "blocks_per_stage", "width", "layout", "patch_size", "num_classes",
                      "input_shape")

    @classmethod
    def estimate_size(cls, config):
        c = cls._config_with_defaults(config)
        layout = c.get("layout") if isinstance(c.get("layout"), str) else "cifar"
        default_width, multipliers, depths, default_depth = LAYOUTS.get(layout, LAYOUTS["cifar"])
        width = default_width if c.get("width") is None else common.size_int(c.get("width"))
        widths = [width * m for m in multipliers]
        depth = default_depth if c.get("depth") is None else c.get("depth")
        if isinstance(c.get("blocks_per_stage"), (list, tuple)):
            counts = [common.size_int(n) for n in c["blocks_per_stage"]]
        elif depths is not None:
            counts = depths.get(depth, depths[default_depth]) if isinstance(depth, int) else (1,)
        else:
            counts = [max(1, (common.size_int(depth) - 2) // (2 * len(widths)))] * len(widths)
        shape = common.size_shape(c.get("input_shape"))
        rank = min(max(len(shape) - 1, 1), 2)
        kernel = {"cifar": 3, "imagenet": 7}.get(
            layout, common.size_int(c.get("patch_size") or DEFAULT_PATCH_SIZE))
        classes = common.size_int(c.get("num_classes"))
        parameters = kernel**rank * shape[-1] * widths[0] + widths[-1] * (classes + 1)
        previous = widths[0]
        for count, filters in zip(counts, widths):
            # Two 3x3 convolutions per block, the stage's tap projection, norms and biases.
            parameters += count * (3**rank * (previous + filters) * filters + 6 * filters)
            parameters += filters * widths[-1] + previous * filters
            previous = filters
        return {"parameters": parameters, "blocks": sum(counts), "unrolled": True}

    def _setup(self, args):
        """Validates the arguments (in place); returns (input, blocks per stage, stage widths)."""
        common.check_common(args)
        blocks_per_stage, stage_widths = resolve_stages(
            args["layout"], args["depth"], args["blocks_per_stage"], args["width"]
        )
        if args["blocks_per_stage"] is not None:
            args["blocks_per_stage"] = blocks_per_stage
        if args["width"] is not None:
            args["width"] = stage_widths[0]
        if args["depth"] is not None:
            args["depth"] = int(args["depth"])
        if args["layout"] == "isotropic":
            patch = DEFAULT_PATCH_SIZE if args["patch_size"] is None else args["patch_size"]
            args["patch_size"] = common.check_positive_int("patch_size", patch)
        elif args["patch_size"] is not None:
            raise ValueError(
                f"`patch_size` applies to the 'isotropic' layout only, not {args['layout']!r}."
            )
        args["input_shape"] = common.check_shape(
            args["input_shape"], "a CNN ((height, width, channels) or (length, channels))",
            allow_none=True, ranks=(2, 3),
        )
        if args["input_shape"][-1] is None:
            raise ValueError(
                f"`input_shape` of a CNN needs a known channel count, received {args['input_shape']}."
            )
        inputs = keras.Input(shape=args["input_shape"], name=self.input_name)
        return inputs, blocks_per_stage, stage_widths

    def _skip_free_chain(self, args):
        """Input, stem output and block outputs of the chain GloNetCNN and PlainCNN share."""
        inputs, blocks_per_stage, stage_widths = self._setup(args)
        x = stem = _stem(inputs, args, stage_widths[0], activate=True)
        blocks = []
        for index, filters, strides in _block_strides(blocks_per_stage, stage_widths):
            for part, stride in ((1, strides), (2, 1)):
                x = common.conv(
                    x, filters, 3, strides=stride, initializer=args["initializer"],
                    name=f"block_{index}_conv_{part}", dtype=args["dtype"],
                )
                x = common.norm(x, args["normalization"], name=f"block_{index}_norm_{part}",
                                dtype=args["dtype"])
                x = common.activation(x, f"block_{index}_act_{part}", act=args["activation"],
                                      dtype=args["dtype"])
            blocks.append(x)
        return inputs, stem, blocks, stage_widths


@keras.saving.register_keras_serializable(package="glonet_keras")
class GloNetCNN(_CNNBase):
    """A convolutional GloNet, BN-free by default (see the module docstring for the layouts).

    Args:
        depth: 6n + 2 for `layout="cifar"` (default 20); 10, 18 (default) or 34 for "imagenet";
            2n + 2 for "isotropic" (default 20: 9 blocks). Leave it None with `blocks_per_stage`.
        layout: `"cifar"`, `"imagenet"` or `"isotropic"`.
        width: channels of the first stage (default 16 for cifar, 64 for imagenet and isotropic);
            later stages double it.
        blocks_per_stage: explicit blocks per stage, instead of `depth`.
        patch_size: side of the isotropic layout's patch stem (default 2); only for "isotropic".
        num_classes: outputs of the linear head (logits); 1 for regression.
        input_shape: `(H, W, C)` (spatial sizes may be None) or `(length, channels)` for 1-D.
        activation, normalization, initializer, aggregation, include_stem, dropout,
            head_initializer, dtype: as in `GloNetMLP`.
        name: the model's name (default `"glonet_cnn"`).

    Example:
    >>> model = GloNetCNN(depth=20, input_shape=(32, 32, 3), num_classes=10)   # ~0.27 M params
    >>> model.num_blocks                                                        # 9
    >>> GloNetCNN(layout="isotropic", blocks_per_stage=(16,), input_shape=(28, 28, 1)).num_blocks
    16
    """

    default_name = "glonet_cnn"

    def __init__(
        self,
        depth=None,
        layout="cifar",
        width=None,
        blocks_per_stage=None,
        patch_size=None,
        num_classes=10,
        input_shape=(32, 32, 3),
        activation="relu",
        normalization=None,
        initializer="he",
        aggregation="sum",
        include_stem=False,
        dropout=0.0,
        head_initializer=None,
        dtype=None,
        **kwargs,
    ):
        args, model_kwargs = self._arguments(locals())
        inputs, stem, blocks, stage_widths = self._skip_free_chain(args)
        outputs = self._glonet_outputs(blocks, args, stem=stem, width=stage_widths[-1])
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **model_kwargs)
        self._finish(args, blocks)


@keras.saving.register_keras_serializable(package="glonet_keras")
class PlainCNN(_CNNBase):
    """GloNetCNN's skip-free chain with global pooling and the head on the last block only.

    Args: as `GloNetCNN`, without `aggregation` and `include_stem`; default name `"plain_cnn"`.
    """

    default_name = "plain_cnn"

    def __init__(
        self,
        depth=None,
        layout="cifar",
        width=None,
        blocks_per_stage=None,
        patch_size=None,
        num_classes=10,
        input_shape=(32, 32, 3),
        activation="relu",
        normalization=None,
        initializer="he",
        dropout=0.0,
        dtype=None,
        **kwargs,
    ):
        args, model_kwargs = self._arguments(locals())
        inputs, _, blocks, _ = self._skip_free_chain(args)
        x = common.global_pool(blocks[-1], name="pool", dtype=dtype)
        outputs = common.head(
            x, num_classes=args["num_classes"], dropout=args["dropout"], initializer=initializer,
            dtype=dtype,
        )
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **model_kwargs)
        self._finish(args, blocks)


@keras.saving.register_keras_serializable(package="glonet_keras")
class ResNetCNN(_CNNBase):
    """Pre-activation ResNet (v2) with basic blocks, in the same layouts as GloNetCNN.

    Block: norm-act, then conv-norm-act-conv, plus the identity (or a strided 1x1 projection of the
    pre-activated input where the shape changes). After the last block: norm-act, global pooling,
    linear head. Batch norm by default; `normalization=None` gives the BN-free ResNet.

    Args: as `PlainCNN`; `normalization` defaults to `"batch"`; default name `"resnet_cnn"`.
    """

    default_name = "resnet_cnn"

    def __init__(
        self,
        depth=None,
        layout="cifar",
        width=None,
        blocks_per_stage=None,
        patch_size=None,
        num_classes=10,
        input_shape=(32, 32, 3),
        activation="relu",
        normalization="batch",
        initializer="he",
        dropout=0.0,
        dtype=None,
        **kwargs,
    ):
        args, model_kwargs = self._arguments(locals())
        inputs, blocks_per_stage, stage_widths = self._setup(args)
        x = _stem(inputs, args, stage_widths[0], activate=False)
        blocks = {}
        for index, filters, strides in _block_strides(blocks_per_stage, stage_widths):
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
            y = common.conv(y, filters, 3, initializer=initializer, name=f"{name}_conv_2", dtype=dtype)
            x = keras.layers.Add(name=f"{name}_add", dtype=dtype)([shortcut, y])
            blocks[name] = x
        x = common.norm(x, normalization, name="post_norm", dtype=dtype)
        x = common.activation(x, "post_act", act=activation, dtype=dtype)
        x = common.global_pool(x, name="pool", dtype=dtype)
        outputs = common.head(
            x, num_classes=args["num_classes"], dropout=args["dropout"], initializer=initializer,
            dtype=dtype,
        )
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **model_kwargs)
        self._finish(args, blocks)


# The registry (`glonet_keras.presets.registry`): this family's model names, variants and presets.
registry.register_class("glonet_cnn", GloNetCNN)
registry.register_class("resnet_cnn", ResNetCNN)
registry.register_class("plain_cnn", PlainCNN)
_CIFAR = (32, 32, 3)
for _name, _class_name, _config, _description in (
    ("glonet_cnn20_cifar", "GloNetCNN", {"depth": 20, "input_shape": _CIFAR},
     "Convolutional GloNet, CIFAR layout, depth 20."),
    ("glonet_cnn56_cifar", "GloNetCNN", {"depth": 56, "input_shape": _CIFAR},
     "Convolutional GloNet, CIFAR layout, depth 56."),
    ("resnet_cnn20_cifar", "ResNetCNN", {"depth": 20, "input_shape": _CIFAR},
     "ResNet-v2 baseline, CIFAR layout, depth 20."),
    ("resnet_cnn56_cifar", "ResNetCNN", {"depth": 56, "input_shape": _CIFAR},
     "ResNet-v2 baseline, CIFAR layout, depth 56."),
    ("glonet_cnn18_imagenet", "GloNetCNN",
     {"depth": 18, "layout": "imagenet", "input_shape": (224, 224, 3), "num_classes": 1000},
     "Convolutional GloNet, ImageNet layout, depth 18."),
):
    registry.register_model(_name, _class_name, _config, description=_description)
registry.register_pretrained(GloNetCNN, ResNetCNN, PlainCNN)
