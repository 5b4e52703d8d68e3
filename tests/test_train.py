"""The trainer and training/train.py: files, flags, kills, Ctrl-C, NaN, full disk, JAX without TF.

The run-directory guarantees tested in-process are in test_rundir.py.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from glonet_keras.deploy import serving
from glonet_keras.training import trainer
from glonet_keras.training.trainer import TrainConfig
from tests import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "training", "train.py")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
TINY = dict(model="glonet_mlp", depth=3, width=16, dataset="digits", batch_size=8,
            max_examples=256, tensorboard=False, verbose=0)


def _flags(config_kwargs, model_dir):
    flags = [f"--{key}={value}" for key, value in config_kwargs.items()
             if key not in ("tensorboard", "verbose")]
    return [sys.executable, TRAIN, *flags, "--notensorboard", "--verbose=2", f"--model_dir={model_dir}"]


def test_train_writes_model_metrics_checkpoints_and_export(tmp_path):
    # "mirrored" over the one device this process has: the path `make demo` takes on a CPU.
    result = trainer.train(TrainConfig(**dict(TINY, epochs=2, tensorboard=True),
                                       strategy="mirrored", model_dir=str(tmp_path / "run"),
                                       export_dir=str(tmp_path / "serving"),
                                       export_name="digits_mlp"))
    assert result.replicas == 1 and result.global_batch_size == 8 and result.initial_epoch == 0
    assert len(result.seconds_per_epoch) == 2 and len(result.history["loss"]) == 2
    assert 0.0 <= result.test_metrics["accuracy"] <= 1.0
    run = tmp_path / "run"
    for name in ("model.keras", "metrics.json", "preprocessing.json", "run.json",
                 "checkpoints/best.keras", "checkpoints/last.keras"):
        assert (run / name).exists(), name
    assert any((run / "logs").rglob("*tfevents*"))
    assert not (run / "backup").exists()  # The state is dropped once the run is complete.
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"] == result.test_metrics and metrics["replicas"] == 1
    assert len(metrics["seconds_per_epoch"]) == 2 and metrics["versions"]["keras"]
    assert metrics["dataset"]["preprocessing"] == result.info.preprocessing.to_dict()
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    # What export and save_to_preset read from the trained model.
    assert result.model.preprocessing == result.info.preprocessing
    assert result.model.preset_metadata["task"] == "classification"
    assert result.model.preset_metadata["metrics"]["test_accuracy"] == result.test_metrics["accuracy"]
    # The export is named by export_name, and answers like the trained model on raw digits.
    assert result.export_path == str(tmp_path / "serving" / "digits_mlp" / "1")
    from glonet_keras.data import load_arrays

    (_, _), (x_test, _) = load_arrays("digits")
    response = serving.predict(serving.load(result.export_path), {"inputs": x_test[:3].tolist()})
    expected = result.model(result.info.preprocessing(x_test[:3]), training=False)
    np.testing.assert_allclose(response["outputs"]["logits"], np.asarray(expected), atol=1e-5)
    # Another run may not replace that export unless asked.
    with pytest.raises(trainer.ConfigError, match="already holds a SavedModel"):
        trainer.train(TrainConfig(**dict(TINY, epochs=1), model_dir=str(tmp_path / "other"),
                                  export_dir=str(tmp_path / "serving"), export_name="digits_mlp"))


def test_train_tfds_images_with_mixup_under_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=32):
        result = trainer.train(TrainConfig(
            model="glonet_cnn", depth=8, width=4, dataset="cifar10", data_dir=str(tmp_path / "tfds"),
            augment=("flip", "crop", "mixup"), label_smoothing=0.1, epochs=1, batch_size=16,
            tensorboard=False, verbose=0, model_dir=str(tmp_path / "run"),
            export_dir=str(tmp_path / "serving")))
    assert set(result.test_metrics) == {"loss", "accuracy"}
    assert result.info.input_shape == (32, 32, 3)
    loaded = serving.load(result.export_path)
    assert {"serving_default", "early_exits"} <= set(loaded.signatures)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).tolist()
    response = serving.predict(loaded, {"instances": images})
    np.testing.assert_allclose([sum(p["probabilities"]) for p in response["predictions"]], 1, atol=1e-5)


def test_train_sgemm_regression(tmp_path):
    from tests.test_data import _write_sgemm

    _write_sgemm(tmp_path / "sgemm_product.csv", rows=120)
    result = trainer.train(TrainConfig(
        model="glonet_mlp", depth=2, width=8, dataset="sgemm", data_dir=str(tmp_path), epochs=2,
        batch_size=16, tensorboard=False, verbose=0, model_dir=str(tmp_path / "run"),
        export_dir=str(tmp_path / "serving")))
    assert set(result.test_metrics) == {"loss", "rmse"} and result.info.num_classes == 1
    outputs = serving.predict(serving.load(result.export_path), {"inputs": [[8.0] * 14]})["outputs"]
    assert set(outputs) == {"logits"} and np.asarray(outputs["logits"]).shape == (1, 1)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(epochs=0), "`epochs` must be an integer >= 1"),
        (dict(optimizer="adamax"), "Unknown optimizer 'adamax'"),
        (dict(strategy="tpu"), "Unknown strategy 'tpu'"),
        (dict(dataset="imagenet"), "Unknown data set 'imagenet'"),
        (dict(augment=("zoom",)), "Unknown augmentation 'zoom'"),
        (dict(learning_rate=-1.0), "`learning_rate` must be > 0"),
        (dict(warmup_epochs=3, epochs=2), "`warmup_epochs`"),
        (dict(export_name="../elsewhere"), "`export_name` must be a folder name"),
        (dict(steps_per_execution=0), "`steps_per_execution` must be an integer >= 1"),
        (dict(learning_rate=float("inf")), "`learning_rate` must be > 0 and finite"),
        # Absurd sizes are refused before anything is built (issue 22).
        (dict(depth=99999999999999999999), r"`depth` must be at most 10,000, received 99999"),
        (dict(width=10**6), "`width` must be at most 65,536"),
        (dict(depth=5000, width=4096), "block weights, over the"),
        (dict(model="glonet_vit", model_kwargs={"num_heads": 10**9}), "`num_heads` must be at most"),
        (dict(model="glonet_vit", model_kwargs={"patch_size": 10**7}), "`patch_size` must be at most"),
        (dict(model="glonet_cnn", model_kwargs={"blocks_per_stage": [2, 10**12]}),
         "`blocks_per_stage` must be at most"),
        (dict(model="glonet_cnn", depth=None, model_kwargs={"depth": 0}),
         "`depth` must be an integer >= 1"),
        (dict(batch_size=2**40), "`batch_size` must be at most"),
        (dict(epochs=10**30), "`epochs` must be at most"),
        (dict(max_examples=10**30), "`max_examples` must be at most"),
        (dict(seed=2**32), "`seed` must be at most 4,294,967,295"),
        (dict(export_version=2**63), "`export_version` must be at most"),
        (dict(image_size=(10**6, 10)), "`image_size` must be at most"),
        (dict(image_size=(10000, 10000)), "over the 50-megapixel cap"),
        (dict(model_dir=""), "`model_dir` must name a directory, received ''"),
        (dict(model_dir="  "), "`model_dir` must name a directory"),
        (dict(preset=""), "`preset` must name a preset"),
        (dict(channels=2), "`channels` must be 1 or 3, received 2"),
    ],
)
def test_config_validation_names_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**dict(TINY, **changes)).validate()


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--epochs=abc", "flag --epochs=abc"),
        ("--model=glonet_cnn", "depth = 6n \\+ 2"),  # with --depth=3: the builder's own check
        ("--dataset=cifar10", "'cifar10' is not prepared"),
        ("--layout=imagenet", "GloNetMLP does not take \\['layout'\\]"),
        # The same two paths again (a model argument, a flag's value), in `make test-slow`.
        pytest.param("--tokenizer=conv", "GloNetMLP does not take \\['tokenizer'\\]",
                     marks=pytest.mark.slow),
        pytest.param("--steps_per_execution=many", "--steps_per_execution takes integers",
                     marks=pytest.mark.slow),
    ],
)
def test_bad_flags_exit_nonzero_with_one_line(tmp_path, flag, message, capsys):
    # The program's own flag parsing and main(), in this process (a process per case cost a
    # TensorFlow import each); the shell-level exit status is checked by the subprocess tests
    # (test_a_malformed_tf_config_is_one_line_from_train_py, the Ctrl-C and NaN runs).
    argv = _flags(TINY, tmp_path / "run")[1:] + [flag, f"--data_dir={tmp_path / 'nothing'}"]
    argv[0] = "train.py"
    start = time.perf_counter()
    status = _run_train_main(argv)
    stderr = capsys.readouterr().err
    assert status == 2, stderr
    reasons = [line for line in stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(reasons) == 1 and re.search(message, reasons[0]), stderr
    assert "Traceback" not in stderr
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "run" / "run.json").exists()  # Refused before the run was recorded.


def _run_train_main(argv):
    """train.py's parse_flags + main on `argv` in this process: its exit status (0 if it returns).
    Leaves no flag defined behind, since this process may import other absl programs later."""
    from glonet_keras.cli import train as program

    before = set(program.FLAGS)
    try:
        program.main(program.parse_flags(argv))
        return 0
    except SystemExit as exit:
        return exit.code
    finally:
        program.FLAGS.unparse_flags()
        for name in set(program.FLAGS) - before:
            delattr(program.FLAGS, name)
        program.define_flags.reset()


@pytest.mark.slow
def test_new_model_flags_reach_the_model_and_the_banner(tmp_path):
    command = _flags(dict(TINY, model="glonet_vit", depth=1, width=8, epochs=1), tmp_path / "run")
    command += ["--patch_size=4", "--num_heads=2", "--mlp_dim=16", "--include_stem",
                "--tokenizer=conv", "--head_initializer=zeros"]
    finished = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=240)
    assert finished.returncode == 0, finished.stderr[-2000:]
    banner = finished.stdout[finished.stdout.index("glonet-keras training"):]
    for expected in ("GloNetViT", "parameters", str(tmp_path / "run"), "replica", "fresh start"):
        assert expected in banner.split("Epoch 1/1")[0], banner
    architecture = json.loads((tmp_path / "run" / "run.json").read_text())["fingerprint"]["model"]
    assert architecture["config"] | dict(patch_size=4, num_heads=2, mlp_dim=16, include_stem=True,
                                         hidden_dim=8, num_blocks=1, tokenizer="conv",
                                         head_initializer="zeros") == architecture["config"]


def _wait_for(path, process, timeout=150):
    """Waits for `path` (a glob pattern in its last part) to exist."""
    deadline = time.time() + timeout

    def found():
        return any(path.parent.glob(path.name))

    while time.time() < deadline and process.poll() is None and not found():
        time.sleep(0.01)
    assert found(), f"{path} never appeared (exit status {process.poll()})"


def test_sigkill_during_a_checkpoint_write_resumes_and_matches_an_uninterrupted_run(tmp_path):
    config = dict(TINY, epochs=2, max_examples=128)
    uninterrupted = trainer.train(TrainConfig(**config, model_dir=str(tmp_path / "whole")))

    model_dir = tmp_path / "killed"
    # The run holds in the middle of writing epoch 2's state (written aside, not yet renamed).
    env = dict(ENV, GLONET_KERAS_TEST_PAUSE_BEFORE_RENAME="epoch_0002.keras")
    process = subprocess.Popen(_flags(config, model_dir), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        _wait_for(model_dir / "backup" / ".partial-*-epoch_0002.keras", process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL
    assert not (model_dir / "metrics.json").exists()

    resumed = subprocess.run(_flags(config, model_dir), capture_output=True, text=True, env=ENV,
                             timeout=150)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # It resumed from epoch 1's state, the last complete one.
    assert "resuming at epoch 2 of 2" in resumed.stdout
    assert "Epoch 2/2" in resumed.stdout and "Epoch 1/" not in resumed.stdout
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["initial_epoch"] == 1 and len(metrics["history"]["loss"]) == 2
    assert not (model_dir / "backup").exists()
    assert not list(model_dir.rglob(".partial-*"))
    # Same weights, optimizer state and batches: the same result up to float reduction order.
    for key, value in uninterrupted.test_metrics.items():
        assert metrics["test"][key] == pytest.approx(value, abs=1e-5), key
    assert metrics["history"]["loss"] == pytest.approx(uninterrupted.history["loss"], abs=1e-5)


def test_ctrl_c_during_a_write_finishes_it_and_ends_with_one_line_that_resumes(tmp_path):
    model_dir = tmp_path / "run"
    command = _flags(dict(TINY, epochs=3, max_examples=64), model_dir)
    env = dict(ENV, GLONET_KERAS_TEST_PAUSE_BEFORE_RENAME="epoch_0002.keras")
    # A test runner started in the background by a non-interactive shell (`pytest ... &`) has SIGINT
    # ignored, and its children inherit that; train.py rightly keeps an ignored Ctrl-C ignored. The
    # child gets the default disposition, as in a terminal, whatever started pytest.
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for(model_dir / "backup" / ".partial-*-epoch_0002.keras", process)
        process.send_signal(signal.SIGINT)  # Lands in the middle of writing epoch 2's state.
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("train.py")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("train.py: interrupted; the state after epoch 2 is kept")
    assert lines[0].endswith("Resume with: " + shlex.join(command))
    # The write was finished, then the run stopped: the backup holds complete states only.
    assert sorted(os.listdir(model_dir / "backup")) == [
        "epoch_0001.json", "epoch_0001.keras", "epoch_0002.json", "epoch_0002.keras"]


def test_a_non_finite_loss_exits_1_with_one_line_and_exports_nothing(tmp_path):
    command = _flags(dict(TINY, epochs=2, max_examples=64), tmp_path / "run")
    command += ["--learning_rate=1e30", f"--export_dir={tmp_path / 'serving'}"]
    finished = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=120)
    assert finished.returncode == 1
    reasons = [line for line in finished.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(reasons) == 1 and "Training stopped in epoch 1" in reasons[0], finished.stderr
    assert "Traceback" not in finished.stderr
    assert not (tmp_path / "serving").exists() and not (tmp_path / "run" / "model.keras").exists()


@pytest.mark.slow
def test_a_full_disk_exits_1_with_one_line(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(disk)],
                             capture_output=True)
    if mounted.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); test_rundir injects ENOSPC instead")
    try:
        # TensorBoard on too: every writer meets the full disk. HDF5 used to segfault here.
        command = _flags(dict(TINY, epochs=2, max_examples=64), disk / "run")
        command = [flag for flag in command if flag != "--notensorboard"]
        finished = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=120)
        assert finished.returncode == 1, finished.stderr[-3000:]
        reasons = [line for line in finished.stderr.splitlines() if line.startswith("train.py:")]
        assert len(reasons) == 1 and "No space left on device while writing" in reasons[0]
        assert "Traceback" not in finished.stderr and "Fatal Python error" not in finished.stderr
        assert "the same command again to resume" in reasons[0]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# Makes `import tensorflow` fail as on a machine without it (the GPU machines have JAX only).
NO_TENSORFLOW = textwrap.dedent("""
    import importlib.abc, sys

    class NoTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NoTensorFlow())
