"""glonetify: GloNet superimposed on keras.applications families, nested backbones, keras.ops
tensors and the library's baselines; its address checks; suggested block outputs.

keras.applications models are big: each is built once per module (fixtures) at 32x32; the full
contract on them (several traced models each) is marked slow.
"""

import keras
import numpy as np
import pytest

import glonet_keras
from glonet_keras import ResNetCNN, ResNetMLP, analysis, glonetify, skeleton, suggest_block_outputs
from glonet_keras.models.superimpose import SuperimposedGloNet
from tests import harness

RTOL = 1e-5  # float32; mixed_float16 below is held to 2e-2 (see tests/test_analysis.py).
X8 = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
IMAGES = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype("float32")
RESNET50_BLOCKS = [f"conv{stage}_block{block}_out"
                   for stage, blocks in ((2, 3), (3, 4), (4, 6), (5, 3))
                   for block in range(1, blocks + 1)]


def _randomise_head_bias(model):
    head = model.get_layer(skeleton.HEAD)
    head.bias.assign(np.linspace(-0.5, 0.5, head.bias.shape[0]).astype("float32"))


def _chain(name="backbone", features=8):
    """A tiny functional backbone with a keras.ops residual: d1 -> d2 -> d1 + tanh(d2) -> d3.

    Returns the model and the residual's KerasTensor (made by keras.ops, not by a Layer).
    """
    inputs = keras.Input((features,), name="features")
    h1 = keras.layers.Dense(6, activation="relu", name="d1")(inputs)
    h2 = keras.layers.Dense(6, activation="relu", name="d2")(h1)
    residual = h1 + keras.ops.tanh(h2)
    outputs = keras.layers.Dense(5, name="d3")(residual)
    return keras.Model(inputs, outputs, name=name), residual


def _transfer(backbone, name="transfer"):
    """The transfer-learning pattern: preprocessing -> backbone(training=False) -> a new classifier."""
    inputs = keras.Input((8,), name="raw")
    x = keras.layers.Rescaling(0.5, name="scale")(inputs)
    x = backbone(x, training=False)
    return keras.Model(inputs, keras.layers.Dense(3, name="classifier")(x), name=name)


def _copy_tail(source, target):
    for layer in target.layers:
        if layer.name.startswith("tap_") or layer.name == skeleton.HEAD:
            layer.set_weights(source.get_layer(layer.name).get_weights())


def _round_trip(model, tmp_path):
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    return keras.saving.load_model(path)  # safe_mode stays on


# --------------------------------------------------------------------------------------------
# keras.applications ResNet50 (built once).


@pytest.fixture(scope="module")
def resnet50():
    # 32x32 is ResNet50's smallest input: building and one forward pass stay a few seconds.
    return keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=7)


def test_resnet50_suggested_bottlenecks_decompose_exactly(resnet50):
    assert suggest_block_outputs(resnet50) == RESNET50_BLOCKS  # 3 + 4 + 6 + 3 bottlenecks
    model = glonetify(resnet50, num_classes=5)  # block_outputs omitted: the suggestion
    assert isinstance(model, SuperimposedGloNet) and model.name == "resnet50_glonet"
    assert model.num_blocks == 16 and list(model.block_outputs) == [f"block_{i}" for i in range(1, 17)]
    layer_names = {layer.name for layer in model.layers}
    assert {f"tap_{i}" for i in range(1, 17)} <= layer_names
    # Stages of 256, 512 and 1024 channels are projected to the last stage's 2048 (one map each).
    assert sorted(n for n in layer_names if n.startswith("tap_projection")) == [
        "tap_projection_1024_to_2048", "tap_projection_256_to_2048", "tap_projection_512_to_2048"]
    # The backbone's weights are shared, not copied; its own classifier is gone.
    assert model.get_layer("conv2_block1_out") is resnet50.get_layer("conv2_block1_out")
    assert "predictions" not in layer_names
    # The first stage only: truncation stops the backbone graph at the third tap.
    assert not any(layer.name.startswith("conv3_") for layer in analysis.truncate(model, 3).layers)

    _randomise_head_bias(model)
    output = model.predict(IMAGES, verbose=0)
    contributions = analysis.block_contributions(model, IMAGES)
    assert contributions.shape == (2, 16, 5)
    assert harness.relative_error(contributions.sum(1) + analysis.head_bias(model), output) < RTOL


