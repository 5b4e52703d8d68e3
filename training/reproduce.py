"""Reproduces the GloNet paper's claims on offline data and writes docs/RESULTS.md with figures.

Experiments (`--experiments`, comma-separated; default all):
  depth_sweep      accuracy vs depth: GloNet vs ResNet-v2 (BN) vs ResNet without BN vs plain MLPs on
                   `digits` (depths 5..160), and the CNN family on `digits` at a few depths.
  early_exit       k-prefix accuracy of a 100-block GloNet MLP with its shared head.
  self_regulation  per-block contribution shares at initialisation and after training (20, 100).
  speed            seconds per epoch, GloNet vs ResNet-v2 (BN), SGEMM-shaped MLP (benchmarks/).
  mnist1d          GloNet MLPs and a 1-D convolutional GloNet vs MNIST-1D's published baselines.

Every number is a mean +- std over `--seeds` seeds. Budgets (epochs, depths) are sized so that the
full run fits in an hour on 2 CPU cores; `--quick` runs in a few minutes, `--smoke` in seconds (for
tests). Raw numbers go to `<output_dir>/results.json` (merged across runs, so one experiment can be
re-run alone), figures to `<output_dir>/figures/`, the report to `<output_dir>/RESULTS.md`.

    python training/reproduce.py                          # everything, about 30 min alone
    python training/reproduce.py --experiments=speed --quick --output_dir=/tmp/glonet
"""

import json
import os
import platform
import re
import sys
import time

from absl import app, flags

# A program in training/ run as a script: make the repository root (glonet_keras, benchmarks)
# importable without installing benchmarks/.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import fashion_experiments  # noqa: E402  (training/ is on sys.path when this script runs)
from experiment_common import (  # noqa: E402
    BATCH_SIZE, SeededTrainer, accuracy, effective_depth, fmt, log, mean_std, table, verdict,
)

# Sections of experiments with programs of their own, included verbatim (`render_report`).
KEPT_SECTIONS_DIR = "sections"
DIGITS_EXPERIMENTS = ("depth_sweep", "early_exit", "self_regulation", "speed", "mnist1d")
EXPERIMENTS = DIGITS_EXPERIMENTS + fashion_experiments.EXPERIMENTS

FLAGS = flags.FLAGS


def define_flags():
    """The program's flags, defined only when it runs: make_zoo.py defines flags of the same names
    (`--seeds`) at import, and one test process imports both modules for their functions."""
    flags.DEFINE_list("experiments", list(EXPERIMENTS), f"Experiments to run, among {EXPERIMENTS}.")
    flags.DEFINE_bool("quick", False, "A minutes-long run: fewer depths, epochs and rows.")
    flags.DEFINE_bool("smoke", False,
                      "A seconds-long run of every code path (tests); numbers mean nothing.")
    flags.DEFINE_integer("seeds", 3, "Seeds per configuration (mean +- std over them).")
    flags.DEFINE_list("depth_sweep_families", ["mlp", "cnn"],
                      "Families the depth_sweep experiment runs (mlp, cnn); the other keeps its "
                      "results.")
    flags.DEFINE_bool("report_only", False,
                      "Only re-render RESULTS.md from <output_dir>/results.json; train nothing.")
    flags.DEFINE_string("output_dir", os.path.join(REPO_ROOT, "docs"),
                        "Where RESULTS.md, results.json and figures/ are written.")


# Budgets. "full" is what docs/RESULTS.md reports.
BUDGETS = {
    "full": dict(
        mlp_depths=(5, 10, 20, 40, 80, 160), mlp_epochs=30, cnn_depths=(8, 14, 26), cnn_epochs=20,
        early_exit_depth=100, self_regulation_depths=(20, 100), speed_depths=(10, 24, 50, 100, 200),
        speed_rows=170_000, speed_epochs=1, mnist1d_mlps=((3, 256), (20, 64)), mnist1d_mlp_epochs=40,
        mnist1d_cnn_depth=8, mnist1d_cnn_width=32, mnist1d_cnn_epochs=15,
    ),
    "quick": dict(
        mlp_depths=(5, 40), mlp_epochs=10, cnn_depths=(8,), cnn_epochs=3,
        early_exit_depth=100, self_regulation_depths=(20, 100), speed_depths=(10, 50),
        speed_rows=17_000, speed_epochs=1, mnist1d_mlps=((3, 256),), mnist1d_mlp_epochs=10,
        mnist1d_cnn_depth=8, mnist1d_cnn_width=16, mnist1d_cnn_epochs=3,
    ),
    "smoke": dict(
        mlp_depths=(2, 3), mlp_epochs=1, cnn_depths=(8,), cnn_epochs=1,
        early_exit_depth=3, self_regulation_depths=(2, 3), speed_depths=(2,),
        speed_rows=2048, speed_epochs=1, mnist1d_mlps=((2, 16),), mnist1d_mlp_epochs=1,
        mnist1d_cnn_depth=8, mnist1d_cnn_width=4, mnist1d_cnn_epochs=1,
    ),
}

# The authors' MLP depth-sweep setting: width 32, LeakyReLU(0.2), PyTorch's default init, Adam 1e-3.
MLP_SETTING = dict(width=32, activation="leaky_relu", initializer="torch")
MLP_FAMILY = {
    # label: (model name, extra constructor args)
    "GloNet": ("glonet_mlp", {}),
    "ResNet-v2 (BN)": ("resnet_mlp", {"normalization": "batch"}),
    "ResNet (no BN)": ("resnet_mlp", {"normalization": None}),
    "Plain": ("plain_mlp", {}),
}
CNN_FAMILY = {
    "GloNet": ("glonet_cnn", {}),
    "ResNet-v2 (BN)": ("resnet_cnn", {"normalization": "batch"}),
    "Plain": ("plain_cnn", {}),
}
# Paper, MNIST fully connected (read off its figure): layers -> accuracy.
PAPER_MNIST_SWEEP = {
    "GloNet": {5: 0.96, 10: 0.96, 20: 0.95, 40: 0.957, 60: 0.955, 80: 0.963, 100: 0.958, 200: 0.961},
    "ResNet (no BN)": {5: 0.955, 10: 0.955, 20: 0.953, 40: 0.92, 60: 0.709, 80: 0.395, 100: 0.192,
                       200: 0.113},
    "Plain": {5: 0.95, 10: 0.954, 20: 0.951, 40: 0.928, 60: 0.546, 80: 0.186, 100: 0.209, 200: 0.114},
}
PAPER_EARLY_EXIT = [0.216, 0.564, 0.755, 0.884, 0.934, 0.950, 0.952, 0.953]
MNIST1D_PUBLISHED = {"MLP": 0.68, "CNN": 0.94}


