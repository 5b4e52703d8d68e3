"""Training as a library function: `train(TrainConfig(...)) -> TrainResult`.

One call does what `training/train.py` (a thin absl shell over it) and `make demo` need:

    data pipeline -> strategy -> model built AND compiled in the strategy's scope -> fit with
    progress bars, TensorBoard, best/last checkpoints and BackupAndRestore -> evaluate on the
    test split -> `metrics.json`, `model.keras`, `preprocessing.json` -> optional SavedModel export.

Example:
>>> from glonet_keras.trainer import TrainConfig, train
>>> result = train(TrainConfig(model="glonet_mlp", depth=4, width=32, dataset="digits",
...                            epochs=2, model_dir="/tmp/run"))
>>> result.test_metrics["accuracy"], result.replicas, result.seconds_per_epoch

Files under `model_dir`:
    model.keras            the trained model (last epoch, or best with `restore_best=True`)
    preprocessing.json     the normalisation the model was trained with (`data.Preprocessing`)
    metrics.json           test/validation metrics, seconds per epoch, replicas, config, versions
    checkpoints/best.weights.h5, checkpoints/last.weights.h5
    backup/                BackupAndRestore state (deleted when a run completes)
    logs/                  TensorBoard

Resuming: run `train` again with the same config and `model_dir` after a crash (SIGKILL included).
BackupAndRestore restores the weights and optimizer state of the last completed epoch, and the
training stream resumes at that epoch with the same per-epoch shuffle, so without dropout or
augmentation a resumed run ends with the same weights as an uninterrupted one (up to float
reduction order). Work done in the interrupted epoch itself is redone.
"""

import dataclasses
import json
import math
import os
import platform
import sys
import tempfile

import keras
import numpy as np

