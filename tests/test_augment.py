"""glonet_keras.data.augment: flips and integer shifts give exactly the pixels they claim, reproducibly."""

import importlib.util

import keras
import numpy as np
import pytest

from glonet_keras.data import augment
from glonet_keras import data

HAS_TF = importlib.util.find_spec("tensorflow") is not None
#: A batch's stateless key, as the tf.data pipeline gives each batch (`data.pipeline._BatchDraws`).
KEY = np.array([0, 7], "int64")


def reference(images, shift_rows, shift_cols, flip):
    """NumPy, pixel by pixel: flip left-right where asked, then shift, zeros where nothing lands."""
    out = np.zeros_like(images)
    _, height, width, _ = images.shape
    for b, image in enumerate(images):
        source = image[:, ::-1] if flip[b] else image
        for i in range(height):
            for j in range(width):
                si, sj = i - shift_rows[b], j - shift_cols[b]
                if 0 <= si < height and 0 <= sj < width:
                    out[b, i, j] = source[si, sj]
    return out


def _images(batch=6, height=7, width=9, channels=2, seed=0):
    # Distinct values (no zeros): every shift and flip of an image is told apart from the others.
    values = np.random.default_rng(seed).permutation(batch * height * width * channels) + 1.0
    return values.reshape(batch, height, width, channels).astype("float32")


def _numpy(value):
    return None if value is None else keras.ops.convert_to_numpy(value)


def test_shift_and_flip_gives_the_reference_pixels_for_given_offsets():
    images = _images()
    # Every kind of case: no move, the largest shifts, shifts past the image (all zeros), flips.
    shift_rows = np.array([0, 1, -2, 3, 0, 7], "int32")
    shift_cols = np.array([0, -1, 4, -4, 2, -9], "int32")
    flip = np.array([False, True, False, True, True, False])
    expected = reference(images, shift_rows, shift_cols, flip)
    got = _numpy(augment.shift_and_flip(keras.ops.convert_to_tensor(images), shift_rows,
                                        shift_cols, flip))
    np.testing.assert_array_equal(got, expected)
    assert not got[5].any() and np.array_equal(got[0], images[0])
    # One axis at a time (None: that part is left out).
    zeros = np.zeros(6, "int32")
    np.testing.assert_array_equal(
        _numpy(augment.shift_and_flip(images, None, None, flip)),
        reference(images, zeros, zeros, flip))
    np.testing.assert_array_equal(
        _numpy(augment.shift_and_flip(images, shift_rows, None, None)),
        reference(images, shift_rows, zeros, np.zeros(6, bool)))


def test_crop_shifts_up_to_an_eighth_of_the_side():
    assert [augment.max_shift(side) for side in (8, 28, 32, 224)] == [1, 3, 4, 28]
    layer = augment.RandomShiftFlip(flip=False, crop=True, seed=1)
    shift_rows, shift_cols, flip = layer.draw(2000, height=28, width=32)
    assert flip is None
    assert sorted(set(_numpy(shift_rows).tolist())) == list(range(-3, 4))
    assert sorted(set(_numpy(shift_cols).tolist())) == list(range(-4, 5))
    only_flip = augment.RandomShiftFlip(flip=True, crop=False, seed=1)
    shift_rows, shift_cols, flip = only_flip.draw(2000, height=28, width=28)
    assert shift_rows is None and shift_cols is None
    assert 0.45 < _numpy(flip).mean() < 0.55  # probability 1/2


def test_the_layer_returns_exactly_the_shifted_and_flipped_images_it_draws():
    images = _images(batch=64, height=8, width=8, channels=1)
    layer = augment.RandomShiftFlip(seed=7)
    twin = augment.RandomShiftFlip(seed=7)  # The same seed: the same draws, read out here.
    got = _numpy(layer(images, training=True))
    shift_rows, shift_cols, flip = (_numpy(v) for v in twin.draw(64, height=8, width=8))
    np.testing.assert_array_equal(got, reference(images, shift_rows, shift_cols, flip))
    assert np.abs(shift_rows).max() == 1 and flip.any() and not flip.all()
    # Not training: the identity.
    np.testing.assert_array_equal(_numpy(layer(images, training=False)), images)


