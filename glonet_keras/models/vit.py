"""Vision transformers: GloNetViT and the standard ViT baseline.

Both: a tokenizer, a learned class token and position embedding, then `num_blocks` pre-LN
transformer blocks
    y = x + MHA(LN(x));   x' = y + MLP(LN(y)).
The blocks keep their internal residuals: GloNet is superimposed on the transformer, as the paper's
ViT does. GloNetViT taps every block's class token (a linear selection) and sums them into a linear
head; nothing nonlinear (no final LayerNorm) sits between the sum and the head, which keeps the
per-block decomposition of the logits exact. ViT reads LN(class token of the last block).

The tokenizer turns the image into (H/p)*(W/p) tokens of `hidden_dim`, p = `patch_size`:
- `"patch"` (default, the ViT paper's and the GloNet paper's): one p x p convolution of stride p;
- `"conv"`: log2(p) stages of a 3x3 convolution (ReLU) and a 3x3 max-pool of stride 2, widths
  doubling up to `hidden_dim` (the convolutional tokenizer of Hassani et al.'s Compact Convolutional
  Transformers, 2021; Xiao et al., 2021, show early convolutions make ViTs train faster and better).
  p must be a power of two. It only replaces the embedding: the blocks, taps and head are the same.
"""

import keras

from glonet_keras.layers import ClassToken, PositionEmbedding, TokenPooling
from glonet_keras.models import common
from glonet_keras.presets import registry

TOKENIZERS = ("patch", "conv")


def _check_vit_args(args):
    """Validates the ViT arguments in place (numpy integers become ints)."""
    for name in ("num_blocks", "patch_size", "hidden_dim", "num_heads", "mlp_dim"):
        args[name] = common.check_positive_int(name, args[name])
    args["input_shape"] = common.check_shape(
        args["input_shape"], "a ViT ((height, width, channels))", allow_none=False, ranks=(3,)
    )
    height, width, _ = args["input_shape"]
    patch_size = args["patch_size"]
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"The image size {height}x{width} must be divisible by `patch_size`={patch_size}."
        )
    common.check_choice("tokenizer", args["tokenizer"], TOKENIZERS)
    if args["tokenizer"] == "conv" and (patch_size < 2 or patch_size & (patch_size - 1)):
        raise ValueError(
            f'`tokenizer="conv"` halves the image log2(patch_size) times, so `patch_size` must be a '
            f"power of two >= 2; received {patch_size}."
        )
    if args["hidden_dim"] % args["num_heads"]:
        raise ValueError(
            f"`hidden_dim`={args['hidden_dim']} must be divisible by `num_heads`={args['num_heads']}."
        )


def _embed_and_encode(
    self_input_shape, *, patch_size, hidden_dim, num_heads, mlp_dim, num_blocks, activation,
    initializer, dtype, tokenizer="patch",
):
    inputs = keras.Input(shape=tuple(self_input_shape), name="images")
    if tokenizer == "patch":
        x = keras.layers.Conv2D(
            hidden_dim, patch_size, strides=patch_size, padding="valid",
            kernel_initializer=common.kernel_initializer(initializer),
            name="patch_embedding", dtype=dtype,
        )(inputs)
    else:
        x = _conv_tokens(inputs, patch_size=patch_size, hidden_dim=hidden_dim,
                         initializer=initializer, dtype=dtype)
    num_patches = x.shape[1] * x.shape[2]
    x = keras.layers.Reshape((num_patches, hidden_dim), name="patch_flatten", dtype=dtype)(x)
    x = ClassToken(name="class_token", dtype=dtype)(x)
    embedded = PositionEmbedding(name="position_embedding", dtype=dtype)(x)
    blocks = []
    x = embedded
    for i in range(1, num_blocks + 1):
        name = f"block_{i}"
        y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm_1", dtype=dtype)(x)
        y = keras.layers.MultiHeadAttention(
            num_heads, hidden_dim // num_heads, name=f"{name}_attention", dtype=dtype
        )(y, y)
        x = keras.layers.Add(name=f"{name}_add_1", dtype=dtype)([x, y])
        y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm_2", dtype=dtype)(x)
        y = common.dense(y, mlp_dim, initializer=initializer, name=f"{name}_mlp_dense_1", dtype=dtype)
        y = common.activation(y, f"{name}_mlp_act", act=activation, dtype=dtype)
        y = common.dense(y, hidden_dim, initializer=initializer, name=f"{name}_mlp_dense_2", dtype=dtype)
        x = keras.layers.Add(name=f"{name}_add_2", dtype=dtype)([x, y])
        blocks.append(x)
    return inputs, embedded, blocks


def _conv_tokens(x, *, patch_size, hidden_dim, initializer, dtype):
    """The convolutional tokenizer: (3x3 conv, ReLU, 3x3 max-pool of stride 2) x log2(patch_size)."""
    stages = patch_size.bit_length() - 1
    for stage in range(1, stages + 1):
        filters = max(1, hidden_dim >> (stages - stage))
        x = common.conv(x, filters, 3, initializer=initializer, name=f"tokenizer_conv_{stage}",
                        dtype=dtype)
        x = common.activation(x, f"tokenizer_relu_{stage}", act="relu", dtype=dtype)
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=f"tokenizer_pool_{stage}",
                                      dtype=dtype)(x)
    return x


