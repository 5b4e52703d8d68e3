"""The real-budget depth sweeps of issue 21 (docs/RESULTS.md section 11): the CNN at depths 20, 56
and 110, the ViT at 6, 12 and 24 blocks, 3 seeds each, and the verdicts of section 11's rules.

docs/sections/11_depth_sweep.md holds the setting and the rules, written before any run finished;
this program implements exactly that. The sweeps are data (SWEEPS, RECIPE); each run is a
training/train.py run under `<runs_dir>/<sweep>/<family>/depth_<d>/seed_<s>`, logged beside its
directory as `seed_<s>.log`.

Steps (`--steps`, in this order):
  train     every run not finished, depth-major (every seed and family at the shallowest depth
            first): an interrupted run resumes from its last complete epoch (train.py refuses
            other flags), a finished one is skipped when its recorded command has this sweep's
            flags (a run trained by a hand-written launcher with the same flags is this sweep's
            own) and refused otherwise. Finished runs are never retrained: delete the directory to
            retrain one. `--noresume` restarts an interrupted run from scratch.
  evaluate  every finished run without an up-to-date evaluation: its model.keras on the seed's own
            validation split and the test split (loaded as train.py loads them: `data.load_split`
            with the run's seed and max_examples, the run's preprocessing.json); models with batch
            norm again after `analysis.recalibrate_batch_norm` on the first 2,000 images of the
            run's training split; GloNets: the accuracy of every exit, the exit k chosen on
            validation (the fewest first blocks within 2 points of the full model) and its test
            accuracy, and the contribution shares on the first 2,000 validation images after
            training and at the run's initialisation (rebuilt by `trainer.initial_model`: exact on
            the backend the run trained on). One JSON per run under
            `<evaluations_dir>/<sweep>/<family>_depth_<d>_seed_<s>.json` (by default
            docs/evaluations/depth_sweep, which git tracks: the measurements outlive the run
            directories, and the report can be re-rendered from a clone), recording the run's
            start and finish time and its model's sha256: a retrained run is evaluated again.
  report    from the evaluations only: the tables, the GloNet exit and self-regulation table and
            the verdicts of section 11's rules (a verdict whose runs are not all measured says
            "pending (n of 3 seeds)"), the budget, the machine and the commands. It rewrites the
            part of docs/sections/11_depth_sweep.md below its `<!-- results:` line (everything
            above is kept byte for byte) for both sweeps, whatever `--sweeps` says; then
            `python training/reproduce.py --report_only --output_dir=docs` re-renders RESULTS.md.

Examples:
  python training/depth_sweep.py --sweeps=cnn --steps=train          # hours on 2 CPU cores
  python training/depth_sweep.py --steps=evaluate,report
  python training/depth_sweep.py --sweeps=cnn --depths=20 --seeds=0 --families=glonet

On a lent GPU (JAX; XLA on, as make_zoo's GPU runs), e.g. the ViT sweep, 6 runs at once:
  KERAS_BACKEND=jax python training/depth_sweep.py --sweeps=vit --steps=train,evaluate \
      --extra_train_flags=--jit_compile=auto --parallel=6
training/gpu_depth_sweep.sh does that in one device call, under a deadline, and packs the
evaluations (and logs, no weights) into $OUT for `tar -xzf ... -C docs/evaluations/depth_sweep`.
`--extra_train_flags` may only set how a run executes (RUN_SETTINGS); a flag that would change the
recipe is refused (`--allow_overrides`: smoke tests), and so is such a run's evaluation.
Evaluate a run on the backend it trained on: its initialisation is rebuilt with that backend's
random numbers (an evaluation on another backend records the shares at initialisation as
unavailable rather than compare against another network's).
"""

import json
import os
import platform
import statistics
from pathlib import Path

from absl import app, flags

import train_runs  # noqa: E402  (training/ is on sys.path when this script runs)
from train_runs import in_parallel  # noqa: E402
from experiment_common import fmt, table, verdict  # noqa: E402

REPO = train_runs.REPO
SECTION_PATH = REPO / "docs" / "sections" / "11_depth_sweep.md"
#: Where the evaluations live: tracked by git, unlike the runs (gigabytes of checkpoints).
EVALUATIONS_DIR = REPO / "docs" / "evaluations" / "depth_sweep"
RESULTS_MARKER = "<!-- results:"
STEPS = ("train", "evaluate", "report")
#: Bumped when what an evaluation measures changes: older evaluations are then measured again.
EVALUATION_FORMAT = 1
#: Images of the training split the BN statistics are recomputed on, and of the validation split
#: the contribution shares read (section 11).
RECALIBRATION_EXAMPLES = 2000
SHARE_EXAMPLES = 2000
#: Section 11's thresholds, in points of accuracy (or of the share ratio).
RESILIENCE_POINTS = 2.0
NO_BATCH_NORM_POINTS = 2.0
AHEAD_POINTS = 2.0
EXIT_POINTS = 2.0
EXIT_FRACTION = 0.5
SELF_REGULATION_RATIO = 0.9
COLLAPSED_ACCURACY = 0.20

# The recipe every run of both sweeps shares (section 11's "Budget and recipe"), in the order the
# flags go on the command line, after the family's and the architecture's.
RECIPE = dict(dataset="fashion_mnist", max_examples=20000, epochs=10, batch_size=128,
              optimizer="adamw", learning_rate=0.002, weight_decay=0.05, schedule="cosine",
              warmup_epochs=1, label_smoothing=0.1)
