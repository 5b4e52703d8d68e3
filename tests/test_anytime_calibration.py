"""The calibrated anytime threshold: `deploy.calibrate_threshold` against a brute force over every
threshold of the anytime rule, its confidence bound by hand, its refusals by name; and the
threshold a preset ships (`deploy.default_threshold`), which anytime_predict, the serving plan (so
the exports) and the deploy program default to."""

import contextlib
import statistics

import numpy as np
import pytest

from glonet_keras import deploy
from glonet_keras.deploy import anytime, calibrate_threshold, first_confident_exits, top_probability

BELOW_ONE = float(np.nextafter(np.float32(1.0), np.float32(0.0)))  # 0.99999994


def _exit_logits(seed, batch=120, num_blocks=5, num_outputs=4, saturated=0):
    """Random exit logits that grow more confident (and more often right) with depth; the first
    `saturated` examples are so sure at exit 1 that their float32 confidence is exactly 1.0."""
    rng = np.random.default_rng(seed)
    classes = max(num_outputs, 2)
    labels = rng.integers(0, classes, size=batch)
    depth = np.arange(1, num_blocks + 1)[:, None]
    if num_outputs == 1:
        sign = np.where(labels == 1, 1.0, -1.0)[:, None, None]
        logits = rng.normal(size=(batch, num_blocks, 1)) + 0.6 * sign * depth[None]
    else:
        logits = (rng.normal(size=(batch, num_blocks, num_outputs))
                  + 0.8 * np.eye(num_outputs)[labels][:, None] * depth)
    logits[:saturated, 0] *= 200.0
    return logits.astype("float32"), labels


def _predictions(logits):
    return (logits[:, 0] > 0).astype(int) if logits.shape[-1] == 1 else logits.argmax(-1)


def _brute_force(exit_logits, labels, max_cost, confidence, exits=None):
    """The rule run at every distinct confidence, the largest float32 below 1 and 1.0: the best
    (blocks, -accuracy, -threshold) and its bound."""
    n = len(labels)
    full_correct = (_predictions(exit_logits[:, -1]) == labels).astype(int)
    confidences = np.unique(top_probability(exit_logits.reshape(-1, exit_logits.shape[-1])))
    best = None
    for threshold in [*confidences.tolist(), BELOW_ONE, 1.0]:
        chosen, logits = first_confident_exits(exit_logits, threshold, exits)
        correct = (_predictions(logits) == labels).astype(int)
        d = full_correct - correct
        if confidence is None:
            bound = d.mean()
            feasible = correct.mean() >= full_correct.mean() - max_cost - 1e-12
        else:
            z = statistics.NormalDist().inv_cdf(confidence)
            bound = d.mean() + z * d.std(ddof=1) / np.sqrt(n)
            feasible = bound <= max_cost + 1e-12
        if feasible:
            key = (float(chosen.mean()), -float(correct.mean()), -threshold, bound)
            best = key if best is None or key[:3] < best[:3] else best
    return best


@pytest.mark.parametrize("confidence", [None, 0.95])
@pytest.mark.parametrize("case", [
    dict(seed=0), dict(seed=1), dict(seed=2, saturated=10), dict(seed=3, num_outputs=1),
    dict(seed=4, exits=[2, 4]), dict(seed=5, num_blocks=1),
])
def test_the_search_is_the_brute_force_optimum_of_the_anytime_rule(case, confidence):
    case = dict(case)
    exits = case.pop("exits", None)
    exit_logits, labels = _exit_logits(**case)
    stopped_early = False
    for max_cost in (0.0, 0.03, 0.15):
        found = calibrate_threshold(exit_logits, labels, max_cost, confidence, exits=exits)
        blocks, accuracy, threshold, bound = _brute_force(exit_logits, labels, max_cost,
                                                          confidence, exits)
        assert found["mean_blocks"] == pytest.approx(blocks)
        assert found["accuracy"] == pytest.approx(-accuracy)
        assert found["threshold"] == -threshold
        assert found["cost_bound"] == pytest.approx(bound, abs=1e-12)
        assert found["cost"] == pytest.approx(found["full_accuracy"] - found["accuracy"])
        # What it reports is what the library's rule does at its threshold.
        chosen, logits = first_confident_exits(exit_logits, found["threshold"], exits)
        assert float(chosen.mean()) == pytest.approx(found["mean_blocks"])
        assert float((_predictions(logits) == labels).mean()) == pytest.approx(found["accuracy"])
        assert (found["max_cost"], found["confidence"], found["num_examples"]) == (
            max_cost, confidence, len(labels))
        stopped_early |= found["mean_blocks"] < exit_logits.shape[1]
    # The cases can tell a search that never stops early from a right one.
    assert stopped_early or exit_logits.shape[1] == 1