def test_a_seed_makes_it_reproducible_and_calls_draw_anew():
    images = _images(batch=32, height=16, width=16, channels=1)
    first, again = augment.RandomShiftFlip(seed=3), augment.RandomShiftFlip(seed=3)
    a1, a2 = _numpy(first(images, training=True)), _numpy(first(images, training=True))
    b1, b2 = _numpy(again(images, training=True)), _numpy(again(images, training=True))
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2)
    other = _numpy(augment.RandomShiftFlip(seed=4)(images, training=True))
    assert not np.array_equal(a1, other)


def test_the_layer_round_trips_its_config_and_refuses_unsized_images():
    layer = augment.RandomShiftFlip(flip=False, crop=True, seed=5, name="aug")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(clone) is augment.RandomShiftFlip
    assert (clone.flip, clone.crop, clone.seed, clone.name) == (False, True, 5, "aug")
    with pytest.raises(ValueError, match="static size"):
        augment.RandomShiftFlip().build((None, None, None, 3))


def test_the_trainers_layers_for_flip_and_crop_are_one_gather_layer():
    layers = data.image_augmentation_layers(("flip", "crop"), seed=0)
    assert [type(layer) for layer in layers] == [augment.RandomShiftFlip]
    assert (layers[0].flip, layers[0].crop) == (True, True)
    (flip_only,) = data.image_augmentation_layers(("flip",), seed=0)
    assert (flip_only.flip, flip_only.crop) == (True, False)


@pytest.mark.skipif(not HAS_TF, reason="the tf.data path needs TensorFlow")
def test_the_tf_data_path_gives_the_same_pixels_for_the_same_offsets():
    import tensorflow as tf
    import tensorflow.experimental.numpy as tnp

    images = _images()
    shift_rows = np.array([0, 1, -2, 3, 0, 7], "int32")
    shift_cols = np.array([0, -1, 4, -4, 2, -9], "int32")
    flip = np.array([False, True, False, True, True, False])
    on_tf = augment.shift_and_flip(tf.constant(images), tf.constant(shift_rows),
                                   tf.constant(shift_cols), tf.constant(flip), xp=tnp)
    np.testing.assert_array_equal(np.asarray(on_tf),
                                  reference(images, shift_rows, shift_cols, flip))
    # The pipeline's own function, inside a tf.data map: each image is one of its allowed moves.
    batch = _images(batch=16, height=8, width=8, channels=1)
    apply = data.pipeline._shift_flip_tf(("flip", "crop"))
    mapped = tf.data.Dataset.from_tensors(batch).map(lambda images: apply(images, KEY))
    assert mapped.element_spec.shape == (16, 8, 8, 1)  # static, as RandAugment after it needs
    (got,) = mapped.as_numpy_iterator()
    moves = [(dy, dx, f) for dy in (-1, 0, 1) for dx in (-1, 0, 1) for f in (False, True)]
    found = set()
    for b in range(16):
        matches = [m for m in moves if np.array_equal(
            got[b], reference(batch[b:b + 1], [m[0]], [m[1]], [m[2]])[0])]
        assert len(matches) == 1, (b, matches)
        found.add(matches[0])
    assert len(found) > 4  # random, not one fixed move
    (again,) = tf.data.Dataset.from_tensors(batch).map(
        lambda images: apply(images, KEY)).as_numpy_iterator()
    np.testing.assert_array_equal(got, again)  # the batch's key alone draws


# ---- MixUp and CutMix ----------------------------------------------------------------------------