class _ViTBase(common.GloNetModelBase):
    input_name = "images"
    size_arguments = ("num_blocks", "hidden_dim", "mlp_dim", "patch_size", "num_classes",
                      "input_shape")

    @classmethod
    def estimate_size(cls, config):
        c = cls._config_with_defaults(config)
        blocks, dim, mlp, patch, classes = (common.size_int(c.get(k)) for k in (
            "num_blocks", "hidden_dim", "mlp_dim", "patch_size", "num_classes"))
        shape = common.size_shape(c.get("input_shape"))
        height, width, channels = shape if len(shape) == 3 else (1, 1, 1)
        tokens = max(height // patch, 1) * max(width // patch, 1) + 1
        parameters = (
            patch * patch * channels * dim + 9 * (channels + dim * patch.bit_length()) * dim
            + tokens * dim + blocks * (4 * dim * dim + 2 * dim * mlp + mlp + 9 * dim)
            + dim * (classes + 2) + classes
        )
        return {"parameters": parameters, "blocks": blocks, "unrolled": True}

    def _build_encoder(self, args):
        common.check_common(args)
        _check_vit_args(args)
        return _embed_and_encode(
            args["input_shape"], patch_size=args["patch_size"], hidden_dim=args["hidden_dim"],
            num_heads=args["num_heads"], mlp_dim=args["mlp_dim"], num_blocks=args["num_blocks"],
            activation=args["activation"], initializer=args["initializer"], dtype=args["dtype"],
            tokenizer=args["tokenizer"],
        )


@keras.saving.register_keras_serializable(package="glonet_keras")
class GloNetViT(_ViTBase):
    """A ViT whose head reads the sum of every block's class token (see the module docstring).

    Args:
        num_blocks: transformer blocks.
        hidden_dim: token width (the paper's CIFAR-10 ViT: 128).
        num_heads: attention heads; must divide `hidden_dim`.
        mlp_dim: hidden width of each block's MLP.
        patch_size: side of the square patches; must divide the image size.
        tokenizer: `"patch"` (default) or `"conv"` (see the module docstring).
        num_classes: outputs of the linear head (logits).
        input_shape: fully known `(H, W, C)`.
        activation: the MLP's activation (default `"gelu"`).
        initializer: `"he"` or `"torch"`, for the patch embedding and MLP dense layers.
        aggregation, include_stem, dropout, head_initializer, dtype: as in `GloNetMLP`; the stem's
            tap is the class token of the embedded sequence. The sum of class tokens is not
            normalised, so a He-initialised head starts far from uniform logits (loss 21 on
            Fashion-MNIST); `head_initializer="zeros"` starts it at the uniform prediction.

    Example:
    >>> model = GloNetViT(num_blocks=6, hidden_dim=128, num_heads=4, mlp_dim=256, patch_size=4,
    ...                   input_shape=(32, 32, 3))
    """

    default_name = "glonet_vit"

    def __init__(
        self,
        num_blocks=6,
        hidden_dim=128,
        num_heads=4,
        mlp_dim=256,
        patch_size=4,
        tokenizer="patch",
        num_classes=10,
        input_shape=(32, 32, 3),
        activation="gelu",
        initializer="he",
        aggregation="sum",
        include_stem=False,
        dropout=0.0,
        head_initializer=None,
        dtype=None,
        **kwargs,
    ):
        args, model_kwargs = self._arguments(locals())
        inputs, embedded, blocks = self._build_encoder(args)
        outputs = self._glonet_outputs(blocks, args, stem=embedded, pooling="cls")
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **model_kwargs)
        self._finish(args, blocks)


@keras.saving.register_keras_serializable(package="glonet_keras")
class ViT(_ViTBase):
    """The standard ViT baseline: the head reads LN(class token) of the last block.

    Args: as `GloNetViT`, without `aggregation`, `include_stem` and `head_initializer`.
    """

    default_name = "vit"

    def __init__(
        self,
        num_blocks=6,
        hidden_dim=128,
        num_heads=4,
        mlp_dim=256,
        patch_size=4,
        tokenizer="patch",
        num_classes=10,
        input_shape=(32, 32, 3),
        activation="gelu",
        initializer="he",
        dropout=0.0,
        dtype=None,
        **kwargs,
    ):
        args, model_kwargs = self._arguments(locals())
        inputs, _, blocks = self._build_encoder(args)
        x = keras.layers.LayerNormalization(epsilon=1e-6, name="final_norm", dtype=dtype)(blocks[-1])
        x = TokenPooling("cls", name="pool", dtype=dtype)(x)
        outputs = common.head(
            x, num_classes=args["num_classes"], dropout=args["dropout"], initializer=initializer,
            dtype=dtype,
        )
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **model_kwargs)
        self._finish(args, blocks)


# The registry (`glonet_keras.presets.registry`): this family's model names, variants and presets.
registry.register_class("glonet_vit", GloNetViT)
registry.register_class("vit", ViT)
registry.register_model("glonet_vit_cifar", "GloNetViT",
                        {"num_blocks": 6, "input_shape": (32, 32, 3)},
                        description="GloNet ViT, 6 blocks, for 32x32 images.")
registry.register_pretrained(GloNetViT, ViT)
