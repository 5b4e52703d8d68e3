"""Training as a library function: `train(TrainConfig(...)) -> TrainResult`.

One call does what `training/train.py` (a thin absl shell over it) and `make demo` need:

    strategy -> data set opened once -> model built AND compiled in the strategy's scope -> the run
    directory checked and claimed -> fit with progress bars, TensorBoard and a state saved after
    every epoch -> `model.keras`, `preprocessing.json`, `metrics.json` -> evaluation on the
    validation and test splits -> optional SavedModel export -> the run marked finished.

Example:
>>> from glonet_keras.training.trainer import TrainConfig, train
>>> result = train(TrainConfig(model="glonet_mlp", depth=4, width=32, dataset="digits",
...                            epochs=2, model_dir="/tmp/run"))
>>> result.test_metrics["accuracy"], result.replicas, result.seconds_per_epoch

Files under `model_dir` (see `glonet_keras.training.rundir` for what the directory guarantees):
    run.json               the config fingerprint and status ("training" / "finished")
    model.keras            the trained model (last epoch, or best with `restore_best=True`)
    preprocessing.json     the normalisation the model was trained with (`data.Preprocessing`)
    metrics.json           validation/test metrics, the whole run's history and epoch times,
                           replicas, config, versions
    checkpoints/best.keras, checkpoints/last.keras   the best and the last epoch's model
    backup/                the resumable state of the last epochs (deleted when the run finishes)
    logs/                  TensorBoard (when TensorFlow is installed)

Resuming: run `train` again with the same config and `model_dir` after a crash, a Ctrl-C or a
SIGKILL. The state of the last complete epoch (weights, optimizer, history, best epoch so far) is
restored, and the training stream resumes at that epoch with the same per-epoch shuffle and the
same random draws (augmentation keyed by (seed, epoch, step), dropout and on-device augmentation
reseeded per epoch by `ReseedEachEpoch`), so a resumed run ends with the same weights as an
uninterrupted one (up to float reduction order), `restore_best=True` included. Work done in the
interrupted epoch is redone. A different config, fewer epochs than already trained, or a
finished run is refused (`overwrite=True` starts fresh).

Input pipelines: tf.data on the TensorFlow backend. In-memory data sets (`data.IN_MEMORY_DATASETS`)
on JAX, and whenever TensorFlow is not installed, train from numpy arrays with no tf.data at all:
preprocessing is applied once up front and augmentation runs on the device, in a training-only
model that wraps (and shares the weights of) the saved one; MixUp and CutMix, which change the
labels, run in its training step (`augment.MixingModel`).

Exit losses (`exit_loss_weight` > 0, GloNets only): the model is trained with its prefix exits in
the loss, loss(full model) + weight x mean over `exit_blocks` of loss(exit k), where exit k is the
first k blocks through the same head. `fit` then trains `analysis.early_exit_model(model)` (the same
layers, all L exits in one pass; `PrefixExitLoss` reads them), while the metrics read the full
model's exit only (`full_model_metrics`): the reported accuracy is the full model's, and "loss" is
the objective trained (the exits included). The saved and exported model is the plain model.
"""

import dataclasses
import importlib.util
import inspect
import math
import os
import platform
import re
import sys
import tempfile

import keras
import numpy as np

from glonet_keras.data import augment as augment_lib
from glonet_keras import analysis
from glonet_keras import data as data_lib
from glonet_keras import presets
from glonet_keras.deploy import export as export_lib
from glonet_keras.presets.registry import get_model_class
from glonet_keras.training import distribute, fastfit, rundir
from glonet_keras.training.callbacks import (
    EpochTimer, ReseedEachEpoch, RunStateCheckpoint, StopOnNonFinite, check_finite,
)
from glonet_keras.version import __version__

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine")
# `steps_per_execution="auto"`: at most this many steps per compiled call, and at least this many
# calls per epoch. 32 steps turn the ~1.6 ms of per-step dispatch that `fit` costs on a GPU
# (docs/gpu_speed.json) into ~0.05 ms; 4 calls per epoch keep the progress bar moving.
AUTO_MAX_STEPS_PER_EXECUTION = 32
AUTO_MIN_EXECUTIONS_PER_EPOCH = 4
_EXPORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Bounds checked before anything is built or allocated: past them a run is a typo, not a model
# (an unrolled depth-1,000 MLP already takes minutes to build here). See docs/security.md.
MAX_DEPTH = 10_000  # blocks, CNN depth, or one stage's blocks
MAX_WIDTH = 65_536  # width, hidden_dim, mlp_dim
MAX_BLOCK_WEIGHTS = 2**32  # depth x width^2: about the weights of the blocks (16 GiB in float32)
MAX_HEADS = 1_024
MAX_PATCH_SIZE = 4_096
MAX_IMAGE_SIDE = 32_768
MAX_BATCH_SIZE = 2**20  # per replica
MAX_EPOCHS = 1_000_000
MAX_EXAMPLES = 2**40
MAX_SEED = 2**32 - 1  # numpy's seeds
MAX_EXPORT_VERSION = 2**63 - 1  # TF Serving's versions are int64
# Integer model arguments (given in model_kwargs or by --depth/--width) and their bounds.
_MODEL_INT_BOUNDS = {"depth": MAX_DEPTH, "num_blocks": MAX_DEPTH, "width": MAX_WIDTH,
                     "hidden_dim": MAX_WIDTH, "mlp_dim": 4 * MAX_WIDTH, "num_heads": MAX_HEADS,
                     "patch_size": MAX_PATCH_SIZE}


class ConfigError(ValueError):
    """A bad config, data set or model argument, found before any training."""


class EvaluationError(RuntimeError):
    """The final evaluation failed; the trained model and the run's state are kept."""


class ExportError(RuntimeError):
    """The SavedModel export failed (a full disk, no permission); the trained model is kept."""