def flat_digits():
    from glonet_keras.data import load_arrays

    (x_train, y_train), (x_test, y_test) = load_arrays("digits")
    return (x_train.reshape(len(x_train), -1), y_train), (x_test.reshape(len(x_test), -1), y_test)


# ---------------------------------------------------------------------------------------------
# GloNet MLP runs shared by early_exit and self_regulation (one training per depth and seed).
# ---------------------------------------------------------------------------------------------

_GLONET_RECORDS = {}


def glonet_mlp_records(depth, seeds, budget):
    """Trains a GloNet MLP on digits per seed and records accuracy, early exits and shares."""
    from glonet_keras import analysis
    from glonet_keras.models import GloNetMLP

    key = (depth, tuple(seeds), budget["mlp_epochs"])
    if key in _GLONET_RECORDS:
        return _GLONET_RECORDS[key]
    (x_train, y_train), (x_test, y_test) = flat_digits()
    trainer = SeededTrainer(
        lambda: GloNetMLP(num_blocks=depth, num_classes=10, input_shape=(64,), **MLP_SETTING),
        epochs=budget["mlp_epochs"],
    )
    records = []
    for seed in seeds:
        model = trainer.initialise(seed)
        shares_init = analysis.contribution_shares(model, x_test)
        finite = trainer.fit(x_train, y_train, seed)
        records.append(dict(
            seed=seed, finite=finite, accuracy=accuracy(model, x_test, y_test),
            early_exit=analysis.early_exit_accuracy(model, x_test, y_test).tolist(),
            shares_init=shares_init.tolist(),
            shares_trained=analysis.contribution_shares(model, x_test).tolist(),
        ))
        log(f"GloNet MLP depth {depth} seed {seed}: accuracy {records[-1]['accuracy']:.4f}")
    _GLONET_RECORDS[key] = records
    return records


# ---------------------------------------------------------------------------------------------
# Experiments. Each returns a JSON-able dict; the figures are drawn from those by write_figures.
# ---------------------------------------------------------------------------------------------


def run_depth_sweep(budget, seeds, families=("mlp", "cnn"), previous=None):
    """MLP and/or CNN family sweeps; a family not run keeps its `previous` results."""
    import time as _time

    keep = ("mlp", "mlp_nonfinite_runs", "seconds_mlp", "mlp_epochs", "cnn", "seconds_cnn",
            "cnn_epochs")
    out = {key: value for key, value in (previous or {}).items() if key in keep}
    if previous and "mlp" in previous and "seconds_mlp" not in previous:
        # Results from before the families were timed apart: their total (an overestimate).
        out["seconds_mlp"] = previous.get("seconds", 0.0)
    if "mlp" in families:
        start = _time.perf_counter()
        out.update(_mlp_depth_sweep(budget, seeds))
        out["seconds_mlp"] = _time.perf_counter() - start
        out["mlp_epochs"] = budget["mlp_epochs"]
    if "cnn" in families:
        start = _time.perf_counter()
        out["cnn"] = _cnn_depth_sweep(budget, seeds)
        out["seconds_cnn"] = _time.perf_counter() - start
        out["cnn_epochs"] = budget["cnn_epochs"]
    return out


def _mlp_depth_sweep(budget, seeds):
    import keras

    from glonet_keras.models import get_model_class

    (x_train, y_train), (x_test, y_test) = flat_digits()
    mlp = {label: {} for label in MLP_FAMILY}
    diverged = {label: {} for label in MLP_FAMILY}
    for depth in budget["mlp_depths"]:
        for label, (name, extra) in MLP_FAMILY.items():
            keras.backend.clear_session()
            builder = get_model_class(name)
            trainer = SeededTrainer(
                lambda: builder(num_blocks=depth, num_classes=10, input_shape=(64,),
                                **MLP_SETTING, **extra),
                epochs=budget["mlp_epochs"],
            )
            scores, nan_runs = trainer.test_accuracies(seeds, x_train, y_train, x_test, y_test)
            mlp[label][depth], diverged[label][depth] = scores, nan_runs
            log(f"MLP depth {depth:3d} {label:15s}: {fmt(scores)} % (non-finite loss: {nan_runs})")
    return dict(mlp=_keys_to_str(mlp), mlp_nonfinite_runs=_keys_to_str(diverged))


def _cnn_depth_sweep(budget, seeds):
    import keras

    from glonet_keras.data import load_arrays
    from glonet_keras.models import get_model_class

    (xc_train, yc_train), (xc_test, yc_test) = load_arrays("digits")
    cnn = {label: {} for label in CNN_FAMILY}
    for depth in budget["cnn_depths"]:
        for label, (name, extra) in CNN_FAMILY.items():
            keras.backend.clear_session()
            builder = get_model_class(name)
            trainer = SeededTrainer(
                lambda: builder(depth=depth, width=8, num_classes=10, input_shape=(8, 8, 1), **extra),
                epochs=budget["cnn_epochs"],
            )
            scores, _ = trainer.test_accuracies(seeds, xc_train, yc_train, xc_test, yc_test)
            cnn[label][depth] = scores
            log(f"CNN depth {depth:3d} {label:15s}: {fmt(scores)} %")
    return _keys_to_str(cnn)


