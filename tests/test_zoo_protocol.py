"""training/zoo_protocol.py: zoo v2's protocol (issue 21). Choices read the validation split, the
test split is read once after them, the published seed is the best on validation, the verdicts
follow the rules, and the robustness perturbations do what the cards say."""

import json

import keras
import numpy as np
import pytest

from glonet_keras import GloNetMLP, PlainMLP, data
from tests.harness import training_module


@pytest.fixture(scope="module")
def protocol_module():
    return training_module("zoo_protocol")


# ------------------------------------------------------------------------------- perturbations


def test_a_shift_moves_the_pixels_and_fills_the_border_with_zeros(protocol_module):
    images = np.arange(1, 17, dtype="uint8").reshape(1, 4, 4, 1)
    down = protocol_module.shifted(images, 2, 0)[0, :, :, 0]
    np.testing.assert_array_equal(down[:2], 0)
    np.testing.assert_array_equal(down[2:], images[0, :2, :, 0])
    left = protocol_module.shifted(images, 0, -1)[0, :, :, 0]
    np.testing.assert_array_equal(left[:, :3], images[0, :, 1:, 0])
    np.testing.assert_array_equal(left[:, 3], 0)
    assert protocol_module.shifted(images, 0, 0).tolist() == images.tolist()


def test_noise_is_seeded_clipped_and_keeps_the_raw_dtype(protocol_module):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(8, 6, 6, 1)).astype("uint8")
    first, again = protocol_module.noisy(images, 0.1), protocol_module.noisy(images, 0.1)
    assert first.dtype == np.uint8 and np.array_equal(first, again)
    assert not np.array_equal(first, images)
    assert not np.array_equal(first, protocol_module.noisy(images, 0.1, seed=1))
    assert np.array_equal(protocol_module.noisy(images, 0.0), images)
    # Its size: about sigma x 255 away from the image, where no clipping interferes.
    middle = (images > 60) & (images < 195)
    spread = (first.astype(float) - images)[middle].std()
    assert 0.08 * 255 < spread < 0.12 * 255
    floats = rng.uniform(0, 1, size=(4, 5, 5, 1)).astype("float32")
    noisy = protocol_module.noisy(floats, 0.5)
    assert noisy.dtype == np.float32 and noisy.min() >= 0 and noisy.max() <= 1


@pytest.mark.parametrize("call, match", [
    (lambda m: m.shifted(np.zeros((2, 4, 4), "uint8"), 1, 0), "shape"),
    (lambda m: m.shifted(np.zeros((2, 4, 4, 1), "int32"), 1, 0), "int32"),
    (lambda m: m.shifted(np.zeros((2, 4, 4, 1), "uint8"), 4, 0), "out of view"),
    (lambda m: m.noisy(np.zeros((2, 4, 4, 1), "uint8"), -0.1), "sigma"),
    (lambda m: m.noisy(np.zeros((2, 4, 4, 1), "uint8"), float("nan")), "sigma"),
    (lambda m: m.noisy(np.zeros((2, 4, 4, 1), "uint8"), True), "sigma"),
])
def test_perturbations_reject_what_they_cannot_perturb(protocol_module, call, match):
    with pytest.raises(ValueError, match=match):
        call(protocol_module)


# ------------------------------------------------------------------------- measuring real runs


def fake_run(directory, model, seconds=(2.0, 1.0, 1.5)):
    """A finished run directory as train.py leaves it (no training: the weights are random)."""
    directory.mkdir(parents=True)
    model.save(directory / "model.keras")
    data.save_preprocessing(data.dataset_info("digits").preprocessing,
                            directory / "preprocessing.json")
    (directory / "metrics.json").write_text(json.dumps(
        {"status": "finished", "epochs": 3, "seconds_per_epoch": list(seconds)}))
    (directory / "command.json").write_text(json.dumps({"command": f"train {directory.name}"}))


RECIPE = dict(
    summary="a tiny GloNet MLP", flags=dict(dataset="digits"), seeds=(0, 1),
    arms={"twin": dict(summary="a tiny plain MLP", flags={})},
    calibration=dict(max_cost=0.05, confidence=0.9),
    targets=dict(accuracy=0.95, twin="twin", half_exit=1.0, anytime_saving=0.6, anytime_cost=0.5),
)


