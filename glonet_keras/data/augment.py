"""Image augmentation that is exact and nearly free on a device: flips, shifts, random erasing,
MixUp, CutMix.

Keras' `RandomFlip` + `RandomTranslation` resample every image through an interpolating affine
transform. Inside a JAX training step on a GPU that cost about 200 times the model's own step
(893 ms against 4.1 ms for the Fashion-MNIST CNN-20 preset, issue 20). The trainer's two cheap
augmentations are not interpolations at all:

- `flip`: a horizontal flip with probability 1/2, per example;
- `crop`: the "pad by 1/8 of the side, then crop a random window" of the CIFAR recipes, i.e. a
  random *integer* shift of each image by `dy` rows and `dx` columns, `|dy| <= height // 8` and
  `|dx| <= width // 8` (uniform over the integers in range, independently per axis and example),
  with zeros where the shifted image leaves no pixel. So 3 px on Fashion-MNIST's 28 px and 4 px on
  CIFAR's 32 px. (`height // 8`, not a rounded 3.5: an integer shift moves whole pixels, and the
  window of the classic recipe is `side + 2 * pad` with an integer pad.)

Both are one index computation per example and two gathers (`keras.ops.take_along_axis`: rows,
then columns) plus one select for the zero fill: every output pixel is exactly an input pixel or 0.
The random draws use an explicit `keras.random.SeedGenerator`, so a seeded layer is reproducible
(and inside a compiled JAX step its state is carried like any other variable).

`shift_and_flip` computes the result from given offsets with any NumPy-like namespace (`keras.ops`
by default; `tf.experimental.numpy` in a `tf.data` pipeline, where `keras.ops` may belong to
another backend), so the device path and the tf.data path run the same code. `RandomShiftFlip` is
the registered layer the trainer puts in its training-only model.

`erase` (random erasing, Zhong et al. 2020) is a select too: with probability 1/2 a box of the
paper's random area and aspect ratio takes uniform noise (`erase`, `draw_erasing`,
`RandomErasing`).

`mixup` and `cutmix` likewise (the `mixup`/`cutmix` augmentations): each example mixed with a
partner from a permutation of the batch, MixUp as λ x + (1 - λ) x', CutMix as a select of a
whole-pixel box, and the one-hot labels by λ or by the exact share of pixels pasted. Their draws
come from `draw_mixing` (given explicitly in tests); `RandomMix` is the seeded layer, and
`MixingModel` the training-only model that runs it on images *and* labels in its training step
(labels never reach an inputs-only model).

Example:
>>> layer = RandomShiftFlip(flip=True, crop=True, seed=0)
>>> augmented = layer(images, training=True)       # (batch, height, width, channels)
>>> dy, dx, flipped = layer.draw(batch_size=len(images))
>>> same = shift_and_flip(images, dy, dx, flipped)  # what a layer with that draw returns

No TensorFlow import here: the GPU machines have JAX only.
"""

import keras
from keras import ops

#: `crop` shifts by at most side // CROP_DIVISOR pixels in each axis (4 px on 32, 3 px on 28).
CROP_DIVISOR = 8


def seed_generator_states(layers):
    """The state variables of every `keras.random.SeedGenerator` of `layers` and their sublayers
    (a model counts as a layer), each once: what `ReseedEachEpoch` and the tf.data pipeline set to
    make a layer's draws depend on the epoch and step alone."""
    states, seen = [], set()
    for layer in layers:
        for variable in layer.variables:
            if variable.name == "seed_generator_state" and id(variable) not in seen:
                seen.add(id(variable))
                states.append(variable)
    return states


def max_shift(side):
    """The largest shift `crop` draws along an axis of `side` pixels: side // 8."""
    return int(side) // CROP_DIVISOR