def run_early_exit(budget, seeds):
    depth = budget["early_exit_depth"]
    records = glonet_mlp_records(depth, seeds, budget)
    return dict(depth=depth, curves=[r["early_exit"] for r in records],
                full_accuracy=[r["accuracy"] for r in records])


def run_self_regulation(budget, seeds):
    out = {}
    for depth in budget["self_regulation_depths"]:
        records = glonet_mlp_records(depth, seeds, budget)
        init = [r["shares_init"] for r in records]
        trained = [r["shares_trained"] for r in records]
        out[str(depth)] = dict(shares_init=init, shares_trained=trained,
                               accuracy=[r["accuracy"] for r in records])
    return dict(depths=out)


def run_speed(budget, seeds):
    del seeds  # Timing, not accuracy: one model per depth, side by side.
    from benchmarks.mlp_speed import run_benchmark

    rows = run_benchmark(budget["speed_depths"], rows=budget["speed_rows"],
                         repetitions=budget["speed_epochs"], log=log)
    return dict(rows=budget["speed_rows"], results=rows)


def run_mnist1d(budget, seeds):
    import keras

    from glonet_keras.data import load_arrays
    from glonet_keras.models import GloNetCNN, GloNetMLP

    (x_train, y_train), (x_test, y_test) = load_arrays("mnist1d")
    flat_train, flat_test = x_train[..., 0], x_test[..., 0]
    out = {"mlp": {}, "cnn": {}}
    for depth, width in budget["mnist1d_mlps"]:
        keras.backend.clear_session()
        trainer = SeededTrainer(
            lambda: GloNetMLP(num_blocks=depth, width=width, num_classes=10, input_shape=(40,)),
            epochs=budget["mnist1d_mlp_epochs"], batch_size=128,
        )
        scores, _ = trainer.test_accuracies(seeds, flat_train, y_train, flat_test, y_test)
        out["mlp"][f"{depth}x{width}"] = scores
        log(f"MNIST-1D GloNet MLP {depth} blocks x {width}: {fmt(scores)} %")
    keras.backend.clear_session()
    depth, width = budget["mnist1d_cnn_depth"], budget["mnist1d_cnn_width"]
    trainer = SeededTrainer(
        lambda: GloNetCNN(depth=depth, width=width, num_classes=10, input_shape=(40, 1)),
        epochs=budget["mnist1d_cnn_epochs"], batch_size=128,
    )
    scores, _ = trainer.test_accuracies(seeds, x_train, y_train, x_test, y_test)
    out["cnn"][f"depth {depth}, width {width}"] = scores
    log(f"MNIST-1D GloNet CNN depth {depth} width {width}: {fmt(scores)} %")
    return out


RUNNERS = {
    "depth_sweep": run_depth_sweep,
    "early_exit": run_early_exit,
    "self_regulation": run_self_regulation,
    "speed": run_speed,
    "mnist1d": run_mnist1d,
}


def _keys_to_str(nested):
    return {label: {str(k): v for k, v in by_depth.items()} for label, by_depth in nested.items()}


# ---------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------


def describe_machine():
    import keras

    cpus = os.cpu_count()
    return (f"{platform.machine()} Linux, {cpus} CPU cores, Python {platform.python_version()}, "
            f"Keras {keras.__version__} on {keras.backend.backend()}")


def _depth_sweep_section(result, findings):
    import numpy as np

    lines = ["## 1. Depth resilience (depth sweep)", ""]
    budget = result["budget"]
    lines.append(
        f"MLPs on `digits` (1,437 train / 360 test 8x8 images, flattened), width 32, LeakyReLU(0.2), "
        f"PyTorch-default initialisation (as the authors' notebook), Adam 1e-3, batch {BATCH_SIZE}, "
        f"{result.get('mlp_epochs', budget['mlp_epochs'])} epochs; test accuracy in %, mean ± std over {len(result['seeds'])} "
        "seeds. Depth = number of blocks (hidden Dense layers between the stem and the head).")
    lines.append("")
    mlp = result["mlp"]
    depths = sorted({int(d) for by_depth in mlp.values() for d in by_depth})
    rows = []
    for label, by_depth in mlp.items():
        cells = []
        for d in depths:
            cell = fmt(by_depth[str(d)]) if str(d) in by_depth else "-"
            nonfinite = result["mlp_nonfinite_runs"][label].get(str(d), 0)
            cells.append(cell + (f" ({nonfinite} NaN)" if nonfinite else ""))
        rows.append([label] + cells)
    lines += [table(["model"] + [str(d) for d in depths], rows), ""]
    lines += ["![MLP depth sweep](figures/depth_sweep_mlp.png)", ""]
    lo, hi = str(depths[0]), str(depths[-1])
    glonet = {d: float(np.mean(mlp["GloNet"][str(d)])) for d in depths}
    glonet_lo, glonet_hi = glonet[depths[0]], glonet[depths[-1]]
    # Per seed: seed s's accuracy at the shallowest depth minus seed s's at the deepest, in points.
    drops = 100 * (np.asarray(mlp["GloNet"][lo]) - np.asarray(mlp["GloNet"][hi]))
    judged = verdict([("held", drops, 2.0), ("mostly held", drops, 5.0)])
    findings.append(
        f"**Depth resilience, GloNet ({judged})**: GloNet MLP {glonet_lo * 100:.1f} % at {lo} blocks, "
        f"{glonet_hi * 100:.1f} % at {hi} blocks on digits (range over all depths "
        f"{min(glonet.values()) * 100:.1f}-{max(glonet.values()) * 100:.1f} %; paper, MNIST: flat at "
        "95-96 %). Held = within 2 points from the shallowest to the deepest, mostly held = within 5.")
    if "ResNet-v2 (BN)" in mlp:
        bn = {d: float(np.mean(mlp["ResNet-v2 (BN)"][str(d)])) for d in depths}
        ahead = sum(bn[d] > glonet[d] for d in depths)
        findings.append(
            f"**GloNet vs ResNet-v2 (BN) accuracy**: the BN ResNet was ahead at {ahead} of "
            f"{len(depths)} depths ({bn[depths[0]] * 100:.1f} % at {lo}, {bn[depths[-1]] * 100:.1f} % "
            f"at {hi} blocks): GloNet's claim is resilience without BN, not beating a BN ResNet.")
    others = []
    for label in ("ResNet (no BN)", "Plain", "ResNet-v2 (BN)"):
        if label in mlp and hi in mlp[label]:
            acc = np.mean(mlp[label][hi])
            state = ("collapsed" if acc < 0.2 else "degraded" if acc < 0.8 * glonet_lo
                     else "did not collapse")
            below = [d for d in depths if np.mean(mlp[label][str(d)]) < 0.5]
            first = f", below 50 % from {below[0]} blocks" if below else ""
            others.append(f"{label} {acc * 100:.1f} % ({state}{first})")
    findings.append(
        f"**Baselines at {hi} blocks**: " + "; ".join(others) +
        " (paper: BN-free ResNet and plain chain about 11 % at 200 layers).")
    cnn = result.get("cnn") or {}
    if cnn:
        cdepths = sorted({int(d) for by_depth in cnn.values() for d in by_depth})
        lines.append(
            f"CNN family on `digits` (8x8x1 images), CIFAR layout (depth 6n+2, three stages of "
            f"8/16/32 channels), He init, ReLU, Adam 1e-3, batch {BATCH_SIZE}, "
            f"{result.get('cnn_epochs', budget['cnn_epochs'])} epochs; test accuracy in %:")
        lines.append("")
        rows = [[label] + [fmt(by_depth[str(d)]) if str(d) in by_depth else "-" for d in cdepths]
                for label, by_depth in cnn.items()]
        lines += [table(["model"] + [f"depth {d}" for d in cdepths], rows), ""]
        lines += ["![CNN depth sweep](figures/depth_sweep_cnn.png)", ""]
        c_lo, c_hi = str(cdepths[0]), str(cdepths[-1])
        findings.append(
            "**CNN family on digits**: " + "; ".join(
                f"{label} {np.mean(by_depth[c_lo]) * 100:.1f} % (depth {c_lo}) -> "
                f"{np.mean(by_depth[c_hi]) * 100:.1f} % (depth {c_hi})" for label, by_depth in cnn.items()
            ) + ".")
    return lines


