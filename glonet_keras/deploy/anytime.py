"""Anytime (confidence-based) inference: run the blocks in order and stop once every example has an
exit whose top probability reaches a threshold."""

import dataclasses
import math
import numbers
import statistics

import keras
import numpy as np

from glonet_keras import analysis
from glonet_keras.deploy.depth import DEFAULT_THRESHOLDS, _check_classifier, check_probability
from glonet_keras.skeleton import skeleton

# The threshold anytime inference uses when neither the caller nor the model's preset gives one.
DEFAULT_ANYTIME_THRESHOLD = 0.9

# The preset field that ships a calibrated threshold: metadata["deployment"][CALIBRATED_ANYTIME].
CALIBRATED_ANYTIME = "calibrated_anytime"

# -------------------------------------------------------------------------------- anytime


@dataclasses.dataclass(frozen=True)
class AnytimeStages:
    """A GloNet cut into one Keras model per block, for inference that stops early.

    Attributes:
        stages: `stages[k - 1]` maps block k-1's output (the model's input for k = 1) to
            `[block k's output, tap, ...]`: block k's tap, after the stem's tap for k = 1 when the
            model aggregates its stem. Each holds only its own block's layers (and tap layers).
        head: the aggregated taps -> logits (head dropout included, inactive at inference).
        mode: the aggregation, "sum" or "mean".
        includes_stem: the stem's tap is in every prefix.
        num_outputs: the head's outputs.
        exits: the depths where confidence is checked, increasing, ending at L (every block by
            default). Fewer checks cost less where blocks are cheap (see `anytime_stages`).
    """

    stages: list
    head: keras.Model
    mode: str
    includes_stem: bool
    num_outputs: int
    exits: tuple

    @property
    def num_blocks(self):
        return len(self.stages)

    def aggregate(self, total, k):
        """The aggregation of the first k blocks given the running sum of their taps."""
        if self.mode == "sum":
            return total
        return total / (k + int(self.includes_stem))

    def segments(self):
        """`(exit k, [stages run since the previous exit])` for each exit, in order."""
        start = 0
        for k in self.exits:
            yield k, self.stages[start:k]
            start = k


def check_anytime_exits(exits, num_blocks):
    """The exits where anytime inference checks confidence: sorted, distinct, ending at L."""
    if exits is None:
        return tuple(range(1, num_blocks + 1))
    if not isinstance(exits, (list, tuple, range)) or any(
            isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= num_blocks
            for k in exits):
        raise ValueError(
            f"`anytime_exits` must be a list of integers in [1, {num_blocks}], received {exits!r}."
        )
    return tuple(sorted({int(k) for k in exits} | {num_blocks}))  # The last block always answers.


def anytime_stages(model, exits=None):
    """Cuts a GloNet into per-block Keras models (see `AnytimeStages`).

    Args:
        model: a GloNet whose blocks are separate layers.
        exits: the depths where inference may stop (confidence is checked there only); default
            every block. L is always one. Each check costs the head and a softmax: with cheap
            blocks (a narrow MLP at batch 1) checking every block can cost more than the blocks, so
            check every few (e.g. `range(10, L + 1, 10)`).

    Raises:
        NotAGloNetError: not a GloNet.
        ValueError: a scanned block stack (one layer for all blocks: convert it with
            `glonet_keras.models.mlp.to_unrolled` first), a block that reads more than the previous
            block's output (then no prefix can stop between them), or bad `exits`.
    """
    parts = skeleton(model)
    if parts.stacked:
        raise ValueError(
            f"{model.name!r} holds its blocks in one scanned DenseStack, which runs them in one "
            "loop and cannot stop between them: convert it with "
            "`glonet_keras.models.mlp.to_unrolled(model)` (same weights, same outputs) for anytime "
            "inference. Its exit_k exports work as they are."
        )
    exits = check_anytime_exits(exits, parts.num_blocks)
    blocks = list(parts.block_outputs.values())
    taps = list(parts.taps)
    stem_taps = [taps.pop(0)] if parts.includes_stem else []
    (model_input,) = parts.inputs
    stages = []
    for k, (block, tap) in enumerate(zip(blocks, taps), start=1):
        source = model_input if k == 1 else blocks[k - 2]
        outputs = [block] + (stem_taps if k == 1 else []) + [tap]
        try:
            stages.append(keras.Model(source, outputs, name=f"{model.name}_stage_{k}"))
        except ValueError as error:
            raise ValueError(
                f"Block {k} of {model.name!r} does not read only block {k - 1}'s output, so "
                f"inference cannot stop between them: {error}"
            ) from None
    z = keras.Input(shape=tuple(taps[0].shape[1:]), dtype=taps[0].dtype, name="aggregated_taps")
    head = keras.Model(z, analysis.apply_head(parts, z), name=f"{model.name}_head")
    return AnytimeStages(stages=stages, head=head, mode=parts.aggregation.mode,
                         includes_stem=parts.includes_stem,
                         num_outputs=int(parts.head.units), exits=exits)