def shift_and_flip(images, shift_rows, shift_cols, flip, xp=None):
    """Each image flipped left-right where `flip`, then shifted by (rows, cols), zero filled.

    out[b, i, j, :] = f_b[b, i - shift_rows[b], j - shift_cols[b], :] where that pixel exists,
    else 0, with f_b the image flipped horizontally (f[b, i, k] = images[b, i, width - 1 - k]) if
    flip[b] and the image itself otherwise. A positive shift moves the content down / right.

    Args:
        images: (batch, height, width, channels), static height and width.
        shift_rows, shift_cols: (batch,) integer shifts, or None for no shift along that axis.
        flip: (batch,) booleans, or None for no flip.
        xp: a NumPy-like namespace (arange, clip, expand_dims, logical_and, take_along_axis,
            where, zeros_like, flip); default `keras.ops`.

    Returns:
        A tensor like `images`: a gather of its pixels and zeros, no arithmetic on the values.
    """
    xp = ops if xp is None else xp
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError(f"shift_and_flip needs a static height and width, got {images.shape}.")
    out = images
    if shift_rows is not None:
        rows = xp.expand_dims(xp.arange(height, dtype="int32"), 0) - xp.expand_dims(shift_rows, 1)
        row_ok = xp.logical_and(rows >= 0, rows < height)  # (batch, height)
        index = xp.expand_dims(xp.expand_dims(xp.clip(rows, 0, height - 1), 2), 3)
        out = xp.take_along_axis(out, index, axis=1)  # broadcast over columns and channels
    if shift_cols is not None or flip is not None:
        cols = xp.expand_dims(xp.arange(width, dtype="int32"), 0)
        if shift_cols is not None:
            cols = cols - xp.expand_dims(shift_cols, 1)
            col_ok = xp.logical_and(cols >= 0, cols < width)  # (batch, width)
            cols = xp.clip(cols, 0, width - 1)
        if flip is not None:
            cols = xp.where(xp.expand_dims(flip, 1), (width - 1) - cols, cols)
        out = xp.take_along_axis(out, xp.expand_dims(xp.expand_dims(cols, 1), 3), axis=2)
    if shift_rows is not None or shift_cols is not None:
        mask = None
        if shift_rows is not None:
            mask = xp.expand_dims(xp.expand_dims(row_ok, 2), 3)
        if shift_cols is not None:
            cols_mask = xp.expand_dims(xp.expand_dims(col_ok, 1), 3)
            mask = cols_mask if mask is None else xp.logical_and(mask, cols_mask)
        out = xp.where(mask, out, xp.zeros_like(out))
    return out


def draw_offsets(randint, height, width, *, flip, crop):
    """(shift_rows, shift_cols, flip) for one batch, each None where unused.

    `randint(low, high)` draws one int32 per example in [low, high): the layer passes Keras'
    seeded generator, the tf.data pipeline TensorFlow's, so both draw by the same rule.
    """
    rows, cols = (max_shift(height), max_shift(width)) if crop else (0, 0)
    shift_rows = randint(-rows, rows + 1) if rows else None
    shift_cols = randint(-cols, cols + 1) if cols else None
    flipped = randint(0, 2) > 0 if flip else None
    return shift_rows, shift_cols, flipped


@keras.saving.register_keras_serializable(package="glonet_keras")
class RandomShiftFlip(keras.layers.Layer):
    """Random horizontal flip (p = 1/2) and random integer shift (<= side // 8), zero filled.

    The `flip` and `crop` augmentations of `glonet_keras.data.AUGMENTATIONS`, as gathers (see the
    module docstring): exact pixels, no interpolation, nearly free inside a compiled step. Active
    only with `training=True`; otherwise the identity. Flip first, then shift (as the Keras layers
    it replaces were applied).

    Args:
        flip: flip each image left-right with probability 1/2.
        crop: shift each image by a uniform integer in [-side // 8, side // 8] rows and columns.
        seed: seeds the layer's `keras.random.SeedGenerator` (None: unseeded).

    Input: (batch, height, width, channels) with static height and width; output: the same shape
    and dtype.
    """

    def __init__(self, flip=True, crop=True, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.flip, self.crop, self.seed = bool(flip), bool(crop), seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = False

    def draw(self, batch_size, height=None, width=None):
        """The next (shift_rows, shift_cols, flip) this layer draws; each None where unused.

        `height`/`width` default to the last built input shape's. Advances the seed generator,
        exactly as a call with `training=True` does.
        """
        if height is None or width is None:
            height, width = self._image_size

        def randint(low, high):
            return keras.random.randint((batch_size,), low, high, dtype="int32",
                                        seed=self.seed_generator)

        return draw_offsets(randint, height, width, flip=self.flip, crop=self.crop)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[1] is None or input_shape[2] is None:
            raise ValueError(
                f"{type(self).__name__} takes (batch, height, width, channels) images of a static "
                f"size, received shape {input_shape}.")
        self._image_size = (int(input_shape[1]), int(input_shape[2]))
        self.built = True

    def call(self, images, training=False):
        if not training or not (self.flip or self.crop):
            return images
        shift_rows, shift_cols, flip = self.draw(ops.shape(images)[0], *self._image_size)
        return shift_and_flip(images, shift_rows, shift_cols, flip)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "flip": self.flip, "crop": self.crop, "seed": self.seed}