@pytest.mark.slow
def test_resnet50_glonetified_passes_the_contract(resnet50):
    harness.check_glonet_contract(glonetify(resnet50, num_classes=3), IMAGES)


def test_nested_resnet50_gets_suggested_paths(resnet50):
    backbone = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(32, 32, 3))
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(inputs, training=False))
    classifier = keras.Model(inputs, keras.layers.Dense(2, name="classifier")(features))
    assert suggest_block_outputs(classifier) == [f"resnet50/{name}" for name in RESNET50_BLOCKS]
    model = glonetify(classifier, num_classes=3)
    assert model.num_blocks == 16
    features_model = model.get_layer("resnet50_features")
    assert features_model.get_layer("conv4_block6_out") is backbone.get_layer("conv4_block6_out")


# --------------------------------------------------------------------------------------------
# Suggested block outputs of the other keras.applications families (each built once).

_EFFICIENTNET_B0 = ["1a", "2a", "2b", "3a", "3b", "4a", "4b", "4c", "5a", "5b", "5c",
                    "6a", "6b", "6c", "6d", "7a"]
_EFFICIENTNET_V2_B0 = ["1a", "2a", "2b", "3a", "3b", "4a", "4b", "4c", "5a", "5b", "5c", "5d",
                       "5e", "6a", "6b", "6c", "6d", "6e", "6f", "6g", "6h"]


def _efficientnet_blocks(blocks):
    # A block with a skip ends in its add; the first block of a stage changes shape: no skip.
    return [f"block{b}_project_bn" if b.endswith("a") else f"block{b}_add" for b in blocks]


def _mobilenet_v2_blocks():
    skips = {2, 4, 5, 7, 8, 9, 11, 12, 14, 15}  # stride 1 and unchanged width
    return (["expanded_conv_project_BN"]
            + [f"block_{i}_add" if i in skips else f"block_{i}_project_BN" for i in range(1, 17)]
            + ["out_relu"])


def _mobilenet_v3_small_blocks():
    skips = {2, 4, 5, 7, 9, 10}
    return ["expanded_conv_project_bn"] + [
        f"expanded_conv_{i}_add" if i in skips else f"expanded_conv_{i}_project_bn"
        for i in range(1, 11)]


FAMILIES = {
    "resnet50v2": (
        lambda: keras.applications.ResNet50V2(weights=None, input_shape=(32, 32, 3), classes=4),
        lambda model: RESNET50_BLOCKS + ["post_relu"],
    ),
    "mobilenetv2": (
        lambda: keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(32, 32, 3),
                                               classes=4),
        lambda model: _mobilenet_v2_blocks(),
    ),
    "efficientnetb0": (
        lambda: keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=4),
        lambda model: _efficientnet_blocks(_EFFICIENTNET_B0) + ["top_activation"],
    ),
    "convnext_tiny": (
        lambda: keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=4),
        lambda model: _convnext_adds(model, depths=(3, 3, 9, 3)),
    ),
    "mobilenetv3small": (
        lambda: keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3),
                                                    classes=4),
        lambda model: _mobilenet_v3_small_blocks() + [_pooled_features(model)],
    ),
    "efficientnetv2b0": (
        lambda: keras.applications.EfficientNetV2B0(weights=None, input_shape=(32, 32, 3),
                                                    classes=4),
        lambda model: _efficientnet_blocks(_EFFICIENTNET_V2_B0) + ["top_activation"],
    ),
}
_SLOW_FAMILIES = ("mobilenetv3small", "efficientnetv2b0")