def _early_exit_section(result, findings):
    import numpy as np

    curves = np.asarray(result["curves"])
    mean, std = curves.mean(0), curves.std(0)
    full = float(np.mean(result["full_accuracy"]))
    depth = result["depth"]
    lines = ["## 2. Early exit", "",
             f"A {depth}-block GloNet MLP (the depth-sweep setting) trained once per seed; the first k "
             "blocks with the same trained head (`glonet_keras.analysis.early_exit_accuracy`, one "
             f"forward pass). Full model: {full * 100:.1f} %.", ""]
    ks = [k for k in (1, 2, 3, 4, 5, 6, 7, 8, 10, 15, 20, 30, 50, 75, 100, 150, 200) if k <= depth]
    if depth not in ks:
        ks.append(depth)
    rows = [[str(k), f"{mean[k - 1] * 100:.1f} ± {std[k - 1] * 100:.1f}",
             f"{PAPER_EARLY_EXIT[k - 1] * 100:.1f}" if k <= len(PAPER_EARLY_EXIT) else
             "not given*"] for k in ks]
    lines += [table(["k", "accuracy % (digits)", "paper % (MNIST)"], rows), "",
              f"\\* Not from the paper: it gives the curve's values for k = 1..{len(PAPER_EARLY_EXIT)} "
              "only, and says in its text that the curve is then flat at 95.3-95.5 %.", ""]
    lines += ["![early exit](figures/early_exit.png)", ""]
    def blocks_within(points):
        within = np.nonzero(mean >= full - points / 100)[0]
        return int(within[0]) + 1 if len(within) else depth

    k1, k2 = blocks_within(1), blocks_within(2)
    # The rules read each seed's own curve against its own full model, as fractions of the depth.
    seed_fractions = {points: [_first_within(curve, seed_full, points) / depth
                               for curve, seed_full in zip(curves, result["full_accuracy"])]
                      for points in (1, 2)}
    judged = verdict([("held", seed_fractions[1], 0.2), ("partly held", seed_fractions[2], 0.1)])
    findings.append(
        f"**Early exit ({judged})**: {k1} of {depth} blocks reach within 1 point of the full "
        f"model ({mean[k1 - 1] * 100:.1f} % vs {full * 100:.1f} %) and {k2} blocks within 2 points "
        f"({mean[k2 - 1] * 100:.1f} %), so {(1 - k1 / depth) * 100:.0f} % "
        f"({(1 - k2 / depth) * 100:.0f} %) of the blocks can be dropped after training, with no "
        "retraining (paper, MNIST: 6-8 of 100 blocks reach the plateau, about 94 % droppable). "
        "Held = within 1 point with at most 20 % of the blocks; partly held = within 2 points with "
        "at most 10 %. One point is 3.6 test images here; the seed-to-seed spread is 1-2 points.")
    return lines


def _first_within(curve, full, points):
    """The fewest blocks whose exit is within `points` of `full` (the depth if none is)."""
    import numpy as np

    within = np.nonzero(np.asarray(curve) >= full - points / 100)[0]
    return int(within[0]) + 1 if len(within) else len(curve)


