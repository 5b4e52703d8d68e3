"""What every benchmark shares: repeated, interleaved timings reported as median and spread.

Each benchmark builds the models it compares, gives this module one *task* per model (a callable
that runs a fixed amount of work and returns its seconds), and gets back for each task the warm-up
(the first call: tracing and XLA compilation) and `repetitions` timed samples. The tasks are
interleaved (round r calls every task once, in an order rotated by r), so a slow phase of a shared
machine hits every model alike and the per-round ratios pair like with like. Results are
summarised as the median with the min and max ("spread") of the samples.

No flags here (each script defines its own) and no TensorFlow import: the benchmarks also run on a
GPU machine that only has JAX.
"""

import inspect
import json
import os
import statistics
import tempfile

#: Default repetitions of every timed measurement (issue 12 asks for at least 3).
REPETITIONS = 3


def summarize(samples):
    """{"median", "min", "max", "n"} of a non-empty sequence of numbers."""
    samples = [float(s) for s in samples]
    if not samples:
        raise ValueError("summarize() needs at least one sample.")
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "n": len(samples)}


def format_summary(summary, scale=1.0, digits=3):
    """'median [min-max]' of a `summarize` result, each value multiplied by `scale`."""
    values = [summary[key] * scale for key in ("median", "min", "max")]
    return "{:.{d}f} [{:.{d}f}-{:.{d}f}]".format(*values, d=digits)


def time_interleaved(tasks, repetitions=REPETITIONS, log=None):
    """Times every task once to warm up, then `repetitions` rounds of all tasks.

    Args:
        tasks: {name: callable() -> seconds of the timed work}.
        repetitions: timed rounds (>= 1).
        log: optional callable(str) told about each measurement.

    Returns:
        {name: {"warmup_s": first call's seconds, "samples_s": [one per round]}}.
    """
    if repetitions < 1:
        raise ValueError(f"`repetitions` must be >= 1, received {repetitions!r}.")
    names = list(tasks)
    results = {}
    for name in names:
        results[name] = {"warmup_s": float(tasks[name]()), "samples_s": []}
        if log:
            log(f"  {name}: warm-up {results[name]['warmup_s']:.2f} s")
    for round_index in range(repetitions):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            results[name]["samples_s"].append(float(tasks[name]()))
    if log:
        for name in names:
            log(f"  {name}: {format_summary(summarize(results[name]['samples_s']))} s")
    return results


def paired_ratios(numerators, denominators):
    """`summarize` of the per-round ratios numerators[i] / denominators[i]."""
    if len(numerators) != len(denominators):
        raise ValueError(f"Cannot pair {len(numerators)} samples with {len(denominators)}.")
    return summarize([a / b for a, b in zip(numerators, denominators)])


# --------------------------------------------------------------------------------------------
# The fast fit path, as the benchmarks (and the library's trainer) run it.

FORMS = ("auto", "numpy", "device", "tfdata")


def compile_for_fit(model, *, loss, batch_size, steps_per_epoch, batch_bytes=None,
                    steps_per_execution="auto", fuse=False, jit_compile="auto", learning_rate=1e-3,
                    optimizer=None):
    """Compiles `model` with `optimizer` (default: Adam at `learning_rate`) for the fast fit path;
    returns (steps_per_execution, fused).

    `steps_per_execution="auto"` asks `fastfit.auto_steps_per_execution` (from a FLOP estimate of
    the step); `fuse` installs `fastfit.fuse_train_steps` (JAX only; False elsewhere).
    """
    import keras

    from glonet_keras.training import fastfit

    if steps_per_execution == "auto":
        steps_per_execution = fastfit.auto_steps_per_execution(
            steps_per_epoch, fastfit.estimate_step_seconds(model, batch_size),
            batch_bytes=batch_bytes,
        )
    model.compile(optimizer=optimizer or keras.optimizers.Adam(learning_rate), loss=loss,
                  steps_per_execution=int(steps_per_execution), jit_compile=jit_compile)
    fused = fastfit.fuse_train_steps(model) if fuse else False
    return int(steps_per_execution), fused


def parse_steps_per_execution(text):
    """'auto' or a positive integer (from a flag's text); raises ValueError otherwise."""
    text = str(text)
    if text == "auto":
        return text
    if not (text.isdigit() and int(text) > 0):
        raise ValueError(f"steps_per_execution must be 'auto' or a positive integer, got {text!r}.")
    return int(text)


