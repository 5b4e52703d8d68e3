"""The serving plan: what an export of a model serves, resolved and checked once.

`serving_plan(model, ...)` reads the model's skeleton once and settles everything an exported
graph depends on: the preprocessing record (checked against the model's input), the task, the
class names, the `exit_<k>` depths, the `early_exits` signature, and the anytime stages and
threshold. The SavedModel (`deploy.export`), ONNX (`deploy.onnx_export`) and REST
(`deploy.serving`, through the record the SavedModel carries in glonet.json) paths all consume
one `ServingPlan`; none of them re-derives these decisions.

Defaults come from what the model carries: `model.preprocessing` (a `Preprocessing`) and
`model.preset_metadata` ("task", "class_names", and the anytime threshold calibrated on the
preset's validation split, `deploy.anytime.default_threshold`), so a loaded preset or a trained
model is served as it was trained.
"""

import dataclasses
import numbers

import keras

from glonet_keras import analysis
from glonet_keras.data.preprocessing import Preprocessing
# DEFAULT_ANYTIME_THRESHOLD stays plan's name too (export imports it from here).
from glonet_keras.deploy.anytime import (  # noqa: F401
    DEFAULT_ANYTIME_THRESHOLD, AnytimeStages, anytime_stages, calibrated_anytime, default_threshold,
)
from glonet_keras.deploy.depth import check_probability
from glonet_keras.skeleton import NotAGloNetError, skeleton

TASKS = ("classification", "regression")


@dataclasses.dataclass(frozen=True)
class ServingPlan:
    """Everything an export serves, checked: build it with `serving_plan`.

    Attributes:
        model: the Keras model (one input, one output of shape (batch, outputs)).
        preprocessing: the `Preprocessing` the served graph applies to raw inputs.
        task: "classification" or "regression".
        class_names: one label per output index, or None.
        num_outputs: the model's output units.
        num_blocks: L for a GloNet (from its skeleton), else the model's `num_blocks` or None.
        is_glonet: whether the model has a GloNet skeleton (exits can be cut from it).
        early_exits: whether the `early_exits` signature (all L prefixes in one pass) is served.
        exits: the sorted depths k served as `exit_<k>` signatures.
        anytime: the per-block stages of the `anytime` signature, or None.
        anytime_threshold: the anytime signature's default threshold (None without one).
        anytime_threshold_source: where it came from: "argument", "preset calibration" (the
            preset's `deployment["calibrated_anytime"]`), "default" (0.9), or None.
    """

    model: keras.Model
    preprocessing: Preprocessing
    task: str
    class_names: list
    num_outputs: int
    num_blocks: int
    is_glonet: bool
    early_exits: bool
    exits: list
    anytime: AnytimeStages
    anytime_threshold: float
    anytime_threshold_source: str = None

    def computations(self):
        """The Keras models behind the single-input signatures: `{signature name: model}`.

        `serve` first (an exporter serves the first one as `serving_default` too), then
        `early_exits` and one `exit_<k>` per depth."""
        computations = {"serve": self.model}
        if self.early_exits:
            computations["early_exits"] = analysis.early_exit_model(self.model)
        for k in self.exits:
            computations[f"exit_{k}"] = analysis.truncate(self.model, k)
        return computations

    def record(self):
        """What every export records of the plan (glonet.json, ONNX metadata), JSON-ready."""
        return {
            "task": self.task,
            "class_names": self.class_names,
            "num_outputs": self.num_outputs,
            "preprocessing": self.preprocessing.to_dict(),
            "input_dtype": self.preprocessing.input_dtype,
            "num_blocks": self.num_blocks,
            "exits": list(self.exits),
            "anytime_exits": None if self.anytime is None else list(self.anytime.exits),
            "anytime_threshold": self.anytime_threshold,
            "anytime_threshold_source": self.anytime_threshold_source,
        }


def serving_plan(model, *, preprocessing=None, input_dtype=None, task=None, class_names=None,
                 early_exits=True, exits=None, anytime=False, anytime_threshold=None,
                 anytime_exits=None):
    """Resolves and checks what an export of `model` serves; the arguments of `export_saved_model`.

    With `anytime`, a threshold of None is `default_threshold(model)`: the threshold the preset
    calibrated on its validation split, else 0.9. Without `anytime` the threshold is not read.

    Raises:
        ValueError: a model that is not one-input/one-output functional Keras, a preprocessing that
            does not fit its input, an unknown task, class names that do not match its outputs,
            exits out of range, anytime on a model that cannot stop early, a threshold outside
            [0, 1], or a malformed calibration record in the preset's metadata.
    """
    check_model(model)
    preprocessing = resolve_preprocessing(model, preprocessing)
    if input_dtype is not None:  # Checked by the record, which the export then holds as served.
        preprocessing = dataclasses.replace(preprocessing, input_dtype=input_dtype)
    task = resolve_task(model, task)
    num_outputs = int(model.outputs[0].shape[-1])
    try:
        parts = skeleton(model)
    except NotAGloNetError:
        parts = None
    num_blocks = parts.num_blocks if parts is not None else getattr(model, "num_blocks", None)
    stages, source = None, None
    if not anytime:
        anytime_threshold = None
    else:
        if task != "classification":
            raise ValueError(
                f"`anytime` stops at a confident exit, but {model.name!r} is a {task} model: a "
                "regression output has no confidence. Export `exits=[k, ...]` instead."
            )
        if parts is None:
            raise ValueError(f"`anytime` needs a GloNet; {model.name!r} has no exits to stop at.")
        source = "argument"
        if anytime_threshold is None:
            source = "default" if calibrated_anytime(model) is None else "preset calibration"
            anytime_threshold = default_threshold(model)
        anytime_threshold = check_probability(anytime_threshold, "anytime_threshold")
        stages = anytime_stages(model, anytime_exits)
    return ServingPlan(
        model=model,
        preprocessing=preprocessing,
        task=task,
        class_names=resolve_class_names(model, class_names, task, num_outputs),
        num_outputs=num_outputs,
        num_blocks=num_blocks,
        is_glonet=parts is not None,
        early_exits=bool(early_exits) and parts is not None,
        exits=_checked_exits(model, exits, None if parts is None else parts.num_blocks),
        anytime=stages,
        anytime_threshold=anytime_threshold,
        anytime_threshold_source=source,
    )