from glonet_keras import data as data_lib
from glonet_keras import distribute
from glonet_keras.callbacks import EpochTimer
from glonet_keras.models import get_model_class

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass
class TrainConfig:
    """Everything one training run needs. Field names match `training/train.py`'s flags.

    Model:
        model: a name from `glonet_keras.models.MODEL_CLASSES`.
        depth: blocks (MLP/ViT `num_blocks`) or layer depth (CNN `depth`); None = class default.
        width: MLP/CNN `width` or ViT `hidden_dim`; None = class default.
        model_kwargs: further constructor arguments (e.g. {"normalization": "batch"}).
    Data:
        dataset, data_dir, download, manual_dir (imagenet2012's files), image_size,
        augment (names from `data.AUGMENTATIONS`),
        max_examples (use only the first N examples of each split; for quick runs),
        drop_remainder (drop the last partial training batch: with several replicas, Keras
        averages per-replica means, so an unevenly split last batch is weighted slightly
        differently than on one device; dropping it removes that difference).
    Training:
        strategy (`distribute.STRATEGIES`), epochs, batch_size (per replica: the global batch is
        batch_size x replicas), learning_rate (for the global batch), optimizer, schedule,
        warmup_epochs, weight_decay, momentum (sgd), label_smoothing, mixed_precision,
        jit_compile ("auto", True, False), seed.
    Output:
        model_dir (None: a fresh temporary directory), export_dir (None: no SavedModel),
        export_version, tensorboard, restore_best, verbose ("auto", 0, 1, 2).
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
    seed: int = 0
    model_dir: str = None
    export_dir: str = None
    export_version: int = 1
    tensorboard: bool = True
    restore_best: bool = False
    verbose: object = "auto"

    def validate(self):
        """Raises ValueError naming the first bad field."""
        get_model_class(self.model)
        data_lib._check_name(self.dataset)
        if self.strategy not in distribute.STRATEGIES:
            raise ValueError(
                f"Unknown strategy {self.strategy!r}. Available: {list(distribute.STRATEGIES)}."
            )
        for name in ("epochs", "batch_size", "export_version"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("depth", "width", "max_examples"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        _check_int("warmup_epochs", self.warmup_epochs, minimum=0)
        _check_int("seed", self.seed, minimum=0)
        for name in ("learning_rate",):
            if not isinstance(getattr(self, name), (int, float)) or not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0, received {getattr(self, name)!r}.")
        for name in ("weight_decay", "momentum", "label_smoothing"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < 1 + (name == "weight_decay"):
                raise ValueError(f"`{name}` must be in [0, 1), received {value!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {self.optimizer!r}. Available: {list(OPTIMIZERS)}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Unknown schedule {self.schedule!r}. Available: {list(SCHEDULES)}.")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs:
            raise ValueError(
                f"`warmup_epochs` ({self.warmup_epochs}) must be smaller than `epochs` ({self.epochs})."
            )
        if self.jit_compile not in ("auto", True, False):
            raise ValueError(f"`jit_compile` must be 'auto', True or False, received {self.jit_compile!r}.")
        if self.verbose not in ("auto", 0, 1, 2):
            raise ValueError(f"`verbose` must be 'auto', 0, 1 or 2, received {self.verbose!r}.")
        data_lib._check_augment(self.augment, _AnyImages())
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"`model_kwargs` must be a dict, received {self.model_kwargs!r}.")
        return self


class _AnyImages:
    """Stands in for a DatasetInfo when only the augmentation names are checked."""

    name, input_shape, task = "?", (1, 1, 1), "classification"


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, received {value!r}.")


@dataclasses.dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        model: the trained keras.Model (built under the strategy).
        history: per-epoch logs of this call ({"loss": [...], "val_loss": [...], ...}).
        test_metrics: metrics on the test split, e.g. {"loss": ..., "accuracy": ...}.
        validation_metrics: the same on the validation split.
        seconds_per_epoch: wall time of each epoch run by this call (the first includes tracing).
        replicas: `strategy.num_replicas_in_sync`.
        global_batch_size: batch_size x replicas.
        initial_epoch: the epoch this call started at (> 0 after a resume).
        info: the `data.DatasetInfo` (input shape, classes, preprocessing).
        model_dir: where the files went; model_path, metrics_path: two of them.
        export_path: `<export_dir>/<model name>/<version>` or None.
        strategy: the strategy object.
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


def build_model(config, info):
    """The model named by `config` for the data set described by `info` (call inside a scope)."""
    model_class = get_model_class(config.model)
    import inspect

    parameters = inspect.signature(model_class.__init__).parameters
    kwargs = dict(input_shape=tuple(info.input_shape), num_classes=info.num_classes)
    if config.depth is not None:
        kwargs["num_blocks" if "num_blocks" in parameters else "depth"] = config.depth
    if config.width is not None:
        kwargs["width" if "width" in parameters else "hidden_dim"] = config.width
    if config.mixed_precision:
        kwargs["dtype"] = "mixed_float16"
    kwargs.update(config.model_kwargs)
    return model_class(**kwargs)


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
    if label_smoothing:
        raise ValueError("label_smoothing needs one-hot labels: it is applied with MixUp/CutMix only.")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return loss, [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def _resume_epoch(backup_dir):
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as handle:
        return int(json.load(handle).get("epoch", 0))


def versions():
    """Library versions recorded with every run."""
    import glonet_keras

    found = {
        "glonet_keras": glonet_keras.__version__,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    for module in ("tensorflow", "jax"):
        if module in sys.modules:
            found[module] = getattr(sys.modules[module], "__version__", "?")
    return found


def _to_float(logs):
    return {key: float(value) for key, value in (logs or {}).items()}


def train(config):
    """Trains (or resumes) one model as `config` says; returns a `TrainResult`.

    Raises ValueError for a bad config and `data.DatasetUnavailableError` when the data set is not
    on this machine, both before any training starts.
    """
    config.validate()
    # The strategy comes first: MultiWorkerMirroredStrategy and jax.distributed must be set up
    # before any other op runs in the process.
    strategy = distribute.get_strategy(config.strategy)
    # Then the seed: tf.data shuffles combine their seeds with TF's global seed, so seeding later would
    # make the batch order depend on whatever seeded the process before.
    keras.utils.set_random_seed(config.seed)
    model_dir = config.model_dir or tempfile.mkdtemp(prefix="glonet_train_")
    chief = distribute.is_chief()
    # Non-chief multi-worker processes write their copies where they do not clash with the chief.
    write_dir = model_dir if chief else os.path.join(model_dir, f"worker_{_task_index()}")
    os.makedirs(write_dir, exist_ok=True)
    backup_dir = os.path.join(write_dir, "backup")
    checkpoint_dir = os.path.join(write_dir, "checkpoints")

    replicas = int(strategy.num_replicas_in_sync)
    global_batch = config.batch_size * replicas

    source_kwargs = dict(data_dir=config.data_dir, download=config.download,
                         manual_dir=config.manual_dir, image_size=config.image_size,
                         seed=config.seed)
    info = data_lib.dataset_info(config.dataset, **source_kwargs)
    one_hot = info.task == "classification" and (
        data_lib.label_mixing(config.augment) or config.label_smoothing > 0
    )
    initial_epoch = _resume_epoch(backup_dir)
    num_train = data_lib.count_examples(config.dataset, "train", **source_kwargs)
    if config.max_examples is not None and num_train is not None:
        num_train = min(num_train, config.max_examples)
    dataset_kwargs = dict(source_kwargs, max_examples=config.max_examples, one_hot=one_hot)
    if num_train is not None and initial_epoch < config.epochs:
        # A per-epoch-seeded stream of the remaining epochs: a resumed run sees the same batches.
        steps = data_lib.steps_per_epoch(num_train, global_batch, config.drop_remainder)
        train_data = data_lib.get_dataset(
            config.dataset, "train", global_batch, augment=config.augment,
            drop_remainder=config.drop_remainder,
            start_epoch=initial_epoch, num_epochs=config.epochs,
            **dataset_kwargs)
    else:
        steps = None
        train_data = data_lib.get_dataset(config.dataset, "train", global_batch,
                                          augment=config.augment,
                                          drop_remainder=config.drop_remainder, **dataset_kwargs)
    validation_data = data_lib.get_dataset(config.dataset, "validation", global_batch,
                                           **dataset_kwargs)
    test_data = data_lib.get_dataset(config.dataset, "test", global_batch, **dataset_kwargs)

    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build_model(config, info)
        loss, metrics = _loss_and_metrics(info, one_hot, config.label_smoothing)
        model.compile(
            optimizer=make_optimizer(config, steps or _estimate_steps(info, global_batch)),
            loss=loss,
            metrics=metrics,
            jit_compile=config.jit_compile,
        )
    distribute.apply_multi_worker_workarounds(model, strategy)

    timer = EpochTimer()
    callbacks = [
        keras.callbacks.BackupAndRestore(backup_dir),
        keras.callbacks.ModelCheckpoint(
            os.path.join(checkpoint_dir, "best.weights.h5"), monitor="val_loss",
            save_best_only=True, save_weights_only=True),
        keras.callbacks.ModelCheckpoint(
            os.path.join(checkpoint_dir, "last.weights.h5"), save_weights_only=True),
        timer,
    ]
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(write_dir, "logs")))
    verbose = config.verbose
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2

    with distribute.synchronized_batch_norm(model, enabled=replicas > 1):
        history = model.fit(
            train_data,
            validation_data=validation_data,
            epochs=config.epochs,
            steps_per_epoch=steps,
            shuffle=False,  # The pipeline shuffles (seeded per epoch).
            callbacks=callbacks,
            verbose=verbose,
        )
        if config.restore_best and os.path.exists(os.path.join(checkpoint_dir, "best.weights.h5")):
            model.load_weights(os.path.join(checkpoint_dir, "best.weights.h5"))
        validation_metrics = _to_float(model.evaluate(validation_data, verbose=0, return_dict=True))
        test_metrics = _to_float(model.evaluate(test_data, verbose=0, return_dict=True))

    model_path = os.path.join(write_dir, "model.keras")
    model.save(model_path)
    data_lib.save_preprocessing(info.preprocessing, os.path.join(write_dir, "preprocessing.json"))
    history_logs = {key: [float(v) for v in values] for key, values in history.history.items()}
    export_path = None
    if config.export_dir and chief:
        from glonet_keras.export import export_saved_model

        export_path = export_saved_model(model, config.export_dir, version=config.export_version,
                                         preprocessing=info.preprocessing, task=info.task,
                                         overwrite=True)
    metrics_path = os.path.join(write_dir, "metrics.json")
    record = {
        "test": test_metrics,
        "validation": validation_metrics,
        "history": history_logs,
        "epochs": config.epochs,
        "initial_epoch": initial_epoch,
        "seconds_per_epoch": timer.seconds,
        "replicas": replicas,
        "global_batch_size": global_batch,
        "strategy": type(strategy).__name__,
        "num_parameters": int(model.count_params()),
        "dataset": info.to_dict(),
        "config": _jsonable(dataclasses.asdict(config)),
        "export_path": export_path,
        "versions": versions(),
    }
    with open(metrics_path, "w") as handle:
        json.dump(record, handle, indent=2)
    return TrainResult(
        model=model, history=history_logs, test_metrics=test_metrics,
        validation_metrics=validation_metrics, seconds_per_epoch=list(timer.seconds),
        replicas=replicas, global_batch_size=global_batch, initial_epoch=initial_epoch, info=info,
        model_dir=write_dir, model_path=model_path, metrics_path=metrics_path,
        export_path=export_path, strategy=strategy,
    )


def _estimate_steps(info, global_batch):
    num_train = info.num_examples.get("train")
    return math.ceil(num_train / global_batch) if num_train else 1000


def _task_index():
    raw = os.environ.get("TF_CONFIG")
    return json.loads(raw).get("task", {}).get("index", 0) if raw else 0


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)