""")


def test_train_py_on_jax_without_tensorflow_trains_from_arrays(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(NO_TENSORFLOW)
    env = dict(ENV, KERAS_BACKEND="jax", PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{ROOT}")
    # MixUp and CutMix too: they run in the training step now, not in a tf.data pipeline.
    command = _flags(dict(TINY, epochs=1), tmp_path / "run") + [
        "--tensorboard", "--augment=flip,crop,mixup,cutmix"]
    command = [flag for flag in command if flag != "--notensorboard"]
    finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "TensorBoard off: TensorFlow is not installed" in finished.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["input_pipeline"] == "numpy arrays" and "tensorflow" not in metrics["versions"]
    assert metrics["versions"]["backend"] == "jax" and 0 <= metrics["test"]["accuracy"] <= 1
    assert np.isfinite(metrics["history"]["loss"]).all()
    # The augmentation ran in a training-only model: the saved one has none of it.
    import keras

    saved = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert not any("random" in type(layer).__name__.lower() for layer in saved.layers)
    assert saved.count_params() == metrics["num_parameters"]


JAX_RESUME = harness.INTERRUPTED_THEN_RESUMED + textwrap.dedent("""
    import json, sys
    import numpy as np
    from glonet_keras.training import callbacks, fastfit, trainer
    # The trainer's default on a GPU: fused steps (fastfit.fuse_by_default). This CPU says "cpu",
    # so it is told "gpu" here, and every run must have fused its steps.
    fastfit.accelerator_platform = lambda: "gpu"
    fused = []
    fuse = fastfit.fuse_train_steps
    fastfit.fuse_train_steps = lambda model: fused.append(fuse(model)) or fused[-1]
    config = dict(model="glonet_mlp", depth=3, width=16, dataset="digits", batch_size=8,
                  max_examples=64, tensorboard=False, verbose=0, epochs=2,
                  **json.loads(sys.argv[2]))
    whole = trainer.train(trainer.TrainConfig(**config, model_dir=sys.argv[1] + "/whole"))
    resumed = interrupted_then_resumed(trainer, callbacks, config, sys.argv[1] + "/resumed")
    difference = max(float(np.abs(a - b).max())
                     for a, b in zip(whole.model.get_weights(), resumed.model.get_weights()))
    print(json.dumps([resumed.initial_epoch, difference, fused, resumed.steps_per_execution]))