def _self_regulation_section(result, findings):
    import numpy as np

    lines = ["## 3. Self-regulation", "",
             "Each block's share of the total contribution norm to the logits "
             "(`glonet_keras.analysis.contribution_shares` on the test set), at initialisation and "
             "after training; same models as above. Effective depth = fewest leading blocks that "
             "carry 90 % of the norm.", ""]
    rows, figures = [], []
    for depth, entry in sorted(result["depths"].items(), key=lambda item: int(item[0])):
        init = np.mean(entry["shares_init"], 0)
        trained = np.mean(entry["shares_trained"], 0)
        half = len(init) // 2
        deep_init, deep_trained = init[half:].sum(), trained[half:].sum()
        rows.append([depth, f"{effective_depth(init)}", f"{effective_depth(trained)}",
                     f"{deep_init * 100:.1f} %", f"{deep_trained * 100:.1f} %",
                     f"{init[0] * 100:.1f} % / {trained[0] * 100:.1f} %"])
        figures.append(f"![self-regulation {depth}](figures/self_regulation_{depth}.png)")
        # The norm must clearly move towards the first blocks (not rounding noise); "held" also
        # needs the first half of the blocks to carry 90 % of it after training.
        # Per seed: the deeper half's trained share over its share at init, and the effective depth
        # after training over half the blocks (both at most 1 where the rule holds).
        seeds_init, seeds_trained = np.asarray(entry["shares_init"]), np.asarray(entry["shares_trained"])
        kept = seeds_trained[:, half:].sum(1) / seeds_init[:, half:].sum(1)
        effective = np.asarray([effective_depth(shares) / half for shares in seeds_trained])
        # "held" needs both, so its quantity is the larger of the two, each scaled to threshold 1.
        judged = verdict([("held", np.maximum(kept / 0.9, effective), 1.0),
                          ("partly held", kept, 0.9)])
        findings.append(
            f"**Self-regulation, {depth} blocks ({judged})**: the deeper "
            f"half carries {deep_init * 100:.1f} % of the contribution norm at initialisation and "
            f"{deep_trained * 100:.1f} % after training; 90 % of the norm sits in the first "
            f"{effective_depth(init)} blocks at init and the first {effective_depth(trained)} "
            "after training. Held = the deeper half's share falls by at least 10 % (relative) and "
            "the first half of the blocks carries 90 % of the norm after training; partly held = "
            "only the first.")
    lines += [table(["blocks", "effective depth at init", "after training", "deeper half at init",
                      "deeper half trained", "block 1 at init / trained"], rows), ""]
    lines += figures + [""]
    return lines


def _speed_section(result, findings, gpu):
    lines = ["## 4. Speed (seconds per epoch)", "",
             f"SGEMM-shaped synthetic regression ({result['rows']:,} rows, 14 inputs, width 16, batch "
             "1024, MSE, Adam), `benchmarks/mlp_speed.py`: GloNet MLP vs ResNet-v2 MLP with BN of the "
             "same depth, timed side by side in one process through `model.fit` (median of "
             f"{result['budget']['speed_epochs']} timed epoch(s) after a warm-up epoch that includes "
             "tracing, which is reported separately). The CPU is shared with other jobs, "
             "so absolute times are noisy (±25 %); the ratio, measured in the same run, is the number "
             "to compare with the paper's Table 1 (a GPU).", ""]
    rows = []
    for row in result["results"]:
        paper = f"{row['paper_ratio']:.2f}" if row.get("paper_ratio") else "-"
        rows.append([row["depth"], f"{row['glonet_s_per_epoch']:.2f}", f"{row['resnet_bn_s_per_epoch']:.2f}",
                     f"**{row['ratio']:.2f}**", paper,
                     f"{row['glonet_warmup_s']:.0f} / {row['resnet_bn_warmup_s']:.0f}"])
    lines += [table(["depth", "GloNet s/epoch", "ResNet-v2 (BN) s/epoch", "ratio", "paper ratio",
                      "warm-up s (GloNet / ResNet)"], rows), ""]
    lines += ["![speed](figures/speed.png)", ""]
    ratios = [row["ratio"] for row in result["results"]]
    text = (f"**Speed ({'held' if max(ratios) < 1 else 'did not hold'})**: on this CPU GloNet's epoch "
            f"takes {min(ratios):.2f}-{max(ratios):.2f} of ResNet-v2 (BN)'s time "
            f"(paper, GPU: 0.52-0.64 at depths 10-200).")
    if gpu:
        lines += [f"Same benchmark on a GPU ({gpu['machine']}), JAX backend, {gpu['rows']:,} rows, "
                  "one run of `KERAS_BACKEND=jax python benchmarks/mlp_speed.py --epochs=3 "
                  "--output=docs/gpu_speed.json` (all five depths, 170,000 rows; median of 3 timed "
                  "epochs; the GPU was lent for one call, so this file is committed, not regenerated "
                  "by this program):", ""]
        rows = [[row["depth"], f"{row['glonet_s_per_epoch']:.3f}", f"{row['resnet_bn_s_per_epoch']:.3f}",
                 f"**{row['ratio']:.2f}**",
                 f"{row['paper_ratio']:.2f}" if row.get("paper_ratio") else "-",
                 f"{row['glonet_warmup_s']:.1f} / {row['resnet_bn_warmup_s']:.1f}"]
                for row in gpu["results"]]
        lines += [table(["depth", "GloNet s/epoch", "ResNet-v2 (BN) s/epoch", "ratio", "paper ratio",
                          "warm-up s incl. XLA compile"], rows), ""]
        gpu_ratios = [row["ratio"] for row in gpu["results"]]
        card = gpu["machine"].split("devices")[-1].strip(" []'")
        text += (f" On the GPU ({card}, JAX) the ratio is "
                 f"{min(gpu_ratios):.2f}-{max(gpu_ratios):.2f}.")
    findings.append(text)
    return lines