def test_a_confidence_of_exactly_one_is_reached_below_one(monkeypatch):
    # Examples 0-2 are sure and right at exit 1: float32 rounds their confidence to exactly 1.0.
    # Examples 3-5 are unsure and wrong there; the full model (exit 2) is right on all six.
    labels = np.zeros(6, "int64")
    exit_1 = np.array([[40, 0]] * 3 + [[0, 2.0], [0, 2.1], [0, 2.2]], "float32")
    exit_2 = np.array([[5, 0]] * 6, "float32")
    exit_logits = np.stack([exit_1, exit_2], 1)
    assert (top_probability(exit_1)[:3] == 1.0).all()
    found = calibrate_threshold(exit_logits, labels, max_cost=0.0)
    # Only those three may stop early at no cost: a threshold of 1.0 would stop none of them.
    assert (found["threshold"], found["mean_blocks"], found["accuracy"]) == (BELOW_ONE, 1.5, 1.0)
    chosen, _ = first_confident_exits(exit_logits, found["threshold"])
    assert chosen.tolist() == [1, 1, 1, 2, 2, 2]
    # When a confidence is that very value, nothing separates it from 1.0: the full model. (A
    # float32 softmax never rounds to it, 1 / (1 + 2^-23) rounds to 1 - 2^-23: a stand-in says so.)
    real = anytime.top_probability
    unsure = real(exit_1[5:6])[0]

    def top_probability_with_one_below_one(logits):
        confidences = real(logits)
        return np.where(confidences == unsure, np.float32(BELOW_ONE), confidences)

    monkeypatch.setattr(anytime, "top_probability", top_probability_with_one_below_one)
    assert calibrate_threshold(exit_logits, labels, max_cost=0.0)["threshold"] == 1.0


def test_the_bound_by_hand():
    # Two exits, two classes, six examples.
    labels = np.array([1, 1, 1, 1, 0, 0])
    exit_1 = np.array([[2, 0], [0, 2], [0, 1], [1, 0], [1, 0], [0, 3]], "float32")  # 0 1 1 0 0 1
    exit_2 = np.array([[0, 5], [0, 5], [0, 5], [5, 0], [0, 5], [5, 0]], "float32")  # 1 1 1 0 1 0
    exit_logits = np.stack([exit_1, exit_2], 1)
    # Anything goes (max_cost 1): everyone stops at exit 1, right on examples 2, 3, 5; the full
    # model is right on 1, 2, 3, 6: d = full - exit 1 = [1, 0, 0, 0, -1, 1].
    found = calibrate_threshold(exit_logits, labels, max_cost=1.0, confidence=0.9)
    d = np.array([1, 0, 0, 0, -1, 1])
    expected = d.mean() + 1.2815515655446004 * d.std(ddof=1) / np.sqrt(6)  # z of 0.9
    assert found["mean_blocks"] == 1.0
    assert found["cost_bound"] == pytest.approx(expected, rel=1e-12)
    assert found["cost"] == pytest.approx(1 / 6) and found["accuracy"] == pytest.approx(3 / 6)
    assert found["full_accuracy"] == pytest.approx(4 / 6)


