import json

import keras
import numpy as np
import pytest

import glonet_keras as g
from glonet_keras.data import load_arrays
from tests import harness

TINY_MLP = dict(num_blocks=3, width=8, num_classes=5, input_shape=(6,))
TINY_CNN = dict(depth=8, width=4, num_classes=5, input_shape=(8, 8, 2))
TINY_VIT = dict(num_blocks=2, hidden_dim=8, num_heads=2, mlp_dim=16, patch_size=4, num_classes=5,
                input_shape=(8, 8, 2))

# Every builder, each with a tiny config (and the GloNet-only knobs on the GloNets).
CASES = {
    "GloNetMLP": (g.GloNetMLP, dict(TINY_MLP, include_stem=True, dropout=0.1)),
    "GloNetMLP-mean-torch": (g.GloNetMLP, dict(TINY_MLP, aggregation="mean", initializer="torch",
                                               activation="leaky_relu", normalization="layer")),
    "GloNetMLP-scan": (g.GloNetMLP, dict(TINY_MLP, scan=True, normalization="layer")),
    "ResNetMLP": (g.ResNetMLP, TINY_MLP),
    "PlainMLP": (g.PlainMLP, dict(TINY_MLP, normalization="batch")),
    "GloNetCNN": (g.GloNetCNN, dict(TINY_CNN, include_stem=True)),
    "GloNetCNN-imagenet": (g.GloNetCNN, dict(TINY_CNN, layout="imagenet", depth=None,
                                             blocks_per_stage=(1, 1, 1, 1), width=2,
                                             input_shape=(16, 16, 2), normalization="batch")),
    "GloNetCNN-1d": (g.GloNetCNN, dict(TINY_CNN, input_shape=(12, 1))),
    "GloNetCNN-isotropic": (g.GloNetCNN, dict(TINY_CNN, depth=None, layout="isotropic",
                                              blocks_per_stage=(2,), patch_size=2)),
    "ResNetCNN": (g.ResNetCNN, TINY_CNN),
    "PlainCNN": (g.PlainCNN, TINY_CNN),
    "GloNetViT": (g.GloNetViT, dict(TINY_VIT, include_stem=True)),
    "ViT": (g.ViT, TINY_VIT),
    "GloNetViT-conv-zero-head": (g.GloNetViT, dict(TINY_VIT, tokenizer="conv",
                                                   head_initializer="zeros")),
    "ViT-conv": (g.ViT, dict(TINY_VIT, tokenizer="conv")),
}
IDS = sorted(CASES)
# The fast suite compiles one case per class (its default knobs); the knob variants, which reuse
# their class's graph code, compile in `make test-slow`. Every case still round-trips its config
# and checks its input shape here, which cost no compilation.
CLASS_IDS = sorted({cls.__name__ for cls, _ in CASES.values()})
COMPILED = harness.slow_where(IDS, lambda name: name not in CLASS_IDS)


@pytest.fixture(params=IDS)
def case(request):
    return CASES[request.param]


@pytest.fixture(params=COMPILED)
def compiled_case(request):
    return CASES[request.param]


def test_every_class_has_a_case_with_its_default_knobs():
    assert set(CLASS_IDS) <= set(CASES)
    for name in CLASS_IDS:
        assert CASES[name][0].__name__ == name


def test_config_round_trip(case):
    harness.check_config_round_trip(*case)


def test_keras_file_round_trip(compiled_case, tmp_path):
    harness.check_saved_model_file(*compiled_case, tmp_path)


def test_predict_arrays_and_dataset(compiled_case):
    harness.check_predict_arrays_and_dataset(*compiled_case)


def test_training_step_lowers_loss(compiled_case):
    harness.check_training_step_lowers_loss(*compiled_case)


def test_mixed_float16(compiled_case):
    harness.check_mixed_precision(*compiled_case)


def test_wrong_input_shape_names_both_shapes(case):
    harness.check_wrong_input_shape(*case)