# --------------------------------------------------------------------------------------------------
# Random erasing (Zhong et al., AAAI 2020): a random box of each image replaced by noise.

#: With probability ERASE_PROBABILITY an image gets one box of area ERASE_AREA (a fraction of the
#: image, uniform) and aspect ratio height / width in ERASE_ASPECT (log-uniform): the paper's
#: p = 0.5, s_l = 0.02, s_h = 0.4, r_1 = 0.3 (r_2 = 1 / r_1), its defaults for image classification.
ERASE_PROBABILITY = 0.5
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 1 / 0.3)


def erase(images, top, left, box_height, box_width, erased, noise, xp=None):
    """Random erasing for given draws: a box of each erased image replaced by `noise`.

    out[b, i, j, :] = noise[b, i, j, :] where erased[b] and top[b] <= i < top[b] + box_height[b]
    and left[b] <= j < left[b] + box_width[b], else images[b, i, j, :] (a select: every pixel is
    exactly an input pixel or a noise value).

    Args:
        images: (batch, height, width, channels), static height and width.
        top, left, box_height, box_width: (batch,) integers (`draw_erasing` keeps the box inside).
        erased: (batch,) booleans, the images that get a box.
        noise: floats shaped like `images`, the values a box takes.
        xp: a NumPy-like namespace (arange, expand_dims, logical_and, where); default `keras.ops`.
    """
    xp = ops if xp is None else xp
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError(f"erase needs a static height and width, got {images.shape}.")

    mask = _box_mask(height, width, (top, top + box_height, left, left + box_width), xp)
    mask = xp.logical_and(mask, xp.reshape(erased, (-1, 1, 1, 1)))
    return xp.where(mask, noise, images)


def _box_mask(height, width, box, xp):
    """(batch, height, width, 1) booleans: top <= row < bottom and left <= column < right, with
    `box` = (top, bottom, left, right), each (batch,) integers."""
    top, bottom, left, right = box

    def inside(size, low, high):  # (batch, size): low <= index < high
        index = xp.expand_dims(xp.arange(size, dtype="int32"), 0)
        return xp.logical_and(index >= xp.expand_dims(low, 1), index < xp.expand_dims(high, 1))

    rows, cols = inside(height, top, bottom), inside(width, left, right)
    return xp.logical_and(xp.expand_dims(xp.expand_dims(rows, 2), 3),
                          xp.expand_dims(xp.expand_dims(cols, 1), 3))


def draw_erasing(uniform, height, width, xp=None, probability=ERASE_PROBABILITY, area=ERASE_AREA,
                 aspect=ERASE_ASPECT):
    """(top, left, box_height, box_width, erased) for one batch: the paper's box, one per image.

    Per image: erased with `probability`; a target area S_e = s * height * width with s uniform in
    `area`, an aspect ratio r log-uniform in `aspect`, the sides round(sqrt(S_e r)) and
    round(sqrt(S_e / r)) (halves up), each clipped to [1, side], and the corner uniform among the positions
    that keep the box inside the image. (The paper redraws a box that does not fit; clipping its
    side keeps one draw per image, and changes only boxes with s r > 1 or s / r > 1: at most
    0.4 x 3.33, the long thin ones.)

    `uniform(low, high)` draws (batch,) float32 uniformly in [low, high): the layer passes Keras'
    seeded generator, the tf.data pipeline TensorFlow's, so both draw by the same rule.
    """
    import math

    xp = ops if xp is None else xp
    erased = uniform(0.0, 1.0) < probability
    target = uniform(float(area[0]), float(area[1])) * float(height * width)
    ratio = xp.exp(uniform(math.log(aspect[0]), math.log(aspect[1])))
    sides = []
    for size, stretch in ((height, ratio), (width, 1.0 / ratio)):
        side = _cast(xp.floor(xp.sqrt(target * stretch) + 0.5), "int32", xp)  # rounded
        sides.append(xp.clip(side, 1, size))
    corners = [_cast(xp.floor(uniform(0.0, 1.0) * _cast(size - side + 1, "float32", xp)), "int32",
                     xp) for size, side in zip((height, width), sides)]
    # uniform < 1 keeps floor(u * (n + 1)) <= n; the clip guards float rounding at the top end.
    corners = [xp.clip(corner, 0, size - side) for corner, size, side in
               zip(corners, (height, width), sides)]
    return corners[0], corners[1], sides[0], sides[1], erased