def _convnext_adds(model, depths):
    """The name of each block's residual add, found from the layer that reads it (public API)."""
    prefix = model.name
    readers = []
    for stage, depth in enumerate(depths):
        readers += [f"{prefix}_stage_{stage}_block_{block}_depthwise_conv" for block in range(1, depth)]
        readers.append(f"{prefix}_downsampling_block_{stage}" if stage < len(depths) - 1
                       else f"{prefix}_head_gap")
    return [model.get_layer(name).input._keras_history.operation.name for name in readers]


def _pooled_features(model):
    """What MobileNetV3's classifier pools: the input of the pooling that `conv_2` reads."""
    pool = model.get_layer("conv_2").input._keras_history.operation
    return pool.input._keras_history.operation.name


@pytest.fixture(scope="module",
                params=harness.slow_where(FAMILIES, lambda name: name in _SLOW_FAMILIES))
def family(request):
    build, expected = FAMILIES[request.param]
    model = build()
    return model, expected(model)


def test_suggested_block_outputs_of_each_family(family):
    backbone, expected = family
    suggested = suggest_block_outputs(backbone)
    assert suggested == expected
    model = glonetify(backbone, num_classes=3)
    assert skeleton.skeleton(model).num_blocks == model.num_blocks == len(expected)
    operations = {op.name: op for op in backbone.operations}
    for key, name in zip(model.block_outputs, suggested):
        assert model.block_outputs[key] is operations[name].output


@pytest.mark.slow
def test_suggested_family_passes_the_contract(family):
    backbone, _ = family
    harness.check_glonet_contract(glonetify(backbone, num_classes=3), IMAGES)


def test_headless_backbone_ends_with_its_output():
    # MobileNetV3's squeeze-excite blocks pool too: only what follows the last block is the top.
    backbone = keras.applications.MobileNetV3Small(weights=None, include_top=False,
                                                   input_shape=(32, 32, 3))
    suggested = suggest_block_outputs(backbone)
    assert suggested[:-1] == _mobilenet_v3_small_blocks()
    assert suggested[-1] == backbone.outputs[0]._keras_history.operation.name


def test_unsupported_family_and_several_backbones_are_clear_errors():
    mlp = ResNetMLP(num_blocks=2, width=4, num_classes=2, input_shape=(5,))
    with pytest.raises(ValueError, match=r"supported keras.applications family \(ResNet.*ConvNeXt"):
        suggest_block_outputs(mlp)
    with pytest.raises(ValueError, match="Pass `block_outputs`"):
        glonetify(mlp, num_classes=2)

    def fake_resnet(name):
        inputs = keras.Input((4,))
        x = keras.layers.Dense(4, name="conv2_block1_out")(inputs)
        return keras.Model(inputs, keras.layers.Dense(4, name="conv2_block2_out")(x), name=name)

    inputs = keras.Input((4,))
    both = keras.Model(inputs, [fake_resnet("left")(inputs), fake_resnet("right")(inputs)])
    with pytest.raises(ValueError, match=r"several backbones.*\['left/', 'right/'\]"):
        suggest_block_outputs(both)


# --------------------------------------------------------------------------------------------
# The library's own baselines, mixed precision, reload.


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_library_baselines_from_their_block_outputs(aggregation):
    cnn = ResNetCNN(depth=8, width=4, num_classes=10, input_shape=(8, 8, 1))
    model = glonetify(cnn, cnn.block_outputs, num_classes=3, aggregation=aggregation)
    _randomise_head_bias(model)
    assert model.num_blocks == 3
    x = np.random.default_rng(1).uniform(size=(4, 8, 8, 1)).astype("float32")
    harness.check_glonet_contract(model, x)


def test_mlp_baseline_with_stem_round_trips_through_keras_file(tmp_path):
    mlp = ResNetMLP(num_blocks=3, width=6, num_classes=2, input_shape=(5,))
    model = glonetify(mlp, mlp.block_outputs, num_classes=4, stem_output="stem", dropout=0.1)
    _randomise_head_bias(model)
    x = np.random.default_rng(2).normal(size=(6, 5)).astype("float32")
    assert analysis.block_contributions(model, x).shape == (6, 4, 4)  # stem + 3 blocks
    harness.check_glonet_contract(model, x)

    loaded = _round_trip(model, tmp_path)
    assert type(loaded) is SuperimposedGloNet
    assert loaded.num_blocks == 3 and list(loaded.block_outputs) == ["block_1", "block_2", "block_3"]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    harness.check_glonet_contract(loaded, x)


