"""Deploying at a chosen depth: choose_depth, the depth table (parameters and FLOPs by hand), exit_k
and truncated exports that hold only k blocks, the anytime signature (equal to the truncated model
at its exit, never running a block after the stop), the REST helper, the CLI and the model card."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from glonet_keras import GloNetCNN, GloNetMLP, ResNetCNN, analysis, deploy, glonetify, presets
from glonet_keras.deploy import serving
from glonet_keras.data import load_arrays
from glonet_keras.deploy.export import export_saved_model, load_metadata
from glonet_keras.models.mlp import to_scanned
from glonet_keras.data.preprocessing import Preprocessing
from tests.harness import relative_error, training_module

REPO_ROOT = Path(__file__).resolve().parent.parent
DIGITS_MLP = REPO_ROOT / "zoo" / "glonet_mlp_digits"
CNN_PREPROCESSING = Preprocessing(input_dtype="uint8", scale=1 / 255, mean=(0.4,), std=(0.3,),
                                  image_size=(12, 12))


@pytest.fixture(scope="module")
def digits_mlp():
    """The published 8-block digits MLP, its test inputs (preprocessed) and labels."""
    model = presets.load_preset_directory(DIGITS_MLP)
    _, (raw, labels) = load_arrays("digits", seed=0)
    return model, model.preprocessing(raw), labels, raw


# ------------------------------------------------------------------------------ counting


def test_parameters_and_flops_of_mlp_prefixes_by_hand():
    model = GloNetMLP(num_blocks=3, width=4, input_shape=(5,), num_classes=2)
    for k in (1, 2, 3):
        truncated = analysis.truncate(model, k)
        # stem 5x4 + 4, k blocks of 4x4 + 4, head 4x2 + 2; FLOPs: 2 x the multiply-adds.
        assert deploy.count_parameters(truncated) == (5 * 4 + 4) + k * (4 * 4 + 4) + (4 * 2 + 2)
        assert deploy.count_flops(truncated) == 2 * (5 * 4 + k * 4 * 4 + 4 * 2)
    # A scanned stack run for 2 of its 3 steps uses (and computes) 2 blocks' worth, not 3.
    scanned = analysis.truncate(to_scanned(model), 2)
    assert deploy.count_parameters(scanned) == 24 + 2 * 20 + 10
    assert deploy.count_flops(scanned) == 2 * (20 + 2 * 16 + 8)


def test_flops_of_a_cnn_by_hand_and_unknown_sizes():
    model = GloNetCNN(depth=8, width=4, input_shape=(None, None, 1), num_classes=3)
    with pytest.raises(ValueError, match="pass `input_shape`"):
        deploy.count_flops(model)
    conv = lambda positions, k_in, k_out: 2 * positions * 9 * k_in * k_out  # noqa: E731 (3x3)
    expected = (conv(144, 1, 4)                                   # stem, 12x12
                + conv(144, 4, 4) * 2                             # stage 1: one block, 12x12
                + conv(36, 4, 8) + conv(36, 8, 8)                 # stage 2 at 6x6
                + conv(9, 8, 16) + conv(9, 16, 16)                # stage 3 at 3x3
                + 2 * (4 * 16 + 8 * 16)                           # tap projections to 16
                + 2 * 16 * 3)                                     # head
    assert deploy.count_flops(model, input_shape=(12, 12, 1)) == expected
    assert deploy.count_parameters(model) == model.count_params()


# ------------------------------------------------------------------------- choose a depth


def test_choose_depth_takes_the_smallest_k_within_tolerance(digits_mlp):
    model, x, y, _ = digits_mlp
    published = model.preset_metadata["metrics"]["early_exit_accuracy"]  # on this test split
    choice = deploy.choose_depth(model, (x, y), tolerance=0.01)
    np.testing.assert_allclose(choice.accuracies, [published[str(k)] for k in range(1, 9)])
    assert choice.full_accuracy == choice.accuracies[-1] == model.preset_metadata["metrics"]["test_accuracy"]
    for tolerance in (0.0, 0.01, 0.05, 0.2, 1.0):
        chosen = deploy.choose_depth(model, (x, y), tolerance=tolerance).depth
        within = [k for k in range(1, 9) if choice.accuracies[k - 1] >= choice.full_accuracy - tolerance - 1e-9]
        assert chosen == min(within), tolerance
    assert deploy.choose_depth(model, (x, y), tolerance=0.01).depth == 7  # 95.0 % vs 95.8 %
    # The chosen prefix really has that accuracy.
    truncated = analysis.truncate(model, choice.depth)
    assert np.mean(truncated.predict(x, verbose=0).argmax(-1) == y) == pytest.approx(choice.accuracy)
    # A tf.data pipeline of (x, y) batches gives the same choice.
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(50)
    assert deploy.choose_depth(model, dataset, tolerance=0.01) == choice
    assert choice.to_dict()["accuracy"] == choice.accuracy
    assert analysis.choose_depth(model, (x, y), tolerance=0.01) == choice  # the re-export


def test_choose_depth_refusals(digits_mlp):
    model, x, y, _ = digits_mlp
    for tolerance in (-0.1, 1.5, float("nan"), "0.01", True):
        with pytest.raises(ValueError, match="`tolerance` must be a number in \\[0, 1\\]"):
            deploy.choose_depth(model, (x, y), tolerance=tolerance)
    with pytest.raises(ValueError, match="tuple \\(x, y\\)"):
        deploy.choose_depth(model, x)
    regression = GloNetMLP(num_blocks=2, width=4, input_shape=(3,), num_classes=1)
    regression.preset_metadata = {"task": "regression"}
    with pytest.raises(ValueError, match="regression model"):
        deploy.choose_depth(regression, (np.zeros((4, 3)), np.zeros(4)))


def test_depth_table_plot_and_budget(digits_mlp, tmp_path):
    model, x, y, _ = digits_mlp
    rows = deploy.depth_table(model, (x, y), depths=[1, 4, 8], repeats=3)
    assert [row.depth for row in rows] == [1, 4, 8]
    published = model.preset_metadata["metrics"]["early_exit_accuracy"]
    for row in rows:
        assert row.accuracy == pytest.approx(published[str(row.depth)])
        truncated = analysis.truncate(model, row.depth)
        # 8x8 inputs flattened: stem 64x64 + 64, k blocks of 64x64 + 64, head 64x10 + 10.
        assert row.parameters == (64 * 64 + 64) + row.depth * (64 * 64 + 64) + (64 * 10 + 10)
        assert row.flops == deploy.count_flops(truncated) == 2 * (64 * 64 * (1 + row.depth) + 640)
        assert set(row.latency_ms) == {1, 64} and all(v > 0 for v in row.latency_ms.values())
        assert all(low <= row.latency_ms[b] <= high for b, (low, high) in row.latency_iqr_ms.items())
        assert deploy.DepthRow.from_dict(json.loads(json.dumps(row.to_dict()))).depth == row.depth
    png = deploy.plot_accuracy_latency(rows, tmp_path / "plots" / "tradeoff.png")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="integers in \\[1, 8\\]"):
        deploy.depth_table(model, (x, y), depths=[0])


def test_depth_within_budget_picks_the_most_accurate_that_fits():
    def row(k, accuracy, ms):
        return deploy.DepthRow(k, accuracy, 0, 0, {1: ms}, {1: [ms, ms]})

    table = [row(1, 0.5, 1.0), row(2, 0.9, 2.0), row(3, 0.9, 3.0), row(4, 0.95, 4.0)]
    assert deploy.depth_within_budget(table, 3.5).depth == 2  # ties go to the smaller k
    assert deploy.depth_within_budget(table, 10).depth == 4
    with pytest.raises(ValueError, match="smallest depth, k=1, takes 1.000 ms"):
        deploy.depth_within_budget(table, 0.5)
    with pytest.raises(ValueError, match="no latency at batch size 64"):
        deploy.depth_within_budget(table, 5, batch_size=64)
    # Noise: k=3 measured faster than k=2, which it contains. The pick must not jump to it.
    noisy = [row(1, 0.5, 1.0), row(2, 0.6, 2.0), row(3, 0.9, 1.5), row(4, 0.95, 4.0)]
    assert deploy.depth_within_budget(noisy, 1.8).depth == 1
    assert deploy.depth_within_budget(list(reversed(noisy)), 2.5).depth == 3


def test_latency_is_timed_in_interleaved_rounds(monkeypatch):
    # A slow spell of a shared machine must land on every depth alike, not on the one being timed
    # then: each round calls every model once per batch size.
    calls = []
    monkeypatch.setattr(deploy.depth, "_compiled_forward", lambda model: lambda x: calls.append(
        (model, len(x))))
    results = deploy.interleaved_latency({"a": "A", "b": "B"}, np.zeros((1, 3)), (1, 4),
                                         repeats=3, warmup=1)
    assert calls[4:] == [("A", 1), ("A", 4), ("B", 1), ("B", 4)] * 3  # after 4 warm-up calls
    assert set(results) == {"a", "b"} and set(results["a"]) == {1, 4}
    median, low, high = results["b"][4]
    assert 0 <= low <= median <= high


# ------------------------------------------------------------------------------- anytime


def test_anytime_runner_equals_truncate_at_its_exit_and_full_at_one(digits_mlp):
    model, x, _, _ = digits_mlp
    x = x[:96]
    result = deploy.anytime_predict(model, x, threshold=0.9)
    exits = result["exit"]
    assert len(set(exits.tolist())) > 2, exits  # a real model: easy and hard inputs differ
    assert result["blocks_computed"] == exits.max()
    for k in sorted(set(exits.tolist())):
        expected = analysis.truncate(model, k).predict(x[exits == k], verbose=0)
        assert relative_error(result["logits"][exits == k], expected) < 1e-5, k
    reference_exits, reference_logits = deploy.first_confident_exits(
        analysis.early_exit_logits(model, x), 0.9)
    np.testing.assert_array_equal(reference_exits, exits)
    assert relative_error(result["logits"], reference_logits) < 1e-5
    full = deploy.anytime_predict(model, x, threshold=1.0)
    assert full["blocks_computed"] == 8 and set(full["exit"].tolist()) == {8}
    assert relative_error(full["logits"], model.predict(x, verbose=0)) < 1e-5
    # Threshold 0: every example is confident at the first exit; only block 1 runs.
    assert deploy.anytime_predict(model, x, threshold=0.0)["blocks_computed"] == 1


@pytest.mark.parametrize("exit_logits, message", [
    (np.zeros((4, 3)), "must have 3 dimensions \\(batch, exits, outputs\\), received shape \\(4, 3\\)"),
    (np.zeros((2, 4, 3, 1)), "must have 3 dimensions .* received shape \\(2, 4, 3, 1\\)"),
    (np.zeros(()), "must have 3 dimensions"),
    (np.zeros((2, 0, 3)), "empty dimension"),
    (np.zeros((2, 4, 0)), "empty dimension"),
    (np.full((1, 2, 3), np.nan), "NaN or infinite"),
    (np.full((1, 2, 3), 1e300), "beyond float32"),
    (np.full((1, 2, 3), "a"), "must hold numbers"),
    ([[[0.0, 1.0]], [[0.0]]], "numeric array"),
])
def test_first_confident_exits_refuses_arrays_of_the_wrong_rank(exit_logits, message):
    # A (batch, L) array used to be read as (batch, exits) of scalars: silently wrong exits.
    with pytest.raises(ValueError, match=message):
        deploy.first_confident_exits(exit_logits, 0.5)


def test_top_probability_refuses_another_rank_and_first_exits_of_a_batch_of_0():
    with pytest.raises(ValueError, match="`logits` must have 2 dimensions"):
        deploy.top_probability(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="`logits` must have 2 dimensions"):
        deploy.top_probability(np.zeros(5))
    exits, logits = deploy.first_confident_exits(np.zeros((0, 4, 3)), 0.5)
    assert exits.shape == (0,) and logits.shape == (0, 3)


def test_anytime_report_trades_accuracy_for_blocks(digits_mlp):
    model, x, y, _ = digits_mlp
    report = deploy.anytime_report(model, x, y, thresholds=(0.5, 0.9, 0.99, 1.0))
    blocks = [entry["mean_blocks"] for entry in report[:-1]]
    assert blocks == sorted(blocks) and blocks[0] < 8 and blocks[-1] == 8
    assert report[-2]["accuracy"] == report[-1]["accuracy"] == model.preset_metadata["metrics"]["test_accuracy"]
    assert report[-1]["threshold"] is None


@keras.saving.register_keras_serializable(package="tests")
class CallCounter(keras.layers.Layer):
    """The identity, counting in a variable how many times it was executed (not traced)."""

    def build(self, input_shape):
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")

    def call(self, x):
        self.calls.assign_add(1.0)
        return x


def _counting_glonet(num_blocks=5):
    """A glonetified chain whose blocks are identities (so prefix k's logits are k x block 1's:
    confidence grows strictly with k) and whose counters say which blocks ran."""
    inputs = keras.Input((3,), name="features")
    x = keras.layers.Dense(4, name="stem")(inputs)
    names = []
    for i in range(1, num_blocks + 1):
        x = keras.layers.Dense(4, kernel_initializer="identity", name=f"block_{i}_dense")(x)
        x = CallCounter(name=f"block_{i}_counter")(x)
        names.append(f"block_{i}_counter")
    return glonetify(keras.Model(inputs, x, name="chain"), names, num_classes=3)


def _counts(variables):
    counts = {}
    for variable in variables:
        name = variable.path if hasattr(variable, "path") else variable.name
        if "counter" in name:
            block = int(name.split("block_")[1].split("_")[0])
            counts[block] = int(np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable))
    return [counts[k] for k in sorted(counts)]


def test_the_anytime_signature_never_runs_a_block_after_the_stop(tmp_path):
    # Structural proof, not timing: stateful counters in every block run only where a block runs.
    model = _counting_glonet(5)
    x = np.array([[0.3, -1.0, 2.0]], "float32")
    confidence = deploy.top_probability(analysis.early_exit_logits(model, x)[0])
    assert np.all(np.diff(confidence) > 0), confidence
    for variable in model.non_trainable_variables:
        variable.assign(0.0)  # The predictions above ran every block.
    threshold = float((confidence[2] + confidence[3]) / 2)  # first reached at block 4
    path = export_saved_model(model, tmp_path, anytime=True)
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["anytime"]
    counters = [v for v in signature.variables if "counter" in v.name]
    assert len(counters) == 5
    answer = signature(features=tf.constant(x), threshold=tf.constant(threshold))
    assert answer["exit"].numpy().tolist() == [4]
    assert _counts(counters) == [1, 1, 1, 1, 0]
    signature(features=tf.constant(x), threshold=tf.constant(0.0))
    assert _counts(counters) == [2, 1, 1, 1, 0]
    signature(features=tf.constant(x), threshold=tf.constant(1.0))
    assert _counts(counters) == [3, 2, 2, 2, 1]
    # The eager runner skips the same blocks.
    deploy.anytime_predict(model, x, threshold=threshold)
    assert _counts(model.non_trainable_variables) == [1, 1, 1, 1, 0]


def test_anytime_checks_only_its_candidate_exits(tmp_path):
    model = _counting_glonet(5)
    x = np.array([[0.3, -1.0, 2.0], [1.0, 0.5, -0.2]], "float32")
    early = analysis.early_exit_logits(model, x)
    threshold = float(deploy.top_probability(early[:, 2]).max()) + 1e-6  # not before block 4
    for variable in model.non_trainable_variables:
        variable.assign(0.0)
    path = export_saved_model(model, tmp_path, anytime=True, anytime_exits=[2, 4])
    assert load_metadata(path)["anytime_exits"] == [2, 4, 5]
    loaded = tf.saved_model.load(path)  # Kept: its signatures hold only weak references to it.
    signature = loaded.signatures["anytime"]
    counters = [v for v in signature.variables if "counter" in v.name]
    answer = signature(features=tf.constant(x), threshold=tf.constant(threshold))
    exits, logits = deploy.first_confident_exits(early, threshold, exits=[2, 4])
    assert answer["exit"].numpy().tolist() == exits.tolist() and set(exits.tolist()) <= {4, 5}
    assert relative_error(answer["logits"].numpy(), logits) < 1e-5
    expected = [1, 1, 1, 1, int(exits.max() == 5)]
    assert _counts(counters) == expected
    result = deploy.anytime_predict(model, x, threshold, exits=[2, 4])
    np.testing.assert_array_equal(result["exit"], exits)
    assert _counts(model.non_trainable_variables) == expected
    with pytest.raises(ValueError, match="`anytime_exits` must be a list of integers in \\[1, 5\\]"):
        export_saved_model(model, tmp_path / "x", anytime=True, anytime_exits=[0, 2])


# -------------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def cnn_export(tmp_path_factory):
    model = GloNetCNN(depth=14, width=4, input_shape=(12, 12, 1), num_classes=3, include_stem=True)
    path = export_saved_model(model, tmp_path_factory.mktemp("serving"), exits=[2, 4],
                              anytime=True, anytime_threshold=0.6, preprocessing=CNN_PREPROCESSING)
    return model, path, tf.saved_model.load(path)


def _images(batch, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, 15, 11, 1), dtype=np.uint8)


def _block_indices(names):
    return {int(name.split("block_")[1].split("_")[0]) for name in names if "block_" in name}


def test_exit_signatures_equal_truncate_and_hold_only_their_blocks(cnn_export):
    model, path, loaded = cnn_export
    assert load_metadata(path)["signatures"] == [
        "serving_default", "serve", "early_exits", "exit_2", "exit_4", "anytime"]
    assert load_metadata(path)["exits"] == [2, 4]
    images = _images(5)
    ready = CNN_PREPROCESSING(images)
    for k in (2, 4):
        served = loaded.signatures[f"exit_{k}"](images=tf.constant(images))
        expected = analysis.truncate(model, k).predict(ready, verbose=0)
        assert relative_error(served["logits"].numpy(), expected) < 1e-5
        # The graph captures the variables of blocks 1..k only (and stem, taps, head).
        variables = [v.name for v in loaded.signatures[f"exit_{k}"].variables]
        assert _block_indices(variables) == set(range(1, k + 1)), variables
    assert _block_indices(v.name for v in loaded.signatures["serve"].variables) == set(range(1, 7))


def test_a_truncated_export_is_smaller_equal_and_keeps_the_presets_preprocessing(tmp_path):
    # docs/deploy.md's recipe, export_saved_model(analysis.truncate(model, k), ...), on a model that
    # carries what a loaded preset carries: the truncated export used to serve raw inputs with no
    # preprocessing and no class names (12.6 % instead of 92 % on a Fashion-MNIST preset).
    model = GloNetMLP(num_blocks=8, width=32, input_shape=(6,), num_classes=4)
    model.preprocessing = Preprocessing(scale=1 / 16, mean=(0.5,), std=(0.25,))
    labels = ["a", "b", "c", "d"]
    model.preset_metadata = {"name": "tiny_preset", "task": "classification",
                             "class_names": labels, "metrics": {"test_accuracy": 0.9}}
    truncated = analysis.truncate(model, 2)
    assert truncated.preprocessing is model.preprocessing
    assert truncated.preset_metadata["truncated_from"] == {"name": "tiny_preset", "num_blocks": 8,
                                                           "depth": 2}
    assert "metrics" not in truncated.preset_metadata  # measured on all 8 blocks
    # Default folders: the preset's name, and the truncated model's own: they never collide.
    full_path = Path(export_saved_model(model, tmp_path))
    small_path = Path(export_saved_model(truncated, tmp_path))
    assert full_path == tmp_path / "tiny_preset" / "1"
    assert small_path == tmp_path / "tiny_preset_first_2" / "1"

    def variables_bytes(path):
        return sum(f.stat().st_size for f in (path / "variables").iterdir())

    assert variables_bytes(small_path) < 0.5 * variables_bytes(full_path)
    raw = np.random.default_rng(0).integers(0, 17, size=(3, 6)).astype("float32")
    served = tf.saved_model.load(str(small_path)).signatures["serving_default"](features=tf.constant(raw))
    expected = truncated.predict(model.preprocessing(raw), verbose=0)
    assert relative_error(served["logits"].numpy(), expected) < 1e-5
    recorded = load_metadata(small_path)
    assert recorded["num_blocks"] == 2 and recorded["class_names"] == labels
    assert recorded["preprocessing"] == model.preprocessing.to_dict()


def test_anytime_signature_equals_truncate_at_its_exit_and_full_at_one(digits_mlp, tmp_path):
    model, x, _, raw = digits_mlp
    path = export_saved_model(model, tmp_path, anytime=True, exits=[4])
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["anytime"]
    raw, x = raw[:96], x[:96]
    answer = signature(features=tf.constant(raw), threshold=tf.constant(0.9))
    exits = answer["exit"].numpy()
    assert len(set(exits.tolist())) > 2, exits
    np.testing.assert_array_equal(exits, deploy.anytime_predict(model, x, 0.9)["exit"])
    for k in sorted(set(exits.tolist())):
        expected = analysis.truncate(model, k).predict(x[exits == k], verbose=0)
        assert relative_error(answer["logits"].numpy()[exits == k], expected) < 1e-5
    np.testing.assert_allclose(answer["probabilities"].numpy(),
                               tf.nn.softmax(answer["logits"]).numpy(), atol=1e-6)
    full = signature(features=tf.constant(raw), threshold=tf.constant(1.0))
    assert set(full["exit"].numpy().tolist()) == {8}
    assert relative_error(full["logits"].numpy(), model.predict(x, verbose=0)) < 1e-5


def test_anytime_with_a_stem_tap_a_cnn_and_an_empty_batch(cnn_export):
    model, path, loaded = cnn_export
    assert load_metadata(path)["signature_defaults"] == {"anytime": {"threshold": 0.6}}
    images = _images(6, seed=3)
    ready = CNN_PREPROCESSING(images)
    early = analysis.early_exit_logits(model, ready)
    confidence = deploy.top_probability(early.reshape(-1, 3)).reshape(6, -1)
    threshold = float(np.median(confidence))  # some examples stop early, some late
    answer = loaded.signatures["anytime"](images=tf.constant(images), threshold=tf.constant(threshold))
    exits, logits = deploy.first_confident_exits(early, threshold)
    np.testing.assert_array_equal(answer["exit"].numpy(), exits)
    assert relative_error(answer["logits"].numpy(), logits) < 1e-5
    empty = loaded.signatures["anytime"](images=tf.zeros((0, 12, 12, 1), tf.uint8),
                                         threshold=tf.constant(0.5))
    assert {k: v.shape.as_list() for k, v in empty.items()} == {
        "logits": [0, 3], "probabilities": [0, 3], "exit": [0]}
    with pytest.raises(tf.errors.InvalidArgumentError, match="threshold` must be in \\[0, 1\\]"):
        loaded.signatures["anytime"](images=tf.constant(images), threshold=tf.constant(1.5))


def test_exit_and_anytime_refusals_come_before_writing(tmp_path):
    export_dir = tmp_path / "export"
    model = GloNetMLP(num_blocks=3, width=4, input_shape=(5,), num_classes=2)
    for exits in ([0], [4], ["2"], [True], 2):
        with pytest.raises(ValueError, match="`exits` must be a list of integers in \\[1, 3\\]"):
            export_saved_model(model, export_dir, exits=exits)
    with pytest.raises(ValueError, match="`exits` needs a GloNet"):
        export_saved_model(ResNetCNN(depth=8, width=4, input_shape=(8, 8, 1)), export_dir, exits=[1])
    with pytest.raises(ValueError, match="to_unrolled"):
        export_saved_model(to_scanned(model), export_dir, anytime=True)
    with pytest.raises(ValueError, match="`anytime_threshold` must be a number in \\[0, 1\\]"):
        export_saved_model(model, export_dir, anytime=True, anytime_threshold=1.5)
    regression = GloNetMLP(num_blocks=2, width=4, input_shape=(3,), num_classes=1)
    with pytest.raises(ValueError, match="regression output has no confidence"):
        export_saved_model(regression, export_dir, anytime=True, task="regression")
    assert not export_dir.exists()
    # A scanned model still serves exits: truncation runs the scan for k steps only.
    scanned = to_scanned(model)
    loaded = tf.saved_model.load(export_saved_model(scanned, export_dir, exits=[2]))
    x = np.random.default_rng(0).normal(size=(2, 5)).astype("float32")
    served = loaded.signatures["exit_2"](features=tf.constant(x))["logits"].numpy()
    assert relative_error(served, analysis.truncate(model, 2).predict(x, verbose=0)) < 1e-5


# --------------------------------------------------------------------------- REST helper


def test_the_rest_helper_answers_exit_and_anytime_requests(cnn_export):
    model, path, _ = cnn_export
    loaded = serving.load(path)
    images = _images(3)
    ready = CNN_PREPROCESSING(images)
    status, response = serving.respond(loaded, {"signature_name": "exit_2", "instances": images.tolist()})
    assert status == 200
    expected = analysis.truncate(model, 2).predict(ready, verbose=0)
    assert relative_error([p["logits"] for p in response["predictions"]], expected) < 1e-5
    # Row format: no threshold per instance, so the recorded default (0.6) applies.
    status, rows = serving.respond(loaded, {"signature_name": "anytime", "instances": images.tolist()})
    assert status == 200 and set(rows["predictions"][0]) == {"logits", "probabilities", "exit"}
    exits, _ = deploy.first_confident_exits(analysis.early_exit_logits(model, ready), 0.6)
    assert [p["exit"] for p in rows["predictions"]] == exits.tolist()
    # Columnar format: the threshold travels with the batch.
    status, columns = serving.respond(loaded, {"signature_name": "anytime", "inputs": {
        "images": images.tolist(), "threshold": 1.0}})
    assert status == 200 and columns["outputs"]["exit"] == [6, 6, 6]
    assert relative_error(columns["outputs"]["logits"], model.predict(ready, verbose=0)) < 1e-5
    refused = [
        ({"signature_name": "anytime", "instances": [{"images": images[0].tolist(), "threshold": 0.5}]},
         "scalar inputs of signature 'anytime'"),
        ({"signature_name": "anytime", "inputs": {"images": images.tolist(), "threshold": "high"}},
         "'threshold' must be a number"),
        ({"signature_name": "anytime", "inputs": {"images": images.tolist(), "threshold": [0.5]}},
         "'threshold' must be a number"),
        ('{"signature_name": "anytime", "inputs": {"images": [], "threshold": NaN}}', "must be finite"),
        # Numbers JSON allows that no float holds: OverflowError escaped respond() before.
        ({"signature_name": "anytime", "inputs": {"images": [], "threshold": 10**400}},
         "'threshold' holds an integer too large .* received 1000"),
        ('{"signature_name": "anytime", "inputs": {"images": [], "threshold": -%s}}' % ("9" * 400),
         "'threshold' holds an integer too large"),
        ('{"signature_name": "anytime", "inputs": {"images": [], "threshold": 1e999}}', "must be finite"),
        ({"signature_name": "anytime", "inputs": {"images": images.tolist(), "threshold": -1}},
         "must be in \\[0, 1\\]"),
        ({"signature_name": "anytime", "inputs": {"images": images.tolist(), "threshold": 2**70}},
         "must be in \\[0, 1\\]"),
        ({"signature_name": "anytime", "inputs": {"images": [], "threshold": True}},
         "'threshold' must be a number"),
        ({"signature_name": "exit_%s" % ("9" * 400), "instances": []}, "Unknown signature"),
        ({"signature_name": "anytime", "inputs": {"images": images.tolist(), "threshold": 1.5}},
         "refused inputs \\['images', 'threshold'\\]: .*must be in \\[0, 1\\]"),
        ({"signature_name": "anytime", "inputs": {"images": images.tolist(), "level": 1}},
         "inputs are \\['images', 'threshold'\\]"),
    ]
    for body, message in refused:
        status, answer = serving.respond(loaded, body)
        assert status == 400 and re.search(message, answer["error"]), (message, answer)
    # Loaded without its glonet.json record, the default is unknown: the request must say it.
    bare = tf.saved_model.load(path)
    status, answer = serving.respond(bare, {"signature_name": "anytime", "inputs": images.tolist()})
    assert status == 400 and "records no default" in answer["error"]


# ------------------------------------------------------------------------------ CLI, zoo


def _deploy_cli(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, str(REPO_ROOT / "training" / "deploy.py"), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


BAD_FLAGS = [
    (["--export_dir=/tmp/x"], "give --preset .* or --run_dir"),
    (["--preset=a", "--run_dir=b", "--export_dir=/tmp/x"], "not both"),
    (["--preset=glonet_mlp_digits", "--export_dir="], "--export_dir is empty"),
    (["--preset=glonet_mlp_digits", "--repeats=100000000"], "--repeats must be in \\[1, 10000\\]"),
    (["--preset=glonet_mlp_digits", "--latency_batch_size=1000000000"], "--latency_batch_size must be in"),
    (["--preset=glonet_mlp_digits", "--tolerance=nan"], "--tolerance must be in \\[0, 1\\]"),
    (["--preset=glonet_mlp_digits", "--latency_budget_ms=nan"], "--latency_budget_ms must be > 0"),
    (["--preset=glonet_mlp_digits", "--report=/tmp/r.json", "--plot=/tmp/r.json"],
     "--report and --plot name the same file"),
    (["--preset=glonet_mlp_digits", "--export_dir=/tmp/x", "--tolerance=2"], "--tolerance must be in \\[0, 1\\]"),
    (["--preset=glonet_mlp_digits", "--export_dir=/tmp/x", "--tolerance=0.1",
      "--latency_budget_ms=3"], "either --tolerance or --latency_budget_ms"),
    (["--preset=glonet_mlp_digits", "--export_dir=/tmp/x", "--split=train2"], "--split"),
]


def test_deploy_cli_bad_flags_exit_2_with_one_line():
    # The exit status and stderr a shell sees, from one real process...
    done = _deploy_cli(*BAD_FLAGS[0][0])
    assert done.returncode == 2, (done.stdout, done.stderr[-2000:])
    # TensorFlow's C++ start-up lines may precede it: one reason, and no traceback.
    reasons = [line for line in done.stderr.splitlines() if line.startswith("deploy.py: error: ")]
    assert len(reasons) == 1 and re.search(BAD_FLAGS[0][1], reasons[0]), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    # ...then every case through the same main() in one interpreter (one TensorFlow import).
    answers = _cli_cases([{"argv": args} for args, _ in BAD_FLAGS])
    for (args, message), answer in zip(BAD_FLAGS, answers):
        _one_line_error(answer, 2, message)
        assert not answer["measured"], args


def test_deploy_cli_on_a_digits_preset(tmp_path):
    report = tmp_path / "report.json"
    done = _deploy_cli(f"--preset={DIGITS_MLP}", f"--export_dir={tmp_path / 'serving'}",
                       "--tolerance=0.02", "--repeats=3", f"--report={report}",
                       f"--plot={tmp_path / 'tradeoff.png'}", f"--onnx_path={tmp_path / 'digits.onnx'}")
    assert done.returncode == 0, done.stderr[-4000:]
    record = json.loads(report.read_text())
    # Chosen on the validation split (the preset's own split seed), never on the test split.
    assert record["split"] == "validation" and record["dataset"] == "digits"
    k = record["depth"]
    assert 1 <= k <= 8 and record["choice"]["depth"] == k
    path = Path(record["export_path"])
    assert path == tmp_path / "serving" / "glonet_mlp_digits" / "1"
    assert {f"exit_{k}", "anytime", "serve"} <= set(load_metadata(path)["signatures"])
    assert (tmp_path / "tradeoff.png").exists() and (tmp_path / "digits.onnx").exists()
    assert (tmp_path / f"digits_exit_{k}.onnx").exists()
    assert f"k={k}" in done.stdout


# Runs training/deploy.py's main() on several command lines in ONE interpreter (one TensorFlow
# import for all), with `depth_table` recorded, and replaced by a cheap fake unless measuring is
# what a case is about. Prints one JSON line per case: exit status, stderr, measured or not.
_CLI_CASES = """
    import contextlib, io, json, sys, traceback
    sys.path.insert(0, sys.argv[1] + "/training")
    import deploy as cli
    from glonet_keras import deploy as deploy_lib
    from glonet_keras.deploy import onnx_export

    real_depth_table = deploy_lib.depth_table
    for case in json.loads(sys.argv[2]):
        measured = []

        def depth_table(model, data, **kwargs):
            measured.append(True)
            if case.get("interrupt"):
                raise KeyboardInterrupt
            if case.get("measure"):
                return real_depth_table(model, data, **kwargs)
            rows = [deploy_lib.DepthRow(k, 0.5 + k / 100, 1, 1, {1: k, 64: k}, {1: [k, k], 64: [k, k]})
                    for k in kwargs["depths"]]
            return rows

        deploy_lib.depth_table = depth_table
        if case.get("onnx_fails"):
            # What tf2onnx raised for the ViTs' Erfc: onnx's ValidationError, not a ValueError.
            error = type("ValidationError", (Exception,), {})("No Op registered for Erfc")
            onnx_export._to_onnx = lambda *args: (_ for _ in ()).throw(error)
        hidden = {name: sys.modules.get(name) for name in case.get("hide", [])}
        sys.modules.update({name: None for name in hidden})  # import raises ImportError
        stderr, stdout, status = io.StringIO(), io.StringIO(), 0
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            try:
                cli.FLAGS.unparse_flags()
                cli.main(cli.parse_flags(["deploy.py"] + case["argv"]))
            except SystemExit as exit:
                status = exit.code
            except BaseException:
                status = "traceback"
                traceback.print_exc()
        for name, module in hidden.items():
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module
        print(json.dumps({"status": status, "stderr": stderr.getvalue()[-3000:],
                          "stdout": stdout.getvalue()[-3000:], "measured": bool(measured)}))