# One GloNet per family on JAX in the fast suite (the scanned MLP for its loop, the ViT with the
# conv tokenizer and zero head); every builder in `make test-slow`. A fresh JAX interpreter compiles
# each model for a step and a predict: about 7 s a model on 2 cores, 100 s for all of CASES.
JAX_SMOKE = ["GloNetCNN", "GloNetMLP-scan", "GloNetViT-conv-zero-head"]


def test_one_glonet_per_family_runs_on_jax_backend():
    _check_builders_on_jax(JAX_SMOKE)


@pytest.mark.slow
def test_every_builder_runs_on_jax_backend():
    _check_builders_on_jax(IDS)


def _check_builders_on_jax(names):
    cases = {name: (CASES[name][0].__name__, CASES[name][1]) for name in names}
    output = harness.run_on_backend(
        "jax",
        f"""
        import json, sys, keras, numpy as np
        import glonet_keras as g
        assert keras.backend.backend() == "jax"
        # The lent GPUs have JAX but no TensorFlow: the core must not need it.
        assert "tensorflow" not in sys.modules, "import glonet_keras pulled in TensorFlow"
        results = {{}}
        for name, (cls_name, kwargs) in json.loads({json.dumps(json.dumps(cases))}).items():
            kwargs = {{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}}
            model = getattr(g, cls_name)(**kwargs)
            shape = (4,) + tuple(8 if d is None else d for d in model.inputs[0].shape[1:])
            x = np.random.default_rng(0).uniform(size=shape).astype("float32")
            y = np.arange(4) % kwargs["num_classes"]
            model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            loss = model.train_on_batch(x, y)
            out = model.predict(x, verbose=0)
            results[name] = [list(out.shape), bool(np.isfinite(out).all()), bool(np.isfinite(loss))]
        print("RESULTS", json.dumps(results))
        """,
    )
    results = json.loads(output.split("RESULTS", 1)[1])
    assert sorted(results) == sorted(names)
    for name, (shape, finite_out, finite_loss) in results.items():
        assert shape == [4, CASES[name][1]["num_classes"]], name
        assert finite_out and finite_loss, name


def test_skeleton_names_and_block_outputs():
    model = g.GloNetCNN(**TINY_CNN)
    assert model.num_blocks == 3
    assert list(model.block_outputs) == ["block_1", "block_2", "block_3"]
    assert model.inputs[0].name == "images"
    aggregation = model.get_layer("glonet_aggregation")
    tap_names = [t._keras_history.operation.name for t in aggregation.input]
    assert tap_names == ["tap_1", "tap_2", "tap_3"]
    assert model.get_layer("head").units == 5
    # The last stage needs no projection; earlier stages share one each (4 and 8 channels to 16).
    names = {layer.name for layer in model.layers}
    projections = {name for name in names if name.startswith("tap_projection")}
    assert projections == {"tap_projection_4_to_16", "tap_projection_8_to_16"}
    assert g.GloNetMLP(**TINY_MLP).inputs[0].name == "features"


def test_glonet_sums_the_taps_before_a_linear_head():
    """The output is exactly head(sum of taps): the GloNet definition, checked from the outside."""
    model = g.GloNetMLP(**TINY_MLP)
    x = harness.random_inputs(model)
    taps = keras.Model(model.inputs, [model.get_layer(f"tap_{i}").output for i in (1, 2, 3)])
    total = np.sum(taps.predict(x, verbose=0), axis=0)
    kernel, bias = model.get_layer("head").get_weights()
    np.testing.assert_allclose(model.predict(x, verbose=0), total @ kernel + bias, rtol=1e-5, atol=1e-5)


def test_resnet20_layout_parameter_counts():
    """CIFAR GloNet-CNN-20 stays within 10 % of ResNet-20's ~0.27 M parameters."""
    glonet = g.GloNetCNN(depth=20).count_params()
    resnet = g.ResNetCNN(depth=20).count_params()
    assert abs(glonet - 270_000) / 270_000 < 0.10, glonet
    assert abs(glonet - resnet) / resnet < 0.10, (glonet, resnet)
    assert g.GloNetCNN(depth=56).num_blocks == 27