def steps_per_execution_flag(text):
    """`parse_steps_per_execution` for a program's flag: an absl usage error on bad text."""
    from absl import app

    try:
        return parse_steps_per_execution(text)
    except ValueError as error:
        raise app.UsageError(f"--{error}") from error


def define_fit_path_flags():
    """The flags every side-by-side fit benchmark shares (mlp_speed.py, cnn_speed.py)."""
    from absl import flags

    flags.DEFINE_integer("repetitions", REPETITIONS,
                         "Timed epochs per model after one warm-up epoch.")
    flags.DEFINE_string("steps_per_execution", "auto", "'auto' or a positive integer.")
    flags.DEFINE_enum("data_form", "auto", FORMS,
                      "How the arrays are fed to fit (timing.fit_inputs).")
    flags.DEFINE_bool("fuse", False, "On JAX, run each group of steps as one lax.scan "
                      "(fastfit.fuse_train_steps; off by default: see benchmarks/README.md).")
    flags.DEFINE_string("output", None, "Optional JSON file for the results.")


def resolve_form(form):
    """The data form "auto" stands for on this backend: "device" on JAX, "numpy" elsewhere."""
    import keras

    if form not in FORMS:
        raise ValueError(f"Unknown data form {form!r}. Available: {list(FORMS)}.")
    if form == "auto":
        return "device" if keras.backend.backend() == "jax" else "numpy"
    if form == "device" and keras.backend.backend() != "jax":
        raise ValueError("The 'device' data form (fastfit.DeviceArrayDataset) is for the JAX backend.")
    return form