def _checked_logits(logits, rank, what, axes):
    """`logits` as a float32 numpy array of `rank` dimensions, each non-empty but the batch, finite.

    The anytime rule indexes exits on axis 1 and classes on the last axis: an array of another
    rank would be read along the wrong axes and answer silently wrong, so it is refused."""
    try:
        array = np.asarray(logits)
    except (ValueError, TypeError) as error:  # Ragged nested lists.
        raise ValueError(f"`{what}` must be a numeric array {axes}: {error}") from None
    if array.dtype.kind not in "fiu":
        raise ValueError(f"`{what}` must hold numbers {axes}, received dtype {array.dtype}.")
    if array.ndim != rank:
        raise ValueError(
            f"`{what}` must have {rank} dimensions {axes}, received shape {array.shape}.")
    if any(size == 0 for size in array.shape[1:]):
        raise ValueError(f"`{what}` has an empty dimension {axes}: shape {array.shape}.")
    with np.errstate(over="ignore"):  # Beyond float32 becomes inf, refused just below.
        array = array.astype("float32")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{what}` holds NaN or infinite values (or values beyond float32).")
    return array


def top_probability(logits):
    """The confidence of each row of `logits` (numpy `(batch, outputs)`): the top softmax
    probability, or max(sigmoid, 1 - sigmoid) for one logit. float32 `(batch,)`.

    Raises ValueError for another rank, an empty class axis, or non-finite logits."""
    logits = _checked_logits(logits, 2, "logits", "(batch, outputs)")
    if logits.shape[-1] == 1:
        probability = 1.0 / (1.0 + np.exp(-logits[..., 0]))
        return np.maximum(probability, 1.0 - probability)
    shifted = logits - logits.max(-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(-1, keepdims=True)).max(-1)


def _confident(logits, threshold):
    if threshold >= 1.0:  # Never reached: run every block.
        return np.zeros(len(logits), dtype=bool)
    return top_probability(logits) >= threshold


def first_confident_exits(exit_logits, threshold, exits=None):
    """The anytime rule on precomputed exits: `(exits, logits)` for `exit_logits (batch, L, outputs)`.

    `exits[i]` is the first candidate exit k (`exits`, default every block; L always) whose
    prediction for example i reaches `threshold`, else L; `logits[i]` is that exit's prediction.
    What the `anytime` signature returns for a batch.

    Raises:
        ValueError: `exit_logits` is not a finite numeric array of rank 3 with at least one exit
            and one output, or a bad `threshold` or `exits`.
    """
    threshold = check_probability(threshold, "threshold")
    exit_logits = _checked_logits(exit_logits, 3, "exit_logits", "(batch, exits, outputs)")
    batch, num_blocks = exit_logits.shape[:2]
    chosen = np.full(batch, num_blocks, dtype="int32")
    done = np.zeros(batch, dtype=bool)
    for k in check_anytime_exits(exits, num_blocks):
        newly = _confident(exit_logits[:, k - 1], threshold) & ~done
        chosen[newly] = k
        done |= newly
    return chosen, exit_logits[np.arange(batch), chosen - 1]


def anytime_predict(model, x, threshold=None, stages=None, exits=None):
    """Runs `x` as one batch block by block, stopping once every example has a confident exit.

    Blocks after the stop are never called. Works on every backend (the exported `anytime`
    signature does the same inside a TensorFlow graph).

    Args:
        model: a GloNet classifier.
        x: model inputs (preprocessed), one batch.
        threshold: the confidence to reach, in [0, 1] (1.0: never, i.e. the full model); default
            `default_threshold(model)`: its preset's calibrated threshold, else 0.9.
        stages: `anytime_stages(model, exits)`, to reuse across calls (then `exits` is its own).
        exits: the candidate exits (see `anytime_stages`); default every block.

    Returns:
        A dict of numpy arrays: `logits` and `probabilities` `(batch, outputs)` of each example's
        exit, `exit` `(batch,)` (1..L), and `blocks_computed` (an int: the blocks this batch ran).
    """
    _check_classifier(model)
    if threshold is None:
        threshold = default_threshold(model)
    threshold = check_probability(threshold, "threshold")
    stages = stages or anytime_stages(model, exits)
    hidden, total = x, None
    chosen, chosen_exits, done = None, None, None
    for k, segment in stages.segments():
        for stage in segment:
            outputs = stage(hidden, training=False)
            hidden = outputs[0]
            for tap in outputs[1:]:
                total = tap if total is None else total + tap
        logits = keras.ops.convert_to_numpy(stages.head(stages.aggregate(total, k), training=False))
        logits = logits.astype("float32")
        if chosen is None:
            chosen = np.zeros_like(logits)
            chosen_exits = np.zeros(len(logits), dtype="int32")
            done = np.zeros(len(logits), dtype=bool)
        newly = _confident(logits, threshold) & ~done
        chosen[newly], chosen_exits[newly] = logits[newly], k
        done |= newly
        if done.all():
            break
    if not done.all():  # The last block answers for everyone still unsure.
        chosen[~done], chosen_exits[~done] = logits[~done], k
    return {"logits": chosen, "probabilities": _probabilities(chosen), "exit": chosen_exits,
            "blocks_computed": k}


def _probabilities(logits):
    if logits.shape[-1] == 1:
        return 1.0 / (1.0 + np.exp(-logits))
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def anytime_report(model, x, y, thresholds=DEFAULT_THRESHOLDS, batch_size=256, exits=None):
    """Accuracy and blocks computed per example of anytime inference at each threshold.

    Served one example at a time, an example costs `exit` blocks; `mean_blocks` is their mean over
    `x` (a batch stops at its slowest example, so batching costs more). From one early-exit pass;
    `exits` are the candidate exits (default every block).

    Returns:
        A list of dicts `{"threshold", "accuracy", "mean_blocks", "num_blocks"}`, and a last entry
        for the full model (threshold None).
    """
    _check_classifier(model)
    exit_logits = analysis.early_exit_logits(model, x, batch_size=batch_size)
    labels = analysis.class_labels(y, num_outputs=exit_logits.shape[-1])
    num_blocks = exit_logits.shape[1]

    def accuracy(logits):
        predictions = (logits[:, 0] > 0) if logits.shape[-1] == 1 else logits.argmax(-1)
        return float(np.mean(predictions == labels))

    report = []
    for threshold in thresholds:
        chosen, logits = first_confident_exits(exit_logits, threshold, exits)
        report.append({"threshold": float(threshold), "accuracy": accuracy(logits),
                       "mean_blocks": float(chosen.mean()), "num_blocks": num_blocks})
    report.append({"threshold": None, "accuracy": accuracy(exit_logits[:, -1]),
                   "mean_blocks": float(num_blocks), "num_blocks": num_blocks})
    return report


# ---------------------------------------------------------------------------- calibration


def calibrate_threshold(exit_logits, labels, max_cost=0.005, confidence=None, exits=None):
    """The anytime threshold with the fewest mean blocks whose accuracy loss is within `max_cost`.

    Exact, not a grid: under `first_confident_exits` an example stops at the first candidate exit
    whose confidence reaches t, so accuracy and mean blocks change only where t passes one of the
    running maxima of its confidences; every distinct one is a candidate, plus "never" (threshold
    1.0: the full model, cost 0, always feasible). A confidence of exactly 1.0 (a float32 rounding
    of a sure softmax) is reached by the largest float32 below 1 (0.99999994), since a threshold of
    1.0 means never. Ties in mean blocks go to the higher accuracy, then to the higher threshold.

    The loss is paired: per example, d_i = correct_full(i) - correct_anytime(i) in {-1, 0, 1}, and
    cost = mean(d) = full accuracy - anytime accuracy. With `confidence=None` a threshold is
    feasible when cost <= max_cost (up to 1e-12). With `confidence=c` its one-sided c upper
    confidence bound must be: mean(d) + z_c * std(d, ddof=1) / sqrt(n), z_c the standard normal's
    c quantile (1.645 for 0.95), so a threshold calibrated on n validation examples keeps a margin
    for what they did not show (none where no example disagrees with the full model: the spread is
    then 0). Both are computed for every candidate at once.

    A single-logit (binary) head is read as `top_probability` and `anytime_report` read it: the
    confidence is max(sigmoid, 1 - sigmoid), the prediction class 1 when the logit is > 0.

    Args:
        exit_logits: `(batch, L, outputs)` numbers, entry k - 1 on axis 1 the logits of exit k
            (`analysis.early_exit_logits`), finite; L >= 1, outputs >= 1 (1: a binary logit).
        labels: `(batch,)` integer class indices, in [0, outputs) (in {0, 1} for one output).
        max_cost: the accuracy the anytime rule may lose against the full model, a fraction
            (0.005 = half a point), finite and >= 0.
        confidence: None for the observed cost, or c in (0.5, 1) for its upper confidence bound
            (needs at least 2 examples).
        exits: the candidate exits the rule checks (`first_confident_exits`); default every block.

    Returns:
        A dict: `threshold` (pass it to `first_confident_exits`, `anytime_predict` or an export),
        `accuracy` and `mean_blocks` of the rule at it, `full_accuracy`, `cost` (full - accuracy),
        `cost_bound` (the bound the constraint held; `cost` when `confidence` is None),
        `max_cost`, `confidence`, `num_examples` and `exits` (the candidate exits, a list).

    Raises:
        ValueError: naming the argument: `exit_logits` not a finite numeric array of shape
            (batch, L, outputs) with batch, L and outputs >= 1; `labels` not integers of shape
            (batch,) in range; `max_cost` negative or not finite; `confidence` outside (0.5, 1)
            or given with a single example; bad `exits`.

    Example:

    ```python
    logits = analysis.early_exit_logits(model, x_validation)
    calibrated = calibrate_threshold(logits, y_validation, max_cost=0.005, confidence=0.95)
    anytime_predict(model, x, threshold=calibrated["threshold"])
    ```
    """
    exit_logits = _checked_logits(exit_logits, 3, "exit_logits", "(batch, exits, outputs)")
    batch, num_blocks, num_outputs = exit_logits.shape
    if batch == 0:
        raise ValueError("`exit_logits` holds no examples: calibration needs at least one.")
    labels = _checked_labels(labels, batch, num_outputs)
    if (isinstance(max_cost, bool) or not isinstance(max_cost, numbers.Real)
            or not math.isfinite(max_cost) or max_cost < 0):
        raise ValueError(f"`max_cost` must be a finite number >= 0, received {max_cost!r}.")
    if confidence is not None:
        if (isinstance(confidence, bool) or not isinstance(confidence, numbers.Real)
                or not 0.5 < confidence < 1.0):
            raise ValueError(
                f"`confidence` must be None or a number in (0.5, 1), received {confidence!r}.")
        if batch < 2:
            raise ValueError("`confidence` needs at least 2 examples to estimate the spread of "
                             f"the loss; `exit_logits` holds {batch}.")
    try:
        exits = check_anytime_exits(exits, num_blocks)
    except ValueError as error:
        raise ValueError(str(error).replace("`anytime_exits`", "`exits`")) from None

    # Only the candidate exits matter: position j of the restricted arrays is exit exits[j].
    logits = exit_logits[:, [k - 1 for k in exits]]
    if num_outputs == 1:
        predictions = (logits[..., 0] > 0).astype("int64")
    else:
        predictions = logits.argmax(-1)
    correct = (predictions == labels[:, None]).astype("int64")  # (batch, exits)
    confidences = np.stack([top_probability(logits[:, j]) for j in range(len(exits))], 1)
    running = np.maximum.accumulate(confidences[:, :-1], axis=1)  # the exits before L
    full = correct[:, -1].mean()
    # Passing running[i, j] moves example i from exits[j] to exits[j + 1]: its correctness
    # changes by `gain`, its disagreement with the full model by `flip`, its blocks by `blocks`.
    events = running.reshape(-1)
    order = np.argsort(events, kind="stable")
    values = events[order]
    gain = (correct[:, 1:] - correct[:, :-1]).reshape(-1)[order]
    disagree = np.abs(correct - correct[:, -1:])
    flip = (disagree[:, 1:] - disagree[:, :-1]).reshape(-1)[order]
    blocks = np.broadcast_to(np.diff(exits), running.shape).reshape(-1)[order]
    candidates = np.unique(values)
    thresholds = candidates.astype("float64")
    if len(candidates) and candidates[-1] >= 1.0:
        # A sure softmax rounds to a float32 confidence of exactly 1.0, but a threshold of 1.0
        # means never: the largest float32 below 1 stops those examples and no other, unless a
        # confidence is that very value (then no threshold does).
        below_one = float(np.nextafter(np.float32(1.0), np.float32(0.0)))
        if len(candidates) > 1 and candidates[-2] >= below_one:
            candidates, thresholds = candidates[:-1], thresholds[:-1]
        else:
            thresholds[-1] = below_one
    # At threshold t the events with value < t have happened.
    fired = np.searchsorted(values, candidates, side="left")

    def after(initial, change):
        return initial + np.concatenate([[0], np.cumsum(change)])[fired]

    accuracy = after(correct[:, 0].sum(), gain) / batch
    mean_blocks = exits[0] + after(0, blocks) / batch
    differing = after(disagree[:, 0].sum(), flip)  # sum of d_i^2
    loss = correct[:, -1].sum() - after(correct[:, 0].sum(), gain)  # sum of d_i
    # "Never" confident: everyone runs all L blocks (the full model), no example differs.
    thresholds = np.append(thresholds, 1.0)
    accuracy = np.append(accuracy, full)
    mean_blocks = np.append(mean_blocks, float(num_blocks))
    differing, loss = np.append(differing, 0), np.append(loss, 0)
    cost = loss / batch  # = full - accuracy, without its rounding
    if confidence is None:
        bound = cost
        feasible = accuracy >= full - max_cost - 1e-12
    else:
        # Sample variance of d from its sums, exact in integers: (n sum d^2 - (sum d)^2) / n(n-1).
        variance = (differing * batch - loss * loss) / (batch * (batch - 1))
        z = statistics.NormalDist().inv_cdf(confidence)
        bound = cost + z * np.sqrt(np.maximum(variance, 0.0) / batch)
        feasible = bound <= max_cost + 1e-12
    ranked = np.lexsort((-thresholds, -accuracy, mean_blocks))  # blocks, then accuracy, then t
    best = next(i for i in ranked if feasible[i])  # the full model always is
    return {"threshold": float(thresholds[best]), "accuracy": float(accuracy[best]),
            "mean_blocks": float(mean_blocks[best]), "full_accuracy": float(full),
            "cost": float(cost[best]), "cost_bound": float(bound[best]),
            "max_cost": float(max_cost),
            "confidence": None if confidence is None else float(confidence),
            "num_examples": int(batch), "exits": list(exits)}


def _checked_labels(labels, batch, num_outputs):
    """`labels` as an int64 `(batch,)` array of class indices of a head with `num_outputs`."""
    try:
        array = np.asarray(labels)
    except (ValueError, TypeError) as error:
        raise ValueError(f"`labels` must be an array of class indices: {error}") from None
    if array.dtype.kind not in "iu":
        raise ValueError(f"`labels` must hold integer class indices, received dtype {array.dtype}.")
    if array.shape != (batch,):
        raise ValueError(f"`labels` must have shape ({batch},), one class index per example of "
                         f"`exit_logits`, received shape {array.shape}.")
    classes = 2 if num_outputs == 1 else num_outputs  # one logit: a binary classifier
    if array.min() < 0 or array.max() >= classes:
        raise ValueError(f"`labels` must be class indices in [0, {classes}), received values from "
                         f"{array.min()} to {array.max()}.")
    return array.astype("int64")


def calibrated_anytime(model):
    """The calibration `model`'s preset ships, checked, or None when it ships none.

    A preset records what `calibrate_threshold` returned on its validation split, with "split",
    as `metadata["deployment"]["calibrated_anytime"]`; a loaded preset carries its metadata as
    `model.preset_metadata`. Fine-tuned, re-saved and truncated models do not keep it (it was
    measured on the published weights at full depth).

    Raises:
        ValueError: a record that is there but malformed (`deployment` or the record not a dict,
            its "threshold" not a number in [0, 1]), naming the field: never read as no record.
    """
    metadata = getattr(model, "preset_metadata", None)
    if not isinstance(metadata, dict) or metadata.get("deployment") is None:
        return None
    name = metadata.get("name", getattr(model, "name", None))
    deployment = metadata["deployment"]
    if not isinstance(deployment, dict):
        raise ValueError(f"The metadata of preset {name!r}: `deployment` must be a dict, received "
                         f"{type(deployment).__name__}.")
    if CALIBRATED_ANYTIME not in deployment:
        return None
    record = deployment[CALIBRATED_ANYTIME]
    field = f'deployment["{CALIBRATED_ANYTIME}"]'
    if not isinstance(record, dict):
        raise ValueError(f"The metadata of preset {name!r}: `{field}` must be a dict (what "
                         f"calibrate_threshold returned), received {type(record).__name__}.")
    threshold = record.get("threshold")
    if (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
            or not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0):
        raise ValueError(f'The metadata of preset {name!r}: `{field}["threshold"]` must be a '
                         f"number in [0, 1], received {threshold!r}.")
    return record


def default_threshold(model):
    """The anytime threshold `model` is served at unless told otherwise: its preset's calibrated
    threshold (`calibrated_anytime`), else `DEFAULT_ANYTIME_THRESHOLD` (0.9).

    What `anytime_predict`, `serving_plan` (so the SavedModel, ONNX and REST paths) and the deploy
    program use when no threshold is given.

    Raises:
        ValueError: a malformed calibration record (see `calibrated_anytime`).
    """
    record = calibrated_anytime(model)
    return DEFAULT_ANYTIME_THRESHOLD if record is None else float(record["threshold"])