def test_mixed_float16_backbone():
    keras.config.set_dtype_policy("mixed_float16")
    mlp = ResNetMLP(num_blocks=3, width=8, num_classes=2, input_shape=(5,))
    model = glonetify(mlp, ["block_1_add", "block_2_add", "block_3_add"], num_classes=3)
    assert model.get_layer("head").compute_dtype == "float16"
    _randomise_head_bias(model)
    x = np.random.default_rng(3).normal(size=(8, 5)).astype("float32")
    output = model.predict(x, verbose=0)
    contributions = analysis.block_contributions(model, x)
    assert harness.relative_error(contributions.sum(1) + analysis.head_bias(model), output) < 2e-2


def test_superimposed_glonet_refuses_a_graph_without_the_skeleton():
    inputs = keras.Input((4,))
    with pytest.raises(skeleton.NotAGloNetError):
        SuperimposedGloNet(inputs, keras.layers.Dense(2, name="head")(inputs))


# --------------------------------------------------------------------------------------------
# keras.ops tensors, nested backbones, shared layers, other models' tensors, graph order.


def test_keras_ops_tensor_by_tensor_and_by_operation_name(tmp_path):
    backbone, residual = _chain()
    operation = residual._keras_history.operation
    assert not isinstance(operation, keras.layers.Layer)  # an ops.add, not a Layer
    by_tensor = glonetify(backbone, ["d1", "d2", residual, "d3"], num_classes=3)
    by_name = glonetify(backbone, ["d1", "d2", operation.name, "d3"], num_classes=3)
    assert by_tensor.block_outputs["block_3"] is residual is by_name.block_outputs["block_3"]
    _randomise_head_bias(by_tensor)
    harness.check_glonet_contract(by_tensor, X8)

    loaded = _round_trip(by_tensor, tmp_path)
    np.testing.assert_array_equal(loaded.predict(X8, verbose=0), by_tensor.predict(X8, verbose=0))
    harness.check_glonet_contract(loaded, X8)


def test_nested_backbone_by_path_and_by_its_tensors_equals_glonetifying_it_directly():
    backbone, residual = _chain()
    outer = _transfer(backbone)
    nested = glonetify(outer, ["backbone/d1", backbone.get_layer("d2").output, residual],
                       num_classes=4)
    assert [nested.block_outputs[k]._keras_history.operation.name for k in nested.block_outputs] \
        == ["backbone_features"] * 3
    features = nested.get_layer("backbone_features")
    assert features.get_layer("d1") is backbone.get_layer("d1")  # shared weights, not copies
    _randomise_head_bias(nested)
    harness.check_glonet_contract(nested, X8)

    # The same taps on the backbone itself, with the same head: equal on the rescaled inputs.
    direct = glonetify(backbone, ["d1", "d2", residual], num_classes=4)
    _copy_tail(nested, direct)
    np.testing.assert_allclose(nested.predict(X8, verbose=0), direct.predict(0.5 * X8, verbose=0),
                               rtol=1e-6, atol=1e-6)


def test_nested_sequential_mixed_with_outer_taps_round_trips(tmp_path):
    backbone, _ = _chain()
    outer = keras.Sequential([keras.Input((8,)), backbone, keras.layers.Dense(3, name="classifier")],
                             name="sequential_transfer")
    model = glonetify(outer, ["backbone/d1", "backbone/d3", "classifier"], num_classes=2)
    # The backbone runs once, inside its feature model, which also feeds the classifier again.
    assert "backbone" not in {layer.name for layer in model.layers}
    taps = analysis.taps_model(model).predict(X8, verbose=0)
    np.testing.assert_allclose(taps[-1], outer.predict(X8, verbose=0), rtol=1e-6, atol=1e-6)
    _randomise_head_bias(model)
    harness.check_glonet_contract(model, X8)

    loaded = _round_trip(model, tmp_path)
    assert type(loaded) is SuperimposedGloNet and loaded.num_blocks == 3
    np.testing.assert_array_equal(loaded.predict(X8, verbose=0), model.predict(X8, verbose=0))
    harness.check_glonet_contract(loaded, X8)