def mix_reference(images, labels, partner, weight=None, box=None):
    """NumPy, example by example: MixUp with `weight`, or CutMix of `box` (top, bottom, left, right)."""
    out_images, out_labels = images.copy(), labels.copy()
    _, height, width, _ = images.shape
    for b in range(len(images)):
        p = partner[b]
        if weight is not None:
            w = np.float32(weight[b])
        else:
            top, bottom, left, right = (int(v[b]) for v in box)
            out_images[b, top:bottom, left:right] = images[p, top:bottom, left:right]
            w = np.float32(1 - (bottom - top) * (right - left) / (height * width))
            out_labels[b] = w * labels[b] + (1 - w) * labels[p]
            continue
        out_images[b] = w * images[b] + (1 - w) * images[p]
        out_labels[b] = w * labels[b] + (1 - w) * labels[p]
    return out_images, out_labels


def _labels(batch=6, classes=4):
    return np.eye(classes, dtype="float32")[np.arange(batch) % classes]


PARTNER = np.array([3, 0, 5, 1, 2, 4], "int32")


def test_mixup_gives_the_reference_images_and_labels_for_given_draws():
    images, labels = _images(), _labels()
    weight = np.array([0.0, 0.25, 0.5, 0.9, 1.0, 0.013], "float32")
    got = [_numpy(v) for v in augment.mixup(images, labels, PARTNER, weight)]
    expected = mix_reference(images, labels, PARTNER, weight=weight)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(got[0][0], images[3])  # weight 0: all partner
    np.testing.assert_array_equal(got[0][4], images[4])  # weight 1: itself
    np.testing.assert_allclose(got[1].sum(axis=1), 1, rtol=1e-6)


