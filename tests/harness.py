"""One reusable set of checks applied to every model builder (in the spirit of keras-hub's TestCase).

Each builder's test is a tiny config plus calls into these functions.
"""

import importlib
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def within_seconds(seconds, function, *args, **kwargs):
    """`function(*args, **kwargs)`, failing the test instead of hanging it (a blocking open of a
    FIFO never returns): it runs in a daemon thread, abandoned if still blocked after `seconds`."""
    import threading

    outcome = {}

    def call():
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001  (re-raised in the test's thread)
            outcome["error"] = error

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"{getattr(function, '__name__', function)} hung for {seconds} s (a blocking open?)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _tensorflow():
    """TensorFlow, for the checks that need tf.data or a SavedModel; they skip where it is absent
    (the harness itself imports on a JAX-only machine)."""
    return pytest.importorskip("tensorflow")


def training_module(name):
    """Imports `training/<name>.py` (the programs are scripts, not a package) and returns it."""
    sys.path.insert(0, os.path.join(REPO_ROOT, "training"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(os.path.join(REPO_ROOT, "training"))


def slow_where(names, is_slow):
    """`names` as pytest parameters, those where `is_slow(name)` marked slow (for `make test-slow`)."""
    return [pytest.param(name, marks=pytest.mark.slow) if is_slow(name) else name for name in names]


def relative_error(actual, expected):
    """max |actual - expected| / max |expected|: an error measured against the output's own scale.

    An element-wise rtol fails on outputs near zero (logits cross zero); an absolute tolerance means
    nothing for outputs of scale 1e3. This is the one comparison the tests use for decompositions.
    """
    actual = np.asarray(actual, dtype="float64")
    expected = np.asarray(expected, dtype="float64")
    assert actual.shape == expected.shape, f"shapes differ: {actual.shape} vs {expected.shape}"
    scale = np.max(np.abs(expected))
    return float(np.max(np.abs(actual - expected)) / (scale if scale > 0 else 1.0))


def random_inputs(model, batch=4, seed=0):
    shape = tuple(8 if d is None else d for d in model.inputs[0].shape[1:])
    return np.random.default_rng(seed).uniform(size=(batch,) + shape).astype("float32")


def check_config_round_trip(cls, kwargs):
    model = cls(**kwargs)
    config = model.get_config()
    for key, value in kwargs.items():
        expected = tuple(value) if isinstance(value, list) else value
        assert config[key] == expected, f"get_config()[{key!r}] = {config[key]!r}, expected {value!r}"
    # The config is plain JSON: what a preset's config.json stores.
    restored = cls.from_config(json.loads(json.dumps(config)))
    assert restored.get_config() == config
    restored.set_weights(model.get_weights())
    x = random_inputs(model)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def check_saved_model_file(cls, kwargs, tmp_path):
    model = cls(**kwargs)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode stays on: no lambdas, nothing pickled.
    assert type(loaded) is cls
    assert loaded.get_config() == model.get_config()
    assert loaded.num_blocks == model.num_blocks
    assert sorted(loaded.block_outputs) == sorted(model.block_outputs)
    x = random_inputs(model)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def check_predict_arrays_and_dataset(cls, kwargs):
    model = cls(**kwargs)
    x = random_inputs(model, batch=6)
    from_arrays = model.predict(x, batch_size=4, verbose=0)
    assert from_arrays.shape == (6, kwargs.get("num_classes", 10))
    assert np.all(np.isfinite(from_arrays))
    tf = _tensorflow()
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(4)
    np.testing.assert_allclose(model.predict(dataset, verbose=0), from_arrays, rtol=1e-5, atol=1e-6)


def check_training_step_lowers_loss(cls, kwargs):
    model = cls(**kwargs)
    x = random_inputs(model, batch=16)
    num_classes = kwargs.get("num_classes", 10)
    y = np.arange(16) % num_classes
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    # train_on_batch reports the loss of the forward pass before its update, in training mode (so
    # batch norm uses the batch's statistics, not moving averages that barely move in a few steps).
    losses = [float(model.train_on_batch(x, y)) for _ in range(5)]
    assert losses[-1] < losses[0], f"loss did not decrease: {losses}"


def check_mixed_precision(cls, kwargs):
    model = cls(**kwargs, dtype="mixed_float16")
    assert model.get_layer("head").compute_dtype == "float16"
    assert model.get_layer("head").kernel.dtype == "float32"  # variables stay float32
    assert model.get_config()["dtype"] == "mixed_float16"
    x = random_inputs(model)
    reference = cls(**kwargs)
    reference.set_weights(model.get_weights())
    y16 = model.predict(x, verbose=0)
    assert np.all(np.isfinite(y16))
    np.testing.assert_allclose(
        y16.astype("float32"), reference.predict(x, verbose=0), rtol=0.05, atol=0.05
    )


def check_wrong_input_shape(cls, kwargs):
    model = cls(**kwargs)
    good = random_inputs(model)
    bad = np.concatenate([good, good], axis=-1)  # one more channel / feature than expected
    try:
        model.predict(bad, verbose=0)
    except ValueError as error:
        message = str(error)
        assert "expected shape" in message and str(tuple(bad.shape)) in message, message
    else:
        raise AssertionError(f"{cls.__name__} accepted an input of shape {bad.shape}")


def run_on_backend(backend, script, timeout=600):
    """Runs `script` in a fresh interpreter with KERAS_BACKEND=backend; returns its stdout."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO_ROOT)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{backend} run failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout


def check_glonet_contract(model, x, *, rtol=1e-5, export_dir=None):
    """The contract every GloNet (built, loaded or glonetified) must keep, checked from its graph.

    - The skeleton is recovered from the graph: taps tap_1..tap_L in order, and the model's own
      `num_blocks` / `block_outputs` (where it has them) agree with it.
    - Exact decomposition: block contributions plus the head's bias equal the output, to `rtol`
      relative to the outputs' scale.
    - Early exits: prefix k of the one-pass early-exit model equals `truncate(model, k)`.
    - With `export_dir`: the exported `early_exits` signature equals `analysis.early_exit_logits`.
    """
    from glonet_keras import analysis, skeleton

    parts = skeleton.skeleton(model)
    names = [t._keras_history.operation.name for t in parts.taps]
    first = 0 if parts.includes_stem else 1
    expected = ["tap_stack"] if parts.stacked else [f"tap_{i}" for i in range(first, parts.num_blocks + 1)]
    assert names == expected, names
    if hasattr(model, "num_blocks"):
        assert model.num_blocks == parts.num_blocks
    if hasattr(model, "block_outputs"):
        assert list(model.block_outputs) == list(parts.block_outputs)
    output = model.predict(x, verbose=0)
    contributions = analysis.block_contributions(model, x)
    assert contributions.shape == (len(x), parts.num_blocks + int(parts.includes_stem), output.shape[-1])
    reconstructed = contributions.sum(1) + analysis.head_bias(model)
    assert relative_error(reconstructed, output) < rtol
    exits = analysis.early_exit_logits(model, x)
    assert exits.shape == (len(x), parts.num_blocks, output.shape[-1])
    for k in sorted({1, max(1, parts.num_blocks // 2), parts.num_blocks}):
        truncated = analysis.truncate(model, k).predict(x, verbose=0)
        assert relative_error(exits[:, k - 1], truncated) < rtol, f"prefix {k}"
    assert relative_error(exits[:, -1], output) < rtol
    if export_dir is not None:
        from glonet_keras.deploy.export import export_saved_model

        tf = _tensorflow()
        path = export_saved_model(model, export_dir, model_name="contract", overwrite=True)
        served = tf.saved_model.load(path).signatures["early_exits"]
        (input_name,) = served.structured_input_signature[1]
        logits = served(**{input_name: tf.constant(x)})["logits"].numpy()
        assert relative_error(logits, exits) < rtol
    return parts


# --------------------------------------------------------------------------------------------
# The dtype and quantization contract (keras-hub's `run_precision_test` and
# `run_quantization_test`, for GloNets: plus `.keras` files, presets, analysis and export).

# Tolerances against the float32 model with the same weights, relative to the outputs' scale.
PRECISION_RTOL = {"float16": 2e-2, "bfloat16": 1e-1}


def check_precision(cls, kwargs, policy):
    """`cls(**kwargs, dtype=policy)` computes in `policy` everywhere and says so.

    - `model.dtype_policy` and `get_config()["dtype"]` are the policy given; from_config keeps it.
    - Every layer computes in the policy's compute dtype and holds its variables in its variable
      dtype (mixed: float16/bfloat16 compute, float32 variables); the output and the symbolic
      output spec have the compute dtype (the head included: docs/precision.md).
    - The outputs match the float32 model with the same weights to the dtype's precision, and a
      GloNet's analysis keeps its contract at that precision.
    """
    from glonet_keras import skeleton

    policy = keras.dtype_policies.get(policy)
    model = cls(**kwargs, dtype=policy.name)
    assert model.dtype_policy.name == policy.name, model.dtype_policy
    assert model.get_config()["dtype"] == policy.name
    assert cls.from_config(model.get_config()).dtype_policy.name == policy.name
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        assert (layer.compute_dtype, layer.variable_dtype) == (
            policy.compute_dtype, policy.variable_dtype), f"{layer.name}: {layer.dtype_policy}"
    for weight in model.weights:
        assert keras.backend.standardize_dtype(weight.dtype) == policy.variable_dtype, weight.path
    x = random_inputs(model)
    output = model(x)
    assert keras.backend.standardize_dtype(output.dtype) == policy.compute_dtype
    spec = model.compute_output_spec(keras.KerasTensor(x.shape, "float32"))
    assert keras.backend.standardize_dtype(spec.dtype) == policy.compute_dtype
    reference = cls(**kwargs, dtype="float32")
    reference.set_weights([keras.ops.convert_to_numpy(w).astype("float32") for w in model.weights])
    expected = reference.predict(x, verbose=0)
    actual = keras.ops.convert_to_numpy(output).astype("float32")
    assert np.all(np.isfinite(actual))
    assert relative_error(actual, expected) < PRECISION_RTOL[policy.compute_dtype]
    if skeleton.is_glonet(model):
        check_glonet_contract(model, x, rtol=PRECISION_RTOL[policy.compute_dtype])
    return model


def _same_policy_map(a, b):
    maps = keras.dtype_policies.DTypePolicyMap
    assert isinstance(a, maps) and isinstance(b, maps), (a, b)
    assert a.default_policy.name == b.default_policy.name
    assert {k: a[k].name for k in a} == {k: b[k].name for k in b}


def check_policy_map(cls, kwargs, tmp_path, *, default="mixed_float16", entries=None):
    """A model built with a `DTypePolicyMap` reports it, computes by it, and keeps it through
    get_config / from_config (as JSON, what a preset stores) and a `.keras` file, with identical
    outputs. `entries` defaults to the documented float32 head: `{"head": "float32"}`."""
    entries = {"head": "float32"} if entries is None else entries
    policy_map = keras.dtype_policies.DTypePolicyMap(default_policy=default)
    for key, value in entries.items():
        policy_map[key] = value
    model = cls(**kwargs, dtype=policy_map)
    _same_policy_map(model.dtype_policy, policy_map)
    for key, value in entries.items():
        layer = model.get_layer(key)
        assert layer.compute_dtype == keras.dtype_policies.get(value).compute_dtype, key
    x = random_inputs(model)
    expected = model.predict(x, verbose=0)
    config = model.get_config()
    restored = cls.from_config(json.loads(json.dumps(config)))
    assert restored.get_config() == config
    _same_policy_map(restored.dtype_policy, policy_map)
    restored.set_weights(model.get_weights())
    np.testing.assert_array_equal(restored.predict(x, verbose=0), expected)
    path = os.path.join(tmp_path, "policy_map.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    _same_policy_map(loaded.dtype_policy, policy_map)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    return model


def check_quantization(cls, kwargs, mode, tmp_path, *, export=False):
    """`model.quantize(mode)` (int8 or float8), then every way a model leaves the process.

    - Every Dense / EinsumDense is quantized except the GloNet head (kept in float so the sum's
      per-block split stays exact; `GloNetModelBase.quantize`).
    - get_config (as JSON) records the quantized layers (a DTypePolicyMap); from_config builds
      them quantized and takes the weights; a model built directly from that map is quantized
      too (keras-hub's check).
    - A `.keras` file and `save_to_preset` / `from_preset` reload with identical outputs.
    - A GloNet keeps its contract (`check_glonet_contract`: contributions sum to the logits, early
      exits equal `truncate`, and with `export` the SavedModel's early exits); with `export` the
      SavedModel's `serving_default` gives the Keras logits.
    """
    from glonet_keras import skeleton

    quantizable = (keras.layers.Dense, keras.layers.EinsumDense)
    model = cls(**kwargs)
    model.quantize(mode)
    layers = [layer for layer in model._flatten_layers(include_self=False)
              if type(layer) in quantizable]
    assert layers
    for layer in layers:
        expected_mode = None if layer.name == skeleton.HEAD else mode
        assert layer.quantization_mode == expected_mode, (layer.path, layer.quantization_mode)
    x = random_inputs(model)
    expected = model.predict(x, verbose=0)
    assert np.all(np.isfinite(expected))

    # Weights move by name (a .keras file, a preset) below: a layer quantized after its build
    # and one built quantized list their scale variables in different orders (float8), so a
    # positional set_weights between them is no test.
    config = json.loads(json.dumps(model.get_config()))
    restored = cls.from_config(config)
    assert restored.get_config() == model.get_config()
    direct = cls(**{**kwargs, "dtype": restored.dtype_policy})
    assert [layer.quantization_mode for layer in direct._flatten_layers(include_self=False)] == [
        layer.quantization_mode for layer in model._flatten_layers(include_self=False)]

    path = os.path.join(tmp_path, f"{mode}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is cls and loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)

    preset = os.path.join(tmp_path, f"{mode}_preset")
    model.save_to_preset(preset)
    from_preset = cls.from_preset(preset)
    np.testing.assert_array_equal(from_preset.predict(x, verbose=0), expected)

    export_dir = os.path.join(tmp_path, f"{mode}_export") if export else None
    if skeleton.is_glonet(from_preset):
        check_glonet_contract(from_preset, x, export_dir=export_dir)
    if export:
        from glonet_keras.deploy.export import export_saved_model

        tf = _tensorflow()
        path = export_saved_model(from_preset, os.path.join(tmp_path, f"{mode}_serving"),
                                  model_name="served", overwrite=True)
        served = tf.saved_model.load(path).signatures["serving_default"]
        (input_name,) = served.structured_input_signature[1]
        logits = served(**{input_name: tf.constant(x)})["logits"].numpy()
        assert relative_error(logits, expected) < 1e-5
    return model


# For test scripts run in a fresh interpreter: a run stopped by Ctrl-C after its first epoch (at the
# end of the checkpoint write), then resumed in the same directory.
INTERRUPTED_THEN_RESUMED = textwrap.dedent("""
    def interrupted_then_resumed(trainer, callbacks, config, model_dir):
        save = callbacks.RunStateCheckpoint.on_epoch_end
        def stop_after_epoch_1(self, epoch, logs=None):
            save(self, epoch, logs)
            raise KeyboardInterrupt
        callbacks.RunStateCheckpoint.on_epoch_end = stop_after_epoch_1
        try:
            trainer.train(trainer.TrainConfig(**config, model_dir=model_dir))
        except KeyboardInterrupt:
            pass
        callbacks.RunStateCheckpoint.on_epoch_end = save
        return trainer.train(trainer.TrainConfig(**config, model_dir=model_dir))
""")

