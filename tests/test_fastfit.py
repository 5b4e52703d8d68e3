"""glonet_keras.training.fastfit: steps per execution, FLOP estimate, fused JAX steps, device-resident data."""

import json

import keras
import numpy as np
import pytest

from glonet_keras.training import fastfit
from glonet_keras.models import GloNetMLP
from tests.harness import run_on_backend


# ---- auto_steps_per_execution --------------------------------------------------------------

def test_without_a_step_time_it_takes_the_largest_even_split_under_the_cap():
    # 166 steps (SGEMM at batch 1024): the cap 128 does not divide it, 83 does (two calls per epoch).
    assert fastfit.auto_steps_per_execution(166) == 83
    assert fastfit.auto_steps_per_execution(160) == 80
    assert fastfit.auto_steps_per_execution(10) == 10
    # A prime number of steps has no divisor in range: the cap itself.
    assert fastfit.auto_steps_per_execution(257) == 128


def test_fast_steps_amortise_the_overhead_and_slow_steps_run_one_per_call():
    # 1 ms overhead at <= 2 %: 1 ms steps need 50 per call (1000 divides by 50).
    assert fastfit.auto_steps_per_execution(1000, step_seconds=1e-3) == 50
    # Half-second steps: at most 2 fit in a second, and 1 already keeps the overhead under 2 %.
    assert fastfit.auto_steps_per_execution(1000, step_seconds=0.5) == 1
    # Tiny steps are limited by the cap.
    assert fastfit.auto_steps_per_execution(1000, step_seconds=1e-6, max_steps=40) == 40
    # A call may hold at most max_seconds_per_execution of work.
    assert fastfit.auto_steps_per_execution(1000, step_seconds=0.05, overhead_seconds=1.0,
                                            max_seconds_per_execution=0.2) == 4


def test_stacked_batches_are_limited_by_memory():
    # 100 MiB batches under a 256 MiB limit: 2 per call.
    assert fastfit.auto_steps_per_execution(100, batch_bytes=100 * 2**20) == 2
    assert fastfit.auto_steps_per_execution(100, batch_bytes=10**12) == 1


@pytest.mark.parametrize("steps", [1, 2, 7, 64, 99, 128, 500])
@pytest.mark.parametrize("step_seconds", [None, 1e-5, 1e-3, 0.1, 5.0])
def test_the_result_is_always_within_the_epoch_and_the_cap(steps, step_seconds):
    value = fastfit.auto_steps_per_execution(steps, step_seconds)
    assert isinstance(value, int) and 1 <= value <= min(steps, 128)


@pytest.mark.parametrize("kwargs, name", [
    (dict(steps_per_epoch=0), "steps_per_epoch"),
    (dict(steps_per_epoch="10"), "steps_per_epoch"),
    (dict(steps_per_epoch=True), "steps_per_epoch"),
    (dict(steps_per_epoch=10, step_seconds=0.0), "step_seconds"),
    (dict(steps_per_epoch=10, step_seconds=float("nan")), "step_seconds"),
    (dict(steps_per_epoch=10, max_steps=2.5), "max_steps"),
    (dict(steps_per_epoch=10, batch_bytes=-1), "batch_bytes"),
])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        fastfit.auto_steps_per_execution(**kwargs)


# ---- training_flops / estimate_step_seconds -------------------------------------------------

def test_training_flops_of_an_mlp_counts_every_dense_layer():
    model = GloNetMLP(num_blocks=2, width=16, num_classes=3, input_shape=(14,))
    multiply_adds = 14 * 16 + 2 * 16 * 16 + 16 * 3  # stem, two blocks, head
    assert fastfit.training_flops(model, 32) == 3 * 2 * multiply_adds * 32
    assert fastfit.estimate_step_seconds(model, 32, flops_per_second=1e9) == pytest.approx(
        3 * 2 * multiply_adds * 32 / 1e9)


def test_training_flops_of_a_convolution_counts_every_output_position():
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    outputs = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(outputs))
    model = keras.Model(inputs, outputs)
    forward = 2 * (3 * 3 * 3 * 4 * 8 * 8 + 4 * 5)
    assert fastfit.training_flops(model, 2) == 3 * forward * 2


def test_training_flops_needs_known_sizes():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    with pytest.raises(ValueError, match="unknown sizes"):
        fastfit.training_flops(model, 2)


