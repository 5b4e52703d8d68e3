"""Anytime (confidence-based) inference: run the blocks in order and stop once every example has an
exit whose top probability reaches a threshold."""

import dataclasses
import numbers

import keras
import numpy as np

from glonet_keras import analysis
from glonet_keras.deploy.depth import DEFAULT_THRESHOLDS, _check_classifier, check_probability
from glonet_keras.skeleton import skeleton

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


def anytime_predict(model, x, threshold=0.9, stages=None, exits=None):
    """Runs `x` as one batch block by block, stopping once every example has a confident exit.

    Blocks after the stop are never called. Works on every backend (the exported `anytime`
    signature does the same inside a TensorFlow graph).

    Args:
        model: a GloNet classifier.
        x: model inputs (preprocessed), one batch.
        threshold: the confidence to reach, in [0, 1] (1.0: never, i.e. the full model).
        stages: `anytime_stages(model, exits)`, to reuse across calls (then `exits` is its own).
        exits: the candidate exits (see `anytime_stages`); default every block.

    Returns:
        A dict of numpy arrays: `logits` and `probabilities` `(batch, outputs)` of each example's
        exit, `exit` `(batch,)` (1..L), and `blocks_computed` (an int: the blocks this batch ran).
    """
    _check_classifier(model)
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
