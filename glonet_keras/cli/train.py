"""`glonet-train`: trains a GloNet (or a baseline) on a named data set, resumably, and exports it.

Installed as the console script `glonet-train`; `python training/train.py` in a source checkout
runs this same program with the same flags. A thin absl shell over `glonet_keras.training.trainer.train`:
it turns flags into a `TrainConfig` and calls it; the trainer checks everything (flags, data, model
arguments, the run directory) after the distribution strategy exists and before any training.
Examples:

    python training/train.py --model=glonet_mlp --depth=10 --width=64 --dataset=digits \
        --epochs=20 --model_dir=/tmp/digits_glonet
    # Two replicas on a CPU-only machine (MirroredStrategy over 2 logical CPUs):
    python training/train.py --logical_cpus=2 --strategy=mirrored ... --model_dir=/tmp/run
    # CIFAR-10 from a prepared tfds directory, with augmentation, exported for TF Serving:
    python training/train.py --model=glonet_cnn --depth=20 --dataset=cifar10 \
        --data_dir=~/tensorflow_datasets --augment=flip,crop --schedule=cosine \
        --model_dir=/tmp/c10 --export_dir=/tmp/serving --export_name=cifar10_glonet
    # Fine-tune a pretrained preset (or a finished run directory) on grayscale images in Keras'
    # folder layout (images/<class>/<file>), with resume, Ctrl-C and export as above:
    glonet-train --preset=glonet_mlp_fashion_mnist --dataset=image_folder --data_dir=images \
        --epochs=5 --learning_rate=1e-4 --model_dir=/tmp/ft --export_dir=/tmp/serving

Stop it (Ctrl-C, or even SIGKILL) and start the same command again: it resumes from the last
completed epoch. The same --model_dir with other flags, fewer --epochs than already trained, or a
finished run is refused with the reason; --overwrite starts fresh.

Exit status: 0 done; 1 training failed (non-finite loss, full disk, failed final evaluation: one
line on stderr saying what is kept and what to do); 2 a bad flag, data set, model argument or run
directory (one line on stderr, nothing trained); 130 interrupted (one line with the command that
resumes).
"""

import os
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from glonet_keras.training import callbacks, distribute, rundir, trainer  # noqa: E402
from glonet_keras.cli import define_once, flags_parser  # noqa: E402
from glonet_keras import data as data_lib  # noqa: E402
from glonet_keras.models import MODEL_CLASSES  # noqa: E402

FLAGS = flags.FLAGS


