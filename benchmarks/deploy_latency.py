"""Latency of the full model against exit_k and anytime signatures, side by side, in one run.

For a 100-block GloNet MLP and a deep CIFAR-layout GloNet CNN (depth 56: 27 blocks, 28x28x1 inputs),
both trained briefly on the digits data set (8x8 images; upsampled to 28x28 for the CNN) so that some
inputs are confident early and others are not, this script exports one SavedModel per model with
`exit_<L/4>` and `anytime` signatures (`glonet_keras.deploy.export.export_saved_model`) and times, through
the loaded signatures (what TF Serving runs: preprocessing included):

- `serve`: all L blocks;
- `exit_<L/4>`: the first quarter of the blocks (the issue's bar: at most 40 % of `serve` at batch 1);
- `anytime` on EASY inputs (test digits confident at an early exit) and on HARD ones (never
  confident: every block runs), at the same threshold, checking confidence after every block, and
  (`--check_every=N`) a second export that checks every N blocks only (`anytime_exits`);
- optionally (`--onnx`), the same graphs in ONNX Runtime (its anytime graph checks every
  `--check_every` blocks, at most 16 times: the limit of the ONNX export). Converting the 26 M-
  parameter MLP takes over 8 GB on top of the benchmark's own 6 GB: use `--models=cnn --onnx`,
  or a narrower MLP (`--mlp_width=128`), on a machine with less memory.

Each of `--reps` repetitions times every variant `--calls` times, interleaved (so drift hits all
alike); a variant's number is the median over repetitions of its per-repetition median, with the
min-max over repetitions as its spread. Absolute times on a shared CPU are noisy: compare ratios.

    python benchmarks/deploy_latency.py                      # both models, batch 1 and 64
    python benchmarks/deploy_latency.py --models=mlp --reps=5 --output=/tmp/deploy_latency.json
"""

import json
import os
import statistics
import sys
import tempfile
import time

from absl import app, flags

