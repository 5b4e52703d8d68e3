"""`glonet-deploy`: deploys a trained GloNet at the depth you can afford, and exports it for serving.

Installed as the console script `glonet-deploy`; `python training/deploy.py` in a source checkout
runs this same program with the same flags. A thin absl shell over `glonet_keras.deploy` and `glonet_keras.deploy.export`. It loads a model (a zoo
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

Without --export_dir (and --onnx_path) it chooses and reports only. Every output path (--report,
--plot, the SavedModel version, the ONNX files) is checked before anything is measured; the ONNX
graphs are converted and the SavedModel traced before anything is written, so a model that cannot
be exported leaves no half of its outputs behind. A bad flag, an existing output without
--overwrite, or a preset or run directory that cannot be read exits with status 2 and a one-line
reason; a failure of the machine (a download, a full disk) with status 1, also in one line.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from glonet_keras import data as data_lib  # noqa: E402
from glonet_keras import deploy, presets  # noqa: E402
from glonet_keras.cli import define_once, flags_parser  # noqa: E402
from glonet_keras.data.preprocessing import Preprocessing  # noqa: E402
from glonet_keras.deploy import export, onnx_export  # noqa: E402
from glonet_keras.deploy.export import prepare_saved_model  # noqa: E402
from glonet_keras.deploy.onnx_export import prepare_onnx  # noqa: E402
from glonet_keras.skeleton import skeleton  # noqa: E402

FLAGS = flags.FLAGS


@define_once
def define_flags():
    """Defines this program's flags in absl's global FLAGS (once; `parse_flags` calls it)."""
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
    flags.DEFINE_string("export_dir", None, "TF Serving base path: writes <export_dir>/<name>/<version>. "
                                            "Without it (and --onnx_path), choose and report only.")
    flags.DEFINE_string("model_name", None, "Folder name under export_dir; default the preset's name "
                                            "(else the model's).")
    flags.DEFINE_integer("version", 1, "SavedModel version.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing SavedModel version and ONNX files "
                                          "(atomically).")
    flags.DEFINE_list("exits", [], "More exit_<k> signatures besides the chosen k.")
    flags.DEFINE_enum("anytime", "auto", ["auto", "true", "false"],
                      "Add the anytime signature (auto: when the model supports it).")
    flags.DEFINE_float("anytime_threshold", None, "Default confidence threshold of `anytime`, in "
                       "[0, 1]; default the preset's calibrated threshold (its metadata's "
                       "deployment.calibrated_anytime, chosen on its validation split), else 0.9.")
    flags.DEFINE_list("anytime_exits", None, "Depths where `anytime` checks confidence (default every "
                                             "block; check every few blocks when blocks are cheap).")
    flags.DEFINE_string("onnx_path", None, "Also write the graphs as ONNX: this .onnx file (serve) "
                                           "and <stem>_exit_<k>.onnx, <stem>_anytime.onnx beside it.")
    # Reports.
    flags.DEFINE_string("report", None, "Write the choice and the depth table as JSON here.")
    flags.DEFINE_string("plot", None, "Write the accuracy-latency plot (PNG) here.")

SPLITS = ("validation", "train")
MAX_RECORD_BYTES = 8 * 2**20  # metrics.json and preprocessing.json of a run directory.
# Timing is (depths x batch sizes x repeats) calls: bound what one flag can ask for.
MAX_REPEATS = 10_000
MAX_LATENCY_BATCH = 2**16


def fail(message, status=2):
    """One line on stderr, then exit: status 2 for what the user can fix in the command (a flag,
    an existing output, an unreadable preset), 1 for a failure of the machine (network, disk)."""
    print(f"{_program()}: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(status)


def _program():
    """How the user called this program: `glonet-deploy`, or `deploy.py` (the checkout's shim)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name.startswith("glonet-") else "deploy.py"


parse_flags = flags_parser(define_flags, fail)


def check_flags():
    """Everything that can be checked without loading anything; raises ValueError."""
    if (FLAGS.preset is None) == (FLAGS.run_dir is None):
        if FLAGS.preset is None:
            raise ValueError("give --preset (a zoo name or directory) or --run_dir (a train.py run)")
        raise ValueError("give --preset or --run_dir, not both")
    if FLAGS.export_dir == "":
        raise ValueError("--export_dir is empty: give the TF Serving base path, or leave the flag "
                         "out to choose and report only")
    if FLAGS.tolerance is not None and FLAGS.latency_budget_ms is not None:
        raise ValueError("give either --tolerance or --latency_budget_ms, not both")
    if FLAGS.tolerance is not None and not 0.0 <= FLAGS.tolerance <= 1.0:
        raise ValueError(f"--tolerance must be in [0, 1], received {FLAGS.tolerance}")
    if FLAGS.latency_budget_ms is not None and not FLAGS.latency_budget_ms > 0:
        raise ValueError(f"--latency_budget_ms must be > 0, received {FLAGS.latency_budget_ms}")
    if FLAGS.anytime_threshold is not None and not 0.0 <= FLAGS.anytime_threshold <= 1.0:
        raise ValueError(f"--anytime_threshold must be in [0, 1], received {FLAGS.anytime_threshold}")
    if FLAGS.split not in SPLITS:
        raise ValueError(f"--split must be one of {list(SPLITS)} (choose on data you do not report "
                         f"on), received {FLAGS.split!r}")
    for name, most in (("latency_batch_size", MAX_LATENCY_BATCH), ("repeats", MAX_REPEATS),
                       ("version", 2**63 - 1)):
        if not 1 <= FLAGS[name].value <= most:
            raise ValueError(f"--{name} must be in [1, {most}], received {FLAGS[name].value}")
    if FLAGS.max_examples is not None and FLAGS.max_examples < 1:
        raise ValueError(f"--max_examples must be >= 1, received {FLAGS.max_examples}")
    try:
        extra_exits = [int(k) for k in FLAGS.exits]
        anytime_exits = None if FLAGS.anytime_exits is None else [int(k) for k in FLAGS.anytime_exits]
    except ValueError:
        raise ValueError(f"--exits and --anytime_exits must be integers, received {FLAGS.exits} "
                         f"and {FLAGS.anytime_exits}") from None
    if FLAGS.onnx_path is not None and not FLAGS.onnx_path.endswith(".onnx"):
        raise ValueError(f"--onnx_path must end in .onnx, received {FLAGS.onnx_path!r}")
    outputs = {flag: FLAGS[flag].value for flag in ("report", "plot", "onnx_path")
               if FLAGS[flag].value is not None}
    for flag, path in outputs.items():
        check_output_file(path, f"--{flag}")
    if FLAGS.export_dir is not None:
        check_output_folder(FLAGS.export_dir, "--export_dir")
    same = _first_duplicate(outputs)
    if same:
        raise ValueError(f"{same[0]} and {same[1]} name the same file {outputs[same[0][2:]]!r}")
    return extra_exits, anytime_exits


def _first_duplicate(outputs):
    seen = {}
    for flag, path in outputs.items():
        real = os.path.realpath(path)
        if real in seen:
            return f"--{seen[real]}", f"--{flag}"
        seen[real] = flag
    return None


def _nearest_existing(path):
    """The nearest existing folder `path` would be created in (itself, if it exists)."""
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def check_output_folder(path, flag):
    """A folder an output is written into (created if missing): refused now, before any work, if
    it is a file, or if the folder it would be created in is not a writable folder."""
    if not path:
        raise ValueError(f"{flag} is empty")
    existing = _nearest_existing(path)
    if not os.path.isdir(existing):
        raise ValueError(f"{flag} {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot write into {existing}")


def check_output_file(path, flag):
    """A file an output is written to: not a folder, a link or a special file (a FIFO would hang
    the write); its folder (created if missing) must be writable. Checked before any work."""
    if not path or path.endswith(os.sep):
        raise ValueError(f"{flag} must name a file, received {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a folder: give a file path inside it")
    if os.path.islink(path):
        raise ValueError(f"{flag} {path} is a symbolic link: refusing to write through it")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise ValueError(f"{flag} {path} exists and is not a regular file")
    check_output_folder(os.path.dirname(os.path.abspath(path)), flag)


def load_model():
    """The model (with `preprocessing` and `preset_metadata`) and its data defaults."""

    if FLAGS.preset is not None:
        model = presets.from_preset(FLAGS.preset)
        metadata = model.preset_metadata
        if model.preprocessing is None or "dataset" not in metadata:
            raise ValueError(f"preset {FLAGS.preset!r} records no data set and preprocessing: "
                             "pass --dataset, or deploy a preset made by make_zoo.py")
        config = metadata.get("training", {}).get("config", {})
        return model, metadata["dataset"]["name"], config
    return _load_run(FLAGS.run_dir)


def read_json_record(path, max_bytes=MAX_RECORD_BYTES):
    """A JSON object read from `path`; ValueError naming the file for anything else (too large,
    not UTF-8, not JSON, nested too deeply, not an object)."""
    size = os.path.getsize(path)
    if size > max_bytes:
        raise ValueError(f"{path} has {size} bytes, over the {max_bytes} a record may have")
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except RecursionError:
        raise ValueError(f"{path} is not valid JSON: it is nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} must hold a JSON object, received {type(record).__name__}")
    return record


def run_record(path):
    """`(dataset record, config)` of a train.py metrics.json, their types checked."""
    record = read_json_record(path)
    dataset, config = record.get("dataset"), record.get("config")
    if not isinstance(dataset, dict) or not isinstance(config, dict):
        raise ValueError(f"{path} is not a train.py metrics record: it needs the objects "
                         "'dataset' and 'config'")
    expected = {"dataset": (str,), "seed": (int, type(None)), "data_dir": (str, type(None)),
                "image_size": (list, type(None))}
    for key, types in expected.items():
        value = config.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise ValueError(f"{path} is not a train.py metrics record: config {key!r} is "
                             f"{str(value)[:60]!r}")
    if config["image_size"] is not None and (
            len(config["image_size"]) != 2 or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in config["image_size"])):
        raise ValueError(f"{path}: config 'image_size' must be two sizes > 0, received "
                         f"{str(config['image_size'])[:60]}")
    for key, types in (("task", str), ("class_names", list)):
        if dataset.get(key) is not None and not isinstance(dataset[key], types):
            raise ValueError(f"{path}: dataset {key!r} must be a {types.__name__}, received "
                             f"{str(dataset[key])[:60]!r}")
    return dataset, config


