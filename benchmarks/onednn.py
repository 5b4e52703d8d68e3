"""Training step time of the Fashion-MNIST presets with TensorFlow's oneDNN kernels off and on.

TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` once, when it loads, and where it is unset it turns
oneDNN on only on x86 CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX. On a CPU without them
(an AMD EPYC of the Zen 2 generation: AVX2 only) a run therefore gets the slower Eigen kernels
unless the variable says otherwise, and the same run resumed on a newer CPU changes kernels
mid-way. So each setting is timed in a fresh process of its own: round r starts one process per
setting, in an order rotated by r (a slow phase of a shared machine hits both alike), and each
process times every preset (random init, random inputs of the preset's shape) through `model.fit`
as its recipe compiles it (AdamW, its `jit_compile` and `steps_per_execution`), interleaved, after
a warm-up epoch. The speed-up is off / on, paired by round; GloNet over its ResNet-v2 twin is
printed under each setting, since a speed claim made under one does not carry to the other.

TensorFlow backend only (oneDNN is a TensorFlow setting). Run it on the cores a training run gets:
    taskset -c 1 python benchmarks/onednn.py --repetitions=3 --output=/tmp/onednn.json
"""

import json
import os
import subprocess
import sys

from absl import app, flags

if __package__ in (None, ""):
    # Run as a script (`python benchmarks/...py`): make the repository root importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import timing  # noqa: E402

FLAGS = flags.FLAGS
PRESETS = ("glonet_mlp_fashion_mnist", "glonet_cnn_fashion_mnist", "resnet_cnn_fashion_mnist",
           "glonet_vit_fashion_mnist")
#: GloNet over its ResNet-v2 twin (both in PRESETS), printed under each setting.
PAIRS = (("glonet_cnn_fashion_mnist", "resnet_cnn_fashion_mnist"),)
SETTINGS = ("0", "1")  # TF_ENABLE_ONEDNN_OPTS: off, on
MARKER = "onednn-result: "


def define_flags():
    flags.DEFINE_list("presets", list(PRESETS), "Presets to time (their architecture and recipe; "
                      "no weights are loaded).")
    flags.DEFINE_integer("steps", 16, "Timed training steps per epoch.")
    flags.DEFINE_integer("batch_size", 128, "Batch size.")
    flags.DEFINE_integer("repetitions", timing.REPETITIONS,
                         "Rounds: each starts one process per setting.")
    flags.DEFINE_integer("epochs_per_process", 2, "Timed epochs of every preset in each process.")
    flags.DEFINE_string("output", None, "Optional JSON file for the results.")
    flags.DEFINE_enum("child", None, list(SETTINGS), "Internal: time the presets in this process, "
                      "started with TF_ENABLE_ONEDNN_OPTS set to this value.")


def preset_task(name, steps, batch_size, seed=0):
    """A `timing.time_interleaved` task: one `fit` epoch of `steps` steps of preset `name`'s
    architecture, compiled as its recipe was (optimizer, jit_compile, steps_per_execution)."""
    import keras
    import numpy as np

    import glonet_keras

    model = glonet_keras.create_model(name)
    config = recipe(name)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((steps * batch_size, *model.input_shape[1:])).astype("float32")
    y = rng.integers(0, model.output_shape[-1], len(x)).astype("int32")
    timing.compile_for_fit(
        model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        batch_size=batch_size, steps_per_epoch=steps,
        batch_bytes=timing.batch_nbytes(x, y, batch_size),
        steps_per_execution=config.get("steps_per_execution", "auto"),
        jit_compile=config.get("jit_compile", "auto"),
        optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.05))
    return timing.fit_epoch_task(model, (x, y), {"batch_size": batch_size, "shuffle": True})


def recipe(name):
    """The training config of a shipped preset (its metadata.json), which says how it compiled."""
    from glonet_keras.presets.fetch import shipped_zoo_dir

    zoo = shipped_zoo_dir()
    path = zoo / name / "metadata.json" if zoo else None
    if path is None or not path.is_file():
        raise SystemExit(f"{name}: no shipped metadata.json to read its recipe from (zoo/{name}/).")
    return json.loads(path.read_text())["training"]["config"]


def measure(presets, steps, batch_size, epochs):
    """{preset: seconds per step, the median of `epochs` interleaved epochs} in this process."""
    tasks = {name: preset_task(name, steps, batch_size) for name in presets}
    results = timing.time_interleaved(tasks, repetitions=epochs)
    return {name: timing.summarize(results[name]["samples_s"])["median"] / steps
            for name in presets}


