"""Peak memory of training against depth: GloNet against the ResNet-v2 of the same depth.

Each point (family, form, depth) runs in a fresh Python process, so that one model's allocations,
compiled functions and allocator caches cannot raise another's peak. The process imports Keras,
makes its data (SGEMM-shaped rows for the MLPs, CIFAR-shaped images for the CNNs) and puts it where
training reads it, records its baseline, then builds, compiles and trains `--steps` steps on the
same fast fit path as the speed benchmarks (`benchmarks.timing.compile_for_fit`) and reports:

- host: peak resident set size (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) minus the baseline,
  i.e. what building, compiling and training added at their peak (on a CPU backend this is all of
  training's memory: weights, optimizer state, activations, compiled code);
- device (JAX on a GPU): `device.memory_stats()["peak_bytes_in_use"]` minus the bytes in use at
  the baseline (the data already on the device). Run with XLA_PYTHON_CLIENT_PREALLOCATE=false.

Both should grow linearly with depth; the table gives the least-squares slope (MB per block) and
the GloNet/ResNet ratio at each depth, side by side.

    python benchmarks/memory.py --depths=10,50,100,200 --output=/tmp/memory.json
    KERAS_BACKEND=jax python benchmarks/memory.py --families=glonet_mlp,resnet_mlp --scan
"""

import json
import os
import resource
import signal
import subprocess
import sys

from absl import app, flags

if __package__ in (None, ""):
    # Run as a script (`python benchmarks/...py`): make the repository root importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report, timing  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = {
    # family: (builder class name, depth argument, default batch size)
    "glonet_mlp": ("GloNetMLP", "num_blocks", 1024),
    "resnet_mlp": ("ResNetMLP", "num_blocks", 1024),
    "glonet_cnn": ("GloNetCNN", "depth", 128),
    "resnet_cnn": ("ResNetCNN", "depth", 128),
}

FLAGS = flags.FLAGS


def define_flags():
    """The command line's flags (defined only when run as a program, so modules import freely)."""
    flags.DEFINE_list("families", ["glonet_mlp", "resnet_mlp"],
                      f"Model families, GloNet before its ResNet-v2: {list(FAMILIES)}.")
    flags.DEFINE_list("depths", ["10", "50", "100", "200"], "Depths (MLP blocks; CNN depth 6n+2).")
    flags.DEFINE_integer("steps", 4, "Training steps per point.")
    flags.DEFINE_integer("batch_size", None, "Batch size (default: 1024 for MLPs, 128 for CNNs).")
    flags.DEFINE_integer("width", 16, "MLP width / CNN first-stage channels.")
    flags.DEFINE_bool("scan", False, "Also measure the scanned form (scan=True) of every family "
                      "whose builder offers it.")
    flags.DEFINE_integer("max_unrolled_depth", 200, "Deeper unrolled models are skipped.")
    flags.DEFINE_integer("point_timeout", 600, "Seconds one point may take.")
    flags.DEFINE_string("output", None, "Optional JSON file for the results.")
    flags.DEFINE_string("point", None, "Internal: measure one point (JSON) and print its result.")

MB = 2**20


def measure_point(family, depth, form="unrolled", steps=4, batch_size=None, width=16):
    """Measures one point in *this* process (call it in a fresh one); returns a dict of MB."""
    import keras

    from benchmarks.synthetic import random_images, sgemm_like_data
    from glonet_keras import models

    # Seeding imports TensorFlow where it is installed (to seed it too): before the baseline.
    keras.utils.set_random_seed(0)
    class_name, depth_argument, default_batch = FAMILIES[family]
    batch_size = batch_size or default_batch
    if family.endswith("_mlp"):
        x, y = sgemm_like_data(steps * batch_size)
        kwargs = dict(width=width, num_classes=1, input_shape=(14,))
        loss = "mse"
    else:
        x, y = random_images(steps * batch_size)
        kwargs = dict(width=width, input_shape=x.shape[1:])
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if form == "scanned":
        kwargs["scan"] = True
    data, fit_kwargs = timing.fit_inputs(x, y, batch_size=batch_size)
    device = _device_memory()
    baseline_rss, baseline_device = _peak_rss(), device.get("bytes_in_use")

    model = getattr(models, class_name)(**{depth_argument: depth}, **kwargs)
    spe, fused = timing.compile_for_fit(model, loss=loss, batch_size=batch_size,
                                        steps_per_epoch=steps,
                                        batch_bytes=timing.batch_nbytes(x, y, batch_size))
    model.fit(*data, epochs=1, verbose=0, **fit_kwargs)
    result = {"family": family, "depth": depth, "form": form, "steps": steps,
              "batch_size": batch_size, "parameters": int(model.count_params()),
              "steps_per_execution": spe, "fused": fused,
              "baseline_rss_mb": baseline_rss / MB, "train_rss_mb": (_peak_rss() - baseline_rss) / MB}
    device = _device_memory()
    if "peak_bytes_in_use" in device and baseline_device is not None:
        result["train_device_mb"] = (device["peak_bytes_in_use"] - baseline_device) / MB
    return result