@keras.saving.register_keras_serializable(package="glonet_keras")
class RandomErasing(keras.layers.Layer):
    """Random erasing: with probability 1/2, a random box of each image replaced by uniform noise.

    The `erase` augmentation of `glonet_keras.data.AUGMENTATIONS`, Zhong et al.'s (AAAI 2020;
    image classification defaults, `draw_erasing`): the box's pixels take values uniform in
    [0, 1), the paper's "random values" on the [0, 1] scale the trainer's augmentations work on
    (before the normalisation). A select, no interpolation, so nearly free inside a compiled step.
    Active only with `training=True`; otherwise the identity.

    Unlike `keras.layers.RandomErasing` (Keras 3.8+): one box per image with the paper's
    area and aspect-ratio ranges and per-image probability, and the same draws in the tf.data
    pipeline (`glonet_keras.data`) on any backend.

    Args:
        probability: the share of images that get a box.
        seed: seeds the layer's `keras.random.SeedGenerator` (None: unseeded).
    """

    def __init__(self, probability=ERASE_PROBABILITY, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(probability, bool) or not 0.0 <= float(probability) <= 1.0:
            raise ValueError(f"probability must be in [0, 1], received {probability!r}")
        self.probability, self.seed = float(probability), seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = False

    def draw(self, batch_size, height=None, width=None):
        """The next `draw_erasing` draws; advances the seed generator as a training call does."""
        if height is None or width is None:
            height, width = self._image_size

        def uniform(low, high):
            return keras.random.uniform((batch_size,), low, high, dtype="float32",
                                        seed=self.seed_generator)

        return draw_erasing(uniform, height, width, probability=self.probability)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[1] is None or input_shape[2] is None:
            raise ValueError(
                f"{type(self).__name__} takes (batch, height, width, channels) images of a static "
                f"size, received shape {input_shape}.")
        self._image_size = (int(input_shape[1]), int(input_shape[2]))
        self.built = True

    def call(self, images, training=False):
        if not training or self.probability == 0.0:
            return images
        draws = self.draw(ops.shape(images)[0], *self._image_size)
        noise = keras.random.uniform(ops.shape(images), dtype=images.dtype,
                                     seed=self.seed_generator)
        return erase(images, *draws, noise)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "probability": self.probability, "seed": self.seed}


# --------------------------------------------------------------------------------------------------
# MixUp and CutMix: images and one-hot labels mixed with a partner from a permutation of the batch.

#: MixUp's λ ~ Beta(α, α) per example: `keras.layers.MixUp`'s default α.
MIXUP_ALPHA = 0.2
#: CutMix's λ ~ Beta(α, α) per example: α = 1 (λ uniform), the CutMix paper's and timm's.
CUTMIX_ALPHA = 1.0


def _cast(x, dtype, xp):
    # keras.ops has cast; NumPy and tf.experimental.numpy convert with asarray.
    return xp.cast(x, dtype) if hasattr(xp, "cast") else xp.asarray(x, dtype=dtype)


def _per_example(values, like, xp):
    """(batch,) values reshaped to broadcast against `like` (batch, ...)."""
    return xp.reshape(values, (-1,) + (1,) * (len(like.shape) - 1))