def run_child(setting, presets, steps, batch_size, epochs):
    """`measure` in a fresh process with TF_ENABLE_ONEDNN_OPTS=`setting` (TensorFlow reads it once,
    when it loads); returns its {preset: seconds per step}."""
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting, KERAS_BACKEND="tensorflow",
               TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, os.path.abspath(__file__), f"--child={setting}",
               f"--presets={','.join(presets)}", f"--steps={steps}",
               f"--batch_size={batch_size}", f"--epochs_per_process={epochs}"]
    process = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in process.stdout.splitlines() if line.startswith(MARKER)]
    if process.returncode or not lines:
        raise SystemExit(f"The process timing TF_ENABLE_ONEDNN_OPTS={setting} failed (exit "
                         f"{process.returncode}):\n{process.stderr[-2000:]}")
    return json.loads(lines[-1][len(MARKER):])


def rounds(repetitions, run):
    """[{setting: run(setting)}] for `repetitions` rounds, the settings' order rotated by round."""
    found = []
    for index in range(repetitions):
        order = SETTINGS[index % 2:] + SETTINGS[:index % 2]
        found.append({setting: run(setting) for setting in order})
    return found


def summarize(found, presets, pairs=PAIRS):
    """Rows per preset: ms per step off and on (median [min-max] over rounds) and the speed-up
    off / on paired by round; then each GloNet / twin time ratio under each setting."""
    rows = []
    for name in presets:
        off = [r["0"][name] for r in found]
        on = [r["1"][name] for r in found]
        rows.append({"preset": name, "off_ms": timing.summarize([1e3 * s for s in off]),
                     "on_ms": timing.summarize([1e3 * s for s in on]),
                     "speedup": timing.paired_ratios(off, on)})
    ratios = []
    for glonet, twin in pairs:
        if glonet in presets and twin in presets:
            ratios.append({"glonet": glonet, "twin": twin, **{
                setting: timing.paired_ratios([r[setting][glonet] for r in found],
                                              [r[setting][twin] for r in found])
                for setting in SETTINGS}})
    return rows, ratios


def print_summary(rows, ratios, log=print):
    timing.print_table(
        ["preset", "oneDNN off (ms/step)", "oneDNN on (ms/step)", "off / on"],
        [[row["preset"], timing.format_summary(row["off_ms"], digits=1),
          timing.format_summary(row["on_ms"], digits=1),
          timing.format_summary(row["speedup"], digits=2)] for row in rows], log=log)
    for ratio in ratios:
        log(f"{ratio['glonet']} / {ratio['twin']}: oneDNN off "
            f"{timing.format_summary(ratio['0'], digits=2)}, on "
            f"{timing.format_summary(ratio['1'], digits=2)}")


def main(argv):
    del argv
    presets = list(FLAGS.presets)
    if FLAGS.child is not None:
        print(MARKER + json.dumps(measure(presets, FLAGS.steps, FLAGS.batch_size,
                                          FLAGS.epochs_per_process)), flush=True)
        return
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        raise app.UsageError("oneDNN is a TensorFlow setting: run this with KERAS_BACKEND unset "
                             f"or tensorflow, not {os.environ['KERAS_BACKEND']!r}.")
    if FLAGS.repetitions < 1:
        raise app.UsageError(f"--repetitions must be at least 1, got {FLAGS.repetitions}.")
    import glonet_keras

    unknown = sorted(set(presets) - set(glonet_keras.list_models(pretrained=True)))
    if unknown:
        raise app.UsageError(f"Unknown presets {unknown}; published ones: "
                             f"{glonet_keras.list_models(pretrained=True)}.")
    found = rounds(FLAGS.repetitions, lambda setting: run_child(
        setting, presets, FLAGS.steps, FLAGS.batch_size, FLAGS.epochs_per_process))
    rows, ratios = summarize(found, presets)
    machine, features = timing.describe_machine(), cpu_flags()
    if FLAGS.output:
        timing.write_json(FLAGS.output, {"machine": machine, "cpu_flags": features,
                                         "steps": FLAGS.steps, "batch_size": FLAGS.batch_size,
                                         "rounds": found, "rows": rows, "ratios": ratios})
    print(f"machine: {machine}; CPU: {', '.join(features) or 'unknown'}; "
          f"{FLAGS.repetitions} rounds, {FLAGS.steps} steps of {FLAGS.batch_size}")
    print_summary(rows, ratios)


def cpu_flags():
    """The CPU features TensorFlow's oneDNN default depends on, as /proc/cpuinfo lists them."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")
    try:
        with open("/proc/cpuinfo") as stream:
            line = next((line for line in stream if line.startswith("flags")), "")
    except OSError:
        return []
    present = set(line.split(":", 1)[-1].split())
    return [flag for flag in wanted if flag in present]


if __name__ == "__main__":
    define_flags()
    app.run(main)