def test_deeper_nesting_and_path_errors():
    backbone, _ = _chain()
    inputs = keras.Input((8,))
    middle = keras.Model(inputs, backbone(inputs), name="middle")
    outer = _transfer(middle)
    model = glonetify(outer, ["middle/backbone/d1", "middle/backbone/d2"], num_classes=2)
    harness.check_glonet_contract(model, X8)

    # Two backbones in a row, tapped inside both: each runs once, in its feature model.
    first, _ = _chain("first")
    second, _ = _chain("second", features=5)
    chained = keras.Model(inputs, keras.layers.Dense(2, name="classifier")(second(first(inputs))))
    model = glonetify(chained, ["first/d2", "second/d1", "second/d3", "classifier"], num_classes=2)
    names = {layer.name for layer in model.layers}
    assert {"first_features", "second_features"} <= names and not {"first", "second"} & names
    taps = analysis.taps_model(model).predict(X8, verbose=0)
    np.testing.assert_allclose(taps[-1], chained.predict(X8, verbose=0), rtol=1e-6, atol=1e-6)
    harness.check_glonet_contract(model, X8)

    with pytest.raises(ValueError, match=r"no layer or operation named 'd2'.*"
                                         r"Inside nested models: \['middle/backbone/d2'\]"):
        glonetify(outer, ["d2"], num_classes=2)
    with pytest.raises(ValueError, match=r"'middle' has no layer or operation named 'nope' "
                                         r"\(in path 'middle/nope'\)"):
        glonetify(outer, ["middle/nope"], num_classes=2)
    with pytest.raises(ValueError, match="'classifier' is a Dense, not a nested functional model"):
        glonetify(outer, ["classifier/d1"], num_classes=2)


def test_a_backbone_called_twice_is_ambiguous_inside():
    backbone, _ = _chain()
    inputs = keras.Input((8,))
    siamese = keras.Model(inputs, keras.layers.Add()([backbone(inputs), backbone(-inputs)]))
    with pytest.raises(ValueError, match=r"'backbone' is called 2 times"):
        glonetify(siamese, ["backbone/d1"], num_classes=2)
    with pytest.raises(ValueError, match="calls several times"):
        glonetify(siamese, [backbone.get_layer("d1").output], num_classes=2)


def test_shared_layer_is_tapped_at_exactly_the_call_given():
    inputs = keras.Input((4,), name="features")
    shared = keras.layers.Dense(4, activation="relu", name="shared")
    first = shared(inputs)
    second = shared(keras.layers.Dense(4, name="mid")(first))
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(second))
    with pytest.raises(ValueError, match=r"'shared' is called 2 times.*call 1 feeds \['mid'\]; "
                                         r"call 2 feeds \['out'\].*KerasTensor of the call meant"):
        glonetify(model, ["shared"], num_classes=3)

    glonet = glonetify(model, [first, second], num_classes=3)
    harness.check_glonet_contract(glonet, X8[:, :4])
    taps = analysis.taps_model(glonet).predict(X8[:, :4], verbose=0)
    for tap, call in zip(taps, (first, second)):  # width 4 everywhere: taps are the calls' outputs
        np.testing.assert_array_equal(tap, keras.Model(inputs, call).predict(X8[:, :4], verbose=0))

    with pytest.raises(ValueError, match=r"block_outputs\[1\] \('shared \(call 1 of 2\)', tap_2\) "
                                         r"comes before block_outputs\[0\] \('shared \(call 2 of 2\)'"):
        glonetify(model, [second, first], num_classes=3)