def mixup(images, labels, partner, weight, xp=None):
    """MixUp for given draws: each example mixed with example `partner[b]` of the same batch.

    out[b] = w[b] * images[b] + (1 - w[b]) * images[partner[b]], and the same for `labels`
    (one-hot floats), with w = `weight`. Works on inputs of any rank (images or vectors).

    Args:
        images: (batch, ...) floats.
        labels: (batch, num_classes) floats.
        partner: (batch,) integer indices into the batch (a permutation).
        weight: (batch,) floats in [0, 1], the share of each example's own content (λ).
        xp: a NumPy-like namespace (take, reshape); default `keras.ops`.

    Returns:
        (images, labels), mixed.
    """
    xp = ops if xp is None else xp
    mixed = []
    for values in (images, labels):
        w = _per_example(_cast(weight, values.dtype, xp), values, xp)
        mixed.append(w * values + (1 - w) * xp.take(values, partner, axis=0))
    return tuple(mixed)


def cutmix(images, labels, partner, box, xp=None):
    """CutMix for given draws: a box of each image replaced by the same box of its partner.

    out[b, i, j] = images[partner[b], i, j] for top[b] <= i < bottom[b] and left[b] <= j <
    right[b], else images[b, i, j] (a select: every pixel is exactly an input pixel). The labels
    are mixed by the exact share of pixels pasted: w[b] = 1 - (bottom - top)(right - left) / (height
    * width), labels[b] * w[b] + labels[partner[b]] * (1 - w[b]).

    Args:
        images: (batch, height, width, channels), static height and width.
        labels: (batch, num_classes) floats.
        partner: (batch,) integer indices into the batch (a permutation).
        box: (top, bottom, left, right), each (batch,) integers with 0 <= top <= bottom <= height
            and 0 <= left <= right <= width (`draw_mixing` clips them to the image).
        xp: a NumPy-like namespace; default `keras.ops`.

    Returns:
        (images, labels), mixed.
    """
    xp = ops if xp is None else xp
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError(f"cutmix needs a static height and width, got {images.shape}.")
    top, bottom, left, right = box
    mask = _box_mask(height, width, box, xp)
    images = xp.where(mask, xp.take(images, partner, axis=0), images)
    pasted = _cast((bottom - top) * (right - left), labels.dtype, xp)
    w = xp.expand_dims(1 - pasted / _cast(height * width, labels.dtype, xp), 1)
    labels = w * labels + (1 - w) * xp.take(labels, partner, axis=0)
    return images, labels


def draw_mixing(permutation, beta, randint, height, width, *, mixup, cutmix,
                mixup_alpha=MIXUP_ALPHA, cutmix_alpha=CUTMIX_ALPHA, xp=None):
    """(mixup draws, cutmix draws) for one batch, each None where unused.

    MixUp: (partner, weight) with a random permutation and λ ~ Beta(mixup_alpha, mixup_alpha) per
    example (the meaning of `keras.layers.MixUp`). CutMix: (partner, (top, bottom, left, right)),
    the CutMix paper's box: λ ~ Beta(cutmix_alpha, cutmix_alpha), sides floor(height *
    sqrt(1 - λ)) and floor(width * sqrt(1 - λ)), centred on a uniform pixel and clipped to the
    image, so the pasted share (`cutmix` recomputes it from the clipped box) is at most 1 - λ.

    `permutation()` draws a (batch,) int32 permutation, `beta(alpha)` (batch,) float32 samples of
    Beta(alpha, alpha), `randint(low, high)` (batch,) int32 in [low, high): the layer passes Keras'
    seeded generator, the tf.data pipeline TensorFlow's, so both draw by the same rule. `xp` as in
    `cutmix`.
    """
    xp = ops if xp is None else xp
    mixup_draws = cutmix_draws = None
    if mixup:
        mixup_draws = (permutation(), beta(mixup_alpha))
    if cutmix:
        partner, weight = permutation(), beta(cutmix_alpha)
        side = xp.sqrt(1 - weight)
        box = []
        for size in (height, width):
            cut = _cast(xp.floor(size * side), "int32", xp)
            start = randint(0, size) - cut // 2
            box += [xp.clip(start, 0, size), xp.clip(start + cut, 0, size)]
        cutmix_draws = (partner, tuple(box))
    return mixup_draws, cutmix_draws