"""


def _cli_cases(cases, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    script = "\n".join(line[4:] for line in _CLI_CASES.splitlines())
    done = subprocess.run([sys.executable, "-c", script, str(REPO_ROOT), json.dumps(cases)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(answers) == len(cases), done.stdout[-3000:]
    return answers


def _one_line_error(answer, status, message):
    reasons = [line for line in answer["stderr"].splitlines() if line.startswith("deploy.py: error: ")]
    assert answer["status"] == status, answer
    assert len(reasons) == 1 and re.search(message, reasons[0]), answer["stderr"]
    assert "Traceback" not in answer["stderr"]


def _closed_port():
    """A local port nothing listens on (bound, then released): a connection is refused at once."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_deploy_cli_checks_before_measuring_and_writes_all_or_nothing(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("x")
    existing = tmp_path / "serving" / "glonet_mlp_digits" / "1"
    existing.mkdir(parents=True)
    (tmp_path / "old.onnx").write_text("old")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.keras", "preprocessing.json"):
        (run / name).write_text("{}")
    metrics = {"not json": "{", "a list": "[1, 2]", "nested": "[" * 100_000 + "]" * 100_000,
               "a string dataset": json.dumps({"dataset": "digits", "config": {"dataset": "digits"}}),
               "a list config": json.dumps({"dataset": {}, "config": [1]}),
               "a bad seed": json.dumps({"dataset": {}, "config": {"dataset": "digits", "seed": "x"}})}
    digits = f"--preset={DIGITS_MLP}"
    cases = [  # (argv, exit status, message)
        (["--preset=no_such_preset"], 2, "no_such_preset"),
        ([f"--preset=http://127.0.0.1:{_closed_port()}/no_preset"], 1, "Could not download"),
        ([digits, f"--report={tmp_path / 'folder'}"], 2, "--report .*folder is a folder"),
        ([digits, f"--plot={tmp_path / 'a_file' / 'plot.png'}"], 2, "a_file is not a folder"),
        ([digits, f"--report={tmp_path}/"], 2, "--report must name a file"),
        ([digits, f"--export_dir={tmp_path / 'a_file'}"], 2, "--export_dir .*a_file is not a folder"),
        ([digits, f"--export_dir={tmp_path / 'serving'}"], 2,
         "glonet_mlp_digits/1 exists: pass --overwrite to replace it"),
        ([digits, f"--onnx_path={tmp_path / 'old.onnx'}"], 2, "old.onnx exists: pass --overwrite"),
        # Exits beyond the model's 8 blocks used to fail after measuring, at the export.
        ([digits, "--exits=99999999999999999999"], 2, "--exits must be depths in \\[1, 8\\]"),
        ([digits, "--exits=-1"], 2, "--exits must be depths in \\[1, 8\\]"),
        ([digits, "--anytime_exits=0,4"], 2, "--anytime_exits must be a list of integers in \\[1, 8\\]"),
        ([digits, "--anytime=false", "--anytime_exits=4"], 2, "--anytime_exits needs the anytime"),
    ]
    for label, text in metrics.items():
        (run / f"metrics_{len(cases)}").mkdir()
        folder = run / f"metrics_{len(cases)}"
        for name in ("model.keras", "preprocessing.json"):
            (folder / name).write_text("{}")
        (folder / "metrics.json").write_text(text)
        cases.append(([f"--run_dir={folder}"], 2, "metrics.json (is not valid JSON|must hold a JSON "
                                                   "object|is not a train.py metrics record)"))
    report = tmp_path / "new" / "folder" / "report.json"  # missing folders are created
    serving_dir = tmp_path / "serving_2"
    hide = {len(cases): ["tf2onnx"], len(cases) + 1: ["matplotlib"]}
    cases += [  # Optional packages an output needs: missing ones are named before measuring.
        ([digits, f"--onnx_path={tmp_path / 'new.onnx'}"], 2, "pip install tf2onnx onnx onnxruntime"),
        ([digits, f"--plot={tmp_path / 'new.png'}"], 2, "--plot needs matplotlib"),
    ]
    answers = _cli_cases([{"argv": argv, "hide": hide.get(i, [])} for i, (argv, _, _) in enumerate(cases)] + [
        {"argv": [digits, f"--report={report}", "--latency_budget_ms=4.5"]},
        {"argv": [digits, f"--export_dir={serving_dir}", f"--onnx_path={tmp_path / 'onnx' / 'd.onnx'}",
                  f"--report={tmp_path / 'r.json'}"], "onnx_fails": True},
        {"argv": [digits, f"--export_dir={serving_dir}"], "interrupt": True},
    ])
    for (argv, status, message), answer in zip(cases, answers):
        _one_line_error(answer, status, message)
        assert not answer["measured"], argv  # refused before any measuring
    assert sorted(os.listdir(existing)) == [] and (tmp_path / "old.onnx").read_text() == "old"

    # Without --export_dir it chooses and reports only.
    chosen, failed, interrupted = answers[len(cases):]
    _one_line_error(interrupted, 130, "interrupted \\(Ctrl-C\\)")
    assert chosen["status"] == 0, chosen
    record = json.loads(report.read_text())
    # The fake table's latency at batch 1 is k ms: a 4.5 ms budget takes k=4, and says so.
    assert record["depth"] == 4 and record["export_path"] is None and record["onnx"] is None
    assert "k=4 of 8" in chosen["stdout"] and "latency at batch 1 4.000 ms" in chosen["stdout"]
    assert "nothing exported" in chosen["stdout"]
    # ONNX conversion fails (as the ViTs' did): neither the SavedModel nor anything else is written.
    _one_line_error(failed, 2, "nothing was written: ONNX conversion failed \\(ValidationError\\): "
                               "No Op registered for Erfc")
    assert not serving_dir.exists() and not (tmp_path / "onnx").exists()
    assert not (tmp_path / "r.json").exists()


