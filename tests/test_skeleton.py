"""The GloNet skeleton contract, over every builder and every registered variant, and its refusals.

`harness.check_glonet_contract` is the one check every GloNet passes: skeleton recovered from the
graph, exact decomposition, early exits equal to truncation (and, for the builders, the exported
`early_exits` signature equal to the analysis). The lists below come from the library's own
registries (`MODEL_CLASSES`, `list_models()`), so a new class or variant is checked automatically.
"""

import os

import keras
import numpy as np
import pytest

import glonet_keras as g
from glonet_keras import analysis, skeleton
from glonet_keras.layers import GlobalAggregation
from glonet_keras.models import MODEL_CLASSES
from tests import harness

# One tiny configuration per model name of the library: a class without one fails below.
TINY = {
    "glonet_mlp": dict(num_blocks=3, width=8, num_classes=4, input_shape=(6,), include_stem=True),
    "resnet_mlp": dict(num_blocks=3, width=8, num_classes=4, input_shape=(6,)),
    "plain_mlp": dict(num_blocks=3, width=8, num_classes=4, input_shape=(6,)),
    "glonet_cnn": dict(depth=8, width=4, num_classes=4, input_shape=(8, 8, 1)),
    "resnet_cnn": dict(depth=8, width=4, num_classes=4, input_shape=(8, 8, 1)),
    "plain_cnn": dict(depth=8, width=4, num_classes=4, input_shape=(8, 8, 1)),
    "glonet_vit": dict(num_blocks=2, hidden_dim=8, num_heads=2, mlp_dim=16, patch_size=4,
                       num_classes=4, input_shape=(8, 8, 1), dropout=0.1),
    "vit": dict(num_blocks=2, hidden_dim=8, num_heads=2, mlp_dim=16, patch_size=4, num_classes=4,
                input_shape=(8, 8, 1)),
}


def _inputs(model, batch=6, seed=0):
    return harness.random_inputs(model, batch=batch, seed=seed)


def _with_bias(model):
    # A zero bias (He init) would hide a decomposition that forgets it.
    head = model.get_layer(skeleton.HEAD)
    head.bias.assign(np.linspace(-1.0, 1.0, head.bias.shape[0]).astype(head.bias.dtype))
    return model


def test_every_model_class_has_a_tiny_config():
    assert set(TINY) == set(MODEL_CLASSES)
    assert set(_LARGE_VARIANTS) <= set(g.list_models())  # the slow ones are registered names


@pytest.mark.parametrize("name", sorted(MODEL_CLASSES))
def test_builders_keep_the_contract(name, tmp_path):
    model = _with_bias(MODEL_CLASSES[name](**TINY[name]))
    if not name.startswith("glonet"):
        assert not skeleton.is_glonet(model)
        with pytest.raises(skeleton.NotAGloNetError, match="glonet_aggregation"):
            skeleton.skeleton(model)
        return
    assert skeleton.is_glonet(model)
    harness.check_glonet_contract(model, _inputs(model), export_dir=str(tmp_path))


# Architecture-only variants at full size (no weights; their builders keep the contract at tiny
# size above): the three largest take 25 s here, so they run in `make test-slow`.
_LARGE_VARIANTS = ("glonet_cnn18_imagenet", "glonet_cnn56_cifar", "glonet_vit_cifar")


@pytest.mark.parametrize(
    "name", harness.slow_where(g.list_models(), lambda name: name in _LARGE_VARIANTS))
def test_registered_variants_keep_the_contract(name):
    pretrained = name in g.list_models(pretrained=True)
    model = g.create_model(name, pretrained=pretrained)
    if not skeleton.is_glonet(model):
        assert not name.startswith("glonet"), f"{name} is registered as a GloNet but is not one"
        return
    if not pretrained:
        _with_bias(model)
    harness.check_glonet_contract(model, _inputs(model, batch=2), rtol=1e-4)


@pytest.mark.parametrize("name", ["glonet_mlp", "glonet_cnn", "glonet_vit"])
def test_skeleton_survives_a_keras_file(name, tmp_path):
    model = _with_bias(MODEL_CLASSES[name](**TINY[name]))
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    parts = harness.check_glonet_contract(loaded, _inputs(model))
    assert list(parts.block_outputs) == list(model.block_outputs)
    assert parts.includes_stem == model.get_config().get("include_stem", False)