@dataclasses.dataclass
class TrainConfig:
    """Everything one training run needs. Field names match `training/train.py`'s flags.

    Model:
        model: a name from `glonet_keras.models.MODEL_CLASSES` (ignored with `preset`).
        preset: fine-tune a pretrained model instead of building one: a registered preset name, a
            preset directory or URL (`glonet_keras.presets.from_preset`), a `.keras` file, or a
            finished run directory (its model.keras). The data feed it as it was trained: its
            input shape (image_size and channels default to it) and normalisation (mean, std);
            a data set with another number of classes gets a new head. depth, width and
            model_kwargs are passed as overrides (only shape-preserving ones can apply).
        depth: blocks (MLP/ViT `num_blocks`) or layer depth (CNN `depth`); None = class default.
        width: MLP/CNN `width` or ViT `hidden_dim`; None = class default.
        model_kwargs: further constructor arguments of the model class (e.g.
            {"normalization": "batch", "layout": "imagenet", "patch_size": 2}); a name the class
            does not take is refused.
    Data:
        dataset, data_dir, download, manual_dir (imagenet2012's files), image_size (None: the
        data set's own, or the preset's), channels (image_folder: 3 or 1 for grayscale; None: 3,
        or the preset's),
        augment (names from `data.AUGMENTATIONS`),
        max_examples (use only the first N examples of each split; for quick runs),
        drop_remainder (drop the last partial training batch: with several replicas, Keras
        averages per-replica means, so an unevenly split last batch is weighted slightly
        differently than on one device; dropping it removes that difference).
    Training:
        strategy (`distribute.STRATEGIES`), epochs, batch_size (per replica: the global batch is
        batch_size x replicas), learning_rate (for the global batch), optimizer, schedule,
        warmup_epochs, weight_decay, momentum (sgd), label_smoothing, mixed_precision,
        jit_compile ("auto", True, False), seed,
        exit_loss_weight (GloNets: the weight w of the prefix exits' loss; 0 = off, the plain run
        bit for bit): the loss is loss(full) + w x mean over `exit_blocks` of loss(exit k), the
        same loss (label smoothing, one-hot labels under MixUp/CutMix) on the first k blocks
        through the shared head; exit_blocks (the k's, each in 1..L-1; None: all of 1..L-1),
        steps_per_execution ("auto" or an integer): training steps per compiled call. It is
        rounded down to a divisor of the steps per epoch, so that an epoch ends on a call boundary
        (TensorFlow would otherwise run into the next epoch's batches); "auto" picks up to
        `AUTO_MAX_STEPS_PER_EXECUTION` while keeping `AUTO_MIN_EXECUTIONS_PER_EPOCH` calls per epoch.
        It is 1 with several replicas on TensorFlow, where Keras' multi-step loop fails.
    Output:
        model_dir (None: a fresh temporary directory, printed on stderr; "" is refused), overwrite (delete a previous run in
        model_dir first: a finished run, or one with another config, is refused otherwise),
        export_dir (None: no SavedModel), export_name (folder under export_dir; None: the model's
        name), export_version, tensorboard, restore_best, verbose ("auto", 0, 1, 2),
        command (the command line, recorded in run.json and the model's metadata).
    """

    model: str = "glonet_mlp"
    depth: int = None
    width: int = None
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    dataset: str = "digits"
    data_dir: str = None
    download: bool = False
    manual_dir: str = None
    image_size: tuple = None
    channels: int = None
    preset: str = None
    augment: tuple = ()
    max_examples: int = None
    drop_remainder: bool = False
    strategy: str = "auto"
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    schedule: str = "constant"
    warmup_epochs: int = 0
    weight_decay: float = 0.0
    momentum: float = 0.9
    label_smoothing: float = 0.0
    mixed_precision: bool = False
    jit_compile: object = "auto"
    steps_per_execution: object = "auto"
    seed: int = 0
    exit_loss_weight: float = 0.0
    exit_blocks: tuple = None
    model_dir: str = None
    overwrite: bool = False
    export_dir: str = None
    export_name: str = None
    export_version: int = 1
    tensorboard: bool = True
    restore_best: bool = False
    verbose: object = "auto"
    command: list = None

    def validate(self):
        """Raises ConfigError (a ValueError) naming the first bad field."""
        try:
            get_model_class(self.model)
            data_lib.check_name(self.dataset)
            data_lib.check_augment(self.augment, _AnyImages())
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.strategy not in distribute.STRATEGIES:
            raise ConfigError(
                f"Unknown strategy {self.strategy!r}. Available: {list(distribute.STRATEGIES)}."
            )
        _check_int("epochs", self.epochs, minimum=1, maximum=MAX_EPOCHS)
        _check_int("batch_size", self.batch_size, minimum=1, maximum=MAX_BATCH_SIZE)
        _check_int("export_version", self.export_version, minimum=1, maximum=MAX_EXPORT_VERSION)
        if self.max_examples is not None:
            _check_int("max_examples", self.max_examples, minimum=1, maximum=MAX_EXAMPLES)
        _check_int("warmup_epochs", self.warmup_epochs, minimum=0)
        _check_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        if not isinstance(self.model_kwargs, dict) or not all(isinstance(k, str) for k in self.model_kwargs):
            raise ConfigError(f"`model_kwargs` must be a dict of argument names, received {self.model_kwargs!r}.")
        _check_model_size(self)
        if self.image_size is not None:
            if (not isinstance(self.image_size, (tuple, list)) or len(self.image_size) != 2):
                raise ConfigError(f"`image_size` must be (height, width), received {self.image_size!r}.")
            for side in self.image_size:
                _check_int("image_size", side, minimum=1, maximum=MAX_IMAGE_SIDE)
            if self.image_size[0] * self.image_size[1] > data_lib.MAX_IMAGE_PIXELS:
                raise ConfigError(
                    f"`image_size` {tuple(self.image_size)} is over the "
                    f"{data_lib.MAX_IMAGE_PIXELS / 1e6:g}-megapixel cap (data.MAX_IMAGE_PIXELS).")
        if self.preset is not None and (not isinstance(self.preset, (str, os.PathLike))
                                        or not os.fspath(self.preset).strip()):
            raise ConfigError(f"`preset` must name a preset, received {self.preset!r}.")
        if self.channels is not None and (isinstance(self.channels, bool)
                                          or self.channels not in (1, 3)):
            raise ConfigError(f"`channels` must be 1 or 3, received {self.channels!r}.")
        if self.model_dir is not None and (not isinstance(self.model_dir, (str, os.PathLike))
                                           or not os.fspath(self.model_dir).strip()):
            raise ConfigError(
                f"`model_dir` must name a directory, received {self.model_dir!r} (an empty "
                "--model_dir would train into a temporary folder that is never resumed).")
        if self.steps_per_execution != "auto":
            _check_int("steps_per_execution", self.steps_per_execution, minimum=1)
        if not _is_number(self.learning_rate) or not 0 < self.learning_rate < math.inf:
            raise ConfigError(f"`learning_rate` must be > 0 and finite, received {self.learning_rate!r}.")
        for name in ("weight_decay", "momentum", "label_smoothing"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < 1 + (name == "weight_decay"):
                raise ConfigError(f"`{name}` must be in [0, 1), received {value!r}.")
        _check_exit_settings(self.exit_loss_weight, self.exit_blocks)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"Unknown optimizer {self.optimizer!r}. Available: {list(OPTIMIZERS)}.")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"Unknown schedule {self.schedule!r}. Available: {list(SCHEDULES)}.")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs:
            raise ConfigError(
                f"`warmup_epochs` ({self.warmup_epochs}) must be smaller than `epochs` ({self.epochs})."
            )
        if self.jit_compile not in ("auto", True, False):
            raise ConfigError(f"`jit_compile` must be 'auto', True or False, received {self.jit_compile!r}.")
        if self.verbose not in ("auto", 0, 1, 2):
            raise ConfigError(f"`verbose` must be 'auto', 0, 1 or 2, received {self.verbose!r}.")
        if self.export_name is not None and not (
            isinstance(self.export_name, str) and _EXPORT_NAME.fullmatch(self.export_name)
        ):
            raise ConfigError(
                f"`export_name` must be a folder name (letters, digits, '_', '.', '-'; not starting "
                f"with '.'), received {self.export_name!r}."
            )
        if self.export_dir and not has_tensorflow():
            raise ConfigError("`export_dir`: SavedModel export needs TensorFlow, which is not installed.")
        return self


