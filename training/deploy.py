"""Deploys a trained GloNet at the depth you can afford: choose k from data, export it for serving.

A thin absl shell over `glonet_keras.deploy` and `glonet_keras.export`. It loads a model (a zoo
preset, or a train.py run directory), measures every k-prefix on the VALIDATION split of its data
set (accuracy, and the latency of the truncated model on this machine), chooses k, and writes a
TF Serving SavedModel with `serve`, `early_exits`, `exit_<k>` and `anytime` signatures (and,
optionally, the same graphs as ONNX files). Examples:

    # The smallest k within one accuracy point of the full model:
    python training/deploy.py --preset=glonet_mlp_digits --tolerance=0.01 \
        --export_dir=/tmp/serving --report=/tmp/deploy.json --plot=/tmp/tradeoff.png
    # The most accurate k whose batch-1 latency fits 0.5 ms here, from a train.py run, plus ONNX:
    python training/deploy.py --run_dir=/tmp/digits_glonet --latency_budget_ms=0.5 \
        --export_dir=/tmp/serving --onnx_path=/tmp/onnx/digits.onnx

A bad flag value exits with status 2 and a one-line reason, before anything is loaded.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS

# The model.
flags.DEFINE_string("preset", None, "A zoo preset name, or a preset directory.")
flags.DEFINE_string("run_dir", None, "A train.py --model_dir (model.keras, preprocessing.json, "
                                     "metrics.json).")
# The data the depth is chosen on.
flags.DEFINE_string("dataset", None, "Data set; default the one the model was trained on.")
flags.DEFINE_string("data_dir", None, "Data directory of the data set (tfds root, CSV, ...).")
flags.DEFINE_string("split", "validation", "Split to choose on: validation (default) or train. "
                                           "The test split stays for reporting.")
flags.DEFINE_integer("seed", None, "Seed of the data split; default the model's training seed.")
flags.DEFINE_integer("max_examples", None, "Use only the first N examples of the split.")
# The choice.
flags.DEFINE_float("tolerance", None, "Accuracy drop allowed against the full model, in [0, 1] "
                                      "(default 0.01 when no latency budget is given).")
flags.DEFINE_float("latency_budget_ms", None, "Instead of a tolerance: the most accurate k whose "
                                              "measured latency fits this budget.")
flags.DEFINE_integer("latency_batch_size", 1, "Batch size the latency budget refers to.")
flags.DEFINE_integer("repeats", 30, "Timed calls per depth and batch size.")
# The export.
flags.DEFINE_string("export_dir", None, "TF Serving base path: writes <export_dir>/<name>/<version>.")
flags.DEFINE_string("model_name", None, "Folder name under export_dir; default the model's name.")
flags.DEFINE_integer("version", 1, "SavedModel version.")
flags.DEFINE_bool("overwrite", False, "Replace an existing version (atomically).")
flags.DEFINE_list("exits", [], "More exit_<k> signatures besides the chosen k.")
flags.DEFINE_enum("anytime", "auto", ["auto", "true", "false"],
                  "Add the anytime signature (auto: when the model supports it).")
flags.DEFINE_float("anytime_threshold", 0.9, "Default confidence threshold of `anytime`.")
flags.DEFINE_list("anytime_exits", None, "Depths where `anytime` checks confidence (default every "
                                         "block; check every few blocks when blocks are cheap).")
flags.DEFINE_string("onnx_path", None, "Also write the graphs as ONNX: this .onnx file (serve) "
                                       "and <stem>_exit_<k>.onnx, <stem>_anytime.onnx beside it.")
# Reports.
flags.DEFINE_string("report", None, "Write the choice and the depth table as JSON here.")
flags.DEFINE_string("plot", None, "Write the accuracy-latency plot (PNG) here.")

SPLITS = ("validation", "train")


def fail(message):
    """One line on stderr, exit status 2: what a user sees for any bad flag value."""
    print(f"deploy.py: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
    try:
        return FLAGS(argv)
    except flags.Error as error:
        fail(error)


def check_flags():
    """Everything that can be checked without loading anything; raises ValueError."""
    if (FLAGS.preset is None) == (FLAGS.run_dir is None):
        if FLAGS.preset is None:
            raise ValueError("give --preset (a zoo name or directory) or --run_dir (a train.py run)")
        raise ValueError("give --preset or --run_dir, not both")
    if not FLAGS.export_dir:
        raise ValueError("--export_dir is required (the TF Serving base path)")
    if FLAGS.tolerance is not None and FLAGS.latency_budget_ms is not None:
        raise ValueError("give either --tolerance or --latency_budget_ms, not both")
    if FLAGS.tolerance is not None and not 0.0 <= FLAGS.tolerance <= 1.0:
        raise ValueError(f"--tolerance must be in [0, 1], received {FLAGS.tolerance}")
    if FLAGS.latency_budget_ms is not None and not FLAGS.latency_budget_ms > 0:
        raise ValueError(f"--latency_budget_ms must be > 0, received {FLAGS.latency_budget_ms}")
    if not 0.0 <= FLAGS.anytime_threshold <= 1.0:
        raise ValueError(f"--anytime_threshold must be in [0, 1], received {FLAGS.anytime_threshold}")
    if FLAGS.split not in SPLITS:
        raise ValueError(f"--split must be one of {list(SPLITS)} (choose on data you do not report "
                         f"on), received {FLAGS.split!r}")
    for name in ("latency_batch_size", "repeats", "version"):
        if FLAGS[name].value < 1:
            raise ValueError(f"--{name} must be >= 1, received {FLAGS[name].value}")
    if FLAGS.max_examples is not None and FLAGS.max_examples < 1:
        raise ValueError(f"--max_examples must be >= 1, received {FLAGS.max_examples}")
    try:
        extra_exits = [int(k) for k in FLAGS.exits]
        anytime_exits = None if FLAGS.anytime_exits is None else [int(k) for k in FLAGS.anytime_exits]
    except ValueError:
        raise ValueError(f"--exits and --anytime_exits must be integers, received {FLAGS.exits} "
                         f"and {FLAGS.anytime_exits}") from None
    if FLAGS.onnx_path and not FLAGS.onnx_path.endswith(".onnx"):
        raise ValueError(f"--onnx_path must end in .onnx, received {FLAGS.onnx_path!r}")
    return extra_exits, anytime_exits


def load_model():
    """The model (with `preprocessing` and `preset_metadata`) and its data defaults."""
    from glonet_keras import presets

    if FLAGS.preset is not None:
        model = presets.from_preset(FLAGS.preset)
        metadata = model.preset_metadata
        if model.preprocessing is None or "dataset" not in metadata:
            raise ValueError(f"preset {FLAGS.preset!r} records no data set and preprocessing: "
                             "pass --dataset, or deploy a preset made by make_zoo.py")
        config = metadata.get("training", {}).get("config", {})
        return model, metadata["dataset"]["name"], config
    return _load_run(FLAGS.run_dir)


def _load_run(run_dir):
    from glonet_keras import presets
    from glonet_keras.preprocessing import load_preprocessing

    paths = {name: os.path.join(run_dir, name)
             for name in ("model.keras", "preprocessing.json", "metrics.json")}
    missing = [name for name, path in paths.items() if not os.path.isfile(path)]
    if missing:
        raise ValueError(f"--run_dir {run_dir} lacks {missing}: is it a finished train.py run?")
    model = presets.load_preset_directory(paths["model.keras"])
    model.preprocessing = load_preprocessing(paths["preprocessing.json"])
    try:
        with open(paths["metrics.json"]) as handle:
            record = json.load(handle)
        dataset, config = record["dataset"], record["config"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{paths['metrics.json']} is not a train.py metrics record: {error}") from None
    model.preset_metadata = {"task": dataset.get("task"), "class_names": dataset.get("class_names")}
    return model, config["dataset"], config


def validation_data(model, dataset, config):
    """`(x, y)` arrays (in-memory data sets) or a tf.data pipeline of the split, preprocessed."""
    from glonet_keras import data as data_lib

    dataset = FLAGS.dataset or dataset
    seed = FLAGS.seed if FLAGS.seed is not None else config.get("seed", 0)
    data_dir = FLAGS.data_dir or config.get("data_dir")
    if data_lib.in_memory(dataset):
        x, y = data_lib.load_split(dataset, FLAGS.split, seed=seed, data_dir=data_dir,
                                   max_examples=FLAGS.max_examples)
        return (model.preprocessing(x), y), dataset
    pipeline = data_lib.get_dataset(dataset, FLAGS.split, 256, seed=seed, data_dir=data_dir,
                                    image_size=config.get("image_size"),
                                    max_examples=FLAGS.max_examples)
    return pipeline, dataset


def choose(model, data):
    """(chosen k, the DepthChoice or None, the depth table)."""
    from glonet_keras import deploy
    from glonet_keras.skeleton import skeleton

    batch_sizes = sorted({FLAGS.latency_batch_size, *deploy.DEFAULT_BATCH_SIZES})
    num_blocks = skeleton(model).num_blocks
    table = deploy.depth_table(model, data, batch_sizes=batch_sizes,
                               depths=range(1, num_blocks + 1), repeats=FLAGS.repeats)
    if FLAGS.latency_budget_ms is not None:
        row = deploy.depth_within_budget(table, FLAGS.latency_budget_ms, FLAGS.latency_batch_size)
        return row.depth, None, table
    tolerance = 0.01 if FLAGS.tolerance is None else FLAGS.tolerance
    choice = deploy.choose_depth(model, data, tolerance=tolerance)
    return choice.depth, choice, table


def print_table(table, depth):
    for row in table:
        latency = "  ".join(f"batch {b}: {ms:.3f} ms" for b, ms in sorted(row.latency_ms.items()))
        mark = "  <- chosen" if row.depth == depth else ""
        print(f"k={row.depth:<3d} accuracy {100 * row.accuracy:6.2f} %  {latency}  "
              f"parameters {row.parameters:,}  MFLOPs {row.flops / 1e6:.3f}{mark}")


def main(argv):
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO lines would bury the table.
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}")
    try:
        extra_exits, anytime_exits = check_flags()
    except ValueError as error:
        fail(error)
    from glonet_keras import deploy
    from glonet_keras.export import export_saved_model
    from glonet_keras.skeleton import skeleton

    try:
        model, dataset, config = load_model()
        data, dataset = validation_data(model, dataset, config)
        depth, choice, table = choose(model, data)
        anytime = FLAGS.anytime == "true" or (
            FLAGS.anytime == "auto" and not skeleton(model).stacked)
        exits = sorted({depth, *extra_exits})
        export_kwargs = dict(exits=exits, anytime=anytime, anytime_threshold=FLAGS.anytime_threshold,
                             anytime_exits=anytime_exits)
        # A preset is served under its zoo name; a run under its model's name.
        model_name = FLAGS.model_name or model.preset_metadata.get("name") or model.name
        path = export_saved_model(model, FLAGS.export_dir, version=FLAGS.version,
                                  model_name=model_name, overwrite=FLAGS.overwrite,
                                  **export_kwargs)
        onnx_files = None
        if FLAGS.onnx_path:
            from glonet_keras.onnx_export import export_onnx

            onnx_files = export_onnx(model, FLAGS.onnx_path, overwrite=FLAGS.overwrite,
                                     **export_kwargs)
        if FLAGS.plot:
            deploy.plot_accuracy_latency(table, FLAGS.plot, batch_size=FLAGS.latency_batch_size,
                                         title=f"{model_name}: accuracy against latency")
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        fail(error)
    print_table(table, depth)
    row = next(r for r in table if r.depth == depth)
    rule = (f"latency budget {FLAGS.latency_budget_ms} ms at batch {FLAGS.latency_batch_size}"
            if choice is None else f"tolerance {100 * choice.tolerance:g} %")
    print(f"chosen: k={depth} of {len(table)} blocks ({rule}): accuracy {100 * row.accuracy:.2f} % "
          f"on the {FLAGS.split} split, full model {100 * table[-1].accuracy:.2f} %")
    print(f"SavedModel: {path} (signatures exit_{depth}{', anytime' if anytime else ''})")
    if onnx_files:
        print(f"ONNX: {', '.join(onnx_files.values())}")
    if FLAGS.report:
        record = {
            "model": model.name, "dataset": dataset, "split": FLAGS.split, "depth": depth,
            "choice": None if choice is None else choice.to_dict(),
            "latency_budget_ms": FLAGS.latency_budget_ms,
            "depth_table": [r.to_dict() for r in table],
            "export_path": path, "onnx": onnx_files,
        }
        with open(FLAGS.report, "w") as handle:
            json.dump(record, handle, indent=2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
