"""An anytime GloNet (issue 21): a GloNet MLP trained with its prefix exits in the loss, against
the same architecture and recipe trained without them (the twin), on Fashion-MNIST.

For every arm and seed: train (`trainer.train`, resumable: a stopped program re-run with the same
flags resumes every run where it stopped), then on the VALIDATION split the accuracy of every
exit k and the anytime threshold calibrated there: the one that minimises the mean number of blocks
run, subject to validation accuracy >= the full model's validation accuracy - `--tolerance`
(searched exactly over every distinct confidence, `deploy.calibrate_threshold`). Only once every
model is calibrated is the TEST split read, once per model: the full model's accuracy, the exit at
L/2, and anytime inference (`deploy.first_confident_exits`) at the calibrated threshold and at the
old default 0.9. The verdict rules are in docs/RESULTS.md ("An anytime GloNet"), written before the runs.

    python training/anytime_experiment.py --output_dir=/tmp/anytime     # about 30 min on 2 cores
    python training/anytime_experiment.py --smoke --output_dir=/tmp/anytime_smoke   # seconds

Writes `<output_dir>/anytime_results.json` (every number per run) and `<output_dir>/anytime.md`
(the table and the verdicts, as docs/RESULTS.md shows them); the runs go to `<output_dir>/runs/`.
"""

import json
import os
import platform
import sys

from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402

from experiment_common import fmt, log, table, verdict  # noqa: E402

FLAGS = flags.FLAGS

# The glonet_mlp_fashion_mnist preset's recipe (training/make_zoo.py): FASHION_RECIPE with 20
# epochs, flips only, dropout 0.2 before the head.
RECIPE = dict(dataset="fashion_mnist", batch_size=128, optimizer="adamw", learning_rate=0.002,
              weight_decay=0.05, schedule="cosine", warmup_epochs=1, label_smoothing=0.1,
              augment=("flip",), model_kwargs={"dropout": 0.2})
OLD_DEFAULT_THRESHOLD = 0.9
ARMS = ("exit losses", "twin (no exit losses)")


def arm_config(arm, seed, *, depth, width, epochs, exit_loss_weight, model_dir, max_examples=None):
    """The TrainConfig of one run: both arms share everything but the exit losses."""
    from glonet_keras.training.trainer import TrainConfig

    return TrainConfig(model="glonet_mlp", depth=depth, width=width, epochs=epochs, seed=seed,
                       exit_loss_weight=exit_loss_weight if arm == ARMS[0] else 0.0,
                       max_examples=max_examples, model_dir=model_dir, tensorboard=False,
                       verbose=2, **RECIPE)


def anytime(exit_logits, labels, threshold):
    """Accuracy and mean blocks of `deploy.first_confident_exits` at `threshold`."""
    from glonet_keras.deploy import first_confident_exits

    chosen, logits = first_confident_exits(exit_logits, threshold)
    return {"threshold": float(threshold), "accuracy": float((logits.argmax(-1) == labels).mean()),
            "mean_blocks": float(chosen.mean())}


def split_arrays(model, split, seed, max_examples=None):
    """One split, preprocessed as `model` was trained (its own record), with its labels."""
    from glonet_keras import data

    x, y = data.load_split("fashion_mnist", split, seed=seed, max_examples=max_examples)
    return np.asarray(model.preprocessing(x)), np.asarray(y, "int64")


