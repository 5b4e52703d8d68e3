import importlib.util
import json

import keras
import numpy as np
import pytest

import glonet_keras
from glonet_keras.layers import GlobalAggregation
from tests import harness


def _taps(count, shape=(3, 4), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype("float32") for _ in range(count)]


def test_importable_from_package_root():
    assert glonet_keras.GlobalAggregation is GlobalAggregation


@pytest.mark.parametrize("count", [1, 2, 7])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_aggregate_matches_numpy(count, mode):
    taps = _taps(count)
    reducer = np.sum if mode == "sum" else np.mean
    out = keras.ops.convert_to_numpy(GlobalAggregation(mode=mode)(taps))
    np.testing.assert_allclose(out, reducer(np.stack(taps), axis=0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("count", [1, 2, 5])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_cumulative_gives_every_prefix(count, mode):
    taps = _taps(count, shape=(2, 3, 4))
    out = keras.ops.convert_to_numpy(GlobalAggregation(mode=mode, cumulative=True)(taps))
    assert out.shape == (2, count, 3, 4)
    reducer = np.sum if mode == "sum" else np.mean
    for k in range(count):
        expected = reducer(np.stack(taps[: k + 1]), axis=0)
        np.testing.assert_allclose(out[:, k], expected, rtol=1e-6, atol=1e-6)


def test_default_mode_is_the_papers_plain_sum():
    layer = GlobalAggregation()
    assert layer.mode == "sum" and layer.cumulative is False


@pytest.mark.parametrize("cumulative", [False, True])
def test_compute_output_shape_is_exact(cumulative):
    layer = GlobalAggregation(cumulative=cumulative)
    shapes = [(None, 5, 7), (None, 5, 7), (None, 5, 7)]
    expected = (None, 3, 5, 7) if cumulative else (None, 5, 7)
    assert layer.compute_output_shape(shapes) == expected
    symbolic = layer([keras.Input((5, 7)) for _ in range(3)])
    assert tuple(symbolic.shape) == expected
    concrete = layer(_taps(3, shape=(2, 5, 7)))
    assert tuple(concrete.shape) == (2,) + expected[1:]


def test_compute_output_shape_keeps_dims_known_in_any_input():
    assert GlobalAggregation().compute_output_shape([(None, None, 4), (None, 6, 4)]) == (None, 6, 4)


def test_build_and_output_shape_take_tensorflow_shapes():
    # What a layer receives when TensorFlow code (or Keras' own TF paths) hands it shapes.
    tf = pytest.importorskip("tensorflow")
    shapes = [tf.TensorShape([None, 5, 7]), tf.TensorShape([None, 5, 7])]
    layer = GlobalAggregation(cumulative=True)
    layer.build(shapes)
    assert layer.built and layer.compute_output_shape(shapes) == (None, 2, 5, 7)
    assert GlobalAggregation().compute_output_shape(tf.TensorShape([None, 3, 4])) == (None, 4)
    assert GlobalAggregation().compute_output_shape([(None, np.int64(5))] * 2) == (None, 5)
    with pytest.raises(ValueError, match=r"input 1 has shape \(None, 6\)"):
        GlobalAggregation().build([tf.TensorShape([None, 5]), tf.TensorShape([None, 6])])


def test_not_a_list_is_rejected():
    with pytest.raises(ValueError, match="non-empty list of tensors"):
        GlobalAggregation()(np.ones((2, 3), "float32"))


def test_empty_list_is_rejected():
    with pytest.raises(ValueError, match="non-empty list of tensors"):
        GlobalAggregation().build([])


def test_shape_mismatch_names_index_and_both_shapes():
    inputs = [keras.Input((4,)), keras.Input((4,)), keras.Input((5,))]
    with pytest.raises(ValueError) as error:
        GlobalAggregation()(inputs)
    message = str(error.value)
    assert "input 2" in message and "(None, 4)" in message and "(None, 5)" in message


def test_rank_mismatch_is_rejected():
    with pytest.raises(ValueError, match="input 1 has shape"):
        GlobalAggregation()([keras.Input((4,)), keras.Input((4, 1))])


def test_unknown_mode_lists_allowed_modes():
    with pytest.raises(ValueError, match=r"'max'.*\['sum', 'mean'\]"):
        GlobalAggregation(mode="max")


def test_config_and_serialization_round_trip():
    layer = GlobalAggregation(mode="mean", cumulative=True, name="agg")
    config = json.loads(json.dumps(layer.get_config()))
    clone = GlobalAggregation.from_config(config)
    assert (clone.mode, clone.cumulative, clone.name) == ("mean", True, "agg")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, GlobalAggregation) and restored.mode == "mean"


def test_functional_model_with_layer_round_trips_keras_file(tmp_path):
    inputs = keras.Input((4,), name="features")
    a = keras.layers.Dense(3, name="a")(inputs)
    b = keras.layers.Dense(3, name="b")(a)
    model = keras.Model(inputs, GlobalAggregation(name="glonet_aggregation")([a, b]))
    path = str(tmp_path / "agg.keras")
    model.save(path)
    x = _taps(1, shape=(5, 4))[0]
    np.testing.assert_array_equal(keras.saving.load_model(path).predict(x, verbose=0),
                                  model.predict(x, verbose=0))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_honours_dtype_policies(policy):
    layer = GlobalAggregation(dtype=policy)
    out = layer(_taps(3))
    expected = "float16" if policy == "mixed_float16" else "bfloat16"
    assert keras.backend.standardize_dtype(out.dtype) == expected
    assert layer.compute_dtype == expected


def test_runs_on_jax_and_torch_backends():
    script = """
        import numpy as np, keras
        from glonet_keras.layers import GlobalAggregation
        taps = [np.full((2, 3), float(i), "float32") for i in range(1, 4)]
        total = keras.ops.convert_to_numpy(GlobalAggregation()(taps))
        prefix = keras.ops.convert_to_numpy(GlobalAggregation("mean", cumulative=True)(taps))
        print("OUT", total[0, 0], prefix[0, :, 0].tolist())
    """
    output = harness.run_on_backend("jax", script)
    assert "OUT 6.0 [1.0, 1.5, 2.0]" in output
    if importlib.util.find_spec("torch") is None:  # optional: not in the test extra (README)
        pytest.skip("PyTorch is not installed; the JAX run above covers a non-TF backend")
    assert "OUT 6.0 [1.0, 1.5, 2.0]" in harness.run_on_backend("torch", script)