@pytest.fixture(scope="module")
def measured(protocol_module, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    for seed in RECIPE["seeds"]:
        keras.utils.set_random_seed(seed)
        fake_run(protocol_module.run_directory(runs, "tiny", "preset", seed),
                 GloNetMLP(num_blocks=4, width=8, input_shape=(8, 8, 1), num_classes=10))
        fake_run(protocol_module.run_directory(runs, "tiny", "twin", seed),
                 PlainMLP(num_blocks=2, width=8, input_shape=(8, 8, 1), num_classes=10))
    reads = []
    original = data.load_split

    def recording_load_split(name, split, **kwargs):
        reads.append(split)
        return original(name, split, **kwargs)

    data.load_split = recording_load_split
    try:
        protocol = protocol_module.measure("tiny", RECIPE, runs, log=lambda message: None)
    finally:
        data.load_split = original
    return protocol, reads, runs


def test_unfinished_runs_are_refused_before_any_is_measured(protocol_module, tmp_path,
                                                             monkeypatch):
    # A recipe trained across sessions: one run finished, one mid-training, one with a corrupt
    # record, one not started. Measuring takes minutes a run, so nothing is loaded, and the error
    # names every run that is missing and why.
    finished = protocol_module.run_directory(tmp_path, "tiny", "preset", 0)
    fake_run(finished, GloNetMLP(num_blocks=2, width=4, input_shape=(8, 8, 1), num_classes=10))
    running = protocol_module.run_directory(tmp_path, "tiny", "preset", 1)
    running.mkdir(parents=True)
    (running / "run.json").write_text(json.dumps({"status": "training"}))  # no metrics.json yet
    corrupt = protocol_module.run_directory(tmp_path, "tiny", "twin", 0)
    corrupt.mkdir(parents=True)
    (corrupt / "metrics.json").write_text("{not json")
    monkeypatch.setattr(protocol_module, "_load", lambda directory: pytest.fail("measured"))
    with pytest.raises(SystemExit) as error:
        protocol_module.measure("tiny", RECIPE, tmp_path, log=lambda message: None)
    assert str(error.value) == (
        f"[tiny] 3 of 4 runs are not finished in {tmp_path}: preset seed 1 (training), twin seed 0 "
        "(unreadable metrics.json), twin seed 1 (not started); train them first (make_zoo "
        "--steps=train --resume).")


def test_every_choice_reads_validation_and_the_test_split_comes_once_after(measured):
    protocol, reads, _ = measured
    assert reads == ["validation"] * 4 + ["test"] * 4  # 2 arms x 2 seeds, one read each


def test_the_published_seed_is_the_best_on_validation(measured, protocol_module):
    protocol, _, _ = measured
    runs = protocol["arms"]["preset"]["runs"]
    best = max(protocol["seeds"], key=lambda s: (runs[str(s)]["validation"]["accuracy"], -s))
    assert protocol["published_seed"] == best


def test_each_run_records_what_the_card_and_the_verdicts_read(measured, protocol_module):
    from glonet_keras import analysis
    from glonet_keras.deploy import calibrate_threshold

    protocol, _, runs_dir = measured
    run = protocol["arms"]["preset"]["runs"]["1"]
    assert run["seconds_per_epoch"] == 1.5 and run["command"] == "train seed_1"
    # The calibrated threshold is the library's, on that seed's validation split.
    model = keras.saving.load_model(
        protocol_module.run_directory(runs_dir, "tiny", "preset", 1) / "model.keras")
    x, y = data.load_split("digits", "validation", seed=1)
    exits = analysis.early_exit_logits(model, data.dataset_info("digits").preprocessing(x))
    expected = calibrate_threshold(exits, np.asarray(y, "int64"), max_cost=0.05, confidence=0.9)
    assert run["validation"]["calibrated_anytime"]["threshold"] == expected["threshold"]
    assert run["test"]["anytime"]["threshold"] == expected["threshold"]
    assert len(run["test"]["exit_accuracy"]) == 4
    assert set(run["test"]["robustness"]) == {"shift_2px", "noise_0.05", "noise_0.1"}
    twin = protocol["arms"]["twin"]["runs"]["0"]
    assert "calibrated_anytime" not in twin["validation"] and "anytime" not in twin["test"]
    summary = protocol_module.summary(protocol)
    assert summary["arms"]["preset"]["seconds_per_epoch"]["values"] == [1.5, 1.5]
    text = protocol_module.report(protocol)
    assert "twin: a tiny plain MLP" in text and "**accuracy**" in text


# ----------------------------------------------------------------------------------- verdicts


def synthetic(test, twin, *, half_gap=0.2, blocks=2.0, cost=0.3, num_blocks=8):
    """A protocol record with given per-seed test accuracies (preset and twin arms)."""
    def run(accuracy, glonet):
        record = {"validation": {"accuracy": accuracy}, "seconds_per_epoch": 1.0,
                  "parameters": 10,
                  "test": {"accuracy": accuracy, "robustness": {"noise_0.1": accuracy - 0.01}}}
        if glonet:
            half = accuracy - half_gap / 100
            record["validation"]["calibrated_anytime"] = {"threshold": 0.5}
            record["test"]["exit_accuracy"] = [half] * (num_blocks - 1) + [accuracy]
            record["test"]["anytime"] = {"accuracy": accuracy - cost / 100, "mean_blocks": blocks}
        return record

    return {"seeds": [0, 1, 2], "published_seed": 0,
            "targets": dict(accuracy=0.90, twin="twin", half_exit=1.0, anytime_saving=0.6,
                            anytime_cost=0.5),
            "arms": {"preset": {"summary": "p", "runs": {str(s): run(a, True)
                                                         for s, a in enumerate(test)}},
                     "twin": {"summary": "t", "runs": {str(s): run(a, False)
                                                       for s, a in enumerate(twin)}}}}


def test_verdicts_follow_the_written_rules(protocol_module):
    found = protocol_module.verdicts(synthetic([0.905, 0.906, 0.907], [0.900, 0.901, 0.902]))
    assert {key: value[0] for key, value in found.items()} == {
        "accuracy": "held", "twin": "held", "half_exit": "held", "anytime_saving": "held",
        "anytime_cost": "held", "anytime": "held"}
    np.testing.assert_allclose(found["twin"][1], [-0.5, -0.5, -0.5])
    # Below the bar, and behind the twin by more than the spread.
    found = protocol_module.verdicts(synthetic([0.890, 0.891, 0.892], [0.900, 0.901, 0.902],
                                               blocks=6.0, cost=0.8))
    assert found["accuracy"][0] == "did not hold" and found["twin"][0] == "did not hold"
    assert found["anytime_saving"][0] == "did not hold" and found["anytime"][0] == "did not hold"
    # A mean within one std of its threshold settles nothing.
    found = protocol_module.verdicts(synthetic([0.895, 0.900, 0.908], [0.900, 0.900, 0.900]))
    assert found["accuracy"][0] == "inconclusive at the held threshold"
    assert found["twin"][0] == "inconclusive at the held threshold"


def test_several_twins_each_get_their_rule_and_the_time_ratio_is_reported_not_judged(
        protocol_module):
    protocol = synthetic([0.905, 0.906, 0.907], [0.900, 0.901, 0.902])
    protocol["arms"]["bn_twin"] = {"summary": "b", "runs": {
        str(s): {**run, "test": {**run["test"], "accuracy": run["test"]["accuracy"] + 0.02},
                 "seconds_per_epoch": 2.0 + int(s)}
        for s, run in protocol["arms"]["twin"]["runs"].items()}}
    protocol["targets"] = dict(accuracy=0.90, twin=("twin", "bn_twin"), time_against="bn_twin")
    protocol["calibration"] = {}
    found = protocol_module.verdicts(protocol)
    assert {key: value[0] for key, value in found.items()} == {
        "accuracy": "held", "twin twin": "held", "twin bn_twin": "did not hold"}
    np.testing.assert_allclose(found["twin bn_twin"][1], [1.5, 1.5, 1.5])
    ratios = protocol_module.time_ratio(protocol, "bn_twin")  # preset: 1 s per epoch
    np.testing.assert_allclose(ratios, [1 / 2, 1 / 3, 1 / 4])
    summary = protocol_module.summary(protocol)
    assert summary["arms"]["preset"]["time_ratio"]["against"] == "bn_twin"
    np.testing.assert_allclose(summary["arms"]["preset"]["time_ratio"]["mean"], np.mean(ratios))
    text = protocol_module.report(protocol)
    assert "the preset over bn_twin" in text and "(seeds 0.50, 0.33, 0.25)" in text
    assert "**twin bn_twin** (the preset at least level with bn_twin" in text
    assert "time" not in " ".join(found)  # no verdict on speed


def test_the_card_gives_the_time_against_the_twin(protocol_module):
    from tests.harness import training_module

    zoo_docs = training_module("zoo_docs")
    protocol = synthetic([0.905, 0.906, 0.907], [0.900, 0.901, 0.902])
    protocol["calibration"] = {}
    protocol["targets"] = dict(time_against="twin")
    for s, run in protocol["arms"]["twin"]["runs"].items():
        run["seconds_per_epoch"] = 4.0
    card = "\n".join(zoo_docs.protocol_section({"protocol": protocol_module.summary(protocol)}))
    assert "Time per epoch against twin (paired by seed, same machine): 0.25 ± 0.00 of its time." \
        in card


def test_the_card_judges_its_record_by_the_protocols_rules(protocol_module):
    """A card is written from metadata.json's record (`summary`), not the protocol file; its
    verdicts must be the protocol's, rule by rule and value by value."""
    zoo_docs = training_module("zoo_docs")
    for test, twin, blocks, cost in (([0.905, 0.906, 0.907], [0.900, 0.901, 0.902], 2.0, 0.3),
                                     ([0.890, 0.891, 0.892], [0.900, 0.901, 0.902], 6.0, 0.8),
                                     ([0.895, 0.900, 0.908], [0.900, 0.900, 0.900], 2.0, 0.3)):
        protocol = synthetic(test, twin, blocks=blocks, cost=cost)
        protocol["calibration"] = {}
        # As metadata.json stores it.
        record = json.loads(json.dumps(protocol_module.summary(protocol)))
        expected = protocol_module.verdicts(protocol)
        found = protocol_module.summary_verdicts(record)
        assert list(found) == list(expected)
        for key, (result, values, words, unit) in expected.items():
            assert found[key][0] == result and found[key][2:] == (words, unit), key
            np.testing.assert_allclose(found[key][1] or [], values or [], rtol=1e-12)
        card = "\n".join(zoo_docs.protocol_section({"protocol": record}))
        assert "Verdicts, by the rules written down before any run" in card
        for line in protocol_module.verdict_lines(expected):
            assert line in card
    # A record packaged before records carried the targets: no verdicts rather than wrong ones.
    del record["targets"]
    assert protocol_module.summary_verdicts(record) == {}
    assert "Verdicts" not in "\n".join(zoo_docs.protocol_section({"protocol": record}))