def _fake(middle=None, aggregation_class=GlobalAggregation, head_activation=None, tap_bias=False):
    """A functional model with GloNet names that breaks one rule of the skeleton."""
    inputs = keras.Input((4,), name="features")
    blocks = [keras.layers.Dense(4, activation="relu", name=f"block_{i}")(inputs) for i in (1, 2)]
    taps = [keras.layers.Dense(4, use_bias=tap_bias, name=f"tap_{i}")(x)
            for i, x in enumerate(blocks, start=1)]
    z = aggregation_class(name="glonet_aggregation")(taps)
    if middle is not None:
        z = middle(z)
    outputs = keras.layers.Dense(3, activation=head_activation, name="head")(z)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(aggregation_class=keras.layers.Add), "not a GlobalAggregation"),
        (dict(middle=keras.layers.Activation("relu", name="squash")), "reads 'squash'"),
        (dict(head_activation="softmax"), "not a linear Dense"),
        (dict(tap_bias=True), "is not linear"),
    ],
)
def test_a_model_with_glonet_names_but_not_its_structure_is_refused(kwargs, message):
    """Layers merely named glonet_aggregation and head must not be analysed as a GloNet."""
    model = _fake(**kwargs)
    assert not skeleton.is_glonet(model)
    with pytest.raises(skeleton.NotAGloNetError, match=message):
        analysis.block_contributions(model, np.zeros((2, 4), "float32"))


def test_the_bias_free_linear_fake_is_a_glonet():
    """The same fake with linear taps and a linear head is a valid (superimposed) GloNet."""
    model = _with_bias(_fake())
    harness.check_glonet_contract(model, np.random.default_rng(0).normal(size=(5, 4)).astype("float32"))


def test_taps_out_of_order_are_refused():
    inputs = keras.Input((4,))
    x1 = keras.layers.Dense(4, name="block_1")(inputs)
    x2 = keras.layers.Dense(4, name="block_2")(x1)
    taps = [keras.layers.Identity(name="tap_2")(x1), keras.layers.Identity(name="tap_1")(x2)]
    outputs = keras.layers.Dense(2, name="head")(GlobalAggregation(name="glonet_aggregation")(taps))
    with pytest.raises(skeleton.NotAGloNetError, match="expected tap_1..tap_L in order"):
        skeleton.skeleton(keras.Model(inputs, outputs))


# --------------------------------------------------------------------------------------------
# Constructors a Keras user trusts (issue 9, item 2).


@pytest.mark.parametrize(
    "cls, kwargs, hint",
    [
        (g.GloNetMLP, dict(num_block=50), "did you mean `num_blocks`"),
        (g.GloNetCNN, dict(classes=3), "use `num_classes`"),
        (g.GloNetCNN, dict(include_top=False), "always ends in its linear head"),
        (g.GloNetViT, dict(weights="imagenet"), "pretrained=True"),
        (g.ResNetCNN, dict(pooling="avg"), "pool every block"),
        (g.PlainMLP, dict(aggregation="sum"), "is a baseline"),
        (g.ViT, dict(zzz=1), "valid arguments"),
    ],
)
def test_unknown_keyword_raises_type_error_naming_the_closest(cls, kwargs, hint):
    with pytest.raises(TypeError, match="unexpected keyword argument") as error:
        cls(**{**TINY_FOR[cls], **kwargs})
    assert hint in str(error.value)


# The same tiny configs by class, without the GloNet-only knobs (so baselines accept them too).
TINY_FOR = {
    MODEL_CLASSES[name]: {k: v for k, v in config.items() if k not in ("include_stem", "dropout")}
    for name, config in TINY.items()
}


@pytest.mark.parametrize("name", sorted(MODEL_CLASSES))
def test_default_name_is_the_snake_case_model_name(name):
    cls = MODEL_CLASSES[name]
    assert cls(**TINY_FOR[cls]).name == name
    assert cls(**TINY_FOR[cls]).name == name  # no process-dependent suffix on the second one
    assert cls(**TINY_FOR[cls], name="mine").name == "mine"


def test_numpy_integers_are_accepted_and_stored_as_ints():
    model = g.GloNetMLP(num_blocks=np.int64(3), width=np.int32(8), num_classes=np.int64(3),
                        input_shape=(np.int64(6),))
    config = model.get_config()
    assert model.num_blocks == 3 and model.output_shape == (None, 3)
    assert all(type(config[key]) is int for key in ("num_blocks", "width", "num_classes"))
    assert type(config["input_shape"][0]) is int
    cnn = g.GloNetCNN(depth=np.int64(8), width=np.int64(4), input_shape=(8, 8, np.int64(1)))
    assert cnn.num_blocks == 3


def test_blocks_per_stage_alone_and_default_depths():
    assert g.GloNetCNN(blocks_per_stage=(2, 2, 2), input_shape=(8, 8, 1)).num_blocks == 6
    assert g.GloNetCNN(input_shape=(8, 8, 1)).num_blocks == 9  # cifar default: depth 20
    imagenet = g.GloNetCNN(layout="imagenet", width=2, input_shape=(32, 32, 3))
    assert imagenet.num_blocks == 8  # imagenet default: depth 18
    resnet = g.ResNetCNN(layout="imagenet", blocks_per_stage=(1, 1, 1, 1), width=2,
                         input_shape=(32, 32, 3))
    assert resnet.num_blocks == 4
    restored = g.GloNetCNN.from_config(
        g.GloNetCNN(blocks_per_stage=[1, 2, 1], input_shape=(8, 8, 1)).get_config()
    )
    assert restored.num_blocks == 4