def test_more_confidence_never_runs_fewer_blocks_and_no_cost_keeps_the_full_accuracy():
    for seed in range(4):
        exit_logits, labels = _exit_logits(seed, batch=200)
        blocks = [calibrate_threshold(exit_logits, labels, 0.03, confidence)["mean_blocks"]
                  for confidence in (None, 0.6, 0.8, 0.9, 0.95, 0.99, 0.999)]
        assert blocks == sorted(blocks), (seed, blocks)
        assert blocks[0] < blocks[-1], (seed, blocks)  # the margin costs blocks here
        exact = calibrate_threshold(exit_logits, labels, max_cost=0.0)
        assert exact["accuracy"] >= exact["full_accuracy"] and exact["cost"] <= 0


@pytest.mark.parametrize("confidence", [None, 0.95])
def test_the_full_model_when_nothing_else_is_feasible(confidence):
    # Exit 1 is sure and wrong on every example, the full model right on all.
    labels = np.array([0, 1, 0, 1, 1])
    exit_1 = np.eye(2)[1 - labels] * np.arange(2, 7)[:, None]  # confidences differ
    exit_2 = np.eye(2)[labels] * 6
    exit_logits = np.stack([exit_1, exit_2], 1).astype("float32")
    found = calibrate_threshold(exit_logits, labels, max_cost=0.1, confidence=confidence)
    assert (found["threshold"], found["mean_blocks"], found["accuracy"]) == (1.0, 2.0, 1.0)
    assert found["cost"] == 0 and found["cost_bound"] == 0
    # With room for one mistake in five the cheapest threshold is no longer the full model.
    assert calibrate_threshold(exit_logits, labels, max_cost=0.2)["mean_blocks"] < 2


GOOD_LOGITS = np.zeros((4, 3, 2), "float32")
GOOD_LABELS = np.array([0, 1, 0, 1])


@pytest.mark.parametrize("arguments, message", [
    (dict(exit_logits=np.zeros((4, 2))), "`exit_logits` must have 3 dimensions"),
    (dict(exit_logits=np.zeros((0, 3, 2))), "`exit_logits` holds no examples"),
    (dict(exit_logits=np.zeros((4, 0, 2))), "`exit_logits` has an empty dimension"),
    (dict(exit_logits=np.zeros((4, 3, 0))), "`exit_logits` has an empty dimension"),
    (dict(exit_logits=np.full((4, 3, 2), np.nan)), "`exit_logits` holds NaN"),
    (dict(exit_logits=np.full((4, 3, 2), "a")), "`exit_logits` must hold numbers"),
    (dict(exit_logits=[[[0, 1]], [[0]]]), "`exit_logits` must be a numeric array"),
    (dict(labels=np.array([0.0, 1.0, 0.0, 1.0])), "`labels` must hold integer class indices"),
    (dict(labels=np.array([0, 1, 0])), r"`labels` must have shape \(4,\)"),
    (dict(labels=np.array([[0, 1, 0, 1]])), r"`labels` must have shape \(4,\)"),
    (dict(labels=np.array([0, 1, 0, 2])), r"`labels` must be class indices in \[0, 2\)"),
    (dict(labels=np.array([0, -1, 0, 1])), r"`labels` must be class indices in \[0, 2\)"),
    (dict(exit_logits=np.zeros((4, 3, 1)), labels=np.array([0, 1, 2, 1])),
     r"`labels` must be class indices in \[0, 2\)"),
    (dict(max_cost=-0.01), "`max_cost` must be a finite number >= 0"),
    (dict(max_cost=float("nan")), "`max_cost` must be a finite number >= 0"),
    (dict(max_cost=float("inf")), "`max_cost` must be a finite number >= 0"),
    (dict(max_cost=True), "`max_cost` must be a finite number >= 0"),
    (dict(max_cost="0.01"), "`max_cost` must be a finite number >= 0"),
    (dict(confidence=0.5), r"`confidence` must be None or a number in \(0.5, 1\)"),
    (dict(confidence=1.0), r"`confidence` must be None or a number in \(0.5, 1\)"),
    (dict(confidence=float("nan")), r"`confidence` must be None or a number in \(0.5, 1\)"),
    (dict(confidence=True), r"`confidence` must be None or a number in \(0.5, 1\)"),
    (dict(confidence="0.95"), r"`confidence` must be None or a number in \(0.5, 1\)"),
    (dict(exit_logits=np.zeros((1, 3, 2)), labels=np.array([1]), confidence=0.95),
     "`confidence` needs at least 2 examples"),
    (dict(exits=[0, 2]), r"`exits` must be a list of integers in \[1, 3\]"),
    (dict(exits=[4]), r"`exits` must be a list of integers in \[1, 3\]"),
    (dict(exits="2"), r"`exits` must be a list of integers in \[1, 3\]"),
])
def test_bad_inputs_are_refused_by_name(arguments, message):
    arguments = {"exit_logits": GOOD_LOGITS, "labels": GOOD_LABELS, **arguments}
    with pytest.raises(ValueError, match=message):
        calibrate_threshold(**arguments)
    calibrate_threshold(GOOD_LOGITS, GOOD_LABELS, confidence=0.95)  # the good ones pass