def _mnist1d_section(result, findings):
    import numpy as np

    budget = result["budget"]
    lines = ["## 5. MNIST-1D", "",
             "The standard MNIST-1D split (4,000 train / 1,000 test signals of length 40, generated "
             "locally by the `mnist1d` package), Adam 1e-3, batch 128, He init, ReLU; GloNet MLPs "
             f"({budget['mnist1d_mlp_epochs']} epochs) and a convolutional GloNet (`GloNetCNN` on "
             "(40, 1) inputs: 1-D convolutions, CIFAR layout, "
             f"{budget['mnist1d_cnn_epochs']} epochs). Test accuracy in %:", ""]
    rows = [[f"GloNet MLP {name} (blocks x width)", fmt(scores), f"MLP {MNIST1D_PUBLISHED['MLP'] * 100:.0f}"]
            for name, scores in result["mlp"].items()]
    rows += [[f"GloNet CNN {name}", fmt(scores), f"CNN {MNIST1D_PUBLISHED['CNN'] * 100:.0f}"]
             for name, scores in result["cnn"].items()]
    lines += [table(["model", "accuracy %", "published baseline %"], rows), ""]
    best_name, best = max(result["mlp"].items(), key=lambda item: np.mean(item[1]))
    (cnn_name, cnn_scores), = result["cnn"].items()
    findings.append(
        f"**MNIST-1D**: best GloNet MLP ({best_name}, the better of {len(result['mlp'])} configurations "
        f"by mean test accuracy) {fmt(best)} % vs the published MLP 68 %"
        + "".join(f"; GloNet MLP {name}: {fmt(scores)} %" for name, scores in result["mlp"].items()
                  if name != best_name)
        + f"; GloNet CNN ({cnn_name}) {fmt(cnn_scores)} % vs the published CNN 94 %.")
    return lines


DECISIONS = """
## Method notes and decisions (where the paper or the issue left a choice)

- **Data.** No network: MNIST, CIFAR-10 and SGEMM cannot be downloaded here. The depth sweep, early
  exit and self-regulation use `digits` (1,797 real 8x8 digits, fixed stratified 80/20 split), which
  is 40x smaller than MNIST, so absolute accuracies and the number of blocks a task needs differ from
  the paper's; the *shape* of each claim is what is tested. Speed uses synthetic SGEMM-shaped rows
  (epoch time depends on shapes, not values).
- **MLP setting = the authors' notebook**: width 32, LeakyReLU(0.2), PyTorch-default initialisation
  (`initializer="torch"`), Adam 1e-3, batch 128, no normalisation except in ResNet-v2 (BN). The
  BN-free ResNet is the same pre-activation ResNet with `normalization=None`; the plain chain is the
  GloNet chain with the head on the last block.
- **Budgets** (full run): MLPs 30 epochs (about 340 steps; the paper's MNIST runs saw far more
  steps), CNNs 20 epochs, MNIST-1D MLPs 40 and CNN 15 epochs, 3 seeds each (seed = initialisation
  and shuffling; the data split is fixed). Chosen so that everything fits in well under an hour on 2
  CPU cores; `BUDGETS` in the program is the one place to change them. A first full run gave the
  CNNs 6 epochs (72 steps): too few for the BN ResNet's moving averages (momentum 0.99), whose test
  accuracy then swung by ±16-20 points between seeds. The CNN family was re-run alone with 20 epochs
  (`--experiments=depth_sweep --depth_sweep_families=cnn`, merged into `results.json`); the MLP
  sweep's recorded time is that first run's depth-sweep total, CNNs included (an overestimate of
  about 2 min).
- **Seeds reuse one traced training step.** Tracing a deep Keras model's training step on this CPU
  costs more than training it (about 0.5 s per ResNet-v2 block), so each configuration is compiled
  once and every seed loads the initial weights of its own freshly built model and a zeroed optimizer
  state. The result is the same as building and compiling a new model per seed.
- **Early exit** is measured on the 100-block GloNet of the self-regulation experiment (same
  training), k = 1..100, through `glonet_keras.analysis.early_exit_accuracy` (one forward pass
  through the cumulative aggregation). "Reaches the plateau" = within 1 point of the full model.
- **Self-regulation** is the share of the contribution norm (`contribution_shares`: the L2 norm of
  each block's exact contribution W·x_i to the logits, summed over the test set, normalised to 1);
  "held" requires the deeper half's share to fall by at least 10 % (relative) during training.
- **Speed** times `model.fit` (the library's training path) on TensorFlow for the CPU numbers and JAX
  (XLA) for the GPU numbers: warm-up epoch first (tracing/compilation, reported separately), then
  the timed epoch(s). 170,000 rows with batch 1024 leave a last partial batch, as in any real epoch.
- **MNIST-1D "best GloNet MLP"**: two configurations (3 blocks x 256, 20 blocks x 64), He init, ReLU;
  the better one by mean test accuracy is named best (a grid of two, so little selection bias). The
  convolutional GloNet is `GloNetCNN` on (40, 1) inputs (1-D convolutions, CIFAR layout, depth 8).
- **Explainability** is exact by construction (linear taps, linear head) and is covered by the tests
  (`tests/test_analysis.py`, `tests/test_glonetify.py`: sum of contributions + head bias equals the
  output to 1e-5 relative in float32, 2e-2 under mixed_float16), not re-measured here.
""".splitlines()


# Written before the numbers they judge: a sweep is planned against these rules, and a changed rule
# is a new commit before the runs it judges, never after.
VERDICT_RULES = [
    "## Verdict rules", "",
    "Each verdict below applies one of these rules, fixed before its runs. Every rule reads a "
    "quantity per seed and judges its mean over the seeds.", "",
    "- **Depth resilience**: the model's test accuracy at the shallowest depth minus that at the "
    "deepest, per seed. Held = at most 2 points; mostly held (MLP sweeps) = at most 5; otherwise "
    "did not hold. The fate of the baselines (collapsed = below 20 %, chance being 10 %) is "
    "reported beside the verdict, never folded into it.",
    "- **Early exit**: the fewest first blocks whose exit (same head) comes within 1 or 2 points "
    "of that seed's full model. Digits MLP: held = within 1 point with at most 20 % of the blocks, "
    "partly held = within 2 points with at most 10 %. Deep CNN and ViT: held = within 2 points "
    "with at most half the blocks.",
    "- **Self-regulation**: the deeper half's share of the contribution norm after training over "
    "its share at initialisation. Held = at most 0.9 (and, for the digits MLP, the first half of "
    "the blocks carries 90 % of the norm after training; partly held = only the first).",
    "- **Inconclusive**: a verdict whose quantity lies within one (population) standard deviation "
    "over seeds of its threshold is labelled \"inconclusive at the ... threshold\", whichever side "
    "its mean is on.",
    "- **One seed**: a single run has no spread to judge by. Its cells say \"(1 seed)\" (never "
    "\"± 0.0\") and its verdict \"; 1 seed\": a reading, not a result.",
    "- **Splits**: every accuracy here is on the test split, read once after training with a fixed "
    "budget; nothing (epoch, depth, hyper-parameter) is chosen on it. Where a choice is made it is "
    "made on the validation split.", "",
]