def test_spatial_dims_may_be_none():
    model = g.GloNetCNN(**dict(TINY_CNN, input_shape=(None, None, 2)))
    for size in (8, 12):
        assert model.predict(np.zeros((1, size, size, 2)), verbose=0).shape == (1, 5)


def test_regression_output():
    model = g.GloNetMLP(num_blocks=2, width=4, num_classes=1, input_shape=(14,))
    assert model.predict(np.zeros((3, 14)), verbose=0).shape == (3, 1)


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (g.GloNetCNN, dict(depth=21), "6n + 2"),
        (g.GloNetCNN, dict(depth=18, layout="imagenet", blocks_per_stage=(2, 2, 2, 2)), "not both"),
        (g.GloNetCNN, dict(layout="imagenet", depth=50), "[10, 18, 34]"),
        (g.GloNetCNN, dict(layout="mobile"), "['cifar', 'imagenet', 'isotropic']"),
        (g.GloNetCNN, dict(width=0), "`width` must be an integer >= 1"),
        (g.GloNetCNN, dict(input_shape=(32, 32, None)), "known channel count"),
        (g.GloNetMLP, dict(width=0), "`width` must be an integer >= 1"),
        (g.GloNetMLP, dict(num_blocks=2.5), "`num_blocks`"),
        (g.GloNetMLP, dict(aggregation="max"), "['sum', 'mean']"),
        (g.GloNetMLP, dict(normalization="group"), "[None, 'batch', 'layer']"),
        (g.GloNetMLP, dict(initializer="xavier"), "['he', 'torch']"),
        (g.GloNetMLP, dict(activation="nope"), "Unknown `activation`"),
        (g.GloNetMLP, dict(dropout=1.0), "`dropout`"),
        (g.GloNetMLP, dict(input_shape=(None,)), "known positive sizes"),
        (g.ResNetMLP, dict(num_classes=0), "`num_classes`"),
        (g.GloNetViT, dict(input_shape=(30, 30, 3)), "divisible by `patch_size`=4"),
        (g.GloNetViT, dict(hidden_dim=10, num_heads=4), "divisible by `num_heads`=4"),
        (g.ViT, dict(input_shape=(None, None, 3)), "fully known"),
        (g.ViT, dict(tokenizer="cnn"), "['patch', 'conv']"),
        (g.GloNetViT, dict(tokenizer="conv", patch_size=6, input_shape=(12, 12, 1)),
         "power of two >= 2; received 6"),
        (g.GloNetViT, dict(head_initializer="ones"), "[None, 'zeros']"),
        (g.GloNetCNN, dict(head_initializer="he"), "[None, 'zeros']"),
    ],
)
def test_bad_configurations_fail_at_construction(cls, kwargs, message):
    with pytest.raises(ValueError) as error:
        cls(**kwargs)
    assert message in str(error.value)


def test_head_initializer_is_a_glonet_argument():
    with pytest.raises(TypeError, match="only GloNet models take it"):
        g.ViT(head_initializer="zeros")


@pytest.mark.parametrize("cls, kwargs", [
    (g.GloNetMLP, TINY_MLP), (g.GloNetCNN, TINY_CNN),
    pytest.param(g.GloNetViT, TINY_VIT, marks=pytest.mark.slow),  # the conv case covers the ViT
    (g.GloNetViT, dict(TINY_VIT, tokenizer="conv")),
])
def test_zero_head_starts_uniform_and_keeps_the_exact_split(cls, kwargs):
    """A zero head: every logit 0 before training; after one step the split into blocks is exact."""
    keras.utils.set_random_seed(0)
    model = cls(head_initializer="zeros", **kwargs)
    default = cls(**kwargs)
    assert not np.any(keras.ops.convert_to_numpy(default.get_layer("head").kernel) == 0)
    x = harness.random_inputs(model, batch=8)
    assert not model.predict(x, verbose=0).any()
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(x, np.arange(8) % kwargs["num_classes"])
    assert model.predict(x, verbose=0).any()
    harness.check_glonet_contract(model, x)