def _check_exit_settings(weight, exit_blocks):
    if not _is_number(weight) or not 0 <= weight < math.inf:
        raise ConfigError(f"`exit_loss_weight` must be >= 0 and finite, received {weight!r}.")
    if exit_blocks is None:
        return
    if not weight:
        raise ConfigError(
            f"`exit_blocks` needs `exit_loss_weight` > 0 (received exit_blocks={exit_blocks!r} with "
            f"weight {weight!r}): without a weight the exits are not in the loss.")
    if (not isinstance(exit_blocks, (list, tuple)) or not exit_blocks
            or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in exit_blocks)):
        raise ConfigError(
            "`exit_blocks` must be a non-empty list of prefix sizes k >= 1 (blocks before the "
            f"exit), received {exit_blocks!r}.")
    twice = sorted({k for k in exit_blocks if list(exit_blocks).count(k) > 1})
    if twice:
        raise ConfigError(f"`exit_blocks` lists {', '.join(map(str, twice))} more than once.")


class _AnyImages:
    """Stands in for a DatasetInfo when only the augmentation names are checked."""

    name, input_shape, task = "?", (1, 1, 1), "classification"


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(name, value, minimum, maximum=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"`{name}` must be an integer >= {minimum}, received {_short(value)}.")
    if maximum is not None and value > maximum:
        raise ConfigError(f"`{name}` must be at most {maximum:,}, received {_short(value)}.")


def _short(value):
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def _check_model_size(config):
    """Refuses absurd depths and widths before anything is built (see `MAX_DEPTH`...)."""
    given = dict(config.model_kwargs)
    if config.depth is not None:
        given["depth"] = config.depth
    if config.width is not None:
        given["width"] = config.width
    for name, maximum in _MODEL_INT_BOUNDS.items():
        if name in given and given[name] is not None:
            _check_int(name, given[name], minimum=1, maximum=maximum)
    stages = given.get("blocks_per_stage")
    if stages is not None:
        if not isinstance(stages, (list, tuple)) or not 1 <= len(stages) <= 64:
            raise ConfigError(f"`blocks_per_stage` must be 1 to 64 integers, received {_short(stages)}.")
        for blocks in stages:
            _check_int("blocks_per_stage", blocks, minimum=1, maximum=MAX_DEPTH)
    if config.preset is not None:
        return  # The preset's architecture is checked by the preset loader.
    try:
        defaults = {name: p.default for name, p in inspect.signature(
            get_model_class(config.model).__init__).parameters.items()}
    except ValueError:
        return
    depth = sum(stages) if stages else next(
        (given[n] for n in ("depth", "num_blocks") if given.get(n) is not None),
        defaults.get("depth", defaults.get("num_blocks")))
    width = next((given[n] for n in ("width", "hidden_dim") if given.get(n) is not None),
                 defaults.get("width", defaults.get("hidden_dim")))
    if isinstance(depth, int) and isinstance(width, int) and depth * width**2 > MAX_BLOCK_WEIGHTS:
        raise ConfigError(
            f"depth {depth:,} x width {width:,}^2 is {depth * width**2:.3g} block weights, over the "
            f"{MAX_BLOCK_WEIGHTS:.3g} a run may build (trainer.MAX_BLOCK_WEIGHTS).")


def has_tensorflow():
    """True when TensorFlow can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


@dataclasses.dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        model: the trained keras.Model (built under the strategy). It carries
            `model.preprocessing` (the `Preprocessing` it was trained with) and
            `model.preset_metadata` (dataset, task, class_names, metrics, config, training_command),
            which `export` and `presets.save_to_preset` read.
        history: the per-epoch logs of the whole run, across resumes ({"loss": [...], ...}).
        test_metrics: metrics on the test split, e.g. {"loss": ..., "accuracy": ...}.
        validation_metrics: the same on the validation split.
        seconds_per_epoch: wall time of every epoch of the run (the first of each call includes
            tracing).
        replicas: `strategy.num_replicas_in_sync`.
        global_batch_size: batch_size x replicas.
        initial_epoch: the epoch this call started at (> 0 after a resume).
        info: the `data.DatasetInfo` (input shape, classes, preprocessing).
        model_dir: where the files went; model_path, metrics_path: two of them.
        export_path: `<export_dir>/<export name>/<version>` or None.
        strategy: the strategy object.
        steps_per_execution: the value used.
    """

    model: keras.Model
    history: dict
    test_metrics: dict
    validation_metrics: dict
    seconds_per_epoch: list
    replicas: int
    global_batch_size: int
    initial_epoch: int
    info: data_lib.DatasetInfo
    model_dir: str
    model_path: str
    metrics_path: str
    export_path: str
    strategy: object
    steps_per_execution: int = 1