@define_once
def define_flags():
    """Defines this program's flags in absl's global FLAGS (once; `parse_flags` calls it)."""
    # Model.
    flags.DEFINE_enum("model", "glonet_mlp", sorted(MODEL_CLASSES), "Model name.")
    flags.DEFINE_string("preset", None, "Fine-tune this pretrained model instead of building --model: "
                        "a preset name (glonet_keras.list_models(pretrained=True)), a preset directory "
                        "or URL, a .keras file, or a finished run's --model_dir. Its input shape and "
                        "normalisation are kept; another number of classes gets a new head.")
    flags.DEFINE_integer("depth", None, "Blocks (MLP/ViT num_blocks) or CNN depth (6n+2 for 'cifar').")
    flags.DEFINE_integer("width", None, "MLP/CNN width or ViT hidden_dim.")
    flags.DEFINE_string("activation", None, "Block activation (a keras.activations name).")
    flags.DEFINE_enum("normalization", None, ["none", "batch", "layer"], "Normalisation in blocks.")
    flags.DEFINE_enum("initializer", None, ["he", "torch"], "Kernel initialisation.")
    flags.DEFINE_enum("aggregation", None, ["sum", "mean"], "GloNet aggregation (GloNets only).")
    flags.DEFINE_bool("include_stem", None, "Also tap the stem's output (GloNets only).")
    flags.DEFINE_float("dropout", None, "Dropout before the head.")
    flags.DEFINE_enum("layout", None, ["cifar", "imagenet", "isotropic"], "CNN layout (CNNs only).")
    flags.DEFINE_list("blocks_per_stage", None, "CNN blocks per stage, e.g. 2,2,2 (instead of --depth).")
    flags.DEFINE_integer("patch_size", None, "ViT patch size, or the isotropic CNN's patch stem.")
    flags.DEFINE_bool("scan", None, "GloNet MLP: run the blocks as one scanned stack (flat compile time).")
    flags.DEFINE_integer("num_heads", None, "ViT attention heads.")
    flags.DEFINE_integer("mlp_dim", None, "ViT MLP width.")
    flags.DEFINE_enum("tokenizer", None, ["patch", "conv"], "ViT tokenizer: one strided patch "
                      "convolution, or log2(patch_size) stages of 3x3 convolution and max-pool.")
    flags.DEFINE_enum("head_initializer", None, ["zeros"], "GloNet head initialisation (GloNets only; "
                      "default: as --initializer): zeros starts from uniform logits.")
    # Data.
    flags.DEFINE_string("dataset", "digits", f"Data set: one of {list(data_lib.DATASETS)}.")
    flags.DEFINE_string("data_dir", None, "tfds data root, image folder root or SGEMM CSV.")
    flags.DEFINE_bool("download", False, "Let tfds download the data set (needs internet).")
    flags.DEFINE_string("manual_dir", None, "Manually downloaded files (imagenet2012), with --download.")
    flags.DEFINE_list("image_size", None, "Resize images to HEIGHT,WIDTH (default: the data set's "
                      "size; image_folder: the size its images share; with --preset: the preset's).")
    flags.DEFINE_enum("channels", None, ["1", "3"], "image_folder: decode images as grayscale (1) or "
                      "RGB (3; default, or the preset's).")
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
    flags.DEFINE_string("steps_per_execution", "auto",
                        "Training steps per compiled call: 'auto' or an integer (rounded down to a "
                        "divisor of the steps per epoch).")
    flags.DEFINE_integer("seed", 0, "Seed of the weights, the split and the shuffle.")
    flags.DEFINE_float("exit_loss_weight", 0.0, "GloNets: train the prefix exits too: the loss is "
                       "loss(full model) + this weight x the mean loss of the exits after "
                       "--exit_blocks blocks, through the same head (0: off).")
    flags.DEFINE_list("exit_blocks", None, "With --exit_loss_weight: the prefixes k (1 to L-1 "
                      "blocks) whose exits are in the loss, e.g. 2,4,6 (default: all of them).")
    flags.DEFINE_bool("restore_best", False, "Keep the best-validation-loss weights, not the last.")
    flags.DEFINE_bool("tensorboard", True, "Write TensorBoard logs under model_dir/logs (needs TF).")
    flags.DEFINE_enum("verbose", "auto", ["auto", "0", "1", "2"], "Keras progress output.")
    # Output.
    flags.DEFINE_string("model_dir", None, "Directory for the run: state, checkpoints, logs, metrics, "
                        "the model.")
    flags.DEFINE_bool("overwrite", False, "Delete the run already in --model_dir (finished or with "
                      "other flags) and start fresh.")
    flags.DEFINE_string("export_dir", None, "Export a TF Serving SavedModel under this base path.")
    flags.DEFINE_string("export_name", None, "Folder of the export under --export_dir (default: the "
                        "model's name).")
    flags.DEFINE_integer("export_version", 1, "SavedModel version number.")
    flags.mark_flag_as_required("model_dir")

# Flags passed to the model class as they are, when given.
MODEL_FLAGS = ("activation", "initializer", "aggregation", "include_stem", "dropout", "layout",
               "patch_size", "num_heads", "mlp_dim", "scan", "tokenizer", "head_initializer")
# What is refused before any training, with one line on stderr and exit status 2. (Any other
# ValueError comes from inside training: a bug to see in full, with its traceback.)
SETUP_ERRORS = (trainer.ConfigError, rundir.RunDirectoryError, data_lib.DatasetUnavailableError)
# What ends a run early with one line on stderr and exit status 1 (nothing is lost: see rundir).
TRAINING_FAILURES = (callbacks.NonFiniteError, rundir.DiskFullError, trainer.EvaluationError,
                     trainer.ExportError)


class UsageError(trainer.ConfigError):
    """A flag value that cannot become a TrainConfig field."""