# After the seed: no XLA on the CPU (oneDNN ran these widths faster without it; a GPU run appends
# --jit_compile=auto), and quiet, log-friendly output without TensorBoard files.
RUN_SETTINGS = dict(jit_compile="false", verbose=2, tensorboard="false")

SWEEPS = {
    "cnn": dict(
        title="CNN (CIFAR layout, width 16)",
        depths=(20, 56, 110),
        depth_words="depth",
        depth_format="depth {}",
        seeds=(0, 1, 2),
        families={
            "glonet": dict(model="glonet_cnn"),
            "plain": dict(model="plain_cnn"),
            "resnet_nobn": dict(model="resnet_cnn", normalization="none"),
            "resnet_bn": dict(model="resnet_cnn", normalization="batch"),
        },
        labels={"glonet": "GloNet (no BN)", "plain": "plain chain (no BN, no skips)",
                "resnet_nobn": "ResNet, BN-free", "resnet_bn": "ResNet-v2 (BN)"},
        architecture=dict(width=16),
        glonet="glonet",
        baselines=("plain", "resnet_nobn"),  # BN-free
        batch_norm_twin="resnet_bn",
    ),
    "vit": dict(
        title="ViT (96-d tokens, 4 heads, MLP 192, conv tokenizer, 4x4 patches)",
        depths=(6, 12, 24),
        depth_words="blocks",
        depth_format="{} blocks",
        seeds=(0, 1, 2),
        families={
            "glonet": dict(model="glonet_vit", head_initializer="zeros"),
            "vit": dict(model="vit"),
        },
        labels={"glonet": "GloNet ViT (zero-initialised head)", "vit": "standard ViT (pre-LN)"},
        architecture=dict(width=96, patch_size=4, num_heads=4, mlp_dim=192, tokenizer="conv"),
        glonet="glonet",
        baselines=("vit",),
        batch_norm_twin=None,
    ),
}


# ------------------------------------------------------------------------------------ the runs


def run_flags(sweep, family, depth, seed):
    """The train.py flags of one run, in command-line order (without --model_dir)."""
    spec = SWEEPS[sweep]
    return {**spec["families"][family], "depth": depth, **spec["architecture"], **RECIPE,
            "seed": seed, **RUN_SETTINGS}


def run_directory(runs_dir, sweep, family, depth, seed):
    return Path(runs_dir) / sweep / family / f"depth_{depth}" / f"seed_{seed}"


def evaluation_path(evaluations_dir, sweep, family, depth, seed):
    # Not inside the run directory: a run directory holds only the files a run writes, and the
    # evaluations are kept (in git) where the runs are not.
    return Path(evaluations_dir) / sweep / f"{family}_depth_{depth}_seed_{seed}.json"


def train_command(sweep, family, depth, seed, run_dir, extra_flags=()):
    """The exact train.py command of a run, as a list (argv[0] stands for the interpreter)."""
    args = [f"--{key}={value}" for key, value in run_flags(sweep, family, depth, seed).items()]
    return ["python", "training/train.py", *args, *extra_flags, f"--model_dir={run_dir}"]


def runs(sweep, depths=None, families=None, seeds=None):
    """(family, depth, seed) of the sweep's runs, depth-major, then seed, then family (the order
    they train in), restricted to the given depths, families and seeds."""
    spec = SWEEPS[sweep]
    return [(family, depth, seed)
            for depth in spec["depths"] if depths is None or depth in depths
            for seed in spec["seeds"] if seeds is None or seed in seeds
            for family in spec["families"] if families is None or family in families]


def _flags_of(command):
    return [arg for arg in command[2:] if not arg.startswith("--model_dir=")]


def check_own_run(record, command, label):
    """Refuses (SystemExit) a finished run whose recorded command lacks this run's flags; returns
    the flags it was trained with beyond them (e.g. --jit_compile=auto on a GPU)."""
    recorded, expected = _flags_of(record.get("command") or []), _flags_of(command)
    if recorded[:len(expected)] != expected:
        differing = sorted(set(recorded) ^ set(expected))
        raise SystemExit(
            f"[{label}] the finished run there was trained with other flags than this sweep's "
            f"(differing: {differing}); move it away, or delete it to retrain it.")
    return recorded[len(expected):]


def overridden_flags(extra_flags):
    """The names among `extra_flags` that would change a run's budget, recipe or architecture:
    extras may only change how a run executes (RUN_SETTINGS: XLA, verbosity, TensorBoard), since
    train.py takes the last value of a repeated flag."""
    names = [flag[2:].split("=", 1)[0] for flag in extra_flags if flag.startswith("--")]
    return sorted({name for name in names if name not in RUN_SETTINGS})