def check_model(model):
    """Raises ValueError unless `model` is a built functional model, one input, one (batch, units)
    output: what every export serves."""
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise ValueError(
            "export_saved_model needs a built functional keras.Model, received "
            f"{type(model).__name__}."
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"export_saved_model needs a model with exactly one input and one output; "
            f"{model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} outputs."
        )
    output_shape = model.outputs[0].shape
    if len(output_shape) != 2 or output_shape[-1] is None:
        raise ValueError(
            f"export_saved_model needs outputs of shape (batch, units); {model.name!r} returns "
            f"{tuple(output_shape)}."
        )


def check_exits(model, exits):
    """`exits` as a sorted list of distinct depths k in [1, L] of a GloNet; [] for None."""
    try:
        num_blocks = skeleton(model).num_blocks
    except NotAGloNetError:
        num_blocks = None
    return _checked_exits(model, exits, num_blocks)


def _checked_exits(model, exits, num_blocks):
    if exits is None or (isinstance(exits, (list, tuple)) and not exits):
        return []
    if num_blocks is None:
        raise ValueError(f"`exits` needs a GloNet; {model.name!r} has no GlobalAggregation to cut.")
    if not isinstance(exits, (list, tuple)) or any(
            isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= num_blocks
            for k in exits):
        raise ValueError(
            f"`exits` must be a list of integers in [1, {num_blocks}] (the blocks of "
            f"{model.name!r}), received {exits!r}."
        )
    return sorted({int(k) for k in exits})


def resolve_preprocessing(model, preprocessing):
    """The `Preprocessing` to serve: the given one (or its dict), else `model.preprocessing`, else
    identity on float32 inputs; checked against the model's input."""
    if preprocessing is None:
        preprocessing = getattr(model, "preprocessing", None)
    if isinstance(preprocessing, dict):
        preprocessing = Preprocessing.from_dict(preprocessing)
    if preprocessing is None:
        return Preprocessing()  # Identity on float32 inputs.
    if not isinstance(preprocessing, Preprocessing):
        raise ValueError(
            "`preprocessing` must be a Preprocessing or its dict, received "
            f"{type(preprocessing).__name__}."
        )
    # One mean/std per input channel (or one for all), a resize only to the model's image size.
    return preprocessing.check_fits(model.inputs[0].shape, what=f"{model.name!r}")


def preset_metadata(model):
    """`model.preset_metadata` when it is a dict, else {}."""
    metadata = getattr(model, "preset_metadata", None)
    return metadata if isinstance(metadata, dict) else {}


def resolve_task(model, task):
    """The task to serve: `task`, else the preset's, else "classification" (never guessed as
    regression)."""
    where = "`task`"
    if task is None:
        task = preset_metadata(model).get("task")
        where = "The task in `model.preset_metadata`"
    if task is None:
        return "classification"
    if task not in TASKS:
        raise ValueError(f"{where} must be one of {list(TASKS)}, received {task!r}.")
    return task


def resolve_class_names(model, class_names, task, num_outputs):
    """The label of each output index (the preset's by default), checked, or None."""
    where = "`class_names`"
    if class_names is None:
        class_names = preset_metadata(model).get("class_names")
        where = "The class names in `model.preset_metadata`"
    if class_names is None:
        return None
    if task != "classification":
        raise ValueError(f"{where} are given, but the task is {task!r}.")
    expected = 2 if num_outputs == 1 else num_outputs  # one logit: a binary classifier
    if (not isinstance(class_names, (list, tuple))
            or not all(isinstance(name, str) for name in class_names)
            or len(class_names) != expected):
        raise ValueError(
            f"{where} must be a list of {expected} strings (one per output of {model.name!r}), "
            f"received {class_names!r}."
        )
    return list(class_names)


def serving_computations(model, early_exits=True, exits=()):
    """`serving_plan(model, early_exits=..., exits=...).computations()` (export's v0.2 function)."""
    return serving_plan(model, early_exits=early_exits, exits=list(exits)).computations()
