"""Trains a GloNet (or a baseline) on a named data set, resumably, and optionally exports it.

A thin absl shell over `glonet_keras.trainer.train`. Examples:

    python training/train.py --model=glonet_mlp --depth=10 --width=64 --dataset=digits \
        --epochs=20 --model_dir=/tmp/digits_glonet
    # Two replicas on a CPU-only machine (MirroredStrategy over 2 logical CPUs):
    python training/train.py --logical_cpus=2 --strategy=mirrored ... --model_dir=/tmp/run
    # CIFAR-10 from a prepared tfds directory, with augmentation, exported for TF Serving:
    python training/train.py --model=glonet_cnn --depth=20 --dataset=cifar10 \
        --data_dir=~/tensorflow_datasets --augment=flip,crop --schedule=cosine \
        --model_dir=/tmp/c10 --export_dir=/tmp/serving

Kill it (even with SIGKILL) and start it again with the same flags: it resumes from the last
completed epoch (BackupAndRestore in <model_dir>/backup). Writes <model_dir>/metrics.json,
model.keras, preprocessing.json, checkpoints/{best,last}.weights.h5 and TensorBoard logs/.
A bad flag value exits with status 2 and a one-line reason.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from glonet_keras import data as data_lib  # noqa: E402
from glonet_keras import distribute, trainer  # noqa: E402
from glonet_keras.models import MODEL_CLASSES  # noqa: E402

FLAGS = flags.FLAGS

# Model.
flags.DEFINE_enum("model", "glonet_mlp", sorted(MODEL_CLASSES), "Model name.")
flags.DEFINE_integer("depth", None, "Blocks (MLP/ViT num_blocks) or CNN depth (6n+2 for 'cifar').")
flags.DEFINE_integer("width", None, "MLP/CNN width or ViT hidden_dim.")
flags.DEFINE_string("activation", None, "Block activation (a keras.activations name).")
flags.DEFINE_enum("normalization", None, ["none", "batch", "layer"], "Normalisation in blocks.")
flags.DEFINE_enum("initializer", None, ["he", "torch"], "Kernel initialisation.")
flags.DEFINE_enum("aggregation", None, ["sum", "mean"], "GloNet aggregation (GloNets only).")
flags.DEFINE_float("dropout", None, "Dropout before the head.")
# Data.
flags.DEFINE_string("dataset", "digits", f"Data set: one of {list(data_lib.DATASETS)}.")
flags.DEFINE_string("data_dir", None, "tfds data root, image folder root or SGEMM CSV.")
flags.DEFINE_bool("download", False, "Let tfds download the data set (needs internet).")
flags.DEFINE_string("manual_dir", None, "Manually downloaded files (imagenet2012), with --download.")
flags.DEFINE_list("image_size", None, "Resize images to HEIGHT,WIDTH.")
flags.DEFINE_list("augment", [], f"Training augmentations, from {list(data_lib.AUGMENTATIONS)}.")
flags.DEFINE_integer("max_examples", None, "Use only the first N examples of each split.")
flags.DEFINE_bool("drop_remainder", False,
                  "Drop the last partial training batch (makes 1- and N-replica runs identical).")
# Training.
flags.DEFINE_enum("strategy", "auto", list(distribute.STRATEGIES), "Distribution strategy.")
flags.DEFINE_integer("logical_cpus", None,
                     "Split the CPU into N logical devices first (mirrored on a CPU-only machine).")
flags.DEFINE_integer("epochs", 10, "Epochs.")
flags.DEFINE_integer("batch_size", 64, "Batch size PER REPLICA (global = this x replicas).")
flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.")
flags.DEFINE_enum("optimizer", "adam", list(trainer.OPTIMIZERS), "Optimizer.")
flags.DEFINE_enum("schedule", "constant", list(trainer.SCHEDULES), "Learning-rate schedule.")
flags.DEFINE_integer("warmup_epochs", 0, "Linear warm-up epochs (cosine schedule).")
flags.DEFINE_float("weight_decay", 0.0, "Decoupled weight decay.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing (one-hot losses).")
flags.DEFINE_bool("mixed_precision", False, "Train in mixed_float16.")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"], "XLA compilation.")
flags.DEFINE_integer("seed", 0, "Seed of the weights, the split and the shuffle.")
flags.DEFINE_bool("restore_best", False, "Keep the best-validation-loss weights, not the last.")
flags.DEFINE_bool("tensorboard", True, "Write TensorBoard logs under model_dir/logs.")
flags.DEFINE_enum("verbose", "auto", ["auto", "0", "1", "2"], "Keras progress output.")
# Output.
flags.DEFINE_string("model_dir", None, "Directory for checkpoints, logs, metrics and the model.")
flags.DEFINE_string("export_dir", None, "Export a TF Serving SavedModel under this base path.")
flags.DEFINE_integer("export_version", 1, "SavedModel version number.")
flags.mark_flag_as_required("model_dir")


class UsageError(ValueError):
    pass


def config_from_flags():
    """Turns the flags into a validated `TrainConfig` (ValueError names the bad flag)."""
    model_kwargs = {}
    for name in ("activation", "initializer", "aggregation", "dropout"):
        if FLAGS[name].value is not None:
            model_kwargs[name] = FLAGS[name].value
    if FLAGS.normalization is not None:
        model_kwargs["normalization"] = None if FLAGS.normalization == "none" else FLAGS.normalization
    image_size = None
    if FLAGS.image_size:
        try:
            image_size = tuple(int(size) for size in FLAGS.image_size)
            assert len(image_size) == 2 and min(image_size) > 0
        except (ValueError, AssertionError):
            raise UsageError(f"--image_size must be HEIGHT,WIDTH, received {FLAGS.image_size}.")
    config = trainer.TrainConfig(
        model=FLAGS.model, depth=FLAGS.depth, width=FLAGS.width, model_kwargs=model_kwargs,
        dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, download=FLAGS.download,
        manual_dir=FLAGS.manual_dir,
        image_size=image_size, augment=tuple(FLAGS.augment), max_examples=FLAGS.max_examples,
        drop_remainder=FLAGS.drop_remainder,
        strategy=FLAGS.strategy, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate, optimizer=FLAGS.optimizer, schedule=FLAGS.schedule,
        warmup_epochs=FLAGS.warmup_epochs, weight_decay=FLAGS.weight_decay,
        momentum=FLAGS.momentum, label_smoothing=FLAGS.label_smoothing,
        mixed_precision=FLAGS.mixed_precision,
        jit_compile={"auto": "auto", "true": True, "false": False}[FLAGS.jit_compile],
        seed=FLAGS.seed, model_dir=FLAGS.model_dir, export_dir=FLAGS.export_dir,
        export_version=FLAGS.export_version, tensorboard=FLAGS.tensorboard,
        restore_best=FLAGS.restore_best,
        verbose="auto" if FLAGS.verbose == "auto" else int(FLAGS.verbose),
    )
    return config.validate()


def fail(message):
    """One line on stderr, exit status 2: what a user sees for any bad flag value."""
    print(f"train.py: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
    try:
        return FLAGS(argv)
    except flags.Error as error:
        fail(error)


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}")
    if FLAGS.logical_cpus is not None:
        try:
            distribute.configure_logical_cpus(FLAGS.logical_cpus)
        except (ValueError, RuntimeError) as error:
            fail(f"--logical_cpus: {error}")
    try:
        config = config_from_flags()
        # Fail on the data set (missing files, unknown augmentations) before any model is built.
        info = data_lib.dataset_info(config.dataset, data_dir=config.data_dir,
                                     download=config.download, manual_dir=config.manual_dir,
                                     image_size=config.image_size, seed=config.seed)
        data_lib._check_augment(config.augment, info)
        trainer.build_model(config, info)  # Model arguments are checked by the builder.
    except (ValueError, FileNotFoundError, ImportError) as error:
        fail(error)
    result = trainer.train(config)
    summary = ", ".join(f"{key} {value:.4f}" for key, value in result.test_metrics.items())
    print(f"test: {summary}; replicas {result.replicas}; metrics in {result.metrics_path}")
    if result.export_path:
        print(f"exported to {result.export_path}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
