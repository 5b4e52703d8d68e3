"""The scanned block stack: GloNetMLP(scan=True) equals the unrolled model with the same weights.

Outputs, gradients, early exits, contributions and truncation are compared after converting one
form into the other (`to_scanned` / `to_unrolled`); the graph's size must not grow with depth.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import glonet_keras as g
from glonet_keras import analysis, skeleton
from glonet_keras.layers import DenseStack, GlobalAggregation
from glonet_keras.models.mlp import to_scanned, to_unrolled
from tests import harness

CONFIG = dict(num_blocks=6, width=8, num_classes=3, input_shape=(5,), activation="leaky_relu")


def _pair(**overrides):
    unrolled = g.GloNetMLP(**{**CONFIG, **overrides})
    head = unrolled.get_layer("head")
    head.bias.assign(np.linspace(-1, 1, 3).astype("float32"))
    return unrolled, to_scanned(unrolled)


def _x(batch=9):
    return np.random.default_rng(0).normal(size=(batch, 5)).astype("float32")


@pytest.mark.parametrize("overrides", [{}, dict(normalization="layer", aggregation="mean"),
                                       dict(initializer="torch", dropout=0.2)])
def test_scanned_equals_unrolled(overrides):
    unrolled, scanned = _pair(**overrides)
    assert scanned.get_config()["scan"] is True and scanned.num_blocks == 6
    assert list(scanned.block_outputs) == ["blocks"]
    x = _x()
    assert harness.relative_error(scanned.predict(x, verbose=0), unrolled.predict(x, verbose=0)) < 1e-6
    np.testing.assert_allclose(analysis.early_exit_logits(scanned, x),
                               analysis.early_exit_logits(unrolled, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(analysis.block_contributions(scanned, x),
                               analysis.block_contributions(unrolled, x), rtol=1e-5, atol=1e-6)
    for k in (1, 4, 6):
        np.testing.assert_allclose(analysis.truncate(scanned, k).predict(x, verbose=0),
                                   analysis.truncate(unrolled, k).predict(x, verbose=0),
                                   rtol=1e-5, atol=1e-6)
    harness.check_glonet_contract(scanned, x)
    back = to_unrolled(scanned)
    np.testing.assert_array_equal(back.predict(x, verbose=0), unrolled.predict(x, verbose=0))


def test_gradients_are_equal():
    unrolled, scanned = _pair(normalization="layer")
    x, y = _x(), np.array([0, 1, 2] * 3)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def gradients(model):
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        return dict(zip([v.path for v in model.trainable_variables],
                        tape.gradient(value, model.trainable_variables)))

    g_unrolled, g_scanned = gradients(unrolled), gradients(scanned)
    # The scan sums the same float32 terms in another order, so single entries that nearly cancel
    # differ by a few 1e-5 of their own (tiny) size: an element-wise rtol measures that rounding,
    # not the gradient. Each gradient is compared against its own scale, as the decompositions are.
    pairs = [(g_scanned[name], g_unrolled[name]) for name in ("stem/kernel", "head/kernel", "head/bias")]
    for stacked, part, index in (("kernel", "dense", "kernel"), ("bias", "dense", "bias"),
                                 ("gamma", "norm", "gamma"), ("beta", "norm", "beta")):
        per_block = [g_unrolled[f"block_{i}_{part}/{index}"] for i in range(1, 7)]
        # Block by block, so a block whose gradient is small is not hidden by a larger one.
        pairs += [(g_scanned[f"blocks/{stacked}"][i], per_block[i]) for i in range(6)]
    for actual, expected in pairs:
        assert np.max(np.abs(expected)) > 0
        assert harness.relative_error(actual, expected) < 1e-5


def test_the_graph_does_not_grow_with_depth():
    shallow = g.GloNetMLP(num_blocks=4, width=4, input_shape=(3,), scan=True)
    deep = g.GloNetMLP(num_blocks=1000, width=4, input_shape=(3,), scan=True)
    assert [type(layer) for layer in deep.layers] == [type(layer) for layer in shallow.layers]
    assert deep.num_blocks == 1000 and analysis.truncate(deep, 3).count_params() == deep.count_params()
    # Every block draws its own weights (a Keras initializer called twice repeats itself).
    kernel = keras.ops.convert_to_numpy(deep.get_layer("blocks").kernel)
    assert len({kernel[i].tobytes() for i in range(1000)}) == 1000
    std = kernel.std()
    assert 0.6 < std / np.sqrt(2 / 4) < 1.4  # He normal with fan-in 4, not 4 x 1000


def test_keras_file_and_config_round_trip(tmp_path):
    _, scanned = _pair()
    path = os.path.join(tmp_path, "scanned.keras")
    scanned.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_config() == scanned.get_config()
    np.testing.assert_array_equal(loaded.predict(_x(), verbose=0), scanned.predict(_x(), verbose=0))
    assert skeleton.skeleton(loaded).stacked and skeleton.skeleton(loaded).num_blocks == 6


def test_trains_and_refuses_what_a_scan_cannot_do():
    model = g.GloNetMLP(**CONFIG, scan=True)
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _x(32), np.arange(32) % 3
    losses = [float(model.train_on_batch(x, y)) for _ in range(5)]
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="normalization None or 'layer'"):
        g.GloNetMLP(**CONFIG, scan=True, normalization="batch")
    with pytest.raises(ValueError, match="does not aggregate the stem"):
        g.GloNetMLP(**CONFIG, scan=True, include_stem=True)
    with pytest.raises(ValueError, match="`scan` must be True or False"):
        g.GloNetMLP(**CONFIG, scan="yes")
    with pytest.raises(ValueError, match="cannot be compiled with XLA"):
        model.compile("adam", "mse", jit_compile=True)
    with pytest.raises(ValueError, match="Only a GloNetMLP"):
        to_scanned(g.ResNetMLP(num_blocks=2, width=4, input_shape=(3,)))


def test_stacked_aggregation_and_stack_steps():
    stacked = np.random.default_rng(1).normal(size=(2, 4, 3)).astype("float32")
    for mode, reduce in (("sum", np.sum), ("mean", np.mean)):
        out = keras.ops.convert_to_numpy(GlobalAggregation(mode=mode)(stacked))
        np.testing.assert_allclose(out, reduce(stacked, axis=1), rtol=1e-6)
        prefix = keras.ops.convert_to_numpy(GlobalAggregation(mode=mode, cumulative=True)(stacked))
        for k in range(4):
            np.testing.assert_allclose(prefix[:, k], reduce(stacked[:, : k + 1], axis=1), rtol=1e-5)
    with pytest.raises(ValueError, match="rank >= 3"):
        GlobalAggregation()(np.zeros((2, 3), "float32"))
    stack = DenseStack(5, 3)
    h = np.ones((2, 3), "float32")
    full = keras.ops.convert_to_numpy(stack(h))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(stack(h, steps=2)), full[:, :2], rtol=1e-6)
    with pytest.raises(ValueError, match=r"`steps` must be an integer in \[1, 5\]"):
        stack(h, steps=6)