# ------------------------------------------------------------- the threshold a preset ships


def _calibrated(threshold, **fields):
    """What a preset's metadata carries after calibrating on its validation split."""
    record = {"threshold": threshold, "max_cost": 0.005, "confidence": 0.95, "split": "validation",
              "accuracy": 0.9, "mean_blocks": 1.5, "full_accuracy": 0.905}
    return {"name": "tiny_preset", "task": "classification",
            "deployment": {"depth_table": [], "calibrated_anytime": {**record, **fields}}}


@pytest.fixture()
def model():
    import glonet_keras

    return glonet_keras.GloNetMLP(num_blocks=4, width=8, input_shape=(6,), num_classes=3)


def test_the_default_threshold_is_the_presets_calibrated_one_else_0_9(model):
    assert deploy.DEFAULT_ANYTIME_THRESHOLD == 0.9
    assert deploy.default_threshold(model) == 0.9  # no preset metadata at all
    for metadata in ({"task": "classification"}, {"deployment": None},
                     {"deployment": {"depth_table": []}}):
        model.preset_metadata = metadata
        assert deploy.default_threshold(model) == 0.9, metadata
        assert deploy.calibrated_anytime(model) is None
    model.preset_metadata = _calibrated(0.73)
    assert deploy.default_threshold(model) == 0.73
    assert deploy.calibrated_anytime(model)["split"] == "validation"
    model.preset_metadata = _calibrated(1)  # JSON may hold an integer
    assert deploy.default_threshold(model) == 1.0 and isinstance(deploy.default_threshold(model),
                                                                 float)


NOT_A_DICT = r'`deployment\["calibrated_anytime"\]` must be a dict'


@pytest.mark.parametrize("metadata, message", [
    ({"deployment": [0.8]}, "`deployment` must be a dict"),
    ({"deployment": {"calibrated_anytime": 0.8}}, NOT_A_DICT),
    ({"deployment": {"calibrated_anytime": None}}, NOT_A_DICT),
    ({"deployment": {"calibrated_anytime": {"max_cost": 0.005}}}, r'\["threshold"\]` must be a'),
    (_calibrated("0.8"), r'\["threshold"\]` must be a number in \[0, 1\]'),
    (_calibrated(True), r'\["threshold"\]` must be a number in \[0, 1\]'),
    (_calibrated(1.5), r'\["threshold"\]` must be a number in \[0, 1\]'),
    (_calibrated(-0.1), r'\["threshold"\]` must be a number in \[0, 1\]'),
    (_calibrated(float("nan")), r'\["threshold"\]` must be a number in \[0, 1\]'),
])
def test_a_malformed_calibration_is_an_error_never_0_9(model, metadata, message):
    model.preset_metadata = metadata
    x = np.zeros((2, 6), "float32")
    for use in (deploy.default_threshold, lambda m: deploy.anytime_predict(m, x),
                lambda m: deploy.serving_plan(m, anytime=True)):
        with pytest.raises(ValueError, match=message):
            use(model)
    # Given explicitly, or with no anytime signature to serve, the record is not read.
    assert deploy.anytime_predict(model, x, threshold=0.5)["exit"].shape == (2,)
    assert deploy.serving_plan(model).anytime_threshold is None


