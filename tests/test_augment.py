"""glonet_keras.data.augment: flips and integer shifts give exactly the pixels they claim, reproducibly."""

import importlib.util

import keras
import numpy as np
import pytest

from glonet_keras.data import augment
from glonet_keras import data

HAS_TF = importlib.util.find_spec("tensorflow") is not None


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
    apply = data.pipeline._shift_flip_tf(("flip", "crop"), seed=0)
    mapped = tf.data.Dataset.from_tensors(batch).map(apply)
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
        data.pipeline._shift_flip_tf(("flip", "crop"), seed=0)).as_numpy_iterator()
    np.testing.assert_array_equal(got, again)  # seeded