def _load_run(run_dir):

    paths = {name: os.path.join(run_dir, name)
             for name in ("model.keras", "preprocessing.json", "metrics.json")}
    missing = [name for name, path in paths.items() if not os.path.isfile(path)]
    if missing:
        raise ValueError(f"--run_dir {run_dir} lacks {missing}: is it a finished train.py run?")
    # The small records first: a malformed one is refused before the model is loaded.
    dataset, config = run_record(paths["metrics.json"])
    try:
        preprocessing = Preprocessing.from_dict(read_json_record(paths["preprocessing.json"]))
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{paths['preprocessing.json']} is not a valid preprocessing record: "
                         f"{error}") from None
    model = presets.load_preset_directory(paths["model.keras"])
    model.preprocessing = preprocessing
    model.preset_metadata = {"task": dataset.get("task"), "class_names": dataset.get("class_names")}
    return model, config["dataset"], config


def validation_data(model, dataset, config):
    """`(x, y)` arrays (in-memory data sets) or a tf.data pipeline of the split, preprocessed."""

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


def check_dependencies():
    """The optional packages the outputs asked for, imported now rather than after measuring."""
    if FLAGS.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ImportError("--plot needs matplotlib: pip install 'glonet-keras[plots]'") from None
    if FLAGS.onnx_path is not None:

        onnx_export.import_converters()