def test_the_model_card_renders_the_depth_table(digits_mlp, tmp_path):
    zoo_docs = training_module("zoo_docs")
    model, x, y, _ = digits_mlp
    record = zoo_docs.deployment_record(model, x, y, repeats=3, machine="this test")
    section = "\n".join(zoo_docs.deployment_section({"name": "glonet_mlp_digits", "deployment": record}))
    assert "| k | accuracy (%) | latency, batch 1 (ms) | latency, batch 64 (ms) | parameters | MFLOPs |" in section
    for k in range(1, 9):
        assert f"\n| {k} | " in section
    assert "| 8 | 95.8 |" in section and "measured on this test" in section
    assert "threshold" in section  # the anytime table
    assert zoo_docs.deployment_section({}) == []  # a card without a measured table has none


_JAX_ANYTIME = """
    import sys
    import keras
    import numpy as np
    import tensorflow as tf
    from glonet_keras import GloNetCNN, analysis, deploy
    from glonet_keras.deploy.export import export_saved_model

    assert keras.backend.backend() == "jax"
    model = GloNetCNN(depth=8, width=4, input_shape=(12, 12, 1), num_classes=3, include_stem=True)
    loaded = tf.saved_model.load(export_saved_model(model, sys.argv[1], anytime=True, exits=[2]))
    x = np.random.default_rng(0).random((4, 12, 12, 1)).astype("float32")
    early = analysis.early_exit_logits(model, x)
    threshold = float(np.median(deploy.top_probability(early.reshape(-1, 3))))
    for level in (0.0, threshold, 1.0):
        answer = loaded.signatures["anytime"](images=tf.constant(x), threshold=tf.constant(level))
        exits, logits = deploy.first_confident_exits(early, level)
        np.testing.assert_array_equal(answer["exit"].numpy(), exits)
        np.testing.assert_allclose(answer["logits"].numpy(), logits, rtol=1e-5, atol=1e-5)
    truncated = np.asarray(analysis.truncate(model, 2)(x))
    np.testing.assert_allclose(loaded.signatures["exit_2"](images=tf.constant(x))["logits"].numpy(),
                               truncated, rtol=1e-5, atol=1e-5)
    print("JAX anytime OK")
"""


@pytest.mark.slow
def test_exit_and_anytime_export_on_the_jax_backend(tmp_path):
    # The blocks and the head are jax2tf conversions; the levels and their conds are TensorFlow.
    from tests.harness import run_on_backend

    script = _JAX_ANYTIME.replace("sys.argv[1]", repr(str(tmp_path)))
    assert "JAX anytime OK" in run_on_backend("jax", script)