def test_anytime_predict_and_the_serving_plan_default_to_it_and_an_explicit_threshold_wins(model):
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    model.preset_metadata = _calibrated(0.0)  # everyone is confident at once
    assert deploy.anytime_predict(model, x)["blocks_computed"] == 1
    assert deploy.anytime_predict(model, x, threshold=1.0)["blocks_computed"] == 4
    model.preset_metadata = _calibrated(1.0)  # never: the full model
    assert deploy.anytime_predict(model, x)["blocks_computed"] == 4
    assert deploy.anytime_predict(model, x, threshold=0.0)["blocks_computed"] == 1

    model.preset_metadata = _calibrated(0.73)
    plan = deploy.serving_plan(model, anytime=True)
    assert (plan.anytime_threshold, plan.anytime_threshold_source) == (0.73, "preset calibration")
    assert plan.record()["anytime_threshold"] == 0.73
    plan = deploy.serving_plan(model, anytime=True, anytime_threshold=0.6)
    assert (plan.anytime_threshold, plan.anytime_threshold_source) == (0.6, "argument")
    del model.preset_metadata
    plan = deploy.serving_plan(model, anytime=True)
    assert (plan.anytime_threshold, plan.anytime_threshold_source) == (0.9, "default")
    assert deploy.serving_plan(model).record()["anytime_threshold"] is None  # no anytime served


def test_a_saved_preset_ships_it_and_its_export_records_it(model, tmp_path):
    pytest.importorskip("tensorflow")
    from glonet_keras import analysis, presets
    from glonet_keras.deploy.export import export_saved_model, load_metadata

    calibrated = _calibrated(0.73)
    presets.save_preset(model, tmp_path / "tiny_preset", metadata=calibrated)
    loaded = presets.load_preset_directory(tmp_path / "tiny_preset")
    assert deploy.calibrated_anytime(loaded) == calibrated["deployment"]["calibrated_anytime"]
    path = export_saved_model(loaded, tmp_path / "serving", anytime=True, early_exits=False)
    recorded = load_metadata(path)
    assert recorded["signature_defaults"] == {"anytime": {"threshold": 0.73}}
    assert (recorded["anytime_threshold"], recorded["anytime_threshold_source"]) == (
        0.73, "preset calibration")
    # The first k blocks are another model: the full depth's calibration does not come along.
    truncated = analysis.truncate(loaded, 2)
    assert "deployment" not in truncated.preset_metadata
    assert deploy.default_threshold(truncated) == 0.9


@contextlib.contextmanager
def _deploy_program(*argv):
    """glonet-deploy's flags parsed from `argv` in this process, then removed again (this process
    may run other absl programs later)."""
    from glonet_keras.cli import deploy as program

    before = set(program.FLAGS)
    try:
        program.parse_flags(["deploy.py", "--preset=tiny_preset", *argv])
        yield program
    finally:
        program.FLAGS.unparse_flags()
        for name in set(program.FLAGS) - before:
            delattr(program.FLAGS, name)
        program.define_flags.reset()


def test_the_deploy_program_takes_the_flag_else_the_presets_threshold(model):
    plain = model
    import glonet_keras

    calibrated = glonet_keras.GloNetMLP(num_blocks=4, width=8, input_shape=(6,), num_classes=3)
    calibrated.preset_metadata = _calibrated(0.73)
    with _deploy_program() as program:
        assert program.FLAGS["anytime_threshold"].default is None
        assert "calibrated" in program.FLAGS["anytime_threshold"].help
        program.check_flags()
        assert program.anytime_threshold(calibrated) == 0.73
        assert program.anytime_threshold(plain) == 0.9
        plain.preset_metadata = _calibrated(2.0)
        with pytest.raises(ValueError, match=r'\["threshold"\]` must be a number in \[0, 1\]'):
            program.anytime_threshold(plain)
    with _deploy_program("--anytime_threshold=0.6") as program:
        assert program.anytime_threshold(calibrated) == 0.6
        assert program.anytime_threshold(plain) == 0.6  # the flag wins; the record is not read
    with _deploy_program("--anytime_threshold=1.5") as program:
        with pytest.raises(ValueError, match=r"--anytime_threshold must be in \[0, 1\]"):
            program.check_flags()