def mix_batch(images, labels, mixup_draws=None, cutmix_draws=None, xp=None):
    """MixUp then CutMix (each where its draws are given) on one batch; returns (images, labels)."""
    if mixup_draws is not None:
        images, labels = mixup(images, labels, *mixup_draws, xp=xp)
    if cutmix_draws is not None:
        images, labels = cutmix(images, labels, *cutmix_draws, xp=xp)
    return images, labels


@keras.saving.register_keras_serializable(package="glonet_keras")
class RandomMix(keras.layers.Layer):
    """MixUp and/or CutMix of a batch of images and their one-hot labels, seeded.

    The `mixup` and `cutmix` augmentations of `glonet_keras.data.AUGMENTATIONS`: `mixup`, then
    `cutmix` on its result when both are on (the order the tf.data pipeline had with Keras'
    layers), with the draws of `draw_mixing`. Takes and returns a dict {"images", "labels"} as
    `keras.layers.MixUp` does; active only with `training=True`, otherwise the identity.

    Differences from Keras' layers, on purpose: CutMix's λ ~ Beta(1, 1) and its box is the paper's
    (centred on a uniform pixel, clipped at the border, whole pixels), and the labels are mixed by
    the share of pixels actually pasted; `keras.layers.CutMix` draws α ~ U(0, 1) per batch, then
    λ ~ Beta(α, α), keeps a real-valued box inside the image and mixes labels by its real area.
    MixUp has Keras' meaning (λ ~ Beta(0.2, 0.2) per example).

    Args:
        mixup: apply MixUp.
        cutmix: apply CutMix.
        mixup_alpha, cutmix_alpha: the α of each λ ~ Beta(α, α).
        seed: seeds the layer's `keras.random.SeedGenerator` (None: unseeded).
    """

    def __init__(self, mixup=True, cutmix=False, mixup_alpha=MIXUP_ALPHA,
                 cutmix_alpha=CUTMIX_ALPHA, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.mixup, self.cutmix, self.seed = bool(mixup), bool(cutmix), seed
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = False

    def draw(self, batch_size, height=None, width=None):
        """The next (mixup draws, cutmix draws) this layer draws (see `draw_mixing`).

        Advances the seed generator, exactly as a call with `training=True` does.
        """
        seed = self.seed_generator

        def permutation():
            return keras.random.shuffle(ops.arange(batch_size, dtype="int32"), seed=seed)

        def beta(alpha):
            return keras.random.beta((batch_size,), alpha, alpha, dtype="float32", seed=seed)

        def randint(low, high):
            return keras.random.randint((batch_size,), low, high, dtype="int32", seed=seed)

        return draw_mixing(permutation, beta, randint, height, width, mixup=self.mixup,
                           cutmix=self.cutmix, mixup_alpha=self.mixup_alpha,
                           cutmix_alpha=self.cutmix_alpha)

    def build(self, input_shape):
        images = input_shape.get("images") if isinstance(input_shape, dict) else None
        labels = input_shape.get("labels") if isinstance(input_shape, dict) else None
        if images is None or labels is None or len(labels) != 2:
            raise ValueError(f"{type(self).__name__} takes a dict of images (batch, ...) and "
                             f"one-hot labels (batch, classes), received shapes {input_shape}.")
        if self.cutmix and (len(images) != 4 or images[1] is None or images[2] is None):
            raise ValueError(f"{type(self).__name__}(cutmix=True) takes (batch, height, width, "
                             f"channels) images of a static size, received shape {images}.")
        self.built = True

    def call(self, data, training=False):
        if not training or not (self.mixup or self.cutmix):
            return data
        images, labels = data["images"], data["labels"]
        height, width = (images.shape[1], images.shape[2]) if self.cutmix else (None, None)
        draws = self.draw(ops.shape(images)[0], height, width)
        images, labels = mix_batch(images, labels, *draws)
        return {"images": images, "labels": labels}

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mixup": self.mixup, "cutmix": self.cutmix,
                "mixup_alpha": self.mixup_alpha, "cutmix_alpha": self.cutmix_alpha,
                "seed": self.seed}