def validate(model, seed, tolerance, max_examples=None):
    """Everything read from the validation split: exit accuracies, the calibrated threshold."""
    from glonet_keras import analysis
    from glonet_keras.deploy import calibrate_threshold

    x, y = split_arrays(model, "validation", seed, max_examples)
    logits = analysis.early_exit_logits(model, x, batch_size=1024)
    # Section 9's rule: the observed validation loss within the tolerance, no statistical margin.
    calibrated = calibrate_threshold(logits, y, max_cost=tolerance, confidence=None)
    checked = anytime(logits, y, calibrated["threshold"])  # The library's rule agrees.
    assert abs(checked["accuracy"] - calibrated["accuracy"]) < 1e-9, (checked, calibrated)
    assert abs(checked["mean_blocks"] - calibrated["mean_blocks"]) < 1e-9, (checked, calibrated)
    return {"exit_accuracy": (logits.argmax(-1) == y[:, None]).mean(0).tolist(),
            "calibrated": calibrated,
            "old_default": anytime(logits, y, OLD_DEFAULT_THRESHOLD)}


def test(model, seed, threshold, max_examples=None):
    """The one read of the test split."""
    from glonet_keras import analysis

    x, y = split_arrays(model, "test", seed, max_examples)
    logits = analysis.early_exit_logits(model, x, batch_size=1024)
    exits = (logits.argmax(-1) == y[:, None]).mean(0)
    num_blocks = logits.shape[1]
    return {"exit_accuracy": exits.tolist(), "full_accuracy": float(exits[-1]),
            "half_accuracy": float(exits[num_blocks // 2 - 1]),
            "calibrated": anytime(logits, y, threshold),
            "old_default": anytime(logits, y, OLD_DEFAULT_THRESHOLD)}


def run(output_dir, seeds, depth, width, epochs, exit_loss_weight, tolerance, max_examples=None):
    """Trains, calibrates on validation, then reads the test split; returns the results dict."""
    import keras

    from glonet_keras.training import trainer

    os.makedirs(output_dir, exist_ok=True)
    runs, models = {}, {}
    for arm in ARMS:
        for seed in seeds:
            name = f"{'exits' if arm == ARMS[0] else 'twin'}_seed{seed}"
            config = arm_config(arm, seed, depth=depth, width=width, epochs=epochs,
                                exit_loss_weight=exit_loss_weight, max_examples=max_examples,
                                model_dir=os.path.join(output_dir, "runs", name))
            log(f"training {name}")
            result = trainer.train(config)
            models[name] = result.model
            runs[name] = dict(arm=arm, seed=seed, model_dir=result.model_dir,
                              train_seconds=float(sum(result.seconds_per_epoch)),
                              validation=validate(result.model, seed, tolerance, max_examples))
            log(f"{name}: validation {json.dumps(runs[name]['validation'])}")
    # The test split, once per model, after every choice was made on the validation split.
    for name, record in runs.items():
        threshold = record["validation"]["calibrated"]["threshold"]
        record["test"] = test(models[name], record["seed"], threshold, max_examples)
        log(f"{name}: test {json.dumps(record['test'])}")
    return {"runs": runs, "depth": depth, "width": width, "epochs": epochs,
            "exit_loss_weight": exit_loss_weight, "tolerance": tolerance, "seeds": list(seeds),
            "recipe": {key: list(value) if isinstance(value, tuple) else value
                       for key, value in RECIPE.items()},
            "max_examples": max_examples, "command": " ".join(["python", *sys.argv]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU; Keras "
                       f"{keras.__version__} on {keras.backend.backend()}"}


def per_seed(results, arm, read):
    """`read(run record)` for every seed of `arm`, in seed order."""
    return [read(record) for record in results["runs"].values() if record["arm"] == arm]


def quantities(results, arm):
    """The per-seed quantities the verdict rules read, in points (or a fraction of L)."""
    depth = results["depth"]
    return {
        "full": per_seed(results, arm, lambda r: r["test"]["full_accuracy"]),
        "half": per_seed(results, arm, lambda r: r["test"]["half_accuracy"]),
        "half_gap": per_seed(results, arm, lambda r: 100 * (r["test"]["full_accuracy"]
                                                            - r["test"]["half_accuracy"])),
        "threshold": per_seed(results, arm, lambda r: r["validation"]["calibrated"]["threshold"]),
        "anytime": per_seed(results, arm, lambda r: r["test"]["calibrated"]["accuracy"]),
        "blocks": per_seed(results, arm, lambda r: r["test"]["calibrated"]["mean_blocks"]),
        "block_fraction": per_seed(results, arm,
                                   lambda r: r["test"]["calibrated"]["mean_blocks"] / depth),
        "cost": per_seed(results, arm, lambda r: 100 * (r["test"]["full_accuracy"]
                                                        - r["test"]["calibrated"]["accuracy"])),
        "default_accuracy": per_seed(results, arm, lambda r: r["test"]["old_default"]["accuracy"]),
        "default_blocks": per_seed(results, arm, lambda r: r["test"]["old_default"]["mean_blocks"]),
        "validation_full": per_seed(results, arm,
                                    lambda r: r["validation"]["calibrated"]["full_accuracy"]),
        "minutes": per_seed(results, arm, lambda r: r["train_seconds"] / 60),
    }


def verdicts(results):
    """The rules of docs/RESULTS.md ("An anytime GloNet"), applied: {name: (verdict, numbers)}."""
    ours, twin = quantities(results, ARMS[0]), quantities(results, ARMS[1])
    found = {
        "half_exit": verdict([("held", ours["half_gap"], 1.0)]),
        "saving": verdict([("held", ours["block_fraction"], 0.6)]),
        "cost": verdict([("held", ours["cost"], 0.5)]),
        "full_model_cost": verdict([("held", [100 * (t - o) for t, o in
                                              zip(twin["full"], ours["full"])], 0.5)]),
        "helps_half_exit": verdict([("held", [o - t for o, t in
                                              zip(ours["half_gap"], twin["half_gap"])], -1.0)]),
    }
    parts = (found["saving"], found["cost"])
    if all(part == "held" for part in parts):
        found["anytime"] = "held"
    elif any(part.startswith("did not hold") for part in parts):
        found["anytime"] = "did not hold"
    else:
        found["anytime"] = "inconclusive"
    return found


def report(results):
    """The Markdown table and verdicts (docs/RESULTS.md's section body)."""
    depth = results["depth"]
    header = ["arm", "full model", f"exit {depth // 2} of {depth}", "gap (points)",
              "threshold (validation)", "anytime accuracy", "mean blocks", "cost (points)",
              "at 0.9: accuracy", "at 0.9: mean blocks", "validation, full", "train minutes"]
    rows = []
    for arm in ARMS:
        q = quantities(results, arm)
        rows.append([arm, fmt(q["full"]), fmt(q["half"]), fmt(q["half_gap"], scale=1, digits=2),
                     fmt(q["threshold"], scale=1, digits=3), fmt(q["anytime"]),
                     fmt(q["blocks"], scale=1, digits=2), fmt(q["cost"], scale=1, digits=2),
                     fmt(q["default_accuracy"]), fmt(q["default_blocks"], scale=1, digits=2),
                     fmt(q["validation_full"]), fmt(q["minutes"], scale=1, digits=1)])
    found = verdicts(results)
    ours, twin = quantities(results, ARMS[0]), quantities(results, ARMS[1])
    exits = {arm: np.mean([r["test"]["exit_accuracy"] for r in results["runs"].values()
                           if r["arm"] == arm], 0) for arm in ARMS}
    lines = [
        table(header, rows), "",
        "Test accuracy of every exit k = 1..L (mean over seeds, %):", "",
        table(["arm", *[str(k) for k in range(1, depth + 1)]],
              [[arm, *[f"{100 * a:.1f}" for a in exits[arm]]] for arm in ARMS]), "",
        f"- **Exit at L/2 within 1 point ({found['half_exit']})**: the full model minus exit "
        f"{depth // 2}: {fmt(ours['half_gap'], scale=1, digits=2)} points with exit losses "
        f"(twin: {fmt(twin['half_gap'], scale=1, digits=2)}).",
        f"- **Anytime: at least 40 % fewer blocks at a cost of at most 0.5 point "
        f"({found['anytime']})**: at the validation-calibrated threshold the exit-loss model runs "
        f"{fmt(ours['block_fraction'], digits=1)} % of the blocks (saving {found['saving']}; held = "
        f"at most 60 %) and loses {fmt(ours['cost'], scale=1, digits=2)} points against its full "
        f"model (cost {found['cost']}; held = at most 0.5). Twin: {fmt(twin['block_fraction'], digits=1)} % of "
        f"the blocks at {fmt(twin['cost'], scale=1, digits=2)} points.",
        f"- **Cost of the exit losses on the full model ({found['full_model_cost']})**: twin minus "
        f"exit-loss full-model accuracy, per seed: "
        f"{fmt([t - o for t, o in zip(twin['full'], ours['full'])], digits=2)} points (held = at "
        "most 0.5).",
        f"- **Exit losses shrink the L/2 gap by at least 1 point ({found['helps_half_exit']})**: "
        f"exit-loss gap minus twin gap, per seed: "
        f"{fmt([o - t for o, t in zip(ours['half_gap'], twin['half_gap'])], scale=1, digits=2)} "
        "points (held = at most -1).",
        f"- **The old default threshold 0.9** (near the top a label-smoothed softmax reaches: "
        f"0.91 at the loss's optimum): exit losses {fmt(ours['default_accuracy'])} % with "
        f"{fmt(ours['default_blocks'], scale=1, digits=2)} blocks of {depth}; twin "
        f"{fmt(twin['default_accuracy'])} % with {fmt(twin['default_blocks'], scale=1, digits=2)}.",
    ]
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    results_path = os.path.join(FLAGS.output_dir, "anytime_results.json")
    if FLAGS.report_only:
        with open(results_path) as handle:
            results = json.load(handle)
        _write_report(results)
        return
    seeds = [int(seed) for seed in FLAGS.seeds]
    settings = dict(depth=FLAGS.depth, width=FLAGS.width, epochs=FLAGS.epochs)
    if FLAGS.smoke:
        settings = dict(depth=2, width=16, epochs=2, max_examples=512)
    results = run(FLAGS.output_dir, seeds, exit_loss_weight=FLAGS.exit_loss_weight,
                  tolerance=FLAGS.tolerance, **settings)
    with open(results_path, "w") as handle:
        json.dump(results, handle, indent=1)
    _write_report(results)


def _write_report(results):
    markdown = report(results)
    with open(os.path.join(FLAGS.output_dir, "anytime.md"), "w") as handle:
        handle.write(markdown + "\n")
    print(markdown)


def define_flags():
    """The program's flags, defined only when it runs: a test that imports this module for its
    functions must not leave a required --output_dir in absl's global flags for other programs."""
    flags.DEFINE_string("output_dir", None, "Where the runs, anytime_results.json and anytime.md go.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (each arm trains once per seed).")
    flags.DEFINE_integer("depth", 8, "Blocks L of the GloNet MLP.")
    flags.DEFINE_integer("width", 256, "Width of its blocks.")
    flags.DEFINE_integer("epochs", 20, "Epochs (the glonet_mlp_fashion_mnist preset's recipe: 20).")
    flags.DEFINE_float("exit_loss_weight", 1.0, "Weight of the exit losses in the exit-loss arm.")
    flags.DEFINE_float("tolerance", 0.005, "Validation accuracy the calibrated threshold may give up "
                       "against the full model (0.005 = half a point).")
    flags.DEFINE_bool("smoke", False, "Seconds: 2 blocks of 16 on 512 examples, 2 epochs; numbers mean "
                      "nothing (tests).")
    flags.DEFINE_bool("report_only", False, "Only re-render anytime.md from "
                      "<output_dir>/anytime_results.json; train and read nothing.")
    flags.mark_flag_as_required("output_dir")


if __name__ == "__main__":
    define_flags()
    app.run(main)