def _peak_rss():
    """This process's peak resident set size in bytes (Linux reports kilobytes)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _device_memory():
    """The default JAX device's memory_stats() on a GPU/TPU ({} elsewhere)."""
    import keras

    if keras.backend.backend() != "jax":
        return {}
    import jax

    device = jax.devices()[0]
    return (device.memory_stats() or {}) if device.platform != "cpu" else {}


def run_point(family, depth, form, *, steps, batch_size, width, timeout):
    """Measures one point in a fresh interpreter; returns its dict (with "error" if it failed)."""
    spec = dict(family=family, depth=depth, form=form, steps=steps, batch_size=batch_size,
                width=width)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    try:
        completed = subprocess.run(
            [sys.executable, os.path.abspath(__file__), f"--point={json.dumps(spec)}"],
            env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(spec, error=f"timed out after {timeout} s")
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        return dict(spec, error=f"exit {completed.returncode}: {completed.stderr.strip()[-800:]}")
    return json.loads(lines[-1])


def forms_for(family, scan, depth, max_unrolled_depth):
    from glonet_keras import models

    forms = ["unrolled"] if depth <= max_unrolled_depth else []
    if scan and timing.supports_scan(getattr(models, FAMILIES[family][0])):
        forms.append("scanned")
    return forms


def run_benchmark(families=("glonet_mlp", "resnet_mlp"), depths=(10, 50, 100, 200), *, steps=4,
                  batch_size=None, width=16, scan=False, max_unrolled_depth=200, timeout=600,
                  log=print, on_result=None):
    """Measures every (family, form, depth); returns the list of point dicts.

    `on_result(points so far)` is called after every point (to save partial results).
    """
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"Unknown families {sorted(unknown)}. Available: {list(FAMILIES)}.")
    points = []
    for depth in depths:
        for family in families:
            for form in forms_for(family, scan, int(depth), max_unrolled_depth):
                point = run_point(family, int(depth), form, steps=steps, batch_size=batch_size,
                                  width=width, timeout=timeout)
                log(_describe(point))
                points.append(point)
                if on_result:
                    on_result(points)
    return points


def _describe(point):
    head = f"{point['family']:10s} {point['form']:8s} depth {point['depth']:5d}"
    if "error" in point:
        return f"{head}  FAILED: {point['error'][-300:]}"
    text = f"{head}  host +{point['train_rss_mb']:8.1f} MB"
    if "train_device_mb" in point:
        text += f"  device +{point['train_device_mb']:8.1f} MB"
    return text


def main(argv):
    del argv
    if FLAGS.point:
        print(json.dumps(measure_point(**json.loads(FLAGS.point))), flush=True)
        return
    # A SIGTERM (e.g. from `timeout`) becomes SystemExit, so that subprocess.run kills the point
    # being measured instead of leaving it running on its own.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    machine = timing.describe_machine()
    print(f"Machine: {machine}", flush=True)
    save = timing.json_saver(FLAGS.output, {"benchmark": "memory", "machine": machine,
                                            "steps": FLAGS.steps}, "points")
    points = run_benchmark(FLAGS.families, [int(d) for d in FLAGS.depths], steps=FLAGS.steps,
                           batch_size=FLAGS.batch_size, width=FLAGS.width, scan=FLAGS.scan,
                           max_unrolled_depth=FLAGS.max_unrolled_depth,
                           timeout=FLAGS.point_timeout, on_result=save)
    save(points, complete=True)
    report.memory_tables(points)
    if any("error" in p for p in points):
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
