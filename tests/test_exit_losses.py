"""Training a GloNet with its prefix exits in the loss (`TrainConfig.exit_loss_weight`, issue 21).

The loss against a hand computation; weight 0 is the plain run bit for bit and a positive weight
trains the exits; bad settings refused by name; resume equal to an uninterrupted run (TensorFlow
here, JAX with fused steps in a subprocess); the saved and exported model has the plain outputs.
"""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from glonet_keras import analysis
from glonet_keras.training import trainer
from glonet_keras.training.trainer import ConfigError, TrainConfig

from tests import harness
from tests.test_train import ENV, TINY, _flags, _interrupt_after_first_epoch, _run_train_main

EXITS = dict(TINY, depth=4, epochs=2, max_examples=128)


def _cross_entropy(labels, logits, classes, smoothing=0.0):
    """Per-example cross-entropy from logits, by hand (numpy, float64)."""
    shifted = logits - logits.max(-1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    targets = np.eye(classes)[labels] * (1 - smoothing) + smoothing / classes
    return -(targets * log_probabilities).sum(-1)


@pytest.mark.parametrize("one_hot, smoothing", [(False, 0.0), (True, 0.1)])
@pytest.mark.parametrize("exit_blocks, weight", [((1, 2), 1.0), ((2,), 0.25)])
def test_the_loss_is_the_full_loss_plus_the_weighted_mean_of_the_chosen_exits(
        one_hot, smoothing, exit_blocks, weight):
    rng = np.random.default_rng(0)
    batch, num_blocks, classes = 6, 3, 5
    logits = rng.normal(size=(batch, num_blocks, classes)).astype("float32") * 3
    labels = rng.integers(0, classes, size=batch)
    base, _ = trainer._loss_and_metrics(_Classes(classes), one_hot, smoothing)
    loss = trainer.PrefixExitLoss(base, exit_blocks, weight)
    y_true = np.eye(classes, dtype="float32")[labels] if one_hot else labels
    got = float(keras.ops.convert_to_numpy(loss(y_true, logits)))

    full = _cross_entropy(labels, logits[:, -1].astype("float64"), classes, smoothing)
    exits = [_cross_entropy(labels, logits[:, k - 1].astype("float64"), classes, smoothing)
             for k in exit_blocks]
    expected = full.mean() + weight * np.mean([e.mean() for e in exits])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # And not the loss of any other choice: the exits not chosen are left out.
    others = full.mean() + weight * np.mean([_cross_entropy(
        labels, logits[:, k].astype("float64"), classes, smoothing).mean() for k in range(num_blocks)])
    assert abs(got - others) > 1e-3


def test_the_metrics_read_the_full_model_only():
    labels = np.array([0, 1, 2])
    logits = np.zeros((3, 3, 4), "float32")
    logits[np.arange(3), -1, labels] = 5.0  # the full model is right
    logits[np.arange(3), 0, (labels + 1) % 4] = 5.0  # the first exit is wrong
    _, metrics = trainer._loss_and_metrics(_Classes(4), False, 0.0)
    (accuracy,) = trainer.full_model_metrics(metrics)
    accuracy.update_state(labels, logits)
    assert accuracy.name == "accuracy" and float(accuracy.result()) == 1.0


class _Classes:
    task, num_classes = "classification", 10

    def __init__(self, num_classes):
        self.num_classes = num_classes


def test_weight_zero_is_the_default_run_bit_for_bit_and_a_positive_weight_trains_the_exits(
        tmp_path):
    default = trainer.train(TrainConfig(**EXITS, model_dir=str(tmp_path / "default")))
    zero = trainer.train(TrainConfig(**EXITS, exit_loss_weight=0.0,
                                     model_dir=str(tmp_path / "zero")))
    exits = trainer.train(TrainConfig(**EXITS, exit_loss_weight=1.0,
                                      model_dir=str(tmp_path / "exits")))
    for a, b in zip(default.model.get_weights(), zero.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert default.history == zero.history and default.test_metrics == zero.test_metrics
    assert max(float(np.abs(a - b).max()) for a, b in
               zip(default.model.get_weights(), exits.model.get_weights())) > 1e-3
    # Trained on its own loss, the first block's exit fits the training data better than it does
    # in the run that only ever trained the full model.
    from glonet_keras import data

    x, y = data.load_split("digits", "train", max_examples=EXITS["max_examples"])
    x = default.info.preprocessing(x)

    def exit_loss(model, k):
        logits = analysis.early_exit_logits(model, x)[:, k - 1].astype("float64")
        return _cross_entropy(np.asarray(y), logits, 10).mean()

    assert exit_loss(exits.model, 1) < exit_loss(default.model, 1) - 0.05
    # The exit losses are part of what the run computes (a resume must match them: see the resume
    # test), recorded in its fingerprint.
    recorded = json.loads((tmp_path / "exits" / "run.json").read_text())["fingerprint"]
    assert recorded["exit_loss"] == {"weight": 1.0, "exit_blocks": [1, 2, 3]}
    # Absent at weight 0, so run directories from before exit losses existed still resume.
    assert "exit_loss" not in json.loads((tmp_path / "zero" / "run.json").read_text())["fingerprint"]


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(exit_loss_weight=-1.0), "`exit_loss_weight` must be >= 0 and finite, received -1.0"),
        (dict(exit_loss_weight=float("nan")), "`exit_loss_weight` must be >= 0 and finite"),
        (dict(exit_loss_weight="1"), "`exit_loss_weight` must be >= 0 and finite"),
        (dict(exit_blocks=(1, 2)), "`exit_blocks` needs `exit_loss_weight` > 0"),
        (dict(exit_loss_weight=1.0, exit_blocks=(0, 2)), "`exit_blocks` must be a non-empty list"),
        (dict(exit_loss_weight=1.0, exit_blocks=()), "`exit_blocks` must be a non-empty list"),
        (dict(exit_loss_weight=1.0, exit_blocks=(2, 2)), "`exit_blocks` lists 2 more than once"),
    ],
)
def test_bad_exit_settings_are_refused_by_name(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**dict(EXITS, **changes)).validate()


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(exit_blocks=(1, 4)), r"`exit_blocks` \[4\] out of range: 'glonet_mlp' has 4 blocks"),
        (dict(model="plain_mlp"), "PlainMLP 'plain_mlp' is not a GloNet"),
        (dict(depth=1), "has 1 block, so it has no prefix exit"),
    ],
)
def test_exits_the_model_does_not_have_are_refused_before_training(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        trainer.train(TrainConfig(**dict(EXITS, exit_loss_weight=1.0, **changes),
                                  model_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run" / "run.json").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--exit_loss_weight=-0.5"], "`exit_loss_weight` must be >= 0"),
        (["--exit_loss_weight=1", "--exit_blocks=1,x"], "--exit_blocks takes integers"),
        (["--exit_loss_weight=1", "--exit_blocks=9"], r"`exit_blocks` \[9\] out of range"),
    ],
)
def test_bad_exit_flags_exit_2_with_one_line(tmp_path, flags, message, capsys):
    argv = ["train.py", *_flags(EXITS, tmp_path / "run")[2:], *flags]
    assert _run_train_main(argv) == 2
    reasons = [line for line in capsys.readouterr().err.splitlines()
               if line.startswith("train.py: error:")]
    assert len(reasons) == 1 and message.replace("\\", "") in reasons[0].replace("\\", ""), reasons