def test_cutmix_pastes_whole_pixels_and_mixes_labels_by_the_pasted_share():
    images, labels = _images(), _labels()  # 7 x 9 images
    # (top, bottom, left, right): inside, the whole image, empty, a row, a corner, one pixel.
    box = tuple(np.array(v, "int32") for v in ([1, 0, 3, 6, 0, 4], [4, 7, 3, 7, 2, 5],
                                              [2, 0, 0, 0, 7, 8], [5, 9, 9, 9, 9, 9]))
    got_images, got_labels = (_numpy(v) for v in augment.cutmix(images, labels, PARTNER, box))
    expected_images, expected_labels = mix_reference(images, labels, PARTNER, box=box)
    np.testing.assert_array_equal(got_images, expected_images)
    np.testing.assert_allclose(got_labels, expected_labels, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(got_images[1], images[0])  # the whole image pasted
    np.testing.assert_array_equal(got_images[2], images[2])  # nothing pasted
    np.testing.assert_allclose(got_labels[0], [54 / 63, 0, 0, 9 / 63], rtol=1e-6)  # 3 x 3 of 7 x 9


def test_the_cutmix_box_is_clipped_at_the_border_and_the_labels_follow_the_clipped_box():
    # Given draws: λ = 0.75 -> sides floor(8 * 0.5) = 4 and floor(6 * 0.5) = 3, centred on
    # (row, column) = (0, 5): rows -2..1 clipped to 0..1, columns 4..6 clipped to 4..5.
    images = _images(batch=2, height=8, width=6, channels=1)
    labels = _labels(batch=2, classes=2)
    centres = iter([np.array([0, 4], "int32"), np.array([5, 1], "int32")])
    mixup_draws, cutmix_draws = augment.draw_mixing(
        permutation=lambda: np.array([1, 0], "int32"),
        beta=lambda alpha: np.array([0.75, 0.75], "float32"),
        randint=lambda low, high: next(centres), height=8, width=6, mixup=False, cutmix=True)
    assert mixup_draws is None
    partner, box = cutmix_draws
    assert [_numpy(v).tolist() for v in box] == [[0, 2], [2, 6], [4, 0], [6, 3]]
    got_images, got_labels = (_numpy(v) for v in augment.cutmix(images, labels, partner, box))
    expected_images, expected_labels = mix_reference(images, labels, [1, 0], box=box)
    np.testing.assert_array_equal(got_images, expected_images)
    # Example 0: 2 x 2 = 4 pixels of 48 pasted (not the 1 - λ = 1/4 of the unclipped box).
    np.testing.assert_allclose(got_labels[0], [44 / 48, 4 / 48], rtol=1e-6)
    np.testing.assert_allclose(got_labels, expected_labels, rtol=1e-6)


def test_the_mixing_layer_returns_exactly_what_its_draws_give_and_is_seeded():
    images, labels = _images(batch=16, height=8, width=8, channels=1), _labels(batch=16)
    data_in = {"images": images, "labels": labels}
    layer = augment.RandomMix(mixup=True, cutmix=True, seed=7)
    twin = augment.RandomMix(mixup=True, cutmix=True, seed=7)
    got = layer(data_in, training=True)
    mixup_draws, cutmix_draws = twin.draw(16, 8, 8)
    mixup_draws = tuple(_numpy(v) for v in mixup_draws)
    partner, box = _numpy(cutmix_draws[0]), tuple(_numpy(v) for v in cutmix_draws[1])
    assert sorted(mixup_draws[0].tolist()) == sorted(partner.tolist()) == list(range(16))
    mixed = mix_reference(images, labels, mixup_draws[0], weight=mixup_draws[1])
    expected = mix_reference(*mixed, partner, box=box)
    np.testing.assert_allclose(_numpy(got["images"]), expected[0], rtol=1e-6)
    np.testing.assert_allclose(_numpy(got["labels"]), expected[1], rtol=1e-6)
    # Seeded: a third twin's first call gives the same batch, the next call another one.
    again = augment.RandomMix(mixup=True, cutmix=True, seed=7)(data_in, training=True)
    np.testing.assert_array_equal(_numpy(again["images"]), _numpy(got["images"]))
    second = layer(data_in, training=True)
    assert not np.array_equal(_numpy(second["images"]), _numpy(got["images"]))
    # Not training: the identity.
    np.testing.assert_array_equal(_numpy(layer(data_in, training=False)["images"]), images)


def test_mixing_draws_follow_their_distributions():
    layer = augment.RandomMix(mixup=True, cutmix=True, seed=1)
    (partner, weight), (cut_partner, (top, bottom, left, right)) = (
        tuple(_numpy(v) if not isinstance(v, tuple) else tuple(_numpy(u) for u in v) for v in d)
        for d in layer.draw(4000, 28, 32))
    assert sorted(partner.tolist()) == list(range(4000)) and not np.array_equal(partner, cut_partner)
    # MixUp: Beta(0.2, 0.2), mean 1/2, most draws near 0 or 1.
    assert 0.47 < weight.mean() < 0.53 and ((weight < 0.1) | (weight > 0.9)).mean() > 0.6
    # CutMix: boxes inside the image; Beta(1, 1) gives an unclipped share 1 - λ uniform, so with
    # clipping the pasted share has mean below 1/2.
    assert (0 <= top).all() and (top <= bottom).all() and (bottom <= 28).all()
    assert (0 <= left).all() and (left <= right).all() and (right <= 32).all()
    share = (bottom - top) * (right - left) / (28 * 32)
    assert 0.2 < share.mean() < 0.45 and share.max() > 0.9 and share.min() == 0


def test_the_mixing_layer_round_trips_its_config_and_refuses_bad_inputs():
    layer = augment.RandomMix(mixup=False, cutmix=True, cutmix_alpha=0.5, seed=5, name="mix")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(clone) is augment.RandomMix
    assert (clone.mixup, clone.cutmix, clone.mixup_alpha, clone.cutmix_alpha, clone.seed,
            clone.name) == (False, True, 0.2, 0.5, 5, "mix")
    with pytest.raises(ValueError, match="static size"):
        clone.build({"images": (None, None, None, 3), "labels": (None, 10)})
    with pytest.raises(ValueError, match="one-hot labels"):
        clone.build({"images": (None, 8, 8, 3), "labels": (None,)})
    (mixer,) = [data.mixing_layer(("flip", "mixup", "cutmix"), seed=0)]
    assert (mixer.mixup, mixer.cutmix, mixer.seed) == (True, True, 1)  # not flip's seed
    assert data.mixing_layer(("flip", "crop"), seed=0) is None


def test_the_mixing_model_trains_on_mixed_labels_and_evaluates_clean():
    images, labels = _images(batch=16, height=8, width=8, channels=1) / 1000, _labels(batch=16)
    net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(4)])
    model = augment.MixingModel(net, augment.RandomMix(mixup=True, cutmix=True, seed=0),
                                augment=[augment.RandomShiftFlip(seed=0)])
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    before = net.get_weights()[0].copy()
    history = model.fit(images, labels, batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all() and not np.array_equal(before, net.get_weights()[0])
    # Two draws of each kind per step (mixup: partner, λ; cutmix: partner, λ, row, column).
    assert _numpy(model.mixer.seed_generator.state).tolist()[1] == 2 * 6
    np.testing.assert_array_equal(_numpy(model(images)), _numpy(net(images)))  # no mixing
    clone = augment.MixingModel.from_config(model.get_config())
    assert type(clone.mixer) is augment.RandomMix and len(clone.augment) == 1


@pytest.mark.skipif(not HAS_TF, reason="the tf.data path needs TensorFlow")
def test_the_tf_data_path_mixes_like_the_device_op_for_the_same_draws():
    import tensorflow as tf
    import tensorflow.experimental.numpy as tnp

    images, labels = _images(batch=6, height=7, width=9, channels=2), _labels()
    weight = np.array([0.0, 0.25, 0.5, 0.9, 1.0, 0.013], "float32")
    box = tuple(np.array(v, "int32") for v in ([1, 0, 3, 6, 0, 4], [4, 7, 3, 7, 2, 5],
                                              [2, 0, 0, 0, 7, 8], [5, 9, 9, 9, 9, 9]))
    args = ((PARTNER, weight), (PARTNER[::-1].copy(), box))
    on_device = augment.mix_batch(images, labels, *args)
    on_tf = augment.mix_batch(tf.constant(images), tf.constant(labels),
                              *tf.nest.map_structure(tf.constant, args), xp=tnp)
    for device_value, tf_value in zip(on_device, on_tf):
        np.testing.assert_array_equal(_numpy(device_value), np.asarray(tf_value))
    # The pipeline's own function in a tf.data map (CutMix only): each image is its own pixels and
    # one partner's, and its label keeps exactly the share of its own pixels.
    batch, onehot = _images(batch=16, height=8, width=8, channels=1), _labels(batch=16, classes=16)
    mix = data.pipeline._mix_tf(("cutmix",))
    mapped = tf.data.Dataset.from_tensors((batch, onehot)).map(lambda x, y: mix(x, y, KEY))
    assert mapped.element_spec[0].shape == (16, 8, 8, 1)
    (got_images, got_labels), = mapped.as_numpy_iterator()
    assert sum((got_images[b] != batch[b]).any() for b in range(16)) > 8  # Beta(1, 1): most
    for b in range(16):
        pasted = got_images[b] != batch[b]
        if pasted.any():
            partner = int(np.argmax(got_labels[b] * (np.arange(16) != b)))
            np.testing.assert_array_equal(got_images[b][pasted], batch[partner][pasted])
        own = 1 - pasted.mean()
        assert np.isclose(got_labels[b, b], own, atol=1e-6) or not pasted.any()
    (again, _), = tf.data.Dataset.from_tensors((batch, onehot)).map(
        lambda x, y: mix(x, y, KEY)).as_numpy_iterator()
    np.testing.assert_array_equal(got_images, again)  # the batch's key alone draws


def test_mixing_needs_classification_and_cutmix_needs_images():
    from types import SimpleNamespace

    vectors = SimpleNamespace(name="v", input_shape=(5,), task="classification")
    with pytest.raises(ValueError, match="need images"):
        data.check_augment("cutmix", vectors)
    with pytest.raises(ValueError, match="classification"):
        data.check_augment("mixup", SimpleNamespace(name="r", input_shape=(5,), task="regression"))
    # MixUp alone is allowed on vectors, as before, and mixes them like images.
    x, y = _images(batch=6, height=1, width=5, channels=1).reshape(6, 5), _labels()
    weight = np.linspace(0, 1, 6).astype("float32")
    got = augment.mixup(x, y, PARTNER, weight)
    np.testing.assert_allclose(_numpy(got[0]), weight[:, None] * x + (1 - weight[:, None]) * x[PARTNER],
                               rtol=1e-6)
    assert data.check_augment("mixup", vectors) == ("mixup",)


class _AllClassZero(keras.layers.Layer):
    """A stand-in mixer that relabels every example as class 0 (images unchanged)."""

    def call(self, data, training=False):
        return {"images": data["images"], "labels": keras.ops.one_hot(
            keras.ops.zeros_like(keras.ops.argmax(data["labels"], axis=1)), 4)}


def test_the_loss_and_the_training_metrics_see_the_mixers_labels():
    images, labels = _images(batch=8, height=4, width=4, channels=1) / 100, _labels(batch=8)
    net = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(4)])
    model = augment.MixingModel(net, _AllClassZero(name="all_class_zero"))
    model.compile(optimizer=keras.optimizers.SGD(0.0),  # no update: the loss is net's on images
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    logs = model.train_on_batch(images, labels, return_dict=True)
    logits = _numpy(net(images))
    zeros = np.eye(4, dtype="float32")[np.zeros(8, int)]
    cross_entropy = keras.losses.CategoricalCrossentropy(from_logits=True)
    np.testing.assert_allclose(logs["loss"], _numpy(cross_entropy(zeros, logits)), rtol=1e-5)
    assert not np.isclose(logs["loss"], _numpy(cross_entropy(labels, logits)), rtol=1e-3)
    assert logs["accuracy"] == pytest.approx((logits.argmax(axis=1) == 0).mean())
    # evaluate: clean labels, no mixer.
    evaluated = model.evaluate(images, labels, verbose=0, return_dict=True)
    assert evaluated["accuracy"] == pytest.approx((logits.argmax(axis=1) == labels.argmax(1)).mean())


# ---- Random erasing ------------------------------------------------------------------------------


def erase_reference(images, top, left, box_height, box_width, erased, noise):
    """NumPy, image by image: the box of each erased image takes the noise."""
    out = images.copy()
    for b in range(len(images)):
        if erased[b]:
            rows = slice(top[b], top[b] + box_height[b])
            cols = slice(left[b], left[b] + box_width[b])
            out[b, rows, cols] = noise[b, rows, cols]
    return out


ERASE_DRAWS = (np.array([0, 2, 5, 1, 0, 3], "int32"), np.array([0, 3, 1, 8, 4, 0], "int32"),
               np.array([7, 2, 1, 6, 3, 4], "int32"), np.array([9, 4, 8, 1, 2, 3], "int32"),
               np.array([True, True, True, False, True, True]))


def test_erase_gives_the_reference_pixels_for_given_draws():
    images = _images()
    noise = -_images(seed=1)  # negative: told apart from every image pixel
    got = augment.erase(keras.ops.convert_to_tensor(images), *map(keras.ops.convert_to_tensor,
                                                                  ERASE_DRAWS),
                        keras.ops.convert_to_tensor(noise))
    np.testing.assert_array_equal(_numpy(got), erase_reference(images, *ERASE_DRAWS, noise))
    assert (_numpy(got)[0] < 0).all()  # a box of the whole 7 x 9 image
    np.testing.assert_array_equal(_numpy(got)[3], images[3])  # not erased


def test_erasing_draws_keep_the_box_inside_and_follow_the_papers_ranges():
    layer = augment.RandomErasing(seed=0)
    top, left, box_height, box_width, erased = map(_numpy, layer.draw(4000, 28, 28))
    assert (box_height >= 1).all() and (box_width >= 1).all()
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + box_height <= 28).all() and (left + box_width <= 28).all()
    assert abs(erased.mean() - 0.5) < 0.03
    share = box_height * box_width / 784
    # Areas 2-40 % of the image (rounding and clipping move a box by under a pixel's row).
    assert share.min() > 0.01 and share.max() < 0.45 and abs(np.median(share) - 0.21) < 0.03
    ratio = box_height / box_width
    assert ratio.min() < 0.4 and ratio.max() > 2.5 and abs(np.median(np.log(ratio))) < 0.1
    # Corners: every position that keeps the box inside is used, not only the top-left.
    assert top.max() > 20 and left.max() > 20