def build_model(config, info):
    """The model named by `config` for the data set described by `info` (call inside a scope).

    Raises:
        ConfigError: an argument the model class does not take, or one it refuses.
    """
    model_class = get_model_class(config.model)
    import inspect

    parameters = inspect.signature(model_class.__init__).parameters
    accepted = sorted(name for name, p in parameters.items()
                      if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
    unknown = sorted(set(config.model_kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{model_class.__name__} does not take {unknown}; its arguments are {accepted}."
        )
    kwargs = dict(input_shape=tuple(info.input_shape), num_classes=info.num_classes,
                  **_config_arguments(config, parameters))
    try:
        return model_class(**kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{model_class.__name__}: {error}") from error


def initial_model(config, info):
    """The model a fresh run of `config` starts from: the seed set, then `build_model`.

    `train` builds its model through this very function (inside its strategy's scope, which does
    not touch the random state), so calling it again with a run's config (metrics.json's
    `config`) and data set rebuilds that run's initial weights bit for bit, on the same Keras
    backend: the initializers draw their seeds from the generators `set_random_seed` resets. A
    run trained on another backend (JAX, say) drew other numbers from the same seed.
    """
    keras.utils.set_random_seed(config.seed)
    return build_model(config, info)


def make_optimizer(config, steps_per_epoch):
    learning_rate = config.learning_rate
    if config.schedule == "cosine":
        total = max(1, config.epochs * steps_per_epoch)
        warmup = config.warmup_epochs * steps_per_epoch
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else config.learning_rate,
            decay_steps=max(1, total - warmup),
            warmup_target=config.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    decay = config.weight_decay or None
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate, weight_decay=decay)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate, weight_decay=decay)
    return keras.optimizers.SGD(learning_rate, momentum=config.momentum, nesterov=True,
                                weight_decay=decay)


def _loss_and_metrics(info, one_hot, label_smoothing):
    if info.task == "regression":
        return keras.losses.MeanSquaredError(), [keras.metrics.RootMeanSquaredError(name="rmse")]
    if one_hot:
        loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)
        return loss, [keras.metrics.CategoricalAccuracy(name="accuracy")]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return loss, [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def exit_blocks_of(config, model):
    """The prefix exits k trained with exit losses (sorted), or () when `exit_loss_weight` is 0.

    Raises:
        ConfigError: the model is not a GloNet (it has no prefix exits), has a single block, or an
            `exit_blocks` entry is not a prefix of 1..L-1 blocks.
    """
    if not config.exit_loss_weight:
        return ()
    try:
        num_blocks = analysis.skeleton(model).num_blocks
    except analysis.NotAGloNetError as error:
        raise ConfigError(
            f"`exit_loss_weight` trains the prefix exits of a GloNet; {type(model).__name__} "
            f"{model.name!r} is not a GloNet ({error})") from None
    if config.exit_blocks is None:
        if num_blocks < 2:
            raise ConfigError(
                f"`exit_loss_weight`: {model.name!r} has 1 block, so it has no prefix exit besides "
                "the full model.")
        return tuple(range(1, num_blocks))
    outside = sorted(k for k in config.exit_blocks if not 1 <= k < num_blocks)
    if outside:
        raise ConfigError(
            f"`exit_blocks` {outside} out of range: {model.name!r} has {num_blocks} blocks, so an "
            f"exit is a prefix of 1 to {num_blocks - 1} of them (the full model, {num_blocks}, is "
            "always in the loss).")
    return tuple(sorted(config.exit_blocks))


class PrefixExitLoss(keras.losses.Loss):
    """loss(full model) + weight x mean over `exit_blocks` of loss(exit k), on all exits at once.

    It reads the outputs of `analysis.early_exit_model` (batch, L, outputs): entry k - 1 is the
    first k blocks through the shared head, entry L - 1 the full model. Each exit's per-example
    loss is `loss`'s own (its label smoothing; sparse or one-hot labels), and the sum is reduced as
    `loss` reduces (the batch mean), so it equals loss(full) + weight x mean_k loss(exit k).

    Args:
        loss: a Keras loss of the model's outputs (e.g. CategoricalCrossentropy(from_logits=True)).
        exit_blocks: the prefix sizes k (1..L-1) whose exits are in the loss.
        weight: the weight of their mean.
    """

    def __init__(self, loss, exit_blocks, weight, name="prefix_exit_loss"):
        super().__init__(name=name, reduction=loss.reduction, dtype=loss.dtype)
        self.loss = loss
        self.exit_blocks = tuple(int(k) for k in exit_blocks)
        self.weight = float(weight)

    def call(self, y_true, y_pred):
        full = self.loss.call(y_true, y_pred[:, -1])
        exits = [self.loss.call(y_true, y_pred[:, k - 1]) for k in self.exit_blocks]
        return full + self.weight * keras.ops.mean(keras.ops.stack(exits), axis=0)

    def get_config(self):
        return {"name": self.name, "loss": keras.saving.serialize_keras_object(self.loss),
                "exit_blocks": list(self.exit_blocks), "weight": self.weight}

    @classmethod
    def from_config(cls, config):
        return cls(**{**config, "loss": keras.saving.deserialize_keras_object(config["loss"])})


class FullModelMetric(keras.metrics.Metric):
    """`metric` of the full model alone, from early-exit outputs (batch, L, outputs): entry L - 1.

    It keeps `metric`'s name, so a run with exit losses reports the full model's accuracy under the
    same key as a run without, comparable epoch by epoch and in the final evaluation.
    """

    def __init__(self, metric, **kwargs):
        kwargs.setdefault("name", metric.name)
        super().__init__(dtype=metric.dtype, **kwargs)
        self.metric = metric

    def update_state(self, y_true, y_pred, sample_weight=None):
        return self.metric.update_state(y_true, y_pred[:, -1], sample_weight=sample_weight)

    def result(self):
        return self.metric.result()

    def reset_state(self):
        self.metric.reset_state()

    def get_config(self):
        return {"name": self.name, "metric": keras.saving.serialize_keras_object(self.metric)}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config.pop("metric")), **config)


def full_model_metrics(metrics):
    """`metrics` read on the full model's exit of early-exit outputs (see `FullModelMetric`)."""
    return [FullModelMetric(metric) for metric in metrics]