def train(sweep, runs_dir, *, resume=True, extra_flags=(), depths=None, families=None,
          seeds=None, parallel=1, pin_cores=False, allow_overrides=False, log=print):
    """The `train` step (see the module docstring). `parallel` runs train.py processes at once (a
    GPU has room for several of these small models), each pinned to its own share of the cores
    with `pin_cores` (a CPU); the runs start in the sweep's order. Extra
    flags that would change a run's recipe are refused unless `allow_overrides` (a smoke test):
    such runs are not the sweep's, and `load_evaluations` refuses their evaluations."""
    overridden = overridden_flags(extra_flags)
    if overridden and not allow_overrides:
        raise SystemExit(f"--extra_train_flags would change the sweep's {', '.join(overridden)}: "
                         f"extras may only set {', '.join(RUN_SETTINGS)}.")
    if parallel < 1:
        raise SystemExit(f"--parallel must be at least 1, received {parallel}.")
    slots = train_runs.core_slots(parallel) if pin_cores else None
    pending = []
    for family, depth, seed in runs(sweep, depths, families, seeds):
        run_dir = run_directory(runs_dir, sweep, family, depth, seed)
        label = f"{sweep} {family} depth {depth} seed {seed}"
        command = train_command(sweep, family, depth, seed, train_runs.display_path(run_dir),
                                extra_flags)
        record = train_runs.run_record(run_dir)
        if (record or {}).get("status") == "finished":
            check_own_run(record, command, label)
            log(f"[{label}] finished; skipped")
            continue
        pending.append((label, run_dir, command))
    if parallel == 1:
        for label, run_dir, command in pending:
            train_runs.train_run(label, run_dir, command, resume=resume, log=log)
        return
    concurrent = min(parallel, len(pending))
    in_parallel([lambda cores=None, r=r: train_runs.train_run(*r, resume=resume,
                                                              concurrent=concurrent, cores=cores,
                                                              log=log)
                 for r in pending], parallel, slots=slots)


# ----------------------------------------------------------------------------------- evaluating


def run_identity(run_dir, record):
    """What changes when the run is retrained: its start and finish times, its model's sha256."""
    from glonet_keras.training import rundir

    return {"started": record.get("started"), "finished": record.get("finished"),
            "model_sha256": rundir.sha256(os.path.join(run_dir, "model.keras"))}


def is_up_to_date(path, identity):
    try:
        evaluation = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return evaluation.get("format") == EVALUATION_FORMAT and evaluation.get("run") == identity


def train_config(metrics):
    """The run's TrainConfig, from the `config` its metrics.json records."""
    import dataclasses

    from glonet_keras.training import trainer

    names = {field.name for field in dataclasses.fields(trainer.TrainConfig)}
    return trainer.TrainConfig(**{key: value for key, value in metrics["config"].items()
                                  if key in names})


def initial_model(config):
    """The run's model at initialisation: `trainer.initial_model` (the seed, then `build_model`,
    as train.py builds it) for its data set's shape and classes."""
    from glonet_keras import data
    from glonet_keras.training import trainer

    info = data.dataset_info(config.dataset, seed=config.seed)
    return trainer.initial_model(config, info)