@keras.saving.register_keras_serializable(package="glonet_keras")
class MixingModel(keras.Model):
    """Training-only: `model` trained on batches augmented, then mixed with their labels.

    MixUp and CutMix change the labels, so they cannot sit in a model that sees only the inputs.
    This model's training step (`train_step`) runs, inside the compiled step:

        images -> `augment` (e.g. RandomShiftFlip, training=True) -> `mixer` (images and labels)
        -> Keras' own training step of `model` on the mixed images and the mixed labels

    so the loss sees the labels mixed with the same draws as the images, on every backend, in
    Keras' own `fit` and in `fastfit.fuse_train_steps`' scan (which runs this `train_step`). The
    seed generators' states are variables of this model: on JAX they go through the step (and the
    scan) as state, like any other.

    Metrics: the training metrics are computed against the *mixed* labels (as Keras' MixUp and
    CutMix in a tf.data pipeline give them): accuracy is then agreement with each mixed label's
    largest share, so training accuracy under mixing is not comparable with the validation and test
    accuracy, which `call` (no augmentation, no mixing) computes on clean labels.

    Args:
        model: the model trained and evaluated (it takes the augmented, mixed images).
        mixer: a `RandomMix` (or any layer mapping {"images", "labels"} to the same, mixed).
        augment: layers applied to the images before mixing, in order (training only).

    Example:
    >>> fit_model = MixingModel(net, RandomMix(mixup=True, cutmix=True, seed=0),
    ...                         augment=[RandomShiftFlip(seed=0)])
    >>> fit_model.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy())
    >>> fit_model.fit(images, one_hot_labels, epochs=1)   # the weights are net's
    """

    def __init__(self, model, mixer, augment=(), **kwargs):
        super().__init__(**kwargs)
        self.model, self.mixer, self.augment = model, mixer, list(augment)

    def build(self, input_shape):
        # The mixer has no variables and needs the labels' shape too: it builds on its first call.
        for layer in self.augment:
            if not layer.built:
                layer.build(input_shape)
            input_shape = layer.compute_output_shape(input_shape)
        if not self.model.built:
            self.model.build(input_shape)
        self.built = True

    def call(self, inputs, training=False):
        return self.model(inputs, training=training)

    def augment_and_mix(self, images, labels):
        """The batch the training step trains on: (augmented and mixed images, mixed labels)."""
        for layer in self.augment:
            images = layer(images, training=True)
        mixed = self.mixer({"images": images, "labels": labels}, training=True)
        return mixed["images"], mixed["labels"]

    def train_step(self, *args):
        if keras.backend.backend() == "jax":
            return self._jax_train_step(*args)
        (data,) = args
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, y = self.augment_and_mix(x, y)
        return super().train_step(keras.utils.pack_x_y_sample_weight(x, y, sample_weight))

    def _jax_train_step(self, state, data):
        # JAX steps are pure functions of the state: the draws read and advance the seed
        # generators' states through a StatelessScope, as Keras' own stateless_call does.
        trainable, non_trainable, optimizer_variables, metrics_variables = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        mapping = list(zip(self.trainable_variables, trainable))
        mapping += list(zip(self.non_trainable_variables, non_trainable))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            x, y = self.augment_and_mix(x, y)
        non_trainable = [scope.get_current_value(variable) for variable in
                         self.non_trainable_variables]
        state = (trainable, non_trainable, optimizer_variables, metrics_variables)
        return super().train_step(state, keras.utils.pack_x_y_sample_weight(x, y, sample_weight))

    def get_config(self):
        return {**super().get_config(), "model": keras.saving.serialize_keras_object(self.model),
                "mixer": keras.saving.serialize_keras_object(self.mixer),
                "augment": [keras.saving.serialize_keras_object(layer) for layer in self.augment]}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        deserialize = keras.saving.deserialize_keras_object
        config["model"] = deserialize(config["model"], custom_objects=custom_objects)
        config["mixer"] = deserialize(config["mixer"], custom_objects=custom_objects)
        config["augment"] = [deserialize(layer, custom_objects=custom_objects)
                             for layer in config["augment"]]
        return cls(**config)
