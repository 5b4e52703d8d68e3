"""The trainer library function and training/train.py: files, bad flags, resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from glonet_keras import serving, trainer
from glonet_keras.trainer import TrainConfig

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
                                       export_dir=str(tmp_path / "serving")))
    assert result.replicas == 1 and result.global_batch_size == 8 and result.initial_epoch == 0
    assert len(result.seconds_per_epoch) == 2 and len(result.history["loss"]) == 2
    assert 0.0 <= result.test_metrics["accuracy"] <= 1.0
    run = tmp_path / "run"
    for name in ("model.keras", "metrics.json", "preprocessing.json", "checkpoints/best.weights.h5",
                 "checkpoints/last.weights.h5"):
        assert (run / name).exists(), name
    assert any((run / "logs").rglob("*tfevents*"))
    assert not (run / "backup").exists()  # BackupAndRestore cleans up after a completed run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"] == result.test_metrics and metrics["replicas"] == 1
    assert len(metrics["seconds_per_epoch"]) == 2 and metrics["versions"]["keras"]
    assert metrics["dataset"]["preprocessing"] == result.info.preprocessing.to_dict()
    # The exported model answers like the trained one on raw (unnormalised) digits.
    from glonet_keras.data import load_arrays

    (_, _), (x_test, _) = load_arrays("digits")
    response = serving.predict(serving.load(result.export_path), {"inputs": x_test[:3].tolist()})
    expected = result.model(result.info.preprocessing(x_test[:3]), training=False)
    np.testing.assert_allclose(response["outputs"]["logits"], np.asarray(expected), atol=1e-5)


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
    ],
)
def test_bad_flags_exit_nonzero_with_one_line(tmp_path, flag, message):
    command = _flags(TINY, tmp_path / "run") + [flag, f"--data_dir={tmp_path / 'nothing'}"]
    start = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=120)
    assert finished.returncode == 2
    reasons = [line for line in finished.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(reasons) == 1 and __import__("re").search(message, reasons[0]), finished.stderr
    assert "Traceback" not in finished.stderr
    assert time.perf_counter() - start < 60


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    epochs = 5
    config = dict(TINY, epochs=epochs)
    uninterrupted = trainer.train(TrainConfig(**config, model_dir=str(tmp_path / "whole")))

    model_dir = tmp_path / "killed"
    metadata = model_dir / "backup" / "training_metadata.json"
    process = subprocess.Popen(_flags(config, model_dir), env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 150
    killed_after = None
    while time.time() < deadline and process.poll() is None:
        try:
            killed_after = json.loads(metadata.read_text())["epoch"]
        except (OSError, ValueError, KeyError):
            killed_after = None
        if killed_after is not None and killed_after >= 2:
            process.send_signal(signal.SIGKILL)  # mid-run: epoch 3 of 5 has started
            break
        time.sleep(0.005)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (model_dir / "metrics.json").exists()
    assert 2 <= killed_after < epochs

    resumed = subprocess.run(_flags(config, model_dir), capture_output=True, text=True, env=ENV,
                             timeout=150)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # The epoch count goes on from where the backup stopped.
    assert f"Epoch {killed_after + 1}/{epochs}" in resumed.stdout
    assert "Epoch 1/" not in resumed.stdout
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["initial_epoch"] >= killed_after
    assert len(metrics["history"]["loss"]) == epochs - metrics["initial_epoch"]
    # Same weights, optimizer state and batches: the same result up to float reduction order.
    for key, value in uninterrupted.test_metrics.items():
        assert metrics["test"][key] == pytest.approx(value, abs=1e-5), key
    assert metrics["history"]["loss"][-1] == pytest.approx(uninterrupted.history["loss"][-1], abs=1e-5)