""")


JAX_MIXING = NO_TENSORFLOW + textwrap.dedent("""
    import json, sys
    import numpy as np
    from glonet_keras.data import augment
    from glonet_keras.training import fastfit, trainer
    # The trainer's default on a GPU (fused steps), on a machine without TensorFlow.
    fastfit.accelerator_platform = lambda: "gpu"
    fused, initial = [], []
    fuse = fastfit.fuse_train_steps
    fastfit.fuse_train_steps = lambda model: fused.append([type(model).__name__, fuse(model)])
    build = trainer.build_model
    def recorded_build(*args, **kwargs):
        model = build(*args, **kwargs)
        initial.extend(w.copy() for w in model.get_weights())
        return model
    trainer.build_model = recorded_build
    result = trainer.train(trainer.TrainConfig(
        model="glonet_mlp", depth=3, width=16, dataset="digits", batch_size=8, max_examples=64,
        epochs=1, augment=("flip", "crop", "mixup", "cutmix"), tensorboard=False, verbose=0,
        model_dir=sys.argv[1]))
    change = max(float(np.abs(a - b).max()) for a, b in zip(initial, result.model.get_weights()))
    print(json.dumps(dict(fused=fused, change=change, loss=result.history["loss"],
                          test=result.test_metrics["loss"], spe=result.steps_per_execution)))
