"""Running training/train.py as a subprocess into a run directory: the pattern the programs that
train many runs share (make_zoo.py, depth_sweep.py).

A run is `python training/train.py <flags> --model_dir=<run_dir>`, its output logged beside the
directory as `<run_dir>.log`, and `command.json` (the command, wall time, machine) written into the
directory once it finishes. train.py resumes an interrupted run itself (from its last complete
epoch, refusing another config); these helpers decide whether to let it or to start afresh.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMAND_FILE = "command.json"
#: TF_ENABLE_ONEDNN_OPTS for every run these programs start, unless the caller's environment sets
#: it. TensorFlow reads it once, when it loads, and where it is unset turns its oneDNN kernels on
#: only on x86 CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX. On an AVX2-only CPU (an AMD
#: EPYC of the Zen 2 generation) they made a training step of the Fashion-MNIST presets 1.48x (the
#: GloNet CNN), 1.36x (its ResNet-v2 twin) and 1.50x (the ViT) faster and the MLP's no different
#: (`benchmarks/onednn.py`, benchmarks/README.md); pinned, a run resumed on another CPU also keeps
#: its kernels.
ONEDNN_DEFAULT = "1"


def display_path(path):
    """`path` relative to the repository when inside it (as the commands record it), else as given."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def earlier_training(run_dir):
    """`(epochs, seconds)` an interrupted run in `run_dir` already trained (from its last state)."""
    from glonet_keras.training import rundir

    state = rundir.RunDirectory(run_dir).latest_state()
    return (state.epoch, float(sum(state.seconds_per_epoch))) if state else (0, 0.0)


def run_record(run_dir):
    """The run's run.json, or None where there is no run yet."""
    from glonet_keras.training import rundir

    return rundir.RunDirectory(run_dir).record() if Path(run_dir).exists() else None


def train_run(label, run_dir, command, *, resume, concurrent=1, cores=None, log=print):
    """Runs one train.py `command` (a list; argv[0] stands for the interpreter) into `run_dir`.

    With `resume`, an interrupted run there continues (the log is appended to, and the wall time
    recorded adds the epochs trained before) and a finished one with its command.json is left as
    it is; a finished run without one was not trained by these programs and is refused. Without
    `resume`, whatever is in `run_dir` is deleted first. `concurrent` > 1 says, in the machine
    record, that this many runs shared the machine (their seconds per epoch are not a lone run's).
    `cores` (a set of CPU numbers, from `core_slots`) pins the run to those cores (`taskset`), and
    its machine record says so.
    """
    run_dir = Path(run_dir)
    earlier_epochs, earlier_seconds = 0, 0.0
    if resume and run_dir.exists():
        if (run_record(run_dir) or {}).get("status") == "finished":
            if (run_dir / COMMAND_FILE).exists():
                log(f"[{label}] already trained in {display_path(run_dir)}; nothing to resume")
                return
            if _recover_command_record(run_dir, command, concurrent, cores):
                log(f"[{label}] finished in {display_path(run_dir)} before its command.json was "
                    "written (stopped at that moment); recorded it from run.json and metrics.json")
                return
            raise SystemExit(f"[{label}] {display_path(run_dir)} holds a finished run without the "
                             "command.json this script writes; train it afresh (without --resume).")
        earlier_epochs, earlier_seconds = earlier_training(run_dir)
        log(f"[{label}] resuming after epoch {earlier_epochs} ({earlier_seconds:.0f} s trained)")
    elif run_dir.exists():
        # A fresh run: train.py would otherwise resume from the old run's backup.
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log(f"[{label}] {shlex.join(command)}")
    env = run_environment()
    start = time.perf_counter()
    log_path = run_dir.parent / f"{run_dir.name}.log"
    with open(log_path, "a" if earlier_epochs else "w") as stream:
        # taskset sets the affinity before exec (a preexec_fn is unsafe beside the threads of
        # in_parallel); train.py sizes its thread pools to the cores it may use.
        pin = ["taskset", "-c", ",".join(map(str, sorted(cores)))] if cores else []
        process = subprocess.run([*pin, sys.executable, *command[1:]], cwd=REPO, env=env,
                                 stdout=stream, stderr=subprocess.STDOUT)
    if process.returncode:
        raise SystemExit(f"[{label}] train.py failed (exit {process.returncode}); see {log_path}")
    seconds = time.perf_counter() - start + earlier_seconds
    machine = describe_machine(cores, env) + (f"; {concurrent} runs at once" if concurrent > 1
                                              else "")
    record = {"command": shlex.join(command), "wall_seconds": seconds, "machine": machine}
    if earlier_epochs:
        # The interrupted call's start-up time is not in its epochs' times, so it is not counted.
        record["resumed_after_epoch"] = earlier_epochs
    from glonet_keras.training import rundir

    # Atomic: a kill mid-write would leave a command.json that says "trained" and reads as nothing.
    rundir.write_json(run_dir / COMMAND_FILE, record)
    log(f"[{label}] trained in {seconds:.0f} s")