def test_isotropic_layout_keeps_one_width_and_needs_no_projection():
    model = g.GloNetCNN(layout="isotropic", blocks_per_stage=(4,), width=8,
                        input_shape=(8, 8, 1), num_classes=3)
    assert model.num_blocks == 4
    assert {tuple(x.shape) for x in model.block_outputs.values()} == {(None, 4, 4, 8)}
    assert not [layer for layer in model.layers if "projection" in layer.name]
    assert g.GloNetCNN(layout="isotropic", depth=10, input_shape=(8, 8, 1)).num_blocks == 4
    harness.check_glonet_contract(_with_bias(model), _inputs(model))
    for cls in (g.ResNetCNN, g.PlainCNN):
        assert cls(layout="isotropic", depth=6, width=8, input_shape=(8, 8, 1)).num_blocks == 2
    with pytest.raises(ValueError, match="'isotropic' layout only"):
        g.GloNetCNN(patch_size=4, input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match="2n \\+ 2"):
        g.GloNetCNN(layout="isotropic", depth=7, input_shape=(8, 8, 1))


# --------------------------------------------------------------------------------------------
# Inputs the layer and the analysis must refuse (issue 10).


@pytest.mark.parametrize("value", ["no", "False", 0, 1, None])
def test_cumulative_must_be_a_boolean(value):
    with pytest.raises(ValueError, match="`cumulative` must be True or False"):
        GlobalAggregation(cumulative=value)


def test_early_exit_accuracy_refuses_labels_and_inputs_it_cannot_score():
    model = g.GloNetMLP(**TINY_FOR[g.GloNetMLP])
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    with pytest.raises(ValueError, match=r"in \[0, 3\]"):
        analysis.early_exit_accuracy(model, x, np.array([0, 1, 2, 7]))
    with pytest.raises(ValueError, match=r"in \[0, 3\]"):
        analysis.early_exit_accuracy(model, x, np.array([0, 1, 2, -1]))
    with pytest.raises(ValueError, match="non-integer"):
        analysis.early_exit_accuracy(model, x, np.array([0.5, 1, 2, 3]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        analysis.early_exit_accuracy(model, np.full_like(x, np.nan), np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="One-hot labels have 5 classes"):
        analysis.early_exit_accuracy(model, x, np.eye(5)[[0, 1, 2, 3]])


@pytest.mark.parametrize("kwargs, hint", [
    (dict(pretrained=True), "pretrained= is timm's create_model argument"),
    (dict(weights="imagenet"), "weights= is keras.applications'"),
    (dict(load_weights=False), "from_preset(name, load_weights=False)"),
    (dict(in_chans=3), "input_shape=(height, width, channels)"),
    (dict(drop_rate=0.1), "use `dropout`"),
    (dict(num_labels=3), "use `num_classes`"),
    (dict(classifier_activation="softmax"), "returns logits"),
])
def test_foreign_keywords_get_the_right_hint_not_the_closest_name(kwargs, hint):
    with pytest.raises(TypeError, match="unexpected keyword argument") as error:
        g.GloNetMLP(**TINY_FOR[g.GloNetMLP], **kwargs)
    assert hint in str(error.value)
    assert "did you mean" not in str(error.value)  # pretrained -> trainable, weights -> width


@pytest.mark.parametrize("cls, field, value", [
    (g.GloNetMLP, "width", 10**400), (g.GloNetMLP, "num_classes", 2**31),
    (g.GloNetCNN, "depth", None), (g.GloNetViT, "num_heads", 10**20),
])
def test_a_huge_integer_argument_is_a_value_error_naming_it(cls, field, value):
    kwargs = {**TINY_FOR[cls]}
    if value is None:  # blocks_per_stage entries go through the same check
        field, value = "blocks_per_stage", (1, 10**400, 1)
        kwargs.pop("depth", None)
    kwargs[field] = value
    with pytest.raises(ValueError, match=field) as error:
        cls(**kwargs)
    assert len(str(error.value)) < 300  # no 400-digit number in the message


def test_huge_input_shapes_are_refused_naming_the_shape():
    with pytest.raises(ValueError, match="input_shape.*<an integer of about 41 digits>"):
        g.GloNetMLP(num_blocks=1, width=2, input_shape=(10**40,))


def test_the_base_class_of_every_model_is_public():
    assert g.GloNetModelBase is g.models.GloNetModelBase
    assert all(issubclass(cls, g.GloNetModelBase) for cls in MODEL_CLASSES.values())
    assert callable(g.GloNetModelBase.from_preset) and "GloNetModelBase" in g.__all__


def test_an_input_shape_of_too_many_dimensions_is_refused():
    # 10,000 dimensions of size 1 built in 0.05 s, then failed inside TensorFlow at predict.
    with pytest.raises(ValueError, match="at most 8 dimensions"):
        g.GloNetMLP(num_blocks=1, width=2, input_shape=(1,) * 10_000)
    assert g.GloNetMLP(num_blocks=1, width=2, input_shape=(1,) * 8).output_shape == (None, 10)