def test_the_default_throughput_follows_the_platform():
    model = GloNetMLP(num_blocks=2, width=16, num_classes=1, input_shape=(14,))
    platform = fastfit.accelerator_platform()
    assert platform in fastfit.DEFAULT_FLOPS_PER_SECOND
    assert fastfit.estimate_step_seconds(model, 8) == pytest.approx(
        fastfit.training_flops(model, 8) / fastfit.DEFAULT_FLOPS_PER_SECOND[platform])


# ---- fuse_train_steps (TensorFlow: nothing to do) ---------------------------------------------

@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the TensorFlow policy")
def test_mixed_precision_is_float16_with_loss_scaling_on_tensorflow():
    assert fastfit.mixed_precision_policy() == "mixed_float16"


def test_fuse_needs_a_compiled_model_and_leaves_tensorflow_alone():
    assert fastfit.fuse_by_default() is False  # TensorFlow, or JAX on this CPU
    model = GloNetMLP(num_blocks=2, width=8, num_classes=1, input_shape=(4,))
    with pytest.raises(ValueError, match="compile"):
        fastfit.fuse_train_steps(model)
    model.compile(optimizer="adam", loss="mse", steps_per_execution=4)
    assert fastfit.fuse_train_steps(model) is (keras.backend.backend() == "jax")


# ---- DeviceArrayDataset (this backend: NumPy arrays) ----------------------------------------

def _arrays(rows=10):
    x = np.arange(rows * 3, dtype="float32").reshape(rows, 3)
    y = np.arange(rows, dtype="float32")[:, None]
    return x, y


def test_batches_follow_the_documented_numpy_order_and_move_on_after_a_full_pass():
    x, y = _arrays(10)
    data = fastfit.DeviceArrayDataset(x, y, batch_size=4, seed=7)
    assert len(data) == 3
    for epoch in (0, 1):
        order = np.random.default_rng([7, epoch]).permutation(10)
        assert np.array_equal(data.order(epoch), order)
        batches = [data[i] for i in range(len(data))]
        assert [len(b[0]) for b in batches] == [4, 4, 2]
        np.testing.assert_array_equal(np.concatenate([np.asarray(b[0]) for b in batches]), x[order])
        np.testing.assert_array_equal(np.concatenate([np.asarray(b[1]) for b in batches]), y[order])
        data.on_epoch_end()
    assert data.epoch == 2


def test_an_epoch_end_after_a_peek_keeps_the_order():
    # Keras reads one batch to build the model, then calls on_epoch_end before training.
    x, y = _arrays(10)
    data = fastfit.DeviceArrayDataset(x, y, batch_size=4, seed=1)
    first = np.asarray(data[0][0])
    data.on_epoch_end()
    assert data.epoch == 0
    np.testing.assert_array_equal(np.asarray(data[0][0]), first)


def test_unshuffled_drop_remainder_and_start_epoch():
    x, y = _arrays(10)
    data = fastfit.DeviceArrayDataset(x, y, batch_size=4, shuffle=False, drop_remainder=True)
    assert len(data) == 2
    np.testing.assert_array_equal(np.asarray(data[1][0]), x[4:8])
    resumed = fastfit.DeviceArrayDataset(x, y, batch_size=4, seed=3, start_epoch=5)
    np.testing.assert_array_equal(np.asarray(resumed[0][1])[:, 0],
                                  y[np.random.default_rng([3, 5]).permutation(10)[:4], 0])


def test_inputs_only_and_sample_weights():
    x, y = _arrays(6)
    weights = np.linspace(0, 1, 6).astype("float32")
    assert len(fastfit.DeviceArrayDataset(x, batch_size=4, shuffle=False)[0]) == 1
    batch = fastfit.DeviceArrayDataset(x, y, batch_size=4, shuffle=False, sample_weight=weights)[1]
    np.testing.assert_array_equal(np.asarray(batch[2]), weights[4:])


@pytest.mark.parametrize("kwargs, message", [
    (dict(x=np.zeros((4, 2)), y=np.zeros(5), batch_size=2), "same first dimension"),
    (dict(x=np.zeros((0, 2)), y=np.zeros(0), batch_size=2), "non-empty"),
    (dict(x=np.zeros((4, 2)), batch_size=2, sample_weight=np.ones(4)), "without `y`"),
    (dict(x=np.zeros((4, 2)), y=np.zeros(4), batch_size=0), "batch_size"),
    (dict(x=np.zeros((4, 2)), y=np.zeros(4), batch_size=8, drop_remainder=True), "leaves no batch"),
])
def test_bad_data_is_refused_with_the_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fastfit.DeviceArrayDataset(**kwargs)