def test_conv_tokenizer_halves_the_image_log2_patch_size_times():
    model = g.GloNetViT(**dict(TINY_VIT, patch_size=4, input_shape=(16, 16, 1), tokenizer="conv"))
    # 16x16 -> 8x8 -> 4x4: 16 tokens and the class token, the same count as 4x4 patches.
    assert model.get_layer("position_embedding").output.shape[1] == 17
    assert [model.get_layer(f"tokenizer_conv_{i}").filters for i in (1, 2)] == [4, 8]
    with pytest.raises(ValueError):
        model.get_layer("patch_embedding")


def test_deep_glonet_trains_where_the_plain_chain_does_not():
    """On the offline digits: a 30-block BN-free GloNet MLP learns, the same plain chain collapses.

    PyTorch's default init and LeakyReLU(0.2), as in the paper's MLP: it shrinks a plain chain's
    signal layer after layer, which the GloNet's length-one gradient paths do not care about.
    """
    (x_train, y_train), (x_test, y_test) = load_arrays("digits")
    accuracies = {}
    for cls in (g.GloNetMLP, g.PlainMLP):
        keras.utils.set_random_seed(0)
        model = cls(num_blocks=30, width=32, input_shape=(8, 8, 1), activation="leaky_relu",
                    initializer="torch")
        model.compile(
            keras.optimizers.Adam(1e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        model.fit(x_train, y_train, epochs=10, batch_size=32, verbose=0)
        accuracies[cls.__name__] = model.evaluate(x_test, y_test, verbose=0)[1]
    assert accuracies["GloNetMLP"] >= 0.90, accuracies
    assert accuracies["PlainMLP"] <= 0.30, accuracies


def test_an_unrolled_chain_deeper_than_pythons_recursion_limit_builds():
    """Keras maps a functional graph recursively: 600 plain blocks (1,200 layers on one path) hit
    Python's default limit of 1,000 frames before the builders made room for it."""
    import sys

    limit = sys.getrecursionlimit()
    model = g.PlainMLP(num_blocks=600, width=2, input_shape=(2,), num_classes=2)
    assert model.num_blocks == 600 and len(model.layers) > 1200
    assert sys.getrecursionlimit() == limit  # restored afterwards


@pytest.mark.parametrize("scan", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["unrolled", "scanned"])
def test_a_compiled_glonet_mlp_read_back_from_keras_file_trains_again(scan, tmp_path):
    # GloNetMLP overrides `compile` (no XLA for a scan on TensorFlow): without the matching
    # compile-config methods Keras loaded it "compiled" without an optimizer, and `fit` failed
    # with "No loss to compute" for every model.keras that train.py and the demo write.
    model = g.GloNetMLP(**{**TINY_MLP, "scan": scan, "normalization": "layer" if scan else None})
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    y = np.arange(16) % 5
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.optimizer, keras.optimizers.Adam)
    history = loaded.fit(x, y, epochs=2, verbose=0).history
    assert history["loss"][1] < history["loss"][0] and "accuracy" in history
    assert loaded.jit_compile is (False if scan else model.jit_compile)


def _image_preset_model():
    from glonet_keras.data.preprocessing import Preprocessing

    model = g.GloNetCNN(**TINY_CNN)
    model.preprocessing = Preprocessing(input_dtype="uint8", scale=1 / 255, mean=(0.5, 0.5),
                                        std=(0.25, 0.25))
    return model


def test_raw_uint8_images_are_refused_by_a_model_trained_on_preprocessed_ones():
    model = _image_preset_model()
    raw = np.full((2, 8, 8, 2), 255, "uint8")
    for call in (model, model.predict, model.predict_on_batch):
        with pytest.raises(ValueError, match=r"received uint8 inputs.*model.preprocess\(x\)"):
            call(raw)
    expected = model.predict(np.full((2, 8, 8, 2), 2.0, "float32"), verbose=0)
    np.testing.assert_allclose(model.predict(model.preprocess(raw), verbose=0), expected,
                               rtol=1e-5, atol=1e-5)
    # A model without a uint8 record (built here, or a float preset) takes what it is given.
    model.preprocessing = None
    assert model(raw).shape == (2, 5)
    with pytest.raises(ValueError, match="no preprocessing record"):
        model.preprocess(raw)
