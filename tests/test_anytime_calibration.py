"""The calibrated anytime threshold: `deploy.calibrate_threshold` against a brute force over every
threshold of the anytime rule, its confidence bound by hand, its refusals by name."""

import statistics

import numpy as np
import pytest

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