def choose_steps_per_execution(requested, steps_per_epoch, tf_replicas=1):
    """The training steps per compiled call: a divisor of `steps_per_epoch` (see TrainConfig).

    With more than one tf.distribute replica (`tf_replicas`) it is 1: Keras 3.15's multi-step loop
    fails there ("You must feed a value for placeholder tensor", keras-team/keras#19246; measured
    with MirroredStrategy on 2 logical CPUs and with two local MultiWorkerMirroredStrategy workers).
    """
    if tf_replicas > 1:
        if requested not in ("auto", 1):
            raise ConfigError(
                f"`steps_per_execution={requested}` fails with several replicas on TensorFlow "
                "(keras-team/keras#19246); use 'auto' or 1 there."
            )
        return 1
    if steps_per_epoch is None:  # A stream of unknown length: the epoch ends where the data does.
        return 1 if requested == "auto" else requested
    if requested == "auto":
        target = min(AUTO_MAX_STEPS_PER_EXECUTION,
                     max(1, steps_per_epoch // AUTO_MIN_EXECUTIONS_PER_EPOCH))
    else:
        target = min(requested, steps_per_epoch)
    return max(d for d in range(1, target + 1) if steps_per_epoch % d == 0)


# Config fields that change what a run computes, besides the model's own config. The others (where
# files go, output, the export, the strategy: the global batch is recorded instead, and the
# steps per execution) may change between a run and its resume.
_RESULT_FIELDS = ("dataset", "image_size", "augment", "max_examples", "drop_remainder",
                  "learning_rate", "optimizer", "schedule", "warmup_epochs", "weight_decay",
                  "momentum", "label_smoothing", "mixed_precision", "seed")


def fingerprint(config, model, info, global_batch_size):
    """What a run's result depends on: a resume must match it (recorded in run.json).

    The model is described by its class and `get_config()` (less its name), so `depth=None` and
    the class default compare equal. `epochs` is part of it only with a schedule that spans the
    run (cosine): under a constant learning rate a run may be resumed with more epochs. The data
    set is described by its `DatasetInfo` (shapes, classes, split sizes, preprocessing), not by
    its path, so moved data still resumes.
    """
    architecture = {key: value for key, value in model.get_config().items()
                    if key not in ("name", "trainable")}
    record = {"model": {"class": type(model).__name__, "config": architecture}}
    record.update({name: getattr(config, name) for name in _RESULT_FIELDS})
    record["global_batch_size"] = global_batch_size
    if config.preset is not None:  # Absent otherwise, so runs recorded before it still resume.
        record["preset"] = os.fspath(config.preset)
    exit_blocks = exit_blocks_of(config, model)
    if exit_blocks:  # Likewise only when set.
        record["exit_loss"] = {"weight": config.exit_loss_weight, "exit_blocks": list(exit_blocks)}
    if config.schedule != "constant":
        record["epochs"] = config.epochs
    description = info.to_dict()
    description.pop("source", None)
    record["data"] = description
    return _jsonable(record)


def versions():
    """Library versions recorded with every run."""
    found = {
        "glonet_keras": __version__,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    for module in ("tensorflow", "jax"):
        if module in sys.modules:
            found[module] = getattr(sys.modules[module], "__version__", "?")
    return found


# --------------------------------------------------------------------------------------------------
# Data.


@dataclasses.dataclass
class _Data:
    """The inputs of fit and evaluate, from tf.data or from numpy arrays."""

    train: object = None  # fit's `x`: a tf.data.Dataset or a DeviceArrayDataset (None: nothing to fit)
    splits: dict = None  # "validation"/"test" -> evaluate's keyword arguments
    fit_steps: int = None  # steps_per_epoch for fit (the tf.data stream of all remaining epochs)
    augment_on_device: tuple = ()  # augmentation layers of the training-only model (array path)
    mixing: object = None  # its augment.RandomMix (MixUp/CutMix in the training step), or None

    def validation_kwargs(self):
        """fit's validation_data (and validation_batch_size, for arrays)."""
        split = self.splits["validation"]
        if "y" not in split:
            return {"validation_data": split["x"]}
        return {"validation_data": (split["x"], split["y"]),
                "validation_batch_size": split["batch_size"]}


def _open_source(config, pretrained=None):
    """The data set, opened once; with a `pretrained` model, shaped and normalised as it expects."""
    image_size, channels = config.image_size, config.channels
    expected = None
    if pretrained is not None:
        expected = tuple(pretrained.input_shape[1:])
        fixed_image = len(expected) == 3 and None not in expected[:2]
        if config.dataset == "image_folder":
            if channels is None and expected[-1:] in ((1,), (3,)):
                channels = expected[-1]
            if image_size is None and fixed_image:
                image_size = expected[:2]
    try:
        source = data_lib.open_source(
            config.dataset, data_dir=config.data_dir, download=config.download,
            manual_dir=config.manual_dir, image_size=image_size, seed=config.seed,
            **({} if channels is None else {"channels": channels}))
        if (expected is not None and image_size is None and fixed_image
                and tuple(source.info.input_shape[:2]) != expected[:2]
                and len(source.info.input_shape) == 3 and _resizable(config.dataset)):
            source = data_lib.open_source(
                config.dataset, data_dir=config.data_dir, download=config.download,
                manual_dir=config.manual_dir, image_size=expected[:2], seed=config.seed)
        data_lib.check_augment(config.augment, source.info)
    except (ValueError, ImportError) as error:
        raise ConfigError(str(error)) from error
    if pretrained is not None:
        _feed_like(config, source, pretrained, expected)
    return source


def _resizable(dataset):
    return dataset not in data_lib.IN_MEMORY_DATASETS or dataset in ("digits", "fashion_mnist")


def _feed_like(config, source, pretrained, expected):
    """Makes the data feed `pretrained` as it was trained: same input shape, its mean and std."""
    info = source.info
    given = tuple(info.input_shape)
    if len(given) != len(expected) or any(e is not None and e != g for e, g in zip(expected, given)):
        raise ConfigError(
            f"The preset {config.preset!r} takes inputs of shape {expected}; data set "
            f"{info.name!r} gives {given}. Pick a matching data set or preset, or pass "
            "--image_size / --channels (image_folder) to match it.")
    recorded = getattr(pretrained, "preprocessing", None)
    if recorded is None:
        return
    if len(recorded.mean) != len(info.preprocessing.mean):
        raise ConfigError(
            f"The preset {config.preset!r} normalises {len(recorded.mean)} channel(s); data set "
            f"{info.name!r} has {len(info.preprocessing.mean)}.")
    # The data set's own cast, scale and resize (raw values -> [0, 1]); the preset's statistics.
    preprocessing = dataclasses.replace(info.preprocessing, mean=tuple(recorded.mean),
                                        std=tuple(recorded.std))
    source.info = dataclasses.replace(info, preprocessing=preprocessing)


def _preset_location(preset):
    """What `presets.from_preset` loads for `preset`, and the preprocessing.json beside a run's
    model.keras (None elsewhere)."""
    preset = os.fspath(preset)
    if os.path.isdir(preset) and os.path.lexists(os.path.join(preset, rundir.RUN_FILE)):
        model_path = os.path.join(preset, "model.keras")
        if not os.path.isfile(model_path):
            raise ConfigError(
                f"preset {preset!r} is a run directory without model.keras (an unfinished run): "
                "finish it (run its command again) before fine-tuning from it.")
        return model_path, os.path.join(preset, "preprocessing.json")
    return preset, None


def load_pretrained(config, **overrides):
    """The model of `config.preset` (build it inside the strategy's scope), or ConfigError."""
    location, preprocessing_path = _preset_location(config.preset)
    try:
        model = presets.from_preset(location, **overrides)
    except (ValueError, TypeError, OSError) as error:  # PresetError, PresetDownloadError
        raise ConfigError(f"preset {config.preset!r}: {error}") from None
    if getattr(model, "preprocessing", None) is None and preprocessing_path \
            and os.path.isfile(preprocessing_path):
        try:
            model.preprocessing = data_lib.load_preprocessing(preprocessing_path)
        except (OSError, ValueError) as error:
            raise ConfigError(f"preset {config.preset!r}: {error}") from None
    return model


def _config_arguments(config, parameters):
    """The constructor arguments `config` sets: depth and width under the class's own names (from
    its signature's `parameters`), the mixed-precision policy, then `model_kwargs` as given."""
    arguments = {}
    if config.depth is not None:
        arguments["num_blocks" if "num_blocks" in parameters else "depth"] = config.depth
    if config.width is not None:
        arguments["width" if "width" in parameters else "hidden_dim"] = config.width
    if config.mixed_precision:
        # bfloat16 on JAX where the device computes in it (GPU compute capability >= 8, TPU),
        # float16 with loss scaling elsewhere: fastfit.mixed_precision_policy.
        arguments["dtype"] = fastfit.mixed_precision_policy()
    return {**arguments, **config.model_kwargs}


def _preset_overrides(config, pretrained, info):
    """Constructor arguments that differ from the preset's: a new head, and the config's own."""
    parameters = inspect.signature(type(pretrained).__init__).parameters
    overrides = _config_arguments(config, parameters)
    if info.num_classes != pretrained.output.shape[-1]:
        overrides["num_classes"] = info.num_classes
    current = pretrained.get_config()
    return {key: value for key, value in overrides.items() if current.get(key) != value}


def _uses_arrays(config, info):
    """True for the numpy-array path (see the module docstring); refuses what it cannot do."""
    in_memory = config.dataset in data_lib.IN_MEMORY_DATASETS
    if has_tensorflow():
        return in_memory and keras.backend.backend() == "jax"
    if not in_memory:
        raise ConfigError(
            f"Data set {info.name!r} is read through tf.data, which needs TensorFlow (not "
            f"installed); {list(data_lib.IN_MEMORY_DATASETS)} train without it."
        )
    return True


def _count_train(config, source, uses_arrays):
    if uses_arrays:
        count = len(data_lib.load_split(config.dataset, "train", source=source)[1])
    else:
        count = data_lib.count_examples(config.dataset, "train", source=source)
    if count is not None and config.max_examples is not None:
        count = min(count, config.max_examples)
    return count


def _array_data(config, source, info, global_batch, one_hot, initial_epoch):
    """In-memory inputs, preprocessed once (only scaled when augmenting: the layers need [0, 1]).

    The training split is a `fastfit.DeviceArrayDataset`: on JAX it stays on the device and every
    batch is gathered there; epoch e is shuffled with its own seed (seed, e), so a run resumed at
    `initial_epoch` sees the batches an uninterrupted run sees.
    """
    preprocessing = info.preprocessing
    augment_layers = tuple(data_lib.image_augmentation_layers(config.augment, config.seed))

    def prepare(split):
        x, y = data_lib.load_split(config.dataset, split, source=source)
        if config.max_examples is not None:
            x, y = x[:config.max_examples], y[:config.max_examples]
        x = np.asarray(x, "float32") * np.float32(preprocessing.scale)
        if not augment_layers:
            x = (x - np.asarray(preprocessing.mean, "float32")) / np.asarray(preprocessing.std, "float32")
        if one_hot:
            y = np.eye(info.num_classes, dtype="float32")[y]
        return x, y

    x, y = prepare("train")
    train = fastfit.DeviceArrayDataset(x, y, batch_size=global_batch, seed=config.seed,
                                       drop_remainder=config.drop_remainder,
                                       start_epoch=initial_epoch)
    splits = {split: dict(zip(("x", "y"), prepare(split)), batch_size=global_batch)
              for split in ("validation", "test")}
    return _Data(train=train, splits=splits, augment_on_device=augment_layers,
                 mixing=data_lib.mixing_layer(config.augment, config.seed))


def _tf_data(config, source, global_batch, one_hot, steps, initial_epoch):
    kwargs = dict(max_examples=config.max_examples, one_hot=one_hot, seed=config.seed, source=source)
    train, fit_steps = None, None
    if initial_epoch < config.epochs:
        if steps is not None:
            # A per-epoch-seeded stream of the remaining epochs: a resumed run sees the same batches.
            train = data_lib.get_dataset(
                config.dataset, "train", global_batch, augment=config.augment,
                drop_remainder=config.drop_remainder, start_epoch=initial_epoch,
                num_epochs=config.epochs, **kwargs)
            fit_steps = steps
        else:
            train = data_lib.get_dataset(config.dataset, "train", global_batch,
                                         augment=config.augment,
                                         drop_remainder=config.drop_remainder, **kwargs)
    splits = {split: {"x": data_lib.get_dataset(config.dataset, split, global_batch, **kwargs)}
              for split in ("validation", "test")}
    return _Data(train=train, splits=splits, fit_steps=fit_steps)


def _training_model(model, data, info, exits=False):
    """The model `fit` trains: `model` itself, or a training-only wrapper that augments on device.

    With `exits`, what is trained is `analysis.early_exit_model(model)` (every prefix's output, for
    `PrefixExitLoss`), inside the same wrappers. The wrapper shares `model`'s layers (and so its
    weights, in the same order); it adds the augmentation layers and the normalisation after them. With MixUp/CutMix it is an `augment.MixingModel`: its training step
    augments the images, mixes images and labels, and trains the normalisation + `model` on them
    (mixing before the normalisation: both commute with it). The saved and exported model never
    contains augmentation.
    """
    trained = analysis.early_exit_model(model) if exits else model
    if not data.augment_on_device and data.mixing is None:
        return trained
    inner = trained
    if data.augment_on_device:  # The inputs are only scaled: normalise them on the device.
        preprocessing = info.preprocessing
        normalize = keras.layers.Normalization(
            mean=list(preprocessing.mean), variance=[s * s for s in preprocessing.std],
            name="normalize")
        layers = [normalize, trained] if data.mixing is not None else [
            *data.augment_on_device, normalize, trained]
        inner = keras.Sequential([keras.Input(tuple(info.input_shape)), *layers],
                                 name=f"{model.name}_training")
    if data.mixing is None:
        return inner
    return augment_lib.MixingModel(inner, data.mixing, augment=data.augment_on_device,
                                   name=f"{model.name}_mixing")


# --------------------------------------------------------------------------------------------------
# The run.


def train(config):
    """Trains (or resumes) one model as `config` says; returns a `TrainResult`.

    Everything is checked before any training: the config, the data set, the model's arguments and
    the run directory (the model is built once, after the strategy exists, and trained).

    Raises:
        ConfigError: a bad config, data set or model argument.
        data.DatasetUnavailableError: the data set is not on this machine.
        rundir.RunDirectoryError: `model_dir` holds a run this one must not resume or overwrite.
        callbacks.NonFiniteError: the loss or the weights stopped being finite (nothing is exported;
            the states of the epochs before stay in backup/).
        rundir.DiskFullError: the disk filled up (the complete states stay: re-run to resume).
        EvaluationError: the final evaluation failed (model.keras and backup/ are kept: re-run to
            evaluate again without retraining).
    """
    session = _start(config)
    try:
        if session.verbose and session.chief:
            print(_banner(session), flush=True)
        saver = _fit(session)
        return _finish(session, saver)
    finally:
        session.run.release()


@dataclasses.dataclass
class _Session:
    """Everything `train` set up before training."""

    config: TrainConfig
    strategy: object
    chief: bool
    run: rundir.RunDirectory
    replicas: int
    global_batch: int
    info: data_lib.DatasetInfo
    uses_arrays: bool
    steps: int
    steps_per_execution: int
    model: keras.Model
    fit_model: keras.Model
    export_name: str
    export_path: str
    state: rundir.TrainingState
    data: _Data
    verbose: int
    tensorboard: bool

    @property
    def initial_epoch(self):
        return self.state.epoch if self.state else 0


def _start(config):
    """Checks everything and builds the model, its data and its run directory; trains nothing."""
    config.validate()
    # The strategy comes first: MultiWorkerMirroredStrategy and jax.distributed must be set up
    # before any other op runs in the process.
    try:
        strategy = distribute.get_strategy(config.strategy)
    except ValueError as error:  # A missing or malformed TF_CONFIG, say.
        raise ConfigError(f"strategy {config.strategy!r}: {error}") from None
    # Then the seed: tf.data shuffles combine their seeds with TF's global seed, so seeding later would
    # make the batch order depend on whatever seeded the process before.
    keras.utils.set_random_seed(config.seed)
    # Only a strategy that spans several workers makes this process anything but the chief.
    chief = distribute.is_chief(strategy)
    model_dir = config.model_dir
    if model_dir is None:
        model_dir = tempfile.mkdtemp(prefix="glonet_train_")
        print(f"glonet_keras: no model_dir given: training into {model_dir}", file=sys.stderr)
    # Non-chief multi-worker processes write their copies where they do not clash with the chief.
    run = rundir.RunDirectory(
        model_dir if chief else os.path.join(model_dir, f"worker_{distribute.task_index(strategy)}"))
    replicas = int(strategy.num_replicas_in_sync)
    global_batch = config.batch_size * replicas

    pretrained = None
    if config.preset is not None:
        with strategy.scope():
            pretrained = load_pretrained(config)
    source = _open_source(config, pretrained)
    info = source.info
    uses_arrays = _uses_arrays(config, info)
    one_hot = info.task == "classification" and (
        data_lib.label_mixing(config.augment) or config.label_smoothing > 0)
    if config.label_smoothing and info.task != "classification":
        raise ConfigError("label_smoothing needs a classification data set.")
    steps = _count_train(config, source, uses_arrays)
    steps = None if steps is None else data_lib.steps_per_epoch(steps, global_batch,
                                                                config.drop_remainder)
    tf_replicas = replicas if keras.backend.backend() == "tensorflow" else 1
    steps_per_execution = choose_steps_per_execution(config.steps_per_execution, steps, tf_replicas)

    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        if pretrained is None:
            model = initial_model(config, info)
        else:
            overrides = _preset_overrides(config, pretrained, info)
            model = load_pretrained(config, **overrides) if overrides else pretrained
    exit_blocks = exit_blocks_of(config, model)
    export_name = config.export_name or model.name
    export_path = _check_export_path(config, export_name, run) if chief else None

    state = run.claim(fingerprint(config, model, info, global_batch), epochs=config.epochs,
                      overwrite=config.overwrite, command=config.command)
    run.remove_partial_files()
    initial_epoch = state.epoch if state else 0
    if uses_arrays:
        data = _array_data(config, source, info, global_batch, one_hot, initial_epoch)
    else:
        data = _tf_data(config, source, global_batch, one_hot, steps, initial_epoch)
    with strategy.scope():
        fit_model = _training_model(model, data, info, exits=bool(exit_blocks))
        loss, metrics = _loss_and_metrics(info, one_hot, config.label_smoothing)
        if exit_blocks:
            loss = PrefixExitLoss(loss, exit_blocks, config.exit_loss_weight)
            metrics = full_model_metrics(metrics)
        fit_model.compile(
            optimizer=make_optimizer(config, steps or _estimate_steps(info, global_batch)),
            loss=loss, metrics=metrics, jit_compile=config.jit_compile,
            steps_per_execution=steps_per_execution)
        if fit_model is not model:
            # So that model.keras carries the training config too; the optimizer is the one fit updates.
            loss, metrics = _loss_and_metrics(info, one_hot, config.label_smoothing)
            model.compile(optimizer=fit_model.optimizer, loss=loss, metrics=metrics)
        if state is not None:
            _load_state(model, state.model_path)
    distribute.apply_multi_worker_workarounds(fit_model, strategy)
    # JAX on a GPU/TPU: each steps_per_execution group is one compiled lax.scan
    # (fastfit.fuse_train_steps, tested equal to Keras' own path; fastfit.fuse_by_default has the
    # timings that made it the default there, and slower on a CPU). It declines where it does not
    # apply (one step per call, no XLA, a keras.distribution).
    if fastfit.fuse_by_default():
        fastfit.fuse_train_steps(fit_model)

    verbose = config.verbose
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    return _Session(
        config=config, strategy=strategy, chief=chief, run=run, replicas=replicas,
        global_batch=global_batch, info=info, uses_arrays=uses_arrays, steps=steps,
        steps_per_execution=steps_per_execution, model=model, fit_model=fit_model,
        export_name=export_name, export_path=export_path, state=state, data=data, verbose=verbose,
        tensorboard=config.tensorboard and has_tensorflow())


def _fit(session):
    """Trains the remaining epochs (if any); returns the state saver (history, best epoch)."""
    config, data = session.config, session.data
    timer = EpochTimer()
    saver = RunStateCheckpoint(session.run, session.model, timer, state=session.state)
    callbacks = [ReseedEachEpoch(), timer, StopOnNonFinite(), saver]
    if session.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(session.run.path, "logs")))
    if session.initial_epoch < config.epochs:
        with distribute.synchronized_batch_norm(session.fit_model, enabled=session.replicas > 1):
            session.fit_model.fit(
                data.train,
                **data.validation_kwargs(),
                epochs=config.epochs,
                initial_epoch=session.initial_epoch,
                steps_per_epoch=data.fit_steps,
                shuffle=False,  # The input shuffles (seeded per epoch).
                callbacks=callbacks,
                verbose=session.verbose,
            )
    return saver


def _finish(session, saver):
    """Saves the model, then evaluates and exports it, then marks the run finished."""
    config, run, model, info = session.config, session.run, session.model, session.info
    if config.restore_best and saver.best is not None:
        with session.strategy.scope():
            _load_state(model, run.state_model(saver.best["epoch"]))
    check_finite(model, "The final model")
    record = _training_record(session, saver)
    # The trained model and its record go to disk before the final evaluation: if that fails,
    # nothing of the training is lost (and a re-run evaluates again without retraining).
    model_path = os.path.join(run.path, "model.keras")
    metrics_path = os.path.join(run.path, "metrics.json")
    rundir.write_atomically(model_path, model.save)
    rundir.write_json(os.path.join(run.path, "preprocessing.json"), info.preprocessing.to_dict())
    rundir.write_json(metrics_path, record)
    try:
        with distribute.synchronized_batch_norm(session.fit_model, enabled=session.replicas > 1):
            validation_metrics = _evaluate(session.fit_model, session.data.splits["validation"])
            test_metrics = _evaluate(session.fit_model, session.data.splits["test"])
    except Exception as error:
        raise EvaluationError(
            f"The final evaluation failed ({type(error).__name__}: {error}). The trained model is "
            f"saved in {model_path} and the run's state kept: fix the cause and run the same "
            "command again to evaluate without retraining."
        ) from error

    model.preprocessing = info.preprocessing
    model.preset_metadata = _preset_metadata(config, info, validation_metrics, test_metrics)
    export_path = None
    if session.export_path:
        _record_export(run, session.export_path)  # First: a re-run may replace a half-done export.
        try:
            export_path = export_lib.export_saved_model(
                model, config.export_dir, version=config.export_version,
                model_name=session.export_name, preprocessing=info.preprocessing, task=info.task,
                overwrite=True)
        except OSError as error:
            what = error.strerror or str(error)
            if isinstance(error, rundir.DiskFullError) or rundir.is_disk_full(error):
                what = "No space left on device"
            raise ExportError(
                f"The export to {session.export_path} failed ({what}). The trained model is saved "
                f"in {model_path} and the run's state kept: fix the cause and run the same command "
                "again to export without retraining."
            ) from error
    record.update(status="finished", test=test_metrics, validation=validation_metrics,
                  export_path=export_path)
    rundir.write_json(metrics_path, record)
    run.finish(_summary(config, saver, test_metrics))
    return TrainResult(
        model=model, history=saver.history, test_metrics=test_metrics,
        validation_metrics=validation_metrics, seconds_per_epoch=list(saver.seconds),
        replicas=session.replicas, global_batch_size=session.global_batch,
        initial_epoch=session.initial_epoch, info=info, model_dir=run.path, model_path=model_path,
        metrics_path=metrics_path, export_path=export_path, strategy=session.strategy,
        steps_per_execution=session.steps_per_execution,
    )


def _training_record(session, saver):
    """metrics.json before the final evaluation (its status becomes "finished" after)."""
    config = session.config
    return {
        "status": "evaluating",
        "test": None,
        "validation": None,
        "history": saver.history,
        "seconds_per_epoch": saver.seconds,
        "epochs": config.epochs,
        "initial_epoch": session.initial_epoch,
        "best_epoch": saver.best,
        "restored_best": bool(config.restore_best and saver.best),
        "replicas": session.replicas,
        "global_batch_size": session.global_batch,
        "steps_per_execution": session.steps_per_execution,
        "strategy": type(session.strategy).__name__,
        "input_pipeline": "numpy arrays" if session.uses_arrays else "tf.data",
        "num_parameters": int(session.model.count_params()),
        "dataset": session.info.to_dict(),
        "config": _jsonable(dataclasses.asdict(config)),
        "export_path": None,
        "versions": versions(),
    }


def _load_state(model, path):
    """Loads a saved state (the model's and its optimizer's variables) into the compiled model."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(path)


def _evaluate(model, split):
    return {key: float(value)
            for key, value in model.evaluate(**split, verbose=0, return_dict=True).items()}


def _check_export_path(config, name, run):
    """The export's version directory, refused now if another run's export is already there."""
    if not config.export_dir:
        return None
    if not _EXPORT_NAME.fullmatch(name):
        raise ConfigError(f"The model name {name!r} cannot be an export folder; pass export_name.")
    path = os.path.join(os.path.abspath(config.export_dir), name, str(config.export_version))
    existing = path
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if existing != path and not os.path.isdir(existing):
        raise ConfigError(f"export_dir: {existing} is not a directory, so {path} cannot be written.")
    if existing != path and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"export_dir: {existing} is not writable, so {path} cannot be written.")
    record = run.record() or {}
    if os.path.exists(path) and not config.overwrite and record.get("export_path") != path:
        raise ConfigError(
            f"{path} already holds a SavedModel that this run did not write: pass another "
            "export_version / export_name, or overwrite=True (--overwrite) to replace it."
        )
    return path


def _record_export(run, export_path):
    record = run.record()
    record["export_path"] = os.path.abspath(export_path)
    rundir.write_json(run.run_file, record)


def _preset_metadata(config, info, validation_metrics, test_metrics):
    metrics = {f"test_{key}": value for key, value in test_metrics.items()}
    metrics.update({f"validation_{key}": value for key, value in validation_metrics.items()})
    return {
        "dataset": info.name,
        "task": info.task,
        # DatasetInfo.class_names lands with the data branch; sets without names give None.
        "class_names": getattr(info, "class_names", None),
        "preprocessing": info.preprocessing.to_dict(),
        "metrics": metrics,
        "training_command": " ".join(config.command) if config.command else None,
        **({"fine_tuned_from": {"preset": os.fspath(config.preset)}} if config.preset else {}),
        "config": _jsonable(dataclasses.asdict(config)),
    }


def _summary(config, saver, test_metrics):
    scores = ", ".join(f"test {key} {value:.4f}" for key, value in test_metrics.items())
    return f"{len(saver.seconds)} epochs of {config.epochs}; {scores}"


def _banner(session):
    """The block printed before training: what is trained, on what, where, from which epoch."""
    config, info, model, state = session.config, session.info, session.model, session.state
    splits = " / ".join(f"{count:,} {split}" for split, count in info.num_examples.items() if count)
    if state is None:
        start = f"fresh start, {config.epochs} epoch{'s' if config.epochs > 1 else ''}"
    elif state.epoch >= config.epochs:
        start = f"all {state.epoch} epochs trained: evaluating and saving"
    else:
        start = f"resuming at epoch {state.epoch + 1} of {config.epochs} (state of epoch {state.epoch})"
    notes = []
    if config.max_examples is not None:
        notes.append(f"only the first {config.max_examples:,} examples of each split are used")
    if config.tensorboard and not session.tensorboard:
        notes.append("TensorBoard off: TensorFlow is not installed")
    if config.restore_best:
        notes.append("the best epoch by validation loss is kept at the end")
    if config.preset is not None:
        notes.append(f"fine-tuning from the preset {os.fspath(config.preset)!r}")
    exit_blocks = exit_blocks_of(config, model)
    if exit_blocks:
        notes.append(f"exit losses: loss(full) + {config.exit_loss_weight:g} x mean loss of the "
                     f"exits after {_ranges(exit_blocks)} blocks; accuracy is the full model's")
    lines = [
        "glonet-keras training",
        f"  model      {type(model).__name__} {model.name!r}: {model.count_params():,} parameters",
        f"  data       {info.name}: {splits}; input {tuple(info.input_shape)}, "
        f"{info.num_classes} {'classes' if info.task == 'classification' else 'output'}; "
        f"{'numpy arrays' if session.uses_arrays else 'tf.data'}",
        f"  strategy   {type(session.strategy).__name__}, {session.replicas} replica(s), global "
        f"batch {session.global_batch}, {session.steps or '?'} steps per epoch, "
        f"{session.steps_per_execution} per execution",
        f"  output     {session.run.path}",
        f"  start      {start}",
    ]
    lines += [f"  note       {note}" for note in notes]
    return "\n".join(lines)


def _ranges(numbers):
    """'1-3, 5' for (1, 2, 3, 5)."""
    spans, start = [], None
    for index, number in enumerate(numbers):
        if start is None:
            start = number
        if index + 1 == len(numbers) or numbers[index + 1] != number + 1:
            spans.append(str(start) if start == number else f"{start}-{number}")
            start = None
    return ", ".join(spans)


def _estimate_steps(info, global_batch):
    num_train = info.num_examples.get("train")
    return math.ceil(num_train / global_batch) if num_train else 1000


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return repr(value)