def deeper_half_share(shares, num_blocks):
    """The share of the deeper half of the blocks (the last L // 2; a stem's share, when
    aggregated, comes first and is in neither half)."""
    return float(sum(shares[len(shares) - num_blocks // 2:]))


def chosen_exit(validation_exits, points=EXIT_POINTS):
    """The fewest first blocks k whose validation accuracy is within `points` of the full model's."""
    full = validation_exits[-1]
    return next(k for k, accuracy in enumerate(validation_exits, 1)
                if 100 * (full - accuracy) <= points + 1e-9)


def _accuracy(model, x, y):
    import numpy as np

    logits = model.predict(x, batch_size=512, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y))


def measure(run_dir, log=print):
    """The evaluation record of one finished run (see the module docstring)."""
    import keras
    import numpy as np

    from glonet_keras import analysis, data

    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = train_config(metrics)
    model = keras.saving.load_model(run_dir / "model.keras", compile=False, safe_mode=True)
    preprocessing = data.load_preprocessing(run_dir / "preprocessing.json")
    splits = {}
    for split in ("validation", "test"):
        x, y = data.load_split(config.dataset, split, seed=config.seed,
                               max_examples=config.max_examples)
        splits[split] = np.asarray(preprocessing(x)), np.asarray(y, "int64")
    record = {"parameters": int(model.count_params()), "epochs": metrics["epochs"],
              "seconds_per_epoch": statistics.median(metrics["seconds_per_epoch"]),
              "train_py": {"validation": metrics["validation"].get("accuracy"),
                           "test": metrics["test"].get("accuracy")},
              "versions": metrics["versions"],
              "num_examples": {split: int(len(y)) for split, (_, y) in splits.items()}}
    glonet = analysis.is_glonet(model)
    for split, (x, y) in splits.items():
        if glonet:
            exits = [float(a) for a in analysis.early_exit_accuracy(model, x, y, batch_size=512)]
            record[split] = {"accuracy": exits[-1], "exit_accuracy": exits}
        else:
            record[split] = {"accuracy": _accuracy(model, x, y)}
    if analysis.batch_norm_layers(model):
        x_train, _ = data.load_split(config.dataset, "train", seed=config.seed,
                                     max_examples=config.max_examples)
        sample = np.asarray(preprocessing(x_train[:RECALIBRATION_EXAMPLES]))
        analysis.recalibrate_batch_norm(model, sample)
        record["recalibrated"] = {"num_examples": int(len(sample)), **{
            split: {"accuracy": _accuracy(model, x, y)} for split, (x, y) in splits.items()}}
    if glonet:
        num_blocks = analysis.skeleton(model).num_blocks
        k = chosen_exit(record["validation"]["exit_accuracy"])
        x_shares = splits["validation"][0][:SHARE_EXAMPLES]
        shares = [float(s) for s in analysis.contribution_shares(model, x_shares)]
        record["glonet"] = {"num_blocks": num_blocks, "exit_k": k,
                            "exit_test_accuracy": record["test"]["exit_accuracy"][k - 1],
                            "shares": shares, "deeper_half_share": deeper_half_share(shares, num_blocks)}
        trained_on = metrics["versions"].get("backend")
        if trained_on != keras.backend.backend():
            record["glonet"]["initial"] = {
                "unavailable": f"the run trained on the {trained_on} backend and this evaluation "
                               f"runs on {keras.backend.backend()}: its initialisation cannot be "
                               "rebuilt exactly here"}
        else:
            start = initial_model(config)
            architecture = {key: value for key, value in model.get_config().items() if key != "name"}
            rebuilt = {key: value for key, value in start.get_config().items() if key != "name"}
            if rebuilt != architecture:
                raise SystemExit(f"{run_dir}: the rebuilt initial model's config differs from the "
                                 "trained model's; cannot measure its initial shares.")
            initial = [float(s) for s in analysis.contribution_shares(start, x_shares)]
            record["glonet"]["initial"] = {
                "shares": initial, "deeper_half_share": deeper_half_share(initial, num_blocks)}
    return record


def evaluate(sweep, runs_dir, evaluations_dir, *, depths=None, families=None, seeds=None,
             parallel=1, log=print):
    """The `evaluate` step: measures every finished run without an up-to-date evaluation; with
    `parallel` > 1, in that many processes at once (this program, one run each)."""
    pending = []
    for family, depth, seed in runs(sweep, depths, families, seeds):
        run_dir = run_directory(runs_dir, sweep, family, depth, seed)
        label = f"{sweep} {family} depth {depth} seed {seed}"
        record = train_runs.run_record(run_dir)
        if (record or {}).get("status") != "finished":
            continue
        path = evaluation_path(evaluations_dir, sweep, family, depth, seed)
        identity = run_identity(run_dir, record)
        if is_up_to_date(path, identity):
            log(f"[{label}] evaluation up to date")
            continue
        pending.append((family, depth, seed))
    if parallel > 1 and len(pending) > 1:
        _evaluate_in_processes(sweep, runs_dir, evaluations_dir, pending, parallel, log)
        return
    for family, depth, seed in pending:
        _evaluate_run(sweep, runs_dir, evaluations_dir, family, depth, seed, log)


def _evaluate_run(sweep, runs_dir, evaluations_dir, family, depth, seed, log):
    from glonet_keras.training import rundir

    run_dir = run_directory(runs_dir, sweep, family, depth, seed)
    label = f"{sweep} {family} depth {depth} seed {seed}"
    record = train_runs.run_record(run_dir)
    measured = measure(run_dir, log=log)
    evaluation = {"format": EVALUATION_FORMAT, "sweep": sweep, "family": family,
                  "depth": depth, "seed": seed, "run": run_identity(run_dir, record),
                  "command": record.get("command"), "evaluated_on": evaluation_machine(),
                  **measured}
    command_file = run_dir / train_runs.COMMAND_FILE
    if command_file.exists():
        evaluation["training_machine"] = json.loads(command_file.read_text()).get("machine")
    path = evaluation_path(evaluations_dir, sweep, family, depth, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_json(path, evaluation)  # Atomically: a temporary file, then a rename.
    log(f"[{label}] test accuracy {evaluation['test']['accuracy']:.4f}"
        + (f", recalibrated {evaluation['recalibrated']['test']['accuracy']:.4f}"
           if "recalibrated" in evaluation else ""))


def _evaluate_in_processes(sweep, runs_dir, evaluations_dir, pending, parallel, log):
    """Each pending run's evaluation in its own process of this program, `parallel` at once
    (`in_parallel`)."""
    import subprocess
    import sys

    def one(family, depth, seed):
        command = [sys.executable, str(Path(__file__).resolve()), "--steps=evaluate",
                   f"--sweeps={sweep}", f"--runs_dir={runs_dir}",
                   f"--evaluations_dir={evaluations_dir}", f"--families={family}",
                   f"--depths={depth}", f"--seeds={seed}"]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        for line in done.stdout.splitlines():
            log(line)
        if done.returncode:
            tail = "\n".join(done.stderr.splitlines()[-5:])
            raise SystemExit(f"[{sweep} {family} depth {depth} seed {seed}] evaluation failed "
                             f"(exit {done.returncode}):\n{tail}")

    in_parallel([lambda r=r: one(*r) for r in pending], parallel)


def evaluation_machine():
    import keras

    return {"platform": platform.platform(), "cpu_cores": os.cpu_count(),
            "keras": keras.__version__, "backend": keras.backend.backend()}


def load_evaluations(sweep, evaluations_dir):
    """{(family, depth, seed): evaluation} of the sweep's runs measured so far. An evaluation that
    is not of its file name's run under this sweep's flags (another run's, a smoke run's with
    other epochs, a corrupt file) is refused with a ValueError that names the file."""
    found = {}
    for family, depth, seed in runs(sweep):
        path = evaluation_path(evaluations_dir, sweep, family, depth, seed)
        if not path.exists():
            continue
        try:
            evaluation = json.loads(path.read_text())
            recorded = _flags_of(evaluation["command"])
            identity = tuple(evaluation[key] for key in ("sweep", "family", "depth", "seed"))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not an evaluation of this program ({error!r}).") from None
        expected = _flags_of(train_command(sweep, family, depth, seed, "-"))
        if identity != (sweep, family, depth, seed) or recorded[:len(expected)] != expected:
            raise ValueError(f"{path}: the evaluation is not of {sweep} {family} depth {depth} "
                             f"seed {seed} under this sweep's flags (differing: "
                             f"{sorted(set(recorded) ^ set(expected))}).")
        if overridden_flags(recorded[len(expected):]):
            raise ValueError(f"{path}: its run overrode the sweep's "
                             f"{', '.join(overridden_flags(recorded[len(expected):]))} "
                             "(a smoke run?); it is not this sweep's.")
        found[family, depth, seed] = evaluation
    return found


# ------------------------------------------------------------------------------------- report


def cell(values, scale=100.0, digits=1):
    """experiment_common.fmt with the seed count: 'mean ± std (n seeds)', 'x.x (1 seed)' or '–';
    a std that rounds to zero reads '< 0.1'."""
    if not values:
        return "–"
    if len(values) == 1:
        return fmt(values, scale, digits)
    std = statistics.pstdev(scale * v for v in values)
    if round(std, digits) > 0:
        return f"{fmt(values, scale, digits)} ({len(values)} seeds)"
    mean = statistics.fmean(scale * v for v in values)
    return f"{mean:.{digits}f} ± < {10 ** -digits:g} ({len(values)} seeds)"


def judge(values, threshold, seeds, held_if="at_most"):
    """A rule's verdict over per-seed `values` (experiment_common.verdict: a mean within one std of
    the threshold is inconclusive), or "pending (n of N seeds)" while some seeds are missing."""
    if len(values) < len(seeds):
        return f"pending ({len(values)} of {len(seeds)} seeds)"
    if held_if == "more_than":
        values, threshold = [-v for v in values], -threshold
    result = verdict([("held", values, threshold)])
    return result.replace("inconclusive at the held threshold",
                          "inconclusive (within one std of the threshold)")


def _test(evaluation, recalibrated=True):
    """The test accuracy a verdict reads: a BN model's recalibrated one."""
    if recalibrated and "recalibrated" in evaluation:
        return evaluation["recalibrated"]["test"]["accuracy"]
    return evaluation["test"]["accuracy"]


def _per_seed(evaluations, spec, read):
    """`read(seed)` for each seed where it returns a value (it returns None where runs are missing)."""
    found = [read(seed) for seed in spec["seeds"]]
    return [value for value in found if value is not None]


def _values(values, digits=2):
    return ", ".join(f"{v:.{digits}f}" for v in values)


def _depth(spec, depth):
    """How a sweep names one of its depths: "depth 110" for the CNN, "24 blocks" for the ViT."""
    return spec["depth_format"].format(depth)


def verdict_lines(sweep, evaluations):
    """Section 11's verdicts for one sweep, as Markdown list items."""
    spec = SWEEPS[sweep]
    glonet, shallow, deep = spec["glonet"], spec["depths"][0], spec["depths"][-1]
    seeds = spec["seeds"]

    def get(family, depth, seed):
        return evaluations.get((family, depth, seed))

    def line(name, rule, values, result, unit="points", digits=2):
        numbers = (f": {_values(values, digits)}{' ' + unit if unit else ''} per seed"
                   if values else "")
        return f"- **{name}** ({rule}): **{result}**{numbers}."

    lines = []
    resilience = _per_seed(evaluations, spec, lambda s: None if not (
        get(glonet, shallow, s) and get(glonet, deep, s)) else
        100 * (_test(get(glonet, shallow, s)) - _test(get(glonet, deep, s))))
    fate = []
    for baseline in spec["baselines"]:
        accuracies = _per_seed(evaluations, spec, lambda s, b=baseline: None if not get(b, deep, s)
                               else _test(get(b, deep, s)))
        if accuracies:
            collapsed = sum(a < COLLAPSED_ACCURACY for a in accuracies)
            fate.append(f"{spec['labels'][baseline]} at {_depth(spec, deep)}: "
                        f"{cell(accuracies)} %, collapsed (below {100 * COLLAPSED_ACCURACY:.0f} %) "
                        f"in {collapsed} of {len(accuracies)} seeds")
    lines.append(line(
        "Depth resilience", f"GloNet's test accuracy at {_depth(spec, shallow)} minus at "
        f"{_depth(spec, deep)}; held = at most {RESILIENCE_POINTS:g} points", resilience,
        judge(resilience, RESILIENCE_POINTS, seeds)))
    if fate:
        lines.append("  The baselines' fate: " + "; ".join(fate) + ".")
    twin = spec["batch_norm_twin"]
    if twin:
        per_depth, results = [], []
        for depth in spec["depths"]:
            gaps = _per_seed(evaluations, spec, lambda s, d=depth: None if not (
                get(twin, d, s) and get(glonet, d, s)) else
                100 * (_test(get(twin, d, s)) - _test(get(glonet, d, s))))
            result = judge(gaps, NO_BATCH_NORM_POINTS, seeds)
            results.append(result)
            per_depth.append(f"depth {depth}: {result}"
                             + (f" ({_values(gaps)} points)" if gaps else ""))
        if any(r.startswith("pending") for r in results):
            overall = "pending"
        elif all(r.startswith("held") for r in results):
            overall = "held"
        elif any(r.startswith("did not hold") for r in results):
            overall = "did not hold"
        else:
            overall = "inconclusive (within one std of the threshold)"
        lines.append(f"- **No batch norm needed** (ResNet-v2's recalibrated test accuracy minus "
                     f"GloNet's, per seed; held = at most {NO_BATCH_NORM_POINTS:g} points at every "
                     f"depth): **{overall}**; " + "; ".join(per_depth) + ".")
    ahead = _per_seed(evaluations, spec, lambda s: None if not (
        spec["baselines"] and get(glonet, deep, s)
        and all(get(b, deep, s) for b in spec["baselines"])) else
        100 * (_test(get(glonet, deep, s)) - max(_test(get(b, deep, s)) for b in spec["baselines"])))
    lines.append("" if not spec["baselines"] else line(
        "Ahead of the BN-free baselines", f"GloNet's test accuracy minus the best of "
        f"{', '.join(spec['labels'][b] for b in spec['baselines'])} at {_depth(spec, deep)}, "
        f"per seed; held = more than {AHEAD_POINTS:g} points", ahead,
        judge(ahead, AHEAD_POINTS, seeds, held_if="more_than")))
    lines = [entry for entry in lines if entry]
    deep_glonets = [get(glonet, deep, s) for s in seeds if get(glonet, deep, s)]
    exits = [e["glonet"]["exit_k"] for e in deep_glonets]
    blocks = deep_glonets[0]["glonet"]["num_blocks"] if deep_glonets else None
    lines.append(line(
        "Early exit", f"the fewest first blocks within {EXIT_POINTS:g} points of the full model on "
        f"validation, at {_depth(spec, deep)}"
        + (f" ({blocks} blocks)" if blocks and blocks != deep else "")
        + "; held = at most half the blocks", [float(k) for k in exits],
        judge(exits, blocks * EXIT_FRACTION if blocks else 0.0, seeds), unit="blocks", digits=0)
        + (f" Test accuracy of that exit: {cell([e['glonet']['exit_test_accuracy'] for e in deep_glonets])} %."
           if deep_glonets else ""))
    measured = [e for e in deep_glonets if "deeper_half_share" in e["glonet"].get("initial", {})]
    ratios = [e["glonet"]["deeper_half_share"] / e["glonet"]["initial"]["deeper_half_share"]
              for e in measured]
    unavailable = len(deep_glonets) - len(measured)
    even = sum(map(even_at_initialisation, measured))
    lines.append(line(
        "Self-regulation", f"the deeper half's share of the contributions on {SHARE_EXAMPLES:,} "
        f"validation images after training over that share at initialisation, at "
        f"{_depth(spec, deep)}; held = at most {SELF_REGULATION_RATIO:g}", ratios,
        judge(ratios, SELF_REGULATION_RATIO, seeds), unit="")
        + (f" ({unavailable} run(s) evaluated on another backend than they trained on: their "
           "initialisation was not rebuilt.)" if unavailable else "")
        + (f" In {even} of {len(measured)} run(s) every contribution was zero at initialisation "
           "(a zero-initialised head): the shares there are the even split `contribution_shares` "
           "returns for a zero total, so the ratio reads the trained share against an even split, "
           "not against a measured one." if even else ""))
    return lines


def even_at_initialisation(evaluation):
    """Whether a GloNet run's initial shares are the exact even split: what `contribution_shares`
    returns when every contribution is zero (a zero-initialised head), never a measured share."""
    initial = evaluation["glonet"].get("initial", {}).get("shares")
    return bool(initial) and all(share == initial[0] for share in initial)


def accuracy_table(sweep, evaluations, split="test"):
    spec = SWEEPS[sweep]
    rows = []
    for family, label in spec["labels"].items():
        variants = [("", False)]
        if family == spec["batch_norm_twin"]:
            variants = [(", as trained", False), (", recalibrated", True)]
        for suffix, recalibrated in variants:
            row = [label + suffix]
            for depth in spec["depths"]:
                values = [(e["recalibrated"] if recalibrated else e)[split]["accuracy"]
                          for (f, d, _), e in sorted(evaluations.items()) if f == family and d == depth]
                row.append(cell(values))
            rows.append(row)
    return table(["family", *[_depth(spec, d) for d in spec["depths"]]], rows)


def glonet_table(sweep, evaluations):
    """Per GloNet run measured: blocks, the exit chosen on validation, its test accuracy, and the
    deeper half's share after training and at initialisation."""
    spec = SWEEPS[sweep]
    rows = []
    for (family, depth, seed), e in sorted(evaluations.items(), key=lambda i: (i[0][1], i[0][2])):
        if family != spec["glonet"]:
            continue
        g = e["glonet"]
        initial = g.get("initial", {}).get("deeper_half_share")
        rows.append([depth, seed, g["num_blocks"], f"{100 * e['validation']['accuracy']:.1f}",
                     f"{100 * e['test']['accuracy']:.1f}", f"{g['exit_k']} of {g['num_blocks']}",
                     f"{100 * g['exit_test_accuracy']:.1f}", f"{100 * g['deeper_half_share']:.1f}",
                     "n/a" if initial is None else f"{100 * initial:.1f}"
                     + (" (zero head: even split)" if even_at_initialisation(e) else ""),
                     "n/a" if initial is None else f"{g['deeper_half_share'] / initial:.2f}"])
    if not rows:
        return "No GloNet run of this sweep has been measured yet."
    return table([spec["depth_words"], "seed", "blocks L", "validation (%)", "test (%)",
                  "exit k (validation)", "exit k test (%)", "deeper half's share (%)",
                  "at initialisation (%)", "ratio"], rows)


def per_run_table(sweep, evaluations):
    rows = []
    for (family, depth, seed), e in sorted(evaluations.items(), key=lambda i: (i[0][1], i[0][0], i[0][2])):
        recalibrated = e.get("recalibrated")
        rows.append([family, depth, seed, f"{e['parameters']:,}",
                     f"{100 * e['validation']['accuracy']:.2f}", f"{100 * e['test']['accuracy']:.2f}",
                     f"{100 * recalibrated['test']['accuracy']:.2f}" if recalibrated else "n/a",
                     f"{100 * e['train_py']['test']:.2f}" if e["train_py"]["test"] is not None else "n/a",
                     f"{e['seconds_per_epoch']:.0f}"])
    return table(["family", SWEEPS[sweep]["depth_words"], "seed", "parameters", "validation (%)",
                  "test (%)", "test, BN recalibrated (%)", "train.py's test (%)", "s / epoch"], rows)


def sweep_section(sweep, runs_dir, evaluations):
    spec = SWEEPS[sweep]
    planned = runs(sweep)
    finished = [r for r in planned if (train_runs.run_record(
        run_directory(runs_dir, sweep, *r)) or {}).get("status") == "finished"]
    waiting = [r for r in finished if r not in evaluations]
    lines = [f"### {spec['title']}", ""]
    status = (f"Measured: {len(evaluations)} of the {len(planned)} runs "
              f"({len(spec['families'])} families x {len(spec['depths'])} depths x "
              f"{len(spec['seeds'])} seeds)")
    if waiting:
        status += f"; {len(waiting)} more finished, not yet evaluated"
    lines += [status + ".", ""]
    if not evaluations:
        return lines + ["No run of this sweep has been measured yet.", ""]
    lines += ["Test accuracy (%), mean ± std over the seeds measured (the BN model as trained and "
              "with its statistics recalibrated on 2,000 training images):" if spec["batch_norm_twin"]
              else "Test accuracy (%), mean ± std over the seeds measured:", "",
              accuracy_table(sweep, evaluations), "",
              f"GloNet: the exit chosen on validation (the fewest first blocks within "
              f"{EXIT_POINTS:g} points of the full model) and self-regulation (the share of the "
              f"deeper half, the last L // 2 blocks, of the contribution norm on {SHARE_EXAMPLES:,} "
              "validation images; at initialisation: the run's own initial weights, rebuilt from "
              "its seed), per run:", "",
              glonet_table(sweep, evaluations), "",
              "**Verdicts** (section 11's rules; a mean within one std of its threshold is "
              "inconclusive; a verdict waits for all its runs):", "",
              *verdict_lines(sweep, evaluations), "",
              "Per run (train.py's own test accuracy beside this evaluation's, as a check; seconds "
              "per epoch: the median epoch):", "",
              per_run_table(sweep, evaluations), ""]
    return lines


def report_body(runs_dir, evaluations_dir, sweeps=None):
    """The Markdown that follows the results marker in section 11 (from the evaluations; the runs
    directory only says which runs finished and wait for an evaluation)."""
    sweeps = list(SWEEPS) if sweeps is None else sweeps
    lines = []
    evaluations = {sweep: load_evaluations(sweep, evaluations_dir) for sweep in sweeps}
    for sweep in sweeps:
        lines += sweep_section(sweep, runs_dir, evaluations[sweep])
    everything = [e for found in evaluations.values() for e in found.values()]
    lines += ["### Budget, machine and commands", "",
              f"Every run: {RECIPE['epochs']} epochs of the first {RECIPE['max_examples']:,} images "
              f"of its seed's training split, batch {RECIPE['batch_size']}, {RECIPE['optimizer']} "
              f"{RECIPE['learning_rate']:g}, weight decay {RECIPE['weight_decay']:g}, cosine with "
              f"{RECIPE['warmup_epochs']} warm-up epoch, label smoothing {RECIPE['label_smoothing']:g}; "
              f"seeds {', '.join(map(str, SWEEPS[sweeps[0]]['seeds']))}."]
    if everything:
        trained = sorted({f"Keras {e['versions'].get('keras')}, {e['versions'].get('backend')} backend"
                          + (f" (TensorFlow {e['versions']['tensorflow']})"
                             if e["versions"].get("tensorflow") else "") for e in everything})
        machines = sorted({e.get("training_machine") or "not recorded (trained by a launcher "
                           "outside this program's train step)" for e in everything})
        evaluated = sorted({f"{m['platform']}, {m['cpu_cores']} CPU cores, Keras {m['keras']} "
                            f"({m['backend']} backend)" for m in (e["evaluated_on"] for e in everything)})
        lines += ["", f"- Trained with: {'; '.join(trained)}.",
                  f"- Training machine: {'; '.join(machines)}.",
                  f"- Evaluated on: {'; '.join(evaluated)}."]
    first = sweeps[0]
    family, depth, seed = runs(first)[0]
    example = train_command(first, family, depth, seed, train_runs.display_path(
        run_directory(REPO / "runs" / "depth_sweep", first, family, depth, seed)))
    lines += ["", "Each run is `" + " ".join(example) + "` with its family's, depth's and seed's "
              "flags (`run_flags` in training/depth_sweep.py); the whole sweep:", "", "```",
              "python training/depth_sweep.py --steps=train,evaluate,report",
              "python training/reproduce.py --report_only --output_dir=docs", "```", "",
              "Every number above comes from the runs' evaluations, one JSON per run in "
              f"`{train_runs.display_path(evaluations_dir)}/<sweep>/`; "
              "`python training/depth_sweep.py --steps=report` re-renders this part from them."]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_section(path, body):
    """Replaces what follows the results marker line in `path` by `body`; the marker line and
    everything above it are kept byte for byte."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    position = 0
    for line in text.splitlines(keepends=True):
        if line.startswith(RESULTS_MARKER):
            kept = text[:position + len(line)]
            break
        position += len(line)
    else:
        raise ValueError(f"{path} has no line starting with {RESULTS_MARKER!r}: the report is "
                         "written below that marker only, and will not guess where it goes.")
    if not kept.endswith("\n"):
        kept += "\n"
    path.write_text(kept + "\n" + body, encoding="utf-8")


# --------------------------------------------------------------------------------------- main


FLAGS = flags.FLAGS


def define_flags():
    """The program's flags, defined only when it runs (make_zoo.py has flags of the same names, and
    the tests import both modules for their functions)."""
    flags.DEFINE_list("steps", list(STEPS), f"Any of {', '.join(STEPS)}, run in that order.")
    flags.DEFINE_list("sweeps", list(SWEEPS), f"Any of {', '.join(SWEEPS)} (report: always both).")
    flags.DEFINE_string("runs_dir", str(REPO / "runs" / "depth_sweep"),
                        "Where the runs live (git-ignored).")
    flags.DEFINE_string("evaluations_dir", str(EVALUATIONS_DIR),
                        "Where the evaluations live (one JSON per run; tracked by git).")
    flags.DEFINE_list("depths", None, "Only these depths (train, evaluate).")
    flags.DEFINE_list("families", None, "Only these families (train, evaluate).")
    flags.DEFINE_list("seeds", None, "Only these seeds (train, evaluate).")
    flags.DEFINE_bool("resume", True, "Continue an interrupted run from its last complete epoch; "
                      "--noresume starts it afresh. Finished runs are never retrained.")
    flags.DEFINE_list("extra_train_flags", [], "Flags appended to every train.py command after the "
                      f"sweep's; only {', '.join(RUN_SETTINGS)} (e.g. --jit_compile=auto on a GPU).")
    flags.DEFINE_integer("parallel", 1, "train, evaluate: how many runs train (train.py "
                         "processes) or are evaluated at once (a GPU fits several; on a CPU they "
                         "share the cores).")
    flags.DEFINE_bool("pin_cores", False, "train, with --parallel=N on a CPU: pin each run "
                      "(taskset) to its own Nth of the cores, the next run taking the first freed.")
    flags.DEFINE_bool("allow_overrides", False, "train: let --extra_train_flags change the recipe "
                      "(smoke tests only: the report refuses such runs' evaluations).")
    flags.DEFINE_string("section", str(SECTION_PATH), "The section file the report rewrites.")


def _integers(name, values):
    try:
        return None if values is None else [int(value) for value in values]
    except ValueError:
        raise SystemExit(f"--{name} takes integers, received {','.join(values)}.") from None


def main(argv):
    del argv
    steps = list(FLAGS.steps)
    unknown = sorted(set(steps) - set(STEPS)) + sorted(set(FLAGS.sweeps) - set(SWEEPS))
    if unknown:
        raise SystemExit(f"Unknown step(s) or sweep(s) {unknown}: steps {', '.join(STEPS)}, "
                         f"sweeps {', '.join(SWEEPS)}.")
    depths, seeds = _integers("depths", FLAGS.depths), _integers("seeds", FLAGS.seeds)
    families = FLAGS.families

    def log(message):
        print(message, flush=True)

    for sweep in FLAGS.sweeps:
        if "train" in steps:
            train(sweep, FLAGS.runs_dir, resume=FLAGS.resume, extra_flags=FLAGS.extra_train_flags,
                  depths=depths, families=families, seeds=seeds, parallel=FLAGS.parallel,
                  pin_cores=FLAGS.pin_cores, allow_overrides=FLAGS.allow_overrides, log=log)
        if "evaluate" in steps:
            evaluate(sweep, FLAGS.runs_dir, FLAGS.evaluations_dir, depths=depths,
                     families=families, seeds=seeds, parallel=FLAGS.parallel, log=log)
    if "report" in steps:
        try:
            write_section(FLAGS.section, report_body(FLAGS.runs_dir, FLAGS.evaluations_dir))
        except ValueError as error:
            raise SystemExit(str(error)) from None
        log(f"report written to {train_runs.display_path(FLAGS.section)}; re-render RESULTS.md with "
            "python training/reproduce.py --report_only --output_dir=docs")


if __name__ == "__main__":
    define_flags()
    app.run(main)