if __package__ in (None, ""):
    # Run as a script (`python benchmarks/...py`): make the repository root importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.timing import describe_machine  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """The program's flags, defined only when it runs (other programs define --epochs and --output
    too, and the tests import several into one process)."""
    flags.DEFINE_list("models", ["mlp", "cnn"], "Which models: mlp, cnn.")
    flags.DEFINE_integer("mlp_blocks", 100, "Blocks of the GloNet MLP.")
    flags.DEFINE_integer("mlp_width", 512, "Width of the GloNet MLP.")
    flags.DEFINE_integer("cnn_depth", 56, "Depth of the CIFAR-layout GloNet CNN (6n + 2).")
    flags.DEFINE_integer("epochs", 3,
                         "Training epochs on digits (so that confidence varies by input).")
    flags.DEFINE_float("threshold", None, "Anytime confidence threshold; default per model: 0.9, "
                       "or lower if fewer than 20 % of the test inputs reach 0.9 within L/4 blocks.")
    flags.DEFINE_list("batch_sizes", ["1", "64"], "Batch sizes to time.")
    flags.DEFINE_integer("reps", 3, "Repetitions (>= 3) of the whole timing round.")
    flags.DEFINE_integer("calls", 30, "Timed calls per variant and repetition.")
    flags.DEFINE_integer("check_every", 10, "Also time an anytime signature that checks confidence "
                         "every N blocks only (anytime_exits); 0 or 1: skip it.")
    flags.DEFINE_bool("onnx", False, "Also time the ONNX graphs in ONNX Runtime.")
    flags.DEFINE_string("output", None, "Optional JSON file for the results.")


def build_and_train(family, epochs, seed=0):
    """A briefly trained GloNet on digits, with its preprocessing attached; and the test split."""
    import keras
    import numpy as np

    from glonet_keras import GloNetCNN, GloNetMLP
    from glonet_keras.data import dataset_info, load_arrays

    preprocessing = dataset_info("digits", seed=seed).preprocessing
    (x_train, y_train), (x_test, y_test) = load_arrays("digits", seed)
    keras.utils.set_random_seed(seed)
    if family == "mlp":
        model = GloNetMLP(num_blocks=FLAGS.mlp_blocks, width=FLAGS.mlp_width, input_shape=(8, 8, 1),
                          num_classes=10, name=f"glonet_mlp_{FLAGS.mlp_blocks}")
    else:
        import dataclasses

        preprocessing = dataclasses.replace(preprocessing, image_size=(28, 28))
        model = GloNetCNN(depth=FLAGS.cnn_depth, layout="cifar", input_shape=(28, 28, 1),
                          num_classes=10, name=f"glonet_cnn_{FLAGS.cnn_depth}")
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(np.asarray(preprocessing(x_train)), y_train, batch_size=64, epochs=epochs, verbose=0)
    model.preprocessing = preprocessing
    return model, x_test, y_test


def easy_and_hard(model, x_test, threshold=None):
    """The threshold, raw test inputs confident at the earliest exits (easy) and the latest (hard),
    and every test input's exit.

    Without a threshold: 0.9, lowered to the 80th percentile of each input's best confidence within
    the first L/4 blocks when that is below 0.9, so that a fifth of the inputs are easy (a briefly
    trained deep CNN is rarely 90 % sure of anything early).
    """
    import numpy as np

    from glonet_keras import analysis, deploy

    exit_logits = analysis.early_exit_logits(model, model.preprocessing(x_test))
    if threshold is None:
        batch, num_blocks, classes = exit_logits.shape
        confidence = deploy.top_probability(exit_logits.reshape(-1, classes)).reshape(batch, -1)
        early_best = confidence[:, : max(1, num_blocks // 4)].max(1)
        threshold = min(0.9, float(np.quantile(early_best, 0.8)))
    exits, _ = deploy.first_confident_exits(exit_logits, threshold)
    order = np.argsort(exits, kind="stable")
    easy, hard = order[: max(1, len(order) // 10)], np.flatnonzero(exits == exits.max())
    return threshold, x_test[easy], x_test[hard], exits


def _batch(examples, size):
    import numpy as np

    return np.resize(examples, (size,) + examples.shape[1:])  # repeats the examples to fill


def variants(model, x_easy, x_hard, export_dir, threshold, batch_sizes):
    """{(variant, batch): zero-argument call} through the loaded SavedModel (and ONNX Runtime)."""
    import numpy as np
    import tensorflow as tf

    from glonet_keras.deploy.export import export_saved_model
    from glonet_keras.skeleton import skeleton

    num_blocks = skeleton(model).num_blocks
    k = max(1, num_blocks // 4)
    path = export_saved_model(model, export_dir, exits=[k], anytime=True, early_exits=False)
    loaded = [tf.saved_model.load(path)]  # Kept alive: signatures hold weak references.
    anytime = {"anytime": loaded[0].signatures["anytime"]}
    every = FLAGS.check_every
    if every > 1:
        sparse = export_saved_model(model, export_dir, model_name=f"{model.name}_every_{every}",
                                    anytime=True, anytime_exits=range(every, num_blocks + 1, every),
                                    early_exits=False)
        loaded.append(tf.saved_model.load(sparse))
        anytime[f"anytime/{every}"] = loaded[1].signatures["anytime"]
    signatures = loaded[0].signatures
    name = model.inputs[0].name
    calls = {}
    for batch in batch_sizes:
        easy, hard = tf.constant(_batch(x_easy, batch)), tf.constant(_batch(x_hard, batch))
        level = tf.constant(threshold, tf.float32)
        calls[("serve", batch)] = lambda x=hard: signatures["serve"](**{name: x})
        calls[(f"exit_{k}", batch)] = lambda x=hard: signatures[f"exit_{k}"](**{name: x})
        for label, signature in anytime.items():
            calls[(f"{label} easy", batch)] = lambda x=easy, f=signature: f(
                **{name: x, "threshold": level})
            calls[(f"{label} hard", batch)] = lambda x=hard, f=signature: f(
                **{name: x, "threshold": level})
    if FLAGS.onnx:
        import onnxruntime

        from glonet_keras.deploy.onnx_export import export_onnx

        # ONNX anytime graphs take at most 16 checks (onnx_export.MAX_ONNX_ANYTIME_EXITS).
        every = max(every, -(-num_blocks // 16))
        files = export_onnx(model, os.path.join(export_dir, "model.onnx"), exits=[k], anytime=True,
                            anytime_exits=range(every, num_blocks + 1, every))
        sessions = {key: onnxruntime.InferenceSession(file, providers=["CPUExecutionProvider"])
                    for key, file in files.items()}
        for batch in batch_sizes:
            easy, hard = _batch(x_easy, batch), _batch(x_hard, batch)
            level = np.array(threshold, np.float32)
            calls[("onnx serve", batch)] = lambda x=hard: sessions["serve"].run(None, {name: x})
            calls[(f"onnx exit_{k}", batch)] = lambda x=hard: sessions[f"exit_{k}"].run(None, {name: x})
            calls[(f"onnx anytime/{every} easy", batch)] = lambda x=easy: sessions["anytime"].run(
                None, {name: x, "threshold": level})
            calls[(f"onnx anytime/{every} hard", batch)] = lambda x=hard: sessions["anytime"].run(
                None, {name: x, "threshold": level})
    return k, calls, loaded


def time_calls(calls, reps, per_rep):
    """{key: (median over reps of the per-rep median ms, min, max)}; variants interleaved."""
    for call in calls.values():  # Warm-up: tracing, graph optimisation, allocation.
        for _ in range(3):
            call()
    samples = {key: [] for key in calls}
    for _ in range(reps):
        for key, call in calls.items():
            times = []
            for _ in range(per_rep):
                start = time.perf_counter()
                call()
                times.append(1000 * (time.perf_counter() - start))
            samples[key].append(statistics.median(times))
    return {key: (statistics.median(v), min(v), max(v)) for key, v in samples.items()}


def run(family, log=print):
    from glonet_keras.skeleton import skeleton

    start = time.perf_counter()
    model, x_test, y_test = build_and_train(family, FLAGS.epochs)
    threshold, x_easy, x_hard, exits = easy_and_hard(model, x_test, FLAGS.threshold)
    num_blocks = skeleton(model).num_blocks
    log(f"\n{model.name}: {num_blocks} blocks, {model.count_params():,} parameters, trained "
        f"{FLAGS.epochs} epochs on digits in {time.perf_counter() - start:.0f} s; at threshold "
        f"{threshold:.3g}: easy inputs exit at block {int(exits.min())}, hard ones at "
        f"{int(exits.max())} (mean exit over the test split {exits.mean():.1f})")
    batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    with tempfile.TemporaryDirectory() as export_dir:
        k, calls, loaded = variants(model, x_easy, x_hard, export_dir, threshold, batch_sizes)
        timings = time_calls(calls, FLAGS.reps, FLAGS.calls)
        del loaded
    rows = []
    for (variant, batch), (median, low, high) in timings.items():
        reference = timings[("onnx serve" if variant.startswith("onnx") else "serve", batch)][0]
        rows.append({"model": model.name, "blocks": num_blocks, "threshold": threshold,
                     "variant": variant, "batch": batch,
                     "ms": median, "ms_min": low, "ms_max": high, "vs_full": median / reference})
    for batch in batch_sizes:
        log(f"  batch {batch}:")
        for row in (r for r in rows if r["batch"] == batch):
            log(f"    {row['variant']:<22s} {row['ms']:9.3f} ms  [{row['ms_min']:.3f} - "
                f"{row['ms_max']:.3f}]  {100 * row['vs_full']:6.1f} % of full")
    exit_row = next(r for r in rows if r["variant"] == f"exit_{k}" and r["batch"] == 1)
    verdict = "meets" if exit_row["vs_full"] <= 0.40 else "MISSES"
    log(f"  exit_{k} (k = L/4) at batch 1: {100 * exit_row['vs_full']:.1f} % of the full model: "
        f"{verdict} the 40 % bar")
    return rows


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO lines would bury the table.
    if FLAGS.reps < 3:
        raise app.UsageError("--reps must be >= 3 (a median and a spread).")
    unknown = set(FLAGS.models) - {"mlp", "cnn"}
    if unknown:
        raise app.UsageError(f"Unknown --models {sorted(unknown)}: use mlp, cnn.")
    print(f"Machine: {describe_machine()}", flush=True)
    print(f"reps={FLAGS.reps} calls per rep={FLAGS.calls} "
          "(ms: median over reps of the per-rep median [min - max over reps])")
    rows = []
    for family in FLAGS.models:
        rows += run(family)
    if FLAGS.output:
        with open(FLAGS.output, "w") as handle:
            json.dump({"machine": describe_machine(), "flags": {
                "reps": FLAGS.reps, "calls": FLAGS.calls, "threshold": FLAGS.threshold,
                "check_every": FLAGS.check_every,
                "epochs": FLAGS.epochs}, "results": rows}, handle, indent=2)


if __name__ == "__main__":
    define_flags()
    app.run(main)