def run_environment():
    """The environment a train.py run starts with: this one, TensorFlow's C++ log quiet, output
    unbuffered (the log is read while it trains), and TF_ENABLE_ONEDNN_OPTS=`ONEDNN_DEFAULT` unless
    this environment sets it."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", ONEDNN_DEFAULT)
    return env


def _recover_command_record(run_dir, command, concurrent, cores):
    """Writes the command.json of a run train.py finished but these programs were stopped before
    recording (a kill between the two), when its run.json says it ran exactly `command`; False
    (nothing written) otherwise. Its wall time is the sum of its epochs' times (the start-up and
    evaluation are not in it), and it says so."""
    from glonet_keras.training import rundir

    try:
        record = run_record(run_dir)
        metrics = rundir.read_json_record(Path(run_dir) / "metrics.json")
        seconds = float(sum(metrics["seconds_per_epoch"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if record.get("command") != list(command) or metrics.get("status") != "finished":
        return False
    machine = describe_machine(cores, run_environment()) + (
        f"; {concurrent} runs at once" if concurrent > 1 else "")
    rundir.write_json(Path(run_dir) / COMMAND_FILE, {
        "command": shlex.join(command), "wall_seconds": seconds, "machine": machine,
        "recovered": "written after train.py finished, from run.json and metrics.json: the program "
                     "that ran it was stopped before recording it; wall_seconds is the sum of the "
                     "epochs' times and machine describes the invocation that recorded it"})
    return True


def core_slots(parallel):
    """The cores this process may use, split into `parallel` (at least 2) disjoint sets of equal
    size (the remainder unused), one per run training at once; refused where there are fewer cores
    than runs or no `taskset` to pin them with (`--pin_cores` of make_zoo.py and depth_sweep.py)."""
    if not hasattr(os, "sched_getaffinity") or shutil.which("taskset") is None:
        raise SystemExit("Pinning runs to cores needs Linux's taskset (util-linux), not found "
                         "here; train without pinning.")
    if parallel < 2:
        raise SystemExit("--pin_cores shares the cores between runs trained at once: pass "
                         "--parallel=2 or more.")
    cores = sorted(os.sched_getaffinity(0))
    if parallel > len(cores):
        raise SystemExit(f"{parallel} runs at once, each pinned to its own cores, need at least "
                         f"{parallel} cores; this process may use {len(cores)}.")
    share = len(cores) // parallel
    return [frozenset(cores[i * share:(i + 1) * share]) for i in range(parallel)]


def in_parallel(calls, parallel, slots=None):
    """Runs the `calls` (each starts a process of its own and waits for it) `parallel` at once,
    in order; a failure (SystemExit) stops none of the others, and all are raised together at the
    end as one SystemExit, one line each, sorted.

    With `slots` (`parallel` of them, e.g. `core_slots(parallel)`), each call is made as
    `call(slot)` with a slot no other running call holds, and gives it back when it ends: the next
    waiting call takes the first one freed, so runs of uneven length still keep every slot busy.
    """
    import concurrent.futures
    import queue

    if slots is not None:
        if len(slots) != parallel:
            raise ValueError(f"in_parallel: {len(slots)} slots for {parallel} calls at once.")
        free = queue.SimpleQueue()
        for slot in slots:
            free.put(slot)

        def holding_a_slot(call):
            slot = free.get()
            try:
                return call(slot)
            finally:
                free.put(slot)

        calls = [lambda call=call: holding_a_slot(call) for call in calls]
    failed = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        for future in concurrent.futures.as_completed([pool.submit(call) for call in calls]):
            try:
                future.result()
            except SystemExit as error:
                failed.append(str(error))
    if failed:
        raise SystemExit("\n".join(sorted(failed)))


def describe_machine(cores=None, env=None):
    """The machine a run trains on, for the model card: the accelerator, else the CPU cores (those
    this process may use, or `cores` where the run was pinned to them), and on TensorFlow the
    TF_ENABLE_ONEDNN_OPTS of the run's environment `env`, where set (its kernels depend on it)."""
    if os.environ.get("KERAS_BACKEND") == "jax":
        try:
            import jax

            devices = [d for d in jax.devices() if d.platform != "cpu"]
        except Exception:  # noqa: BLE001 (any jax failure just means: describe the CPU)
            devices = []
        if devices:
            return f"{len(devices)} x {devices[0].device_kind} (JAX backend)"
    if cores:
        usable = len(cores)
    else:
        usable = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                  else os.cpu_count())
    cores = (f"{os.cpu_count()} CPU cores" if usable == os.cpu_count()
             else f"{usable} of {os.cpu_count()} CPU cores (pinned)")
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    onednn = (env or {}).get("TF_ENABLE_ONEDNN_OPTS") if backend == "tensorflow" else None
    return (f"{cores}, no GPU ({backend} backend"
            + (f", TF_ENABLE_ONEDNN_OPTS={onednn}" if onednn is not None else "")
            + "; timings noisy when shared)")
