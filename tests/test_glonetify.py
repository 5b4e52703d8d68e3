"""glonetify: GloNet superimposed on keras.applications.ResNet50 and on the library's baselines."""

import keras
import numpy as np
import pytest

import glonet_keras
from glonet_keras import ResNetCNN, ResNetMLP, analysis, glonetify

RTOL = 1e-5  # float32; mixed_float16 below is held to 2e-2 (see tests/test_analysis.py).


def _relative_error(actual, expected):
    expected = np.asarray(expected, dtype="float64")
    return np.abs(np.asarray(actual, dtype="float64") - expected).max() / np.abs(expected).max()


def _randomise_head_bias(model):
    head = model.get_layer("head")
    head.bias.assign(np.linspace(-0.5, 0.5, head.bias.shape[0]).astype("float32"))


@pytest.fixture(scope="module")
def resnet50():
    # 32x32 is ResNet50's smallest input: the whole test stays a few seconds on a CPU.
    backbone = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=7)
    names = [layer.name for layer in backbone.layers
             if layer.name.startswith("conv") and "_block" in layer.name and layer.name.endswith("_out")]
    return backbone, names


def test_resnet50_every_bottleneck_is_tapped_and_decomposes_exactly(resnet50):
    backbone, names = resnet50
    assert len(names) == 16  # 3 + 4 + 6 + 3 bottlenecks
    model = glonetify(backbone, names, num_classes=5)
    _randomise_head_bias(model)
    assert model.num_blocks == 16 and list(model.block_outputs) == [f"block_{i}" for i in range(1, 17)]
    layer_names = {layer.name for layer in model.layers}
    assert {f"tap_{i}" for i in range(1, 17)} <= layer_names
    assert {"glonet_aggregation", "head"} <= layer_names
    # Stages of 256, 512 and 1024 channels are projected to the last stage's 2048 (one map each).
    projections = sorted(n for n in layer_names if n.startswith("tap_projection"))
    assert projections == ["tap_projection_1024_to_2048", "tap_projection_256_to_2048",
                           "tap_projection_512_to_2048"]
    # The backbone's weights are shared, not copied; its own classifier is gone.
    assert model.get_layer("conv2_block1_out") is backbone.get_layer("conv2_block1_out")
    assert "predictions" not in layer_names

    x = np.random.default_rng(0).uniform(size=(3, 32, 32, 3)).astype("float32")
    output = model.predict(x, verbose=0)
    assert output.shape == (3, 5)
    contributions = analysis.block_contributions(model, x)
    assert contributions.shape == (3, 16, 5)
    assert _relative_error(contributions.sum(1) + analysis.head_bias(model), output) < RTOL

    exits = analysis.early_exit_logits(model, x)
    assert exits.shape == (3, 16, 5)
    truncated = analysis.truncate(model, 3)
    assert _relative_error(exits[:, 2], truncated.predict(x, verbose=0)) < RTOL
    # The first stage only: truncation stops the backbone graph at the third tap.
    assert not any(layer.name.startswith("conv3_") for layer in truncated.layers)


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_library_baselines_from_their_block_outputs(aggregation):
    cnn = ResNetCNN(depth=8, width=4, num_classes=10, input_shape=(8, 8, 1))
    model = glonetify(cnn, cnn.block_outputs, num_classes=3, aggregation=aggregation)
    _randomise_head_bias(model)
    assert model.num_blocks == 3
    x = np.random.default_rng(1).uniform(size=(4, 8, 8, 1)).astype("float32")
    output = model.predict(x, verbose=0)
    assert _relative_error(analysis.block_contributions(model, x).sum(1) + analysis.head_bias(model),
                           output) < RTOL
    exits = analysis.early_exit_logits(model, x)
    assert _relative_error(exits[:, 0], analysis.truncate(model, 1).predict(x, verbose=0)) < RTOL


def test_mlp_baseline_with_stem_round_trips_through_keras_file(tmp_path):
    mlp = ResNetMLP(num_blocks=3, width=6, num_classes=2, input_shape=(5,))
    model = glonetify(mlp, mlp.block_outputs, num_classes=4, stem_output="stem", dropout=0.1)
    _randomise_head_bias(model)
    x = np.random.default_rng(2).normal(size=(6, 5)).astype("float32")
    contributions = analysis.block_contributions(model, x)
    assert contributions.shape == (6, 4, 4)  # stem + 3 blocks
    output = model.predict(x, verbose=0)
    assert _relative_error(contributions.sum(1) + analysis.head_bias(model), output) < RTOL

    path = tmp_path / "glonetified.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), output, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(analysis.block_contributions(loaded, x), contributions, rtol=1e-5,
                               atol=1e-6)


def test_mixed_float16_backbone():
    keras.config.set_dtype_policy("mixed_float16")
    mlp = ResNetMLP(num_blocks=3, width=8, num_classes=2, input_shape=(5,))
    model = glonetify(mlp, ["block_1_add", "block_2_add", "block_3_add"], num_classes=3)
    assert model.get_layer("head").compute_dtype == "float16"
    _randomise_head_bias(model)
    x = np.random.default_rng(3).normal(size=(8, 5)).astype("float32")
    output = model.predict(x, verbose=0)
    contributions = analysis.block_contributions(model, x)
    assert _relative_error(contributions.sum(1) + analysis.head_bias(model), output) < 2e-2


def test_clear_errors():
    mlp = ResNetMLP(num_blocks=2, width=4, num_classes=2, input_shape=(5,))
    with pytest.raises(ValueError, match=r"no layer named 'block_1_ad'.*'block_1_add'"):
        glonetify(mlp, ["block_1_ad"], num_classes=2)
    with pytest.raises(ValueError, match="empty"):
        glonetify(mlp, [], num_classes=2)
    with pytest.raises(ValueError, match="list of layer names"):
        glonetify(mlp, "block_1_add", num_classes=2)
    with pytest.raises(ValueError, match="more than once"):
        glonetify(mlp, ["block_1_add", "block_1_add"], num_classes=2)
    with pytest.raises(ValueError, match="also listed"):
        glonetify(mlp, ["block_1_add"], num_classes=2, stem_output="block_1_add")
    with pytest.raises(ValueError, match="num_classes"):
        glonetify(mlp, ["block_1_add"], num_classes=0)
    with pytest.raises(ValueError, match="functional keras.Model"):
        glonetify("resnet", ["block_1_add"], num_classes=2)

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(ValueError, match="no symbolic inputs"):
        glonetify(Subclassed(), ["dense"], num_classes=2)


def test_exported_from_the_package():
    assert glonet_keras.glonetify is glonetify
    assert "glonetify" in glonet_keras.__all__