def fit_inputs(x, y, *, batch_size, form="auto", seed=0):
    """(fit positional data, fit keyword arguments) for in-memory arrays in one data form.

    numpy: the arrays themselves, shuffled by `fit` (on TensorFlow Keras turns them into a
        vectorised, prefetching tf.data pipeline; on JAX it copies each batch to the device).
    device: a `fastfit.DeviceArrayDataset` (arrays on the device, shuffled there; JAX).
    tfdata: a per-example `tf.data` pipeline shaped like `glonet_keras.data.get_dataset`'s
        (shuffle over the whole split, batch, prefetch); needs TensorFlow.
    """
    from glonet_keras.training import fastfit

    form = resolve_form(form)
    if form == "numpy":
        return (x, y), {"batch_size": batch_size, "shuffle": True}
    if form == "device":  # What fastfit.in_memory_inputs gives on JAX.
        inputs = fastfit.in_memory_inputs(x, y, batch_size=batch_size, seed=seed)
        return (inputs.pop("x"),), inputs
    import tensorflow as tf  # The tf.data form needs TensorFlow, whatever the backend.

    dataset = (tf.data.Dataset.from_tensor_slices((x, y))
               .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
               .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    return (dataset,), {"shuffle": False}


def fit_epoch_task(model, data, fit_kwargs, verbose=0):
    """A task (see `time_interleaved`) that runs one `fit` epoch and returns its seconds.

    The seconds are those of the epoch itself (EpochTimer: from on_epoch_begin to on_epoch_end),
    not `fit`'s one-off setup per call (data adapter, callback list).
    """
    from glonet_keras.training.callbacks import EpochTimer

    def run_epoch():
        timer = EpochTimer()
        model.fit(*data, epochs=1, verbose=verbose, callbacks=[timer], **fit_kwargs)
        return timer.seconds[-1]

    return run_epoch


def whole_batches(x, y, batch_size):
    """The arrays cut to a whole number of batches (no partial last batch to compile for)."""
    rows = (len(x) // batch_size) * batch_size
    if rows == 0:
        raise ValueError(f"{len(x)} rows make no batch of {batch_size}.")
    return x[:rows], y[:rows]


def batch_nbytes(x, y, batch_size):
    return (x[:1].nbytes + y[:1].nbytes) * batch_size


# --------------------------------------------------------------------------------------------
# Model forms.


def supports_scan(builder):
    """Whether a model class's constructor takes `scan` (the scanned block stack)."""
    return "scan" in inspect.signature(builder.__init__).parameters


def check_scan_available(builder):
    """Raises ValueError with the reason when `builder` cannot build a scanned stack yet."""
    if not supports_scan(builder):
        raise ValueError(
            f"{builder.__name__} does not accept scan=True yet (its constructor has no `scan` "
            "argument): run without --scan, or once the scanned block stack has landed."
        )


# --------------------------------------------------------------------------------------------
# Side-by-side comparisons (GloNet against the ResNet-v2 of the same depth).


def compare_at_depths(depths, builders, make_task, metric="s", repetitions=REPETITIONS, log=print):
    """Builds each model of each depth and times them interleaved; one row per depth.

    Args:
        depths: depths to compare at.
        builders: {key: callable(depth) -> model, or a string saying why that model is skipped
            at that depth}. The first key is the numerator of `ratio`, the second its denominator.
        make_task: callable(key, model) -> (task, {extra row fields, named "<key>_<field>"}).
        metric: the name of the timed quantity in the row keys (e.g. "s_per_epoch").
        repetitions: timed rounds.
        log: callable(str).

    Returns:
        One dict per depth: "depth", "repetitions"; for each key, "<key>_<metric>" (median
        seconds per task), "<key>_<metric>_min", "<key>_<metric>_max", "<key>_<metric>_samples"
        (every round's seconds), "<key>_warmup_s",
        "<key>_compile_s" (warm-up minus the median: tracing and compilation, roughly) or
        "<key>_skipped" (the reason), plus make_task's fields; "ratio" (median of the per-round
        ratios first/second), "ratio_min", "ratio_max" (None when either model was skipped).
    """
    import keras

    first, second = list(builders)[:2]
    rows = []
    for depth in depths:
        row = {"depth": int(depth), "repetitions": int(repetitions)}
        tasks = {}
        log(f"depth {depth}:")
        for key, builder in builders.items():
            keras.backend.clear_session()
            keras.utils.set_random_seed(0)
            model = builder(int(depth))
            if isinstance(model, str):
                row[f"{key}_skipped"] = model
                log(f"  {key}: skipped ({model})")
                continue
            tasks[key], extra = make_task(key, model)
            row.update({f"{key}_{name}": value for name, value in extra.items()})
        timed = time_interleaved(tasks, repetitions, log=log) if tasks else {}
        for key, result in timed.items():
            summary = summarize(result["samples_s"])
            row[f"{key}_{metric}"] = summary["median"]
            row[f"{key}_{metric}_min"], row[f"{key}_{metric}_max"] = summary["min"], summary["max"]
            row[f"{key}_{metric}_samples"] = result["samples_s"]
            row[f"{key}_warmup_s"] = result["warmup_s"]
            row[f"{key}_compile_s"] = max(0.0, result["warmup_s"] - summary["median"])
        if first in timed and second in timed:
            ratio = paired_ratios(timed[first]["samples_s"], timed[second]["samples_s"])
            row.update(ratio=ratio["median"], ratio_min=ratio["min"], ratio_max=ratio["max"])
        else:
            row["ratio"] = row["ratio_min"] = row["ratio_max"] = None
        rows.append(row)
    return rows


def spread(row, key, scale=1.0, digits=3):
    """'median [min-max]' of a row's "<key>", "<key>_min", "<key>_max" (or '-' if absent)."""
    if row.get(key) is None:
        return "-"
    return format_summary({"median": row[key], "min": row[f"{key}_min"], "max": row[f"{key}_max"]},
                          scale=scale, digits=digits)


# --------------------------------------------------------------------------------------------
# Output.


def describe_machine():
    """One line: processor, CPU count, Keras version and backend (and JAX devices on JAX)."""
    import platform

    import keras

    text = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"Keras {keras.__version__} on {keras.backend.backend()}")
    if keras.backend.backend() == "jax":
        import jax

        text += f", JAX {jax.__version__}, devices {[d.device_kind for d in jax.devices()]}"
    return text


def write_json(path, payload):
    """Writes `payload` as JSON to `path` atomically (a complete file or the old one, never half)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=".json")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(payload, stream, indent=2)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def json_saver(path, payload, key):
    """A callable(results, complete=False) that writes {**payload, key: results, "complete": ...}.

    Benchmarks call it after every finished model or depth, so that a run stopped by a timeout (or
    a crash) still leaves what it measured, marked "complete": false. Without a path, a no-op.
    """
    def save(results, complete=False):
        if path:
            write_json(path, dict(payload, **{key: list(results), "complete": bool(complete)}))
    return save


def print_table(header, rows, log=print):
    """A plain fixed-width table (header: column names; rows: lists of strings)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for line in [header, *rows]:
        log("  ".join(str(cell).rjust(width) for cell, width in zip(line, widths)))
