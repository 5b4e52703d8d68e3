"""The dtype and quantization contract of every model family (keras-hub's precision and
quantization tests, plus `.keras` files, presets, analysis and SavedModel export)."""

import warnings

import keras
import numpy as np
import pytest

import glonet_keras as g
from glonet_keras import analysis
from tests import harness

TINY_MLP = dict(num_blocks=2, width=8, num_classes=3, input_shape=(6,))
TINY_CNN = dict(depth=8, width=2, num_classes=3, input_shape=(8, 8, 2))
TINY_VIT = dict(num_blocks=2, hidden_dim=8, num_heads=2, mlp_dim=8, patch_size=4, num_classes=3,
                input_shape=(8, 8, 2))
# Every class, and the scanned GloNetMLP (a DenseStack instead of Dense blocks).
CASES = {
    "GloNetMLP": (g.GloNetMLP, dict(TINY_MLP, include_stem=True)),
    "GloNetMLP-scan": (g.GloNetMLP, dict(TINY_MLP, scan=True, normalization="layer")),
    "ResNetMLP": (g.ResNetMLP, TINY_MLP),
    "PlainMLP": (g.PlainMLP, TINY_MLP),
    "GloNetCNN": (g.GloNetCNN, TINY_CNN),
    "ResNetCNN": (g.ResNetCNN, TINY_CNN),
    "PlainCNN": (g.PlainCNN, TINY_CNN),
    "GloNetViT": (g.GloNetViT, dict(TINY_VIT, include_stem=True)),
    "ViT": (g.ViT, TINY_VIT),
}
IDS = sorted(CASES)


@pytest.fixture(autouse=True)
def _quiet_quantize():
    # Model.quantize warns once per layer without a quantized form (activations, convolutions).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a `quantize` method.*")
        yield


# The fast suite checks the MLPs (a scanned one included) and GloNetCNN; `make test-slow` every class,
# every policy, every mode and the exports (about 5 minutes on 2 cores).
FAST = {"GloNetMLP", "GloNetMLP-scan", "GloNetCNN", "PlainMLP"}


@pytest.mark.parametrize("name", harness.slow_where(IDS, lambda name: name not in FAST))
def test_mixed_float16(name):
    harness.check_precision(*CASES[name], "mixed_float16")


@pytest.mark.parametrize("name", harness.slow_where(IDS, lambda name: name != "GloNetMLP"))
def test_mixed_bfloat16(name):
    harness.check_precision(*CASES[name], "mixed_bfloat16")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["GloNetMLP", "GloNetCNN", "ViT"])
def test_pure_bfloat16(name):
    harness.check_precision(*CASES[name], "bfloat16")


@pytest.mark.parametrize("name", harness.slow_where(IDS, lambda name: name != "GloNetMLP"))
def test_policy_map_round_trip(name, tmp_path):
    harness.check_policy_map(*CASES[name], tmp_path)


def test_policy_map_with_a_float32_tail_gives_float32_logits(tmp_path):
    model = harness.check_policy_map(
        *CASES["GloNetMLP"], tmp_path, entries={"glonet_aggregation": "float32", "head": "float32"})
    assert model.get_layer("block_1_dense").compute_dtype == "float16"
    output = model(harness.random_inputs(model))
    assert keras.backend.standardize_dtype(output.dtype) == "float32"


@pytest.mark.parametrize("name", harness.slow_where(IDS, lambda name: name != "GloNetMLP"))
def test_int8_round_trips(name, tmp_path):
    harness.check_quantization(*CASES[name], "int8", tmp_path)


@pytest.mark.parametrize("name", harness.slow_where(IDS, lambda name: name != "GloNetMLP-scan"))
def test_float8_round_trips(name, tmp_path):
    harness.check_quantization(*CASES[name], "float8", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", IDS)
def test_quantized_saved_model_export(name, tmp_path):
    pytest.importorskip("tensorflow")
    harness.check_quantization(*CASES[name], "int8", tmp_path, export=True)


def test_quantize_keeps_user_filters_and_the_head_float():
    cls, kwargs = CASES["GloNetMLP"]
    model = cls(**kwargs)
    model.quantize("int8", filters="block_")
    modes = {layer.name: layer.quantization_mode for layer in model.layers
             if isinstance(layer, keras.layers.Dense)}
    assert modes == {"stem": None, "block_1_dense": "int8", "block_2_dense": "int8", "head": None}


def test_a_quantized_head_is_refused_by_block_contributions():
    cls, kwargs = CASES["GloNetMLP"]
    model = cls(**kwargs)
    model.get_layer("head").quantize("int8")
    x = harness.random_inputs(model)
    with pytest.raises(ValueError, match="head of 'glonet_mlp' is quantized"):
        analysis.block_contributions(model, x)


def test_a_preset_dtype_may_name_only_dtype_policies():
    cls, kwargs = CASES["GloNetMLP"]
    config = cls(**kwargs).get_config()
    hostile = {"module": "glonet_keras", "class_name": "GloNetMLP",
               "config": {"num_blocks": 10**6}, "registered_name": "glonet_keras>GloNetMLP"}
    with pytest.raises(ValueError, match="serialised DTypePolicyMap"):
        cls.from_config({**config, "dtype": hostile})
    nested = keras.dtype_policies.serialize(keras.dtype_policies.DTypePolicyMap("float32"))
    nested["config"]["policy_map"] = {"head": hostile}
    with pytest.raises(ValueError, match="GloNetMLP"):
        cls.from_config({**config, "dtype": nested})


def test_glonet_model_compile_refuses_xla_for_a_dense_stack():
    model = g.GloNetMLP(**CASES["GloNetMLP-scan"][1])
    if keras.backend.backend() == "tensorflow":
        with pytest.raises(ValueError, match="jit_compile=False"):
            model.compile("sgd", "mse", jit_compile=True)
        model.compile("sgd", "mse")
        assert model.jit_compile is False


def test_any_model_holding_a_dense_stack_trains_under_jit_compile_true():
    # The raw InvalidArgumentError of TF's XLA ("fixed tensor list size") was what a user's own
    # model met; Keras now reads DenseStack.supports_jit and runs the step without XLA.
    inputs = keras.Input((4,))
    outputs = keras.layers.Flatten()(g.layers.DenseStack(2, 4)(inputs))
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "mse", jit_compile=True)
    x = np.ones((4, 4), "float32")
    model.fit(x, np.zeros((4, 8), "float32"), verbose=0)
    if keras.backend.backend() == "tensorflow":
        assert model.jit_compile is False