def config_from_flags(argv):
    """Turns the flags into a validated `TrainConfig` (ValueError names the bad flag)."""
    model_kwargs = {name: FLAGS[name].value for name in MODEL_FLAGS if FLAGS[name].value is not None}
    if FLAGS.normalization is not None:
        model_kwargs["normalization"] = None if FLAGS.normalization == "none" else FLAGS.normalization
    if FLAGS.blocks_per_stage:
        model_kwargs["blocks_per_stage"] = _integers("blocks_per_stage", FLAGS.blocks_per_stage)
    image_size = None
    if FLAGS.image_size:
        image_size = _integers("image_size", FLAGS.image_size)
        if len(image_size) != 2:
            raise UsageError(f"--image_size must be HEIGHT,WIDTH, received {FLAGS.image_size}.")
    steps_per_execution = FLAGS.steps_per_execution
    if steps_per_execution != "auto":
        (steps_per_execution,) = _integers("steps_per_execution", [steps_per_execution])
    if FLAGS.preset is not None and FLAGS["model"].present:
        raise UsageError("--model and --preset exclude each other: the preset is the model.")
    config = trainer.TrainConfig(
        preset=FLAGS.preset, channels=None if FLAGS.channels is None else int(FLAGS.channels),
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
        steps_per_execution=steps_per_execution,
        seed=FLAGS.seed, exit_loss_weight=FLAGS.exit_loss_weight,
        exit_blocks=_integers("exit_blocks", FLAGS.exit_blocks) if FLAGS.exit_blocks else None,
        model_dir=FLAGS.model_dir, overwrite=FLAGS.overwrite,
        export_dir=FLAGS.export_dir, export_name=FLAGS.export_name,
        export_version=FLAGS.export_version, tensorboard=FLAGS.tensorboard,
        restore_best=FLAGS.restore_best,
        verbose="auto" if FLAGS.verbose == "auto" else int(FLAGS.verbose),
        command=_command(argv),
    )
    return config.validate()


def _integers(name, values):
    try:
        numbers = tuple(int(value) for value in values)
    except ValueError:
        raise UsageError(f"--{name} takes integers, received {','.join(values)}.") from None
    if min(numbers, default=1) < 1:
        raise UsageError(f"--{name} takes positive integers, received {','.join(values)}.")
    return numbers


def _program():
    """How the user called this program: `train.py` (the checkout's shim) or `glonet-train`."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name.startswith("glonet-") else "train.py"


def _is_console_script():
    return _program().startswith("glonet-")


def _command(argv):
    """This very command line (what resumes the run)."""
    if _is_console_script():
        return [_program(), *argv[1:]]
    return ["python", *argv]


def _resume_command():
    if _is_console_script():
        return shlex.join(sys.argv)
    return shlex.join([sys.executable, *sys.argv])


def fail(message, status=2):
    """One line on stderr and an exit status: what a user sees for anything that ends a run early."""
    print(f"{_program()}: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(status)


parse_flags = flags_parser(define_flags, fail)


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}")
    if FLAGS.logical_cpus is not None:
        try:
            distribute.configure_logical_cpus(FLAGS.logical_cpus)
        except (ValueError, RuntimeError) as error:
            fail(f"--logical_cpus: {error}")
    try:
        config = config_from_flags(sys.argv)
        result = trainer.train(config)
    except SETUP_ERRORS as error:
        fail(error)
    except TRAINING_FAILURES as error:
        fail(error, status=1)
    except KeyboardInterrupt:
        sys.stdout.flush()
        print(f"{_program()}: interrupted; {_saved_epochs(FLAGS.model_dir)} Resume with: "
              f"{_resume_command()}", file=sys.stderr, flush=True)
        sys.exit(130)
    summary = ", ".join(f"{key} {value:.4f}" for key, value in result.test_metrics.items())
    print(f"test: {summary}; replicas {result.replicas}; metrics in {result.metrics_path}")
    if result.export_path:
        print(f"exported to {result.export_path}")


def _saved_epochs(model_dir):
    try:
        state = rundir.RunDirectory(model_dir).latest_state()
    except (OSError, ValueError):
        state = None
    if state is None:
        return "no epoch was completed yet."
    return f"the state after epoch {state.epoch} is kept in {model_dir}."


def run():
    """The console script `glonet-train`."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