def test_the_erasing_layer_is_seeded_exact_and_the_identity_outside_training():
    images = np.random.default_rng(0).uniform(size=(64, 12, 10, 1)).astype("float32") + 2.0
    layer = augment.RandomErasing(seed=3)
    out = _numpy(layer(images, training=True))
    again = _numpy(augment.RandomErasing(seed=3)(images, training=True))
    np.testing.assert_array_equal(out, again)
    changed = (out != images).reshape(64, -1).any(axis=1)
    assert 16 < changed.sum() < 48  # about half the images get a box
    for b in np.flatnonzero(changed):
        where = np.argwhere(out[b, :, :, 0] != images[b, :, :, 0])
        (r0, c0), (r1, c1) = where.min(0), where.max(0)
        box = out[b, r0:r1 + 1, c0:c1 + 1, 0]
        assert ((box >= 0) & (box < 1)).all()  # a rectangle of noise in [0, 1)
    np.testing.assert_array_equal(_numpy(layer(images, training=False)), images)
    clone = augment.RandomErasing.from_config(layer.get_config())
    assert (clone.probability, clone.seed) == (0.5, 3)
    with pytest.raises(ValueError, match="static size"):
        augment.RandomErasing()(keras.Input((None, None, 1)))
    with pytest.raises(ValueError, match=r"probability must be in \[0, 1\], received 1.5"):
        augment.RandomErasing(probability=1.5)