# Verdict words of the kept sections' "**Verdicts**" bullets, longest first ("held" is in the
# others).
_VERDICT_WORDS = ("inconclusive", "did not hold", "partly held", "mostly held", "held")


def kept_section_findings(text):
    """One Findings line per verdict block of a kept section, e.g. section 11's two.

    A kept section (docs/sections/) writes its own verdicts under a "**Verdicts**" paragraph, one
    bullet each ("- **Depth resilience** (...): **did not hold**: ..." or "- **Exit at L/2 within 1
    point: held.** ..."). The report's Findings list names each verdict and points at the section,
    so a reader of the Findings sees the later, larger measurements beside the early ones. A section
    with no verdicts yet (rules written, runs pending) is listed as such: its results are not hidden
    by their absence.
    """
    lines = text.strip("\n").split("\n")
    title = next((line[3:].strip() for line in lines if line.startswith("## ")), None)
    if title is None:
        return []
    number, _, name = title.partition(". ")
    if number.isdigit():  # "11. The depth sweeps ... (issue 21)": the number goes in the pointer.
        title = re.sub(r"\s*\(issue \d+\)$", "", name)
    blocks, subtitle, verdicts = [], None, None
    for line in lines:
        if line.startswith("### "):
            subtitle = line[4:].strip()
        elif line.startswith("**Verdicts**"):
            verdicts = []
            blocks.append((subtitle, verdicts))
        elif verdicts is not None and line.startswith("**"):
            verdicts = None  # The next paragraph ends the block.
        elif verdicts is not None and line.startswith("- **"):
            spans = re.findall(r"\*\*(.+?)\*\*", line)
            word = next((word for span in spans for word in _VERDICT_WORDS if word in span.lower()),
                        None)
            if word is not None:
                name = re.split(r":\s", spans[0])[0].rstrip(".")
                verdicts.append(f"{name}: {word}" if name.lower() != word else word)
    where = f"section {number}" if number.isdigit() else "its section"
    if not blocks:
        return [f"**{title}**: rules written before any run; results pending ({where})."]
    return [f"**{title}{' — ' + subtitle if subtitle else ''}** ({where}, its own rules "
            f"and seeds): {'; '.join(verdicts) if verdicts else 'see the section'}."
            for subtitle, verdicts in blocks]


def render_report(results, gpu=None, kept_sections=()):
    """docs/RESULTS.md from the raw results (and optional GPU speed results).

    `kept_sections`: Markdown sections of experiments run by their own programs (e.g.
    training/anytime_experiment.py), kept in `<output_dir>/sections/` and included verbatim after
    the generated ones, so a re-render never drops them.
    """
    run = results.get("_run", {})
    findings = []
    body = []
    sections = [("depth_sweep", _depth_sweep_section), ("early_exit", _early_exit_section),
                ("self_regulation", _self_regulation_section),
                ("speed", lambda result, found: _speed_section(result, found, gpu)),
                ("mnist1d", _mnist1d_section)] + fashion_experiments.SECTIONS
    for name, section in sections:
        if name in results:
            body += section(results[name], findings)
    timing = ", ".join(f"{name} {results[name]['seconds'] / 60:.1f} min ({results[name]['mode']})"
                       for name in EXPERIMENTS if name in results)
    total_minutes = sum(results[name]["seconds"] for name in EXPERIMENTS if name in results) / 60
    header = [
        "# Reproducing the GloNet paper's claims offline", "",
        "Generated by `training/reproduce.py` (do not edit by hand: re-run it). Paper: Di Cecco et al., "
        "\"GloNets: Globally Connected Neural Networks\", arXiv:2311.15947. The paper used MNIST, "
        "CIFAR-10 and SGEMM on a GPU; this machine reaches no data set server, so the claims are "
        "tested on offline data: `digits` (scikit-learn's 8x8 handwritten digits), MNIST-1D, "
        "Fashion-MNIST (the Debian package `dataset-fashion-mnist`: 60,000 + 10,000 real 28x28 "
        "images, Zalando's drop-in replacement for MNIST) and synthetic SGEMM-shaped rows for speed. "
        "Same questions; each section names its data, budget and seeds.", "",
        "- ± is the population standard deviation over seeds (numpy's default, ddof = 0); with 3 "
        "seeds the sample deviation would be 1.22x larger.",
        f"- Last invocation: `{run.get('command', '?')}` (finished {run.get('finished', '?')}; "
        f"took {run.get('seconds', 0) / 60:.1f} min); the experiments' own commands follow.",
        f"- Machine: {run.get('machine', '?')}; shared with other jobs while it ran, so timings are noisy.",
        f"- Time per experiment: {timing}; sum {total_minutes:.1f} min (the full reproduction's run "
        "time on this shared 2-core machine).",
    ] + [f"- `{name}` was last run by `{results[name]['command']}` "
         f"(finished {results[name].get('finished', '?')})"
         for name in EXPERIMENTS if name in results and "command" in results[name]] + [

        "- Full reproduction: `python training/reproduce.py` (all experiments, 3 seeds); "
        "`--quick` for a minutes-long check, `--experiments=speed` etc. to re-run one part "
        "(results merge into `docs/results.json`).", "",
    ] + VERDICT_RULES + [
        "## Findings", "",
    ]
    findings += [line for text in kept_sections for line in kept_section_findings(text)]
    header += [f"- {finding}" for finding in findings] + [""]
    kept = [line for text in kept_sections for line in [""] + text.strip("\n").split("\n")]
    return "\n".join(header + body + kept + DECISIONS) + "\n"


