"""analysis.recalibrate_batch_norm: exact population statistics, layer by layer in graph order."""

import keras
import numpy as np
import pytest

from glonet_keras import analysis


def two_bn_conv_model():
    inputs = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv_1")(inputs)
    h = keras.layers.BatchNormalization(name="norm_1")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.Conv2D(3, 3, name="conv_2")(h)
    h = keras.layers.BatchNormalization(name="norm_2")(h)
    outputs = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(inputs, outputs, name="two_bn")


def inputs(count=50, seed=0):
    return np.random.default_rng(seed).normal(2.0, 3.0, size=(count, 8, 8, 2)).astype("float32")


def expected_statistics(model, x):
    """numpy: each BN's input statistics, the earlier BN already set to its own (inference mode)."""
    first = np.asarray(model.get_layer("conv_1")(x), "float64")
    mean_1, variance_1 = first.mean((0, 1, 2)), first.var((0, 1, 2))
    norm_1 = model.get_layer("norm_1")
    gamma, beta = np.asarray(norm_1.gamma), np.asarray(norm_1.beta)
    normalised = (first - mean_1) / np.sqrt(variance_1 + norm_1.epsilon) * gamma + beta
    second = np.asarray(model.get_layer("conv_2")(np.maximum(normalised, 0).astype("float32")),
                        "float64")
    return (mean_1, variance_1), (second.mean((0, 1, 2)), second.var((0, 1, 2)))


def statistics(layer):
    return np.asarray(layer.moving_mean), np.asarray(layer.moving_variance)


def test_two_bn_layers_get_their_inputs_population_statistics_in_graph_order():
    model = two_bn_conv_model()
    norm_2 = model.get_layer("norm_2")
    norm_2.gamma.assign(np.array([2.0, 0.5, 1.5], "float32"))  # Not the identity: order matters.
    model.get_layer("norm_1").gamma.assign(np.array([2.0, 0.5, 1.5, 3.0], "float32"))
    x = inputs()
    weights = [np.asarray(w) for w in model.trainable_weights]
    recalibrated = analysis.recalibrate_batch_norm(model, x, batch_size=7)
    assert [layer.name for layer in recalibrated] == ["norm_1", "norm_2"]
    for layer, (mean, variance) in zip(recalibrated, expected_statistics(model, x)):
        np.testing.assert_allclose(statistics(layer)[0], mean, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(statistics(layer)[1], variance, atol=1e-5, rtol=1e-5)
    for before, after in zip(weights, model.trainable_weights):  # Only the moving statistics.
        np.testing.assert_array_equal(before, np.asarray(after))
    # The batch size does not change the result, and a second call changes nothing.
    first = [statistics(layer) for layer in recalibrated]
    analysis.recalibrate_batch_norm(model, x, batch_size=256)
    for (mean, variance), layer in zip(first, recalibrated):
        np.testing.assert_allclose(statistics(layer)[0], mean, atol=1e-6)
        np.testing.assert_allclose(statistics(layer)[1], variance, atol=1e-6)


def test_nested_and_sequential_models_are_walked_into():
    inner = two_bn_conv_model()
    outer_input = keras.Input((8, 8, 2))
    outer = keras.Model(outer_input, keras.layers.Dense(3)(inner(outer_input)))
    x = inputs(seed=1)
    assert [layer.name for layer in analysis.recalibrate_batch_norm(outer, x)] == \
        ["norm_1", "norm_2"]
    for layer, (mean, variance) in zip(analysis.batch_norm_layers(inner),
                                       expected_statistics(inner, x)):
        np.testing.assert_allclose(statistics(layer)[0], mean, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(statistics(layer)[1], variance, atol=1e-5, rtol=1e-5)
    sequential = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                                   keras.layers.BatchNormalization()])
    features = np.random.default_rng(2).normal(size=(30, 4)).astype("float32")
    (layer,) = analysis.recalibrate_batch_norm(sequential, features)
    dense = np.asarray(sequential.layers[0](features), "float64")
    np.testing.assert_allclose(statistics(layer)[0], dense.mean(0), atol=1e-5)
    np.testing.assert_allclose(statistics(layer)[1], dense.var(0), atol=1e-5)


def test_a_model_without_batch_norm_is_refused():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    assert analysis.batch_norm_layers(model) == []
    with pytest.raises(ValueError, match="no BatchNormalization layer"):
        analysis.recalibrate_batch_norm(model, np.ones((3, 4), "float32"))


class _Hidden(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.norm = keras.layers.BatchNormalization()

    def call(self, x):
        return self.norm(x)


def test_a_batch_norm_it_cannot_reach_in_order_is_refused():
    inputs_ = keras.Input((4,))
    model = keras.Model(inputs_, _Hidden(name="hidden")(keras.layers.Dense(3)(inputs_)))
    with pytest.raises(ValueError, match="inside 'hidden'"):
        analysis.recalibrate_batch_norm(model, np.ones((3, 4), "float32"))


@pytest.mark.parametrize("x, words", [
    (np.zeros((0, 8, 8, 2), "float32"), "`x` is empty"),
    (np.zeros((3, 8, 8), "float32"), r"`x` must have shape \(examples, 8, 8, 2\)"),
    (np.zeros((3, 8, 7, 2), "float32"), r"`x` must have shape"),
    (np.full((3, 8, 8, 2), "a"), "`x` must hold numbers"),
    (np.full((3, 8, 8, 2), np.nan, "float32"), "`x` contains NaN"),
    ([np.zeros((3, 8, 8, 2)), np.zeros((3, 8, 8, 2))], r"`x` must hold 1 array"),
])
def test_bad_inputs_are_refused_naming_x(x, words):
    with pytest.raises(ValueError, match=words):
        analysis.recalibrate_batch_norm(two_bn_conv_model(), x)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, None])
def test_a_bad_batch_size_is_refused(batch_size):
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer"):
        analysis.recalibrate_batch_norm(two_bn_conv_model(), inputs(4), batch_size=batch_size)