def test_in_memory_inputs_pick_the_backends_fast_form():
    x, y = _arrays(8)
    inputs = fastfit.in_memory_inputs(x, y, batch_size=4, sample_weight=np.ones(8))
    if keras.backend.backend() == "jax":
        assert isinstance(inputs["x"], fastfit.DeviceArrayDataset) and inputs["shuffle"] is False
    else:
        assert inputs["x"] is x and inputs["y"] is y and inputs["batch_size"] == 4
        assert inputs["shuffle"] is True and inputs["sample_weight"].shape == (8,)
    with pytest.raises(ValueError, match="batch_size"):
        fastfit.in_memory_inputs(x, y, batch_size=0)


def test_out_of_range_batches_raise_index_error():
    x, y = _arrays(4)
    data = fastfit.DeviceArrayDataset(x, y, batch_size=2)
    with pytest.raises(IndexError, match="out of range"):
        data[2]


def test_fit_on_the_data_set_sees_each_epochs_documented_order():
    # Keras drives the epochs (it also peeks at a batch to build the model): the weights must equal
    # fitting each epoch's order from NumPy, unshuffled.
    x = np.random.default_rng(0).normal(size=(40, 6)).astype("float32")
    y = x.sum(axis=1, keepdims=True)

    def model():
        keras.utils.set_random_seed(0)
        m = GloNetMLP(num_blocks=2, width=4, num_classes=1, input_shape=(6,))
        m.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        return m

    data = fastfit.DeviceArrayDataset(x, y, batch_size=16, seed=5)
    from_data = model()
    from_data.fit(data, epochs=2, shuffle=False, verbose=0)
    from_numpy = model()
    for epoch in range(2):
        order = data.order(epoch)
        from_numpy.fit(x[order], y[order], batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert data.epoch == 2
    for a, b in zip(from_data.get_weights(), from_numpy.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


# ---- JAX: fused steps and device data give the same training as Keras' own path -------------

JAX_CHECKS = """
import json
import jax
import keras
import numpy as np
from glonet_keras.training import fastfit
from glonet_keras.models import GloNetMLP, ResNetMLP

rng = np.random.default_rng(0)
x = rng.normal(size=(150, 6)).astype("float32")
y = rng.normal(size=(150, 1)).astype("float32")
report = {"fused": []}
initial = {}  # The same starting weights for every model of a class (no global seeding: that
              # would import TensorFlow just to seed it).

def model(cls=GloNetMLP, spe=1, fuse=False):
    m = cls(num_blocks=2, width=8, num_classes=1, input_shape=(6,))
    m.set_weights(initial.setdefault(cls, m.get_weights()))
    m.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", steps_per_execution=spe)
    if fuse:
        report["fused"].append(fastfit.fuse_train_steps(m))
    return m

def max_difference(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a.get_weights(), b.get_weights()))

# GloNet, 150 rows at batch 16: 9 full batches and a partial one, in groups of 4: two scans, then
# a group of 2 (one partial batch) that runs step by step. The fused model reads device batches.
reference = model()
history = reference.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
device_data = fastfit.DeviceArrayDataset(x, y, batch_size=16, shuffle=False)
report["on_device"] = all(isinstance(a, jax.Array) for a in device_data[0])
fused = model(spe=4, fuse=True)
fused_history = fused.fit(device_data, epochs=2, shuffle=False, verbose=0).history
report["glonet"] = dict(weights=max_difference(reference, fused),
                        loss=max(abs(a - b) for a, b in zip(history["loss"], fused_history["loss"])))
logs = fused.train_on_batch(x[:16], y[:16], return_dict=True)
report["train_on_batch_finite"] = bool(np.isfinite(logs["loss"]))

# ResNet-v2 with batch norm: moving statistics (non-trainable state) go through the scan too.
x, y = x[:144], y[:144]
reference = model(ResNetMLP)
reference.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
fused = model(ResNetMLP, spe=4, fuse=True)
fused.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
report["resnet"] = dict(weights=max_difference(reference, fused))
inputs = fastfit.in_memory_inputs(x, y, batch_size=16)
report["in_memory_inputs"] = [type(inputs["x"]).__name__, inputs["shuffle"]]
report["spe1_fused"] = fastfit.fuse_train_steps(model(spe=1))

# The gathers compiled by XLA give exactly the NumPy reference's pixels for the drawn offsets.
from glonet_keras.data import augment

images = rng.uniform(size=(64, 8, 8, 1)).astype("float32")
layer, twin = augment.RandomShiftFlip(seed=11), augment.RandomShiftFlip(seed=11)
layer.build(images.shape)
state = [v.value for v in layer.non_trainable_variables]
out, _ = jax.jit(lambda s, x: layer.stateless_call([], s, x, training=True))(state, images)
dy, dx, flip = (np.asarray(v) for v in twin.draw(64, height=8, width=8))
expected = np.zeros_like(images)
for b in range(64):
    source = images[b, :, ::-1] if flip[b] else images[b]
    for i in range(8):
        for j in range(8):
            if 0 <= i - dy[b] < 8 and 0 <= j - dx[b] < 8:
                expected[b, i, j] = source[i - dy[b], j - dx[b]]
report["jit_pixels_exact"] = bool(np.array_equal(np.asarray(out), expected))

# --mixed_precision's policy by device (the devices faked: this machine has a CPU only).
class Device:
    def __init__(self, platform, capability=None):
        self.platform, self.compute_capability = platform, capability

policies = {"this machine": fastfit.mixed_precision_policy()}
real_devices = jax.devices
for name, device in (("h200", Device("gpu", "9.0")), ("a100", Device("gpu", "8.0")),
                     ("v100", Device("gpu", "7.0")), ("tpu", Device("tpu")),
                     ("cpu", Device("cpu"))):
    jax.devices = lambda device=device: [device]
    policies[name] = fastfit.mixed_precision_policy()
jax.devices = real_devices
report["policies"] = policies

# The trainer fuses by default on a GPU or TPU, not on this CPU.
real_platform = fastfit.accelerator_platform
report["fuse_by_default"] = {"this machine": fastfit.fuse_by_default()}
for platform in ("gpu", "tpu", "cpu"):
    fastfit.accelerator_platform = lambda platform=platform: platform
    report["fuse_by_default"][platform] = fastfit.fuse_by_default()
fastfit.accelerator_platform = real_platform
print("REPORT" + json.dumps(report))
"""


def test_on_jax_fused_steps_and_device_data_train_exactly_like_keras():
    output = run_on_backend("jax", JAX_CHECKS)
    report = json.loads(output.split("REPORT", 1)[1])
    assert report["fused"] == [True, True] and report["spe1_fused"] is False
    assert report["on_device"]
    # Same steps in the same order: equal up to float reassociation inside XLA.
    assert report["glonet"]["weights"] < 1e-5 and report["glonet"]["loss"] < 1e-5, report
    assert report["resnet"]["weights"] < 1e-5, report
    assert report["train_on_batch_finite"]
    assert report["in_memory_inputs"] == ["DeviceArrayDataset", False]
    assert report["jit_pixels_exact"]
    assert report["policies"] == {"this machine": "mixed_float16", "h200": "mixed_bfloat16",
                                  "a100": "mixed_bfloat16", "v100": "mixed_float16",
                                  "tpu": "mixed_bfloat16", "cpu": "mixed_float16"}
    assert report["fuse_by_default"] == {"this machine": False, "gpu": True, "tpu": True,
                                         "cpu": False}


JAX_AUGMENTED_CNN = """
import json
import keras
import numpy as np
from glonet_keras.training import fastfit

rng = np.random.default_rng(0)
report = {"fused": []}

def max_difference(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a.get_weights(), b.get_weights()))

# The trainer's training-only model on JAX: the flip/crop gathers in front of a CNN with batch norm.
# Fused and Keras' own path draw the same augmentation (the seed generator's state goes through
# the scan like any variable), so they end with the same weights after the same steps.
from glonet_keras.data import augment
from glonet_keras.models import GloNetCNN

images = rng.uniform(size=(64, 8, 8, 1)).astype("float32")
labels = rng.integers(0, 10, size=64).astype("int32")
cnn_initial = []

def cnn(spe=1, fuse=False):
    net = GloNetCNN(depth=8, width=4, input_shape=(8, 8, 1), normalization="batch")
    if not cnn_initial:
        cnn_initial.extend(net.get_weights())
    net.set_weights(cnn_initial)
    wrapper = keras.Sequential([keras.Input((8, 8, 1)), augment.RandomShiftFlip(seed=3), net])
    # SGD: the gradient of a convolution's bias before batch norm is zero up to rounding, and
    # Adam would turn that rounding noise (which differs between two compiled programs) into
    # steps of the learning rate's size.
    wrapper.compile(optimizer=keras.optimizers.SGD(0.1), steps_per_execution=spe,
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if fuse:
        report["fused"].append(fastfit.fuse_train_steps(wrapper))
    return wrapper

reference = cnn()
reference.fit(images, labels, batch_size=8, epochs=2, shuffle=False, verbose=0)
fused = cnn(spe=4, fuse=True)
fused.fit(fastfit.DeviceArrayDataset(images, labels, batch_size=8, shuffle=False), epochs=2,
          shuffle=False, verbose=0)
report["augmented_cnn"] = dict(weights=max_difference(reference, fused))

print("REPORT" + json.dumps(report))
"""


@pytest.mark.slow
def test_on_jax_fused_steps_with_the_trainers_augmentation_and_batch_norm_train_like_keras():
    """The trainer's training-only model (RandomShiftFlip in front of a CNN with batch norm)."""
    report = json.loads(run_on_backend("jax", JAX_AUGMENTED_CNN).split("REPORT", 1)[1])
    assert report["fused"] == [True]
    assert report["augmented_cnn"]["weights"] < 1e-5, report


JAX_MIXING = """
import json
import keras
import numpy as np
from glonet_keras.data import augment
from glonet_keras.training import fastfit
from glonet_keras.models import GloNetMLP

# The trainer's training-only model with MixUp and CutMix: flip/crop, then mixing of images and
# one-hot labels in the training step, then a GloNet. Fused and Keras' own path draw the same
# mixing (the seed generators' states go through the scan), so they end with the same weights.
rng = np.random.default_rng(0)
images = rng.uniform(size=(64, 8, 8, 1)).astype("float32")
labels = np.eye(5, dtype="float32")[rng.integers(0, 5, size=64)]
report = {"fused": []}
initial = []

def mixing_model(spe=1, fuse=False):
    net = GloNetMLP(num_blocks=2, width=8, num_classes=5, input_shape=(64,))
    if not initial:
        initial.extend(net.get_weights())
    net.set_weights(initial)
    inner = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Reshape((64,)), net])
    model = augment.MixingModel(inner, augment.RandomMix(mixup=True, cutmix=True, seed=2),
                                augment=[augment.RandomShiftFlip(seed=3)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), steps_per_execution=spe,
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    if fuse:
        report["fused"].append(fastfit.fuse_train_steps(model))
    return model

def max_difference(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a.get_weights(), b.get_weights()))

reference = mixing_model()
before = reference.get_weights()
history = reference.fit(images, labels, batch_size=8, epochs=2, shuffle=False, verbose=0).history
fused = mixing_model(spe=4, fuse=True)
fused_history = fused.fit(fastfit.DeviceArrayDataset(images, labels, batch_size=8, shuffle=False),
                          epochs=2, shuffle=False, verbose=0).history
# Without the mixing (the same model, a mixer that does nothing): a different training.
unmixed = mixing_model()
unmixed.mixer = augment.RandomMix(mixup=False, cutmix=False)
unmixed.fit(images, labels, batch_size=8, epochs=2, shuffle=False, verbose=0)
report.update(
    weights=max_difference(reference, fused),
    loss=max(abs(a - b) for a, b in zip(history["loss"], fused_history["loss"])),
    accuracy=max(abs(a - b) for a, b in zip(history["accuracy"], fused_history["accuracy"])),
    trained=max(float(np.max(np.abs(u - v))) for u, v in zip(before, reference.get_weights())),
    mixing_matters=max_difference(reference, unmixed),
    draws=[int(v) for v in np.asarray(fused.mixer.seed_generator.state)],
    finite=bool(np.isfinite(history["loss"]).all()))
print("REPORT" + json.dumps(report))
"""


@pytest.mark.slow
def test_on_jax_fused_steps_with_mixup_and_cutmix_train_like_keras():
    """MixingModel: the mixed images and labels of the fused scan are those of Keras' own steps."""
    report = json.loads(run_on_backend("jax", JAX_MIXING).split("REPORT", 1)[1])
    assert report["fused"] == [True] and report["finite"]
    assert report["weights"] < 1e-5 and report["loss"] < 1e-5 and report["accuracy"] == 0, report
    assert report["trained"] > 1e-3 and report["mixing_matters"] > 1e-3, report
    # 16 steps (8 a epoch), 6 draws each (MixUp: partner, λ; CutMix: partner, λ, row, column).
    assert report["draws"] == [2, 16 * 6], report