def check_exits_now(model, extra_exits, anytime_exits):
    """The exit flags checked against the model before any measuring: depths in [1, L], an
    anytime signature the model can have, at most 16 ONNX anytime checks."""

    parts = skeleton(model)
    try:
        export.check_exits(model, extra_exits)
    except ValueError:
        raise ValueError(f"--exits must be depths in [1, {parts.num_blocks}] (the blocks of the "
                         f"model), received {extra_exits}") from None
    anytime = FLAGS.anytime == "true" or (FLAGS.anytime == "auto" and not parts.stacked)
    if FLAGS.anytime == "false" and anytime_exits is not None:
        raise ValueError("--anytime_exits needs the anytime signature, and --anytime=false")
    if anytime:
        try:
            stages = deploy.anytime_stages(model, anytime_exits)
        except ValueError as error:
            if FLAGS.anytime == "auto" and anytime_exits is None:
                return False  # auto: only where the model supports it.
            raise ValueError(str(error).replace("`anytime_exits`", "--anytime_exits")) from None
        if FLAGS.onnx_path is not None and len(stages.exits) > onnx_export.MAX_ONNX_ANYTIME_EXITS:
            step = -(-parts.num_blocks // onnx_export.MAX_ONNX_ANYTIME_EXITS)
            raise ValueError(
                f"the ONNX anytime graph takes at most {onnx_export.MAX_ONNX_ANYTIME_EXITS} checks "
                f"and the model has {len(stages.exits)}: pass --anytime_exits with fewer (e.g. every "
                f"{step} blocks), or --anytime=false")
    return anytime


def anytime_threshold(model):
    """--anytime_threshold, else `deploy.default_threshold(model)`: the preset's calibrated
    threshold, else 0.9. A malformed calibration record is a ValueError, not 0.9."""
    if FLAGS.anytime_threshold is not None:
        return FLAGS.anytime_threshold
    return deploy.default_threshold(model)


def export_targets(model):
    """`(SavedModel version path or None, {signature: ONNX file} or None)`, refused now (before
    any measuring) when one exists and --overwrite is not given."""

    saved_model = None
    if FLAGS.export_dir is not None:
        saved_model = export.export_path(model, FLAGS.export_dir, FLAGS.version, FLAGS.model_name)
        if os.path.islink(saved_model) or (os.path.lexists(saved_model)
                                           and not os.path.isdir(saved_model)):
            raise ValueError(f"{saved_model} exists and is not a SavedModel folder")
        if os.path.lexists(saved_model) and not FLAGS.overwrite:
            raise ValueError(f"{saved_model} exists: pass --overwrite to replace it, or another "
                             "--version or --model_name")
    onnx_files = None
    if FLAGS.onnx_path is not None:
        # The exits are not known yet (k is chosen later): check every file an export could write.
        num_blocks = skeleton(model).num_blocks
        onnx_files = onnx_export.onnx_paths(FLAGS.onnx_path, range(1, num_blocks + 1), True)
        existing = [path for path in onnx_files.values() if os.path.lexists(path)]
        for path in existing:
            check_output_file(path, "--onnx_path")
        if existing and not FLAGS.overwrite:
            raise ValueError(f"{existing[0]} exists: pass --overwrite to replace it, or another "
                             "--onnx_path")
    return saved_model, onnx_files


def _prepare_onnx(model, export_kwargs):
    """The converted ONNX graphs. tf2onnx and onnx raise their own exception types (an op with no
    ONNX form is an onnx ValidationError): any of them is one line, before anything is written."""

    try:
        return prepare_onnx(model, FLAGS.onnx_path, overwrite=FLAGS.overwrite, **export_kwargs)
    except (ValueError, FileExistsError, ImportError):
        raise
    except Exception as error:  # noqa: BLE001 - a third-party converter's failure, named.
        reason = " ".join(str(error).split())[:300]
        raise ValueError(f"ONNX conversion failed ({type(error).__name__}): {reason}") from None


def write_report(path, record):
    """The report, written beside its target then renamed: never half a JSON file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.partial-{os.getpid()}")
    try:
        with open(temporary, "w") as handle:
            json.dump(record, handle, indent=2)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def main(argv):
    """Ctrl-C ends the program with one line and status 130. Before the writes nothing is written;
    during them, each output is replaced atomically, so none is left half-written."""
    try:
        run(argv)
    except KeyboardInterrupt:
        fail("interrupted (Ctrl-C); no output is half-written", status=130)


def run(argv):
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO lines would bury the table.
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}")
    try:
        extra_exits, anytime_exits = check_flags()
    except ValueError as error:
        fail(error)

    try:
        check_dependencies()
        model, dataset, config = load_model()
        anytime = check_exits_now(model, extra_exits, anytime_exits)
        threshold = anytime_threshold(model) if anytime else None
        targets = export_targets(model)
        data, dataset = validation_data(model, dataset, config)
    except (ValueError, FileNotFoundError, ImportError) as error:  # PresetError is a ValueError.
        fail(error)
    except OSError as error:  # A download that fails (PresetDownloadError), a disk error.
        fail(error, status=1)
    try:
        depth, choice, table = choose(model, data)
    except ValueError as error:  # No depth fits the budget; labels that do not fit the model.
        fail(error)
    print_table(table, depth)
    row = next(r for r in table if r.depth == depth)
    rule = (f"latency budget {FLAGS.latency_budget_ms} ms at batch {FLAGS.latency_batch_size}"
            if choice is None else f"tolerance {100 * choice.tolerance:g} %")
    budget_batch = FLAGS.latency_batch_size
    low, high = row.latency_iqr_ms[budget_batch]
    print(f"chosen: k={depth} of {len(table)} blocks ({rule}): accuracy {100 * row.accuracy:.2f} % "
          f"on the {FLAGS.split} split, full model {100 * table[-1].accuracy:.2f} %; latency at "
          f"batch {budget_batch} {row.latency_ms[budget_batch]:.3f} ms (median, interquartile "
          f"range {low:.3f}-{high:.3f} ms, measured here)")

    exits = sorted({depth, *extra_exits})
    export_kwargs = dict(exits=exits, anytime=anytime, anytime_threshold=threshold,
                         anytime_exits=anytime_exits)
    saved_model, onnx_files = targets
    path = None
    try:
        # Everything is traced and converted before anything is written.
        # ONNX first: tf2onnx refuses more graphs than the SavedModel tracer does.
        prepared_onnx = prepared_saved_model = None
        if onnx_files is not None:
            prepared_onnx = _prepare_onnx(model, export_kwargs)
        if saved_model is not None:
            prepared_saved_model = prepare_saved_model(
                model, FLAGS.export_dir, version=FLAGS.version, model_name=FLAGS.model_name,
                overwrite=FLAGS.overwrite, **export_kwargs)
    except (ValueError, FileExistsError, ImportError) as error:
        fail(f"nothing was written: {error}")
    try:
        if prepared_saved_model is not None:
            path = prepared_saved_model.write()
        if prepared_onnx is not None:
            onnx_files = prepared_onnx.write()
        if FLAGS.plot:
            deploy.plot_accuracy_latency(table, FLAGS.plot, batch_size=FLAGS.latency_batch_size,
                                         title=f"{model.name}: accuracy against latency")
        if path:
            served = f", anytime at threshold {threshold:g}" if anytime else ""
            print(f"SavedModel: {path} (signatures exit_{depth}{served})")
        if onnx_files:
            print(f"ONNX: {', '.join(onnx_files.values())}")
        if path is None and onnx_files is None:
            print("no --export_dir or --onnx_path: nothing exported")
        if FLAGS.report:
            write_report(FLAGS.report, {
                "model": model.name, "dataset": dataset, "split": FLAGS.split, "depth": depth,
                "choice": None if choice is None else choice.to_dict(),
                "latency_budget_ms": FLAGS.latency_budget_ms,
                "latency_batch_size": FLAGS.latency_batch_size,
                "depth_table": [r.to_dict() for r in table],
                "anytime_threshold": threshold, "export_path": path, "onnx": onnx_files,
            })
    except (ValueError, FileExistsError) as error:
        fail(error)
    except OSError as error:  # A full disk, a folder removed meanwhile.
        fail(error, status=1)


def console():
    """The console script `glonet-deploy`."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    console()