def test_resume_with_exit_losses_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    config = dict(EXITS, exit_loss_weight=1.0, exit_blocks=(1, 3))
    whole = trainer.train(TrainConfig(**config, model_dir=str(tmp_path / "whole")))
    with monkeypatch.context() as patch:
        _interrupt_after_first_epoch(patch)
        with pytest.raises(KeyboardInterrupt):
            trainer.train(TrainConfig(**config, model_dir=str(tmp_path / "resumed")))
    # Not resumed without its exit losses, nor with others: they change what the run computes.
    from glonet_keras.training import rundir

    for other in (dict(exit_loss_weight=0.0, exit_blocks=None), dict(exit_blocks=(1, 2))):
        with pytest.raises(rundir.RunDirectoryError, match="exit_loss"):
            trainer.train(TrainConfig(**dict(config, **other), model_dir=str(tmp_path / "resumed")))
    resumed = trainer.train(TrainConfig(**config, model_dir=str(tmp_path / "resumed")))
    assert resumed.initial_epoch == 1
    for a, b in zip(whole.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert whole.history["loss"] == pytest.approx(resumed.history["loss"], abs=1e-6)


def test_the_saved_and_exported_model_is_the_plain_model(tmp_path):
    result = trainer.train(TrainConfig(**dict(EXITS, epochs=1), exit_loss_weight=1.0,
                                       model_dir=str(tmp_path / "run"),
                                       export_dir=str(tmp_path / "export")))
    assert tuple(result.model.output.shape) == (None, 10)
    saved = keras.saving.load_model(result.model_path)
    assert tuple(saved.output.shape) == (None, 10)
    assert "glonet_prefix_aggregation" not in [layer.name for layer in saved.layers]
    assert saved.count_params() == result.model.count_params()
    # The recorded accuracy is the full model's: the saved model's own on the test split.
    assert json.loads(open(result.metrics_path).read())["config"]["exit_loss_weight"] == 1.0
    import tensorflow as tf

    serving = tf.saved_model.load(result.export_path).signatures["serving_default"]
    shapes = {key: tuple(spec.shape) for key, spec in serving.structured_outputs.items()}
    assert all(shape[-1] == 10 and len(shape) == 2 for shape in shapes.values()), shapes


JAX_EXITS = harness.INTERRUPTED_THEN_RESUMED + textwrap.dedent("""
    import json, sys
    import numpy as np
    from glonet_keras.training import callbacks, fastfit, trainer
    # Fused steps (the trainer's default on a GPU): this CPU is told it is one.
    fastfit.accelerator_platform = lambda: "gpu"
    fused = []
    fuse = fastfit.fuse_train_steps
    fastfit.fuse_train_steps = lambda model: fused.append(fuse(model)) or fused[-1]
    config = dict(model="glonet_mlp", depth=3, width=16, dataset="digits", batch_size=8,
                  max_examples=64, tensorboard=False, verbose=0, epochs=2, exit_loss_weight=1.0)
    plain = trainer.train(trainer.TrainConfig(**dict(config, exit_loss_weight=0.0),
                                              model_dir=sys.argv[1] + "/plain"))
    whole = trainer.train(trainer.TrainConfig(**config, model_dir=sys.argv[1] + "/whole"))
    resumed = interrupted_then_resumed(trainer, callbacks, config, sys.argv[1] + "/resumed")
    mixed = trainer.train(trainer.TrainConfig(**dict(config, epochs=1, label_smoothing=0.1,
                                                     augment=("flip", "mixup")),
                                              model_dir=sys.argv[1] + "/mixed"))
    def largest(a, b):
        return max(float(np.abs(x - y).max()) for x, y in zip(a.model.get_weights(),
                                                               b.model.get_weights()))
    print(json.dumps(dict(resumed=[resumed.initial_epoch, largest(whole, resumed)],
                          plain=largest(plain, whole), fused=fused,
                          outputs=[list(r.model.output.shape) for r in (whole, mixed)],
                          mixed_loss=mixed.history["loss"], accuracy=whole.test_metrics["accuracy"])))
""")


@pytest.mark.slow
def test_jax_fused_steps_train_the_exits_and_resume(tmp_path):
    finished = subprocess.run([sys.executable, "-c", JAX_EXITS, str(tmp_path)], capture_output=True,
                              text=True, env=dict(ENV, KERAS_BACKEND="jax"), timeout=400)
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    assert report["fused"] == [True] * 5, report  # plain, whole, interrupted, resumed, mixed
    assert report["resumed"][0] == 1 and report["resumed"][1] <= 1e-6, report
    assert report["plain"] > 1e-3, report  # the exit losses changed the training
    assert report["outputs"] == [[None, 10], [None, 10]]
    assert np.isfinite(report["mixed_loss"]).all() and 0 <= report["accuracy"] <= 1