""")


@pytest.mark.slow
def test_jax_without_tensorflow_trains_with_mixup_and_cutmix_in_fused_steps(tmp_path):
    """The GPU machine's path: arrays, mixing in the (fused) training step; it trains."""
    finished = subprocess.run([sys.executable, "-c", JAX_MIXING, str(tmp_path / "run")],
                              capture_output=True, text=True, env=dict(ENV, KERAS_BACKEND="jax"),
                              timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    assert report["fused"] == [["MixingModel", True]] and report["spe"] > 1, report
    assert np.isfinite(report["loss"]).all() and np.isfinite(report["test"])
    assert report["change"] > 1e-4, report  # the weights trained


@pytest.mark.slow
@pytest.mark.parametrize("changes", [{}, {"augment": ["flip", "crop", "erase", "mixup"],
                                          "model_kwargs": {"dropout": 0.5}}],
                         ids=["plain", "augmented_with_dropout"])
def test_jax_array_path_resumes_with_the_same_batches(tmp_path, changes):
    # Augmented: the on-device layers' and dropout's draws restart per epoch (ReseedEachEpoch).
    env = dict(ENV, KERAS_BACKEND="jax")
    command = [sys.executable, "-c", JAX_RESUME, str(tmp_path), json.dumps(changes)]
    finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    initial_epoch, difference, fused, steps_per_execution = json.loads(
        finished.stdout.strip().splitlines()[-1])
    # 8 steps an epoch in groups of 2, fused in all three runs (whole, interrupted, resumed).
    assert fused == [True, True, True] and steps_per_execution == 2
    assert initial_epoch == 1 and difference <= 1e-6


# --------------------------------------------------------------------------------------------------
# Issue 22: TF_CONFIG, export failures, fine-tuning from a preset.

_STALE_TF_CONFIG = json.dumps({"cluster": {"worker": ["localhost:1", "localhost:2"]},
                               "task": {"type": "worker", "index": 1}})


def test_a_stale_tf_config_does_not_make_a_local_run_a_worker_and_a_failed_export_is_redone(
        tmp_path, monkeypatch, capfd):
    import errno

    from glonet_keras.deploy import export

    monkeypatch.setenv("TF_CONFIG", _STALE_TF_CONFIG)
    config = TrainConfig(**dict(TINY, epochs=1, max_examples=64), model_dir=str(tmp_path / "run"),
                         export_dir=str(tmp_path / "serving"), export_name="m")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(export, "export_saved_model", full_disk)
        with pytest.raises(trainer.ExportError, match=r"export to .*m/1 failed \(No space left on "
                                                      r"device\)\. The trained model is saved"):
            trainer.train(config)
    assert (tmp_path / "run" / "model.keras").exists()  # Written by the chief, not worker_1.
    assert "TF_CONFIG describes a cluster of 2 worker(s), but strategy 'auto' trains this " \
           "process alone" in capfd.readouterr().err
    result = trainer.train(config)  # Exports without retraining.
    assert result.initial_epoch == 1 and result.model_dir == str(tmp_path / "run")
    assert not (tmp_path / "run" / "worker_1").exists()
    assert result.export_path == str(tmp_path / "serving" / "m" / "1")
    assert (tmp_path / "serving" / "m" / "1" / "saved_model.pb").exists()


@pytest.mark.parametrize("tf_config, message", [
    ("{not json", "TF_CONFIG is not JSON"),
    ("[" * 100_000, "nested too deeply"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 5}}',
     r"task.index 5 is not an index into cluster.worker \(1 tasks\)"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1e400}}',
     "task.index inf"),
    ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}',
     "cluster.worker is not a non-empty list"),
])
def test_a_malformed_tf_config_under_auto_is_a_config_error(tmp_path, monkeypatch, tf_config,
                                                            message):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(trainer.ConfigError, match=message):
        trainer.train(TrainConfig(**TINY, model_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_a_malformed_tf_config_is_one_line_from_train_py(tmp_path):
    finished = subprocess.run(_flags(TINY, tmp_path / "run"), capture_output=True, text=True,
                              env=dict(ENV, TF_CONFIG="{oops"), timeout=120)
    assert finished.returncode == 2 and "Traceback" not in finished.stderr
    reasons = [line for line in finished.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(reasons) == 1 and "strategy 'auto': TF_CONFIG is not JSON" in reasons[0], finished.stderr


def test_an_export_dir_that_cannot_be_written_is_refused_before_training(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(trainer.ConfigError, match=r"export_dir: .*file is not a directory"):
        trainer.train(TrainConfig(**TINY, model_dir=str(tmp_path / "run"),
                                  export_dir=str(tmp_path / "file" / "serving")))
    assert not (tmp_path / "run" / "run.json").exists()


def test_usage_errors_of_the_new_flags(tmp_path, capsys):
    argv = ["train.py", "--preset=glonet_mlp_digits", "--model=glonet_cnn", f"--model_dir={tmp_path}"]
    assert _run_train_main(argv) == 2
    assert "--model and --preset exclude each other" in capsys.readouterr().err


def _interrupt_after_first_epoch(monkeypatch):
    from glonet_keras.training import callbacks

    original = callbacks.RunStateCheckpoint.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        original(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.RunStateCheckpoint, "on_epoch_end", on_epoch_end)


def test_fine_tuning_a_preset_resumes_and_exports(tmp_path, monkeypatch):
    from glonet_keras import presets

    monkeypatch.setenv("GLONET_KERAS_CACHE", str(tmp_path / "cache"))
    pretrained = presets.from_preset("glonet_mlp_digits")
    config = TrainConfig(**dict(TINY, depth=None, width=None, epochs=2, max_examples=64),
                         preset="glonet_mlp_digits", learning_rate=1e-5,
                         model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "serving"),
                         export_name="ft")
    with monkeypatch.context() as patch:
        _interrupt_after_first_epoch(patch)
        with pytest.raises(KeyboardInterrupt):
            trainer.train(config)
    result = trainer.train(config)
    assert result.initial_epoch == 1 and len(result.history["loss"]) == 2
    assert result.model.get_config() | {"name": None} == pretrained.get_config() | {"name": None}
    # Started from the pretrained weights (a tiny learning rate barely moves them).
    assert result.test_metrics["accuracy"] > 0.9
    # Fed as the preset was trained: its normalisation, recorded and exported with the model.
    assert result.info.preprocessing.mean == pretrained.preprocessing.mean
    assert result.model.preset_metadata["fine_tuned_from"] == {"preset": "glonet_mlp_digits"}
    assert json.loads((tmp_path / "run" / "run.json").read_text())["fingerprint"]["preset"] == \
        "glonet_mlp_digits"
    assert (tmp_path / "serving" / "ft" / "1" / "saved_model.pb").exists()
    with pytest.raises(trainer.ConfigError, match="preset 'nonexistent_preset'"):
        trainer.train(TrainConfig(**TINY, preset="nonexistent_preset",
                                  model_dir=str(tmp_path / "run3")))
    with pytest.raises(trainer.ConfigError, match="run directory without model.keras"):
        (tmp_path / "unfinished").mkdir()
        (tmp_path / "unfinished" / "run.json").write_text("{}")
        trainer.train(TrainConfig(**TINY, preset=str(tmp_path / "unfinished"),
                                  model_dir=str(tmp_path / "run4")))


@pytest.mark.slow
def test_a_finished_run_directory_is_a_preset(tmp_path):
    first = trainer.train(TrainConfig(**dict(TINY, epochs=1), model_dir=str(tmp_path / "run")))
    again = trainer.train(TrainConfig(**dict(TINY, depth=None, width=None, epochs=1),
                                      preset=str(tmp_path / "run"), learning_rate=1e-6,
                                      model_dir=str(tmp_path / "run2")))
    assert type(again.model) is type(first.model)
    assert again.info.preprocessing == first.info.preprocessing
    assert again.test_metrics["accuracy"] == pytest.approx(first.test_metrics["accuracy"], abs=0.05)


def test_fine_tuning_a_grayscale_preset_on_a_flat_image_folder(tmp_path, monkeypatch):
    import tensorflow as tf

    from glonet_keras import presets

    monkeypatch.setenv("GLONET_KERAS_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for class_name in ("boot", "shirt", "bag"):
        (tmp_path / "images" / class_name).mkdir(parents=True)
        for i in range(5):  # Colour images of another size: read as grayscale, resized to 28x28.
            image = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
            tf.io.write_file(str(tmp_path / "images" / class_name / f"{i}.png"),
                             tf.io.encode_png(image))
    result = trainer.train(TrainConfig(
        **dict(TINY, depth=None, width=None, dataset="image_folder", epochs=1),
        data_dir=str(tmp_path / "images"), preset="glonet_mlp_fashion_mnist",
        model_dir=str(tmp_path / "run")))
    pretrained = presets.from_preset("glonet_mlp_fashion_mnist")
    assert result.info.input_shape == (28, 28, 1) and result.info.num_classes == 3
    assert result.model.output.shape[-1] == 3
    assert result.info.preprocessing.mean == pretrained.preprocessing.mean
    # The blocks start from the pretrained weights; only the head is new.
    first = result.model.get_layer("block_1") if any(
        layer.name == "block_1" for layer in result.model.layers) else None
    if first is not None:
        assert first.get_weights()[0].shape == pretrained.get_layer("block_1").get_weights()[0].shape