def test_erase_is_an_image_augmentation_that_runs_last_with_its_own_seed():
    layers = data.image_augmentation_layers(("erase", "flip", "crop"), seed=4)
    assert [type(layer) for layer in layers] == [augment.RandomShiftFlip, augment.RandomErasing]
    assert layers[1].seed == 4 + data.pipeline.ERASING_SEED_OFFSET
    info = data.dataset_info("digits")
    assert data.pipeline.check_augment("flip,erase", info) == ("flip", "erase")
    with pytest.raises(ValueError, match=r"Augmentations \['erase'\] need images"):
        data.pipeline.check_augment("erase", data.dataset_info("mnist1d"))


@pytest.mark.skipif(not HAS_TF, reason="the tf.data path needs TensorFlow")
def test_the_tf_data_path_erases_like_the_device_op_for_the_same_draws():
    import tensorflow as tf
    import tensorflow.experimental.numpy as tnp

    images, noise = _images(), -_images(seed=1)
    on_tf = augment.erase(tf.constant(images), *map(tf.constant, ERASE_DRAWS), tf.constant(noise),
                          xp=tnp)
    np.testing.assert_array_equal(np.asarray(on_tf), erase_reference(images, *ERASE_DRAWS, noise))
    # The pipeline's own function in a tf.data map: static shape, seeded, boxes of noise.
    batch = np.full((32, 8, 8, 1), 5.0, "float32")
    apply = data.pipeline._erase_tf(("erase",))
    mapped = tf.data.Dataset.from_tensors(batch).map(lambda images: apply(images, KEY))
    assert mapped.element_spec.shape == (32, 8, 8, 1)
    (got,) = mapped.as_numpy_iterator()
    changed = (got != 5.0).reshape(32, -1).any(axis=1)
    assert 4 < changed.sum() < 28
    assert ((got == 5.0) | ((got >= 0) & (got < 1))).all()
    (again,) = tf.data.Dataset.from_tensors(batch).map(
        lambda images: apply(images, KEY)).as_numpy_iterator()
    np.testing.assert_array_equal(got, again)
    assert data.pipeline._erase_tf(("flip",)) is None