def write_figures(figures, results):
    """Draws every figure from the raw results, so `--report_only` redraws them too."""
    import numpy as np

    from glonet_keras import plots

    def by_depth(nested):
        return {label: {int(d): v for d, v in values.items()} for label, values in nested.items()}

    sweep = results.get("depth_sweep", {})
    if sweep.get("mlp"):
        plots.plot_depth_sweep(
            by_depth(sweep["mlp"]), os.path.join(figures, "depth_sweep_mlp.png"),
            reference=PAPER_MNIST_SWEEP, title="MLPs on digits (solid) vs the paper's MNIST (dashed)",
        )
    if sweep.get("cnn"):
        plots.plot_depth_sweep(by_depth(sweep["cnn"]), os.path.join(figures, "depth_sweep_cnn.png"),
                               title="CNNs (CIFAR layout, width 8) on digits")
    if "early_exit" in results:
        entry = results["early_exit"]
        plots.plot_early_exit(
            np.asarray(entry["curves"]), os.path.join(figures, "early_exit.png"),
            reference=float(np.mean(entry["full_accuracy"])),
            title=f"Early exit, {entry['depth']}-block GloNet MLP on digits",
        )
    for depth, entry in results.get("self_regulation", {}).get("depths", {}).items():
        plots.plot_contribution_shares(
            {"at initialisation": entry["shares_init"], "after training": entry["shares_trained"]},
            os.path.join(figures, f"self_regulation_{depth}.png"),
            title=f"Contribution shares, {depth}-block GloNet MLP on digits",
        )
    if "speed" in results:
        rows = results["speed"]["results"]
        plots.plot_depth_sweep(
            {"GloNet": {r["depth"]: r["glonet_s_per_epoch"] for r in rows},
             "ResNet-v2 (BN)": {r["depth"]: r["resnet_bn_s_per_epoch"] for r in rows}},
            os.path.join(figures, "speed.png"), metric_name="seconds per epoch",
            title="Epoch time, SGEMM-shaped MLP (this machine)",
        )


def write_report(output_dir, results):
    write_figures(os.path.join(output_dir, "figures"), results)
    fashion_experiments.write_figures(os.path.join(output_dir, "figures"), results)
    gpu_path = os.path.join(output_dir, "gpu_speed.json")
    gpu = None
    if os.path.exists(gpu_path):
        with open(gpu_path) as handle:
            gpu = json.load(handle)
    kept_dir = os.path.join(output_dir, KEPT_SECTIONS_DIR)
    kept = []
    if os.path.isdir(kept_dir):
        for name in sorted(os.listdir(kept_dir)):
            if name.endswith(".md"):
                with open(os.path.join(kept_dir, name)) as handle:
                    kept.append(handle.read())
    path = os.path.join(output_dir, "RESULTS.md")
    with open(path, "w") as handle:
        handle.write(render_report(results, gpu, kept))
    return path


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.experiments) - set(EXPERIMENTS))
    if unknown:
        raise app.UsageError(f"Unknown experiments {unknown}; choose among {list(EXPERIMENTS)}.")
    if set(FLAGS.depth_sweep_families) - {"mlp", "cnn"} or not FLAGS.depth_sweep_families:
        raise app.UsageError("--depth_sweep_families must name mlp and/or cnn.")
    if FLAGS.seeds < 1:
        raise app.UsageError("--seeds must be >= 1.")
    if FLAGS.quick and FLAGS.smoke:
        raise app.UsageError("Pass --quick or --smoke, not both.")
    if FLAGS.report_only:
        with open(os.path.join(FLAGS.output_dir, "results.json")) as handle:
            log(f"Report: {write_report(FLAGS.output_dir, json.load(handle))}")
        return
    mode = "smoke" if FLAGS.smoke else "quick" if FLAGS.quick else "full"
    budget = BUDGETS[mode]
    seeds = list(range(FLAGS.seeds))
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    results_path = os.path.join(FLAGS.output_dir, "results.json")
    results = {}
    if os.path.exists(results_path):
        with open(results_path) as handle:
            results = json.load(handle)
    start = time.perf_counter()
    log(f"Reproduction ({mode}), experiments {FLAGS.experiments}, seeds {seeds}: {describe_machine()}")
    for name in [e for e in EXPERIMENTS if e in FLAGS.experiments]:
        experiment_start = time.perf_counter()
        log(f"--- {name}")
        if name == "depth_sweep":
            outcome = run_depth_sweep(budget, seeds, FLAGS.depth_sweep_families,
                                      results.get("depth_sweep"))
        elif name in fashion_experiments.RUNNERS:
            outcome = fashion_experiments.RUNNERS[name](fashion_experiments.BUDGETS[mode], seeds, mode)
        else:
            outcome = RUNNERS[name](budget, seeds)
        outcome["seconds"] = time.perf_counter() - experiment_start
        if name == "depth_sweep":  # both families, even when only one was re-run now
            outcome["seconds"] = outcome.get("seconds_mlp", 0.0) + outcome.get("seconds_cnn", 0.0)
        outcome["mode"] = mode
        outcome["seeds"] = seeds
        outcome["command"] = " ".join(["python", "training/reproduce.py"] + sys.argv[1:])
        outcome["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        outcome["budget"] = (fashion_experiments.BUDGETS[mode]
                             if name in fashion_experiments.RUNNERS else budget)
        results[name] = outcome
        log(f"--- {name} done in {outcome['seconds']:.0f} s")
    total = time.perf_counter() - start
    results["_run"] = dict(mode=mode, seconds=total, machine=describe_machine(),
                           command=" ".join(["python", "training/reproduce.py"] + sys.argv[1:]),
                           finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    with open(results_path, "w") as handle:
        json.dump(results, handle, indent=1)
    write_report(FLAGS.output_dir, results)
    log(f"Total run time: {total:.0f} s ({total / 60:.1f} min). Report: {FLAGS.output_dir}/RESULTS.md")


if __name__ == "__main__":
    define_flags()
    app.run(main)