def test_tensors_of_another_model_are_refused():
    backbone, _ = _chain()
    twin, _ = _chain()  # the same layer names, other layers
    with pytest.raises(ValueError, match=r"not part of the graph of 'backbone'.*another model"):
        glonetify(backbone, [twin.get_layer("d1").output], num_classes=2)
    # The backbone's own layer, called outside its graph: another call, refused too.
    outside_call = backbone.get_layer("d2")(keras.Input((6,)))
    with pytest.raises(ValueError, match="belongs to another model"):
        glonetify(backbone, ["d1", outside_call], num_classes=2)


def test_out_of_graph_order_is_refused_naming_both_taps():
    backbone, residual = _chain()
    with pytest.raises(ValueError, match=r"block_outputs\[2\] \('d1', tap_3\) comes before "
                                         r"block_outputs\[0\] \('d2', tap_1\)"):
        glonetify(backbone, ["d2", "d3", "d1"], num_classes=2)
    operation = residual._keras_history.operation.name
    with pytest.raises(ValueError, match=rf"\('{operation}', tap_2\) comes before.*\('d3', tap_1\)"):
        glonetify(backbone, ["d3", residual], num_classes=2)
    # Across nesting: a tap inside the backbone is computed before the outer classifier.
    outer = _transfer(backbone)
    with pytest.raises(ValueError, match=r"\('backbone/d2', tap_2\) comes before.*'classifier'"):
        glonetify(outer, ["classifier", "backbone/d2"], num_classes=2)
    with pytest.raises(ValueError, match=r"\('backbone/d3', tap_2\) comes before.*'backbone'"):
        glonetify(outer, ["backbone", "backbone/d3"], num_classes=2)
    with pytest.raises(ValueError, match=r"`stem_output` 'd2' comes after block_outputs\[0\] \('d1'"):
        glonetify(backbone, ["d1", "d3"], stem_output="d2", num_classes=2)

    # Parallel branches depend on neither: any order is graph order.
    inputs = keras.Input((8,))
    left = keras.layers.Dense(3, name="left")(inputs)
    right = keras.layers.Dense(3, name="right")(inputs)
    branches = keras.Model(inputs, keras.layers.Concatenate()([left, right]))
    assert glonetify(branches, ["right", "left"], num_classes=2).num_blocks == 2


def test_clear_errors():
    mlp = ResNetMLP(num_blocks=2, width=4, num_classes=2, input_shape=(5,))
    with pytest.raises(ValueError, match=r"no layer or operation named 'block_1_ad'.*'block_1_add'"):
        glonetify(mlp, ["block_1_ad"], num_classes=2)
    with pytest.raises(ValueError, match="empty"):
        glonetify(mlp, [], num_classes=2)
    with pytest.raises(ValueError, match="list of layer names"):
        glonetify(mlp, "block_1_add", num_classes=2)
    with pytest.raises(ValueError, match=r"lists 'block_1_add' more than once \(positions 0 and 1\)"):
        glonetify(mlp, ["block_1_add", "block_1_add"], num_classes=2)
    with pytest.raises(ValueError, match="more than once"):
        glonetify(mlp, ["block_1_add", mlp.get_layer("block_1_add").output], num_classes=2)
    with pytest.raises(ValueError, match="also listed"):
        glonetify(mlp, ["block_1_add"], num_classes=2, stem_output="block_1_add")
    with pytest.raises(ValueError, match=r"block_outputs\[0\] must be a layer or operation name"):
        glonetify(mlp, [3], num_classes=2)
    with pytest.raises(ValueError, match="num_classes"):
        glonetify(mlp, ["block_1_add"], num_classes=0)
    with pytest.raises(ValueError, match="num_classes"):
        glonetify(mlp, ["block_1_add"])
    with pytest.raises(ValueError, match="pooling"):
        glonetify(mlp, ["block_1_add"], num_classes=2, pooling="max")
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
    assert glonet_keras.suggest_block_outputs is suggest_block_outputs
    assert {"glonetify", "suggest_block_outputs"} <= set(glonet_keras.__all__)
