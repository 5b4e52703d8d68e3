"""Zoo v2's protocol (issue 21): a preset trained with several seeds beside its comparison arms (its
twin, the same architecture without a training trick) under the same recipe and seeds. Every choice
reads the validation split; the test split is read once, at the end, after every choice is made.

`training/make_zoo.py --steps=protocol` calls `measure` for a recipe with `seeds` and `arms`, writes
`runs/zoo/<name>/protocol.json` and `protocol.md` (`report`: the tables and the verdicts of the rules
in the recipe's `targets`, as docs/RESULTS.md shows them), and `package` publishes the preset arm's
seed with the best validation accuracy, with `summary` on its card.

Per run, in two passes over all runs:
  validation  accuracy, the accuracy of every exit, and (GloNets) the anytime threshold calibrated
              there (`deploy.calibrate_threshold`, with the recipe's cost and confidence);
  test        accuracy, every exit, anytime at the calibrated threshold and at the old default 0.9,
              and robustness: 2-pixel shifts (mean over up, down, left, right; zero fill) and
              Gaussian noise of sigma 0.05 and 0.1 on the [0, 1] pixel scale (seed 0, clipped,
              rounded back to uint8).
Time per epoch is the median epoch of the run's own record (metrics.json).
"""

import json
import statistics
from pathlib import Path

from experiment_common import fmt, table, verdict  # training/ is on sys.path for its programs

PRESET_ARM = "preset"
SHIFT_PIXELS = 2
NOISE_SIGMAS = (0.05, 0.1)
NOISE_SEED = 0
OLD_DEFAULT_THRESHOLD = 0.9


# ------------------------------------------------------------------------------- perturbations


def _check_images(images):
    import numpy as np

    images = np.asarray(images)
    if images.ndim != 4 or not (images.dtype == np.uint8 or np.issubdtype(images.dtype, np.floating)):
        raise ValueError("robustness perturbations take raw images (batch, height, width, channels), "
                         "uint8 (0..255) or float (0..1); received "
                         f"{images.dtype} of shape {images.shape}")
    return images


def shifted(images, dy, dx):
    """`images` moved by `dy` rows down and `dx` columns right, the uncovered border zero."""
    import numpy as np

    images = _check_images(images)
    height, width = images.shape[1:3]
    if abs(dy) >= height or abs(dx) >= width:
        raise ValueError(f"a shift of ({dy}, {dx}) moves {height}x{width} images out of view")
    out = np.zeros_like(images)
    source = images[:, max(0, -dy):height - max(0, dy), max(0, -dx):width - max(0, dx)]
    out[:, max(0, dy):max(0, dy) + source.shape[1], max(0, dx):max(0, dx) + source.shape[2]] = source
    return out


def noisy(images, sigma, seed=NOISE_SEED):
    """`images` plus Gaussian noise of std `sigma` on the [0, 1] pixel scale, clipped to it; uint8
    images are rounded back to uint8 (as a camera would deliver them)."""
    import numpy as np

    images = _check_images(images)
    if isinstance(sigma, bool) or not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0, received {sigma!r}")
    noise = np.random.default_rng(seed).normal(0.0, sigma, size=images.shape)
    if images.dtype == np.uint8:
        return np.clip(np.rint((images / 255.0 + noise) * 255.0), 0, 255).astype(np.uint8)
    return np.clip(images + noise, 0.0, 1.0).astype(images.dtype)


def perturbations():
    """{name: function of raw images}: what the robustness columns read."""
    shifts = [(-SHIFT_PIXELS, 0), (SHIFT_PIXELS, 0), (0, -SHIFT_PIXELS), (0, SHIFT_PIXELS)]
    named = {f"shift_{SHIFT_PIXELS}px": [lambda x, s=s: shifted(x, *s) for s in shifts]}
    for sigma in NOISE_SIGMAS:
        named[f"noise_{sigma:g}"] = [lambda x, sigma=sigma: noisy(x, sigma)]
    return named


def robustness(predict, images, labels):
    """{perturbation: accuracy} of `predict(raw images) -> logits`; a shift reads the mean of four."""
    import numpy as np

    return {name: float(np.mean([np.mean(np.argmax(predict(f(images)), -1) == labels)
                                 for f in functions]))
            for name, functions in perturbations().items()}


# ---------------------------------------------------------------------------------- measuring


def run_directory(runs_dir, name, arm, seed):
    return Path(runs_dir) / name / arm / f"seed_{seed}"


def _status(run_dir):
    """A run directory's training status: its metrics.json's (written when training ends), else
    its run.json's ("training": in progress or interrupted), else "not started"; "unreadable ..."
    for a file that is not a JSON object."""
    for name in ("metrics.json", "run.json"):
        path = Path(run_dir) / name
        if path.exists():
            try:
                return str(json.loads(path.read_text()).get("status"))
            except (OSError, ValueError, AttributeError):
                return f"unreadable {name}"
    return "not started"


def _load(run_dir):
    import keras

    from glonet_keras import data

    run_dir = Path(run_dir)
    record = json.loads((run_dir / "metrics.json").read_text())
    if record.get("status") != "finished":
        raise SystemExit(f"{run_dir} holds no finished run (status {record.get('status')!r}): "
                         "train it first (make_zoo --steps=train)")
    model = keras.saving.load_model(run_dir / "model.keras", compile=False, safe_mode=True)
    return model, data.load_preprocessing(run_dir / "preprocessing.json"), record


def _logits(model, x, glonet):
    """(full-model logits, exit logits or None) of preprocessed `x`."""
    import numpy as np

    from glonet_keras import analysis

    if glonet:
        exits = np.asarray(analysis.early_exit_logits(model, x, batch_size=1024))
        return exits[:, -1], exits
    return np.asarray(model.predict(x, batch_size=1024, verbose=0)), None


def _accuracy(logits, labels):
    import numpy as np

    return float(np.mean(np.argmax(logits, -1) == labels))


def _anytime(exit_logits, labels, threshold):
    from glonet_keras.deploy import first_confident_exits

    chosen, logits = first_confident_exits(exit_logits, threshold)
    return {"threshold": float(threshold), "accuracy": _accuracy(logits, labels),
            "mean_blocks": float(chosen.mean())}


def read_validation(model, preprocessing, dataset, seed, calibration, max_examples=None):
    """Everything a run's choices may read: its validation split only."""
    import numpy as np

    from glonet_keras import analysis, data
    from glonet_keras.deploy import calibrate_threshold

    x, y = data.load_split(dataset, "validation", seed=seed, max_examples=max_examples)
    y = np.asarray(y, "int64")
    glonet = analysis.is_glonet(model)
    full, exits = _logits(model, np.asarray(preprocessing(x)), glonet)
    record = {"accuracy": _accuracy(full, y), "num_examples": int(len(y))}
    if glonet:
        record["exit_accuracy"] = [_accuracy(exits[:, k], y) for k in range(exits.shape[1])]
        record["calibrated_anytime"] = {
            **calibrate_threshold(exits, y, **calibration), "split": "validation"}
    return record


def read_test(model, preprocessing, dataset, seed, threshold, max_examples=None):
    """The one read of the test split: accuracy, exits, anytime, robustness."""
    import numpy as np

    from glonet_keras import analysis, data

    x, y = data.load_split(dataset, "test", seed=seed, max_examples=max_examples)
    x, y = np.array(x), np.asarray(y, "int64")
    glonet = analysis.is_glonet(model)
    full, exits = _logits(model, np.asarray(preprocessing(x)), glonet)
    record = {"accuracy": _accuracy(full, y), "num_examples": int(len(y))}
    if glonet:
        record["exit_accuracy"] = [_accuracy(exits[:, k], y) for k in range(exits.shape[1])]
        record["anytime"] = _anytime(exits, y, threshold)
        record["anytime_old_default"] = _anytime(exits, y, OLD_DEFAULT_THRESHOLD)

    def predict(images):
        return model.predict(np.asarray(preprocessing(images)), batch_size=1024, verbose=0)

    record["robustness"] = robustness(predict, x, y)
    return record


def measure(name, recipe, runs_dir, log=print, max_examples=None):
    """The protocol record of a multi-seed recipe (see the module docstring)."""
    dataset, seeds = recipe["flags"]["dataset"], list(recipe["seeds"])
    calibration = dict(recipe.get("calibration", {}))
    arms = [PRESET_ARM, *recipe.get("arms", {})]
    unfinished = [f"{arm} seed {seed} ({_status(run_directory(runs_dir, name, arm, seed))})"
                  for arm in arms for seed in seeds
                  if _status(run_directory(runs_dir, name, arm, seed)) != "finished"]
    if unfinished:  # Refused before any run is measured (minutes each), naming every one missing.
        raise SystemExit(f"[{name}] {len(unfinished)} of {len(arms) * len(seeds)} runs are not "
                         f"finished in {runs_dir}: {', '.join(unfinished)}; train them first "
                         "(make_zoo --steps=train --resume).")
    runs, loaded = {}, {}
    for arm in arms:  # Pass 1: every choice, from the validation split.
        for seed in seeds:
            directory = run_directory(runs_dir, name, arm, seed)
            model, preprocessing, record = _load(directory)
            loaded[arm, seed] = model, preprocessing
            command = directory / "command.json"
            runs.setdefault(arm, {})[str(seed)] = {
                "seed": seed,
                "parameters": int(model.count_params()),
                "epochs": record["epochs"],
                "seconds_per_epoch": statistics.median(record["seconds_per_epoch"]),
                "command": json.loads(command.read_text())["command"] if command.exists() else None,
                "validation": read_validation(model, preprocessing, dataset, seed, calibration,
                                              max_examples),
            }
            log(f"[{name}] {arm} seed {seed}: validation "
                f"{runs[arm][str(seed)]['validation']['accuracy']:.4f}")
    published = max(seeds, key=lambda s: (runs[PRESET_ARM][str(s)]["validation"]["accuracy"], -s))
    for arm in arms:  # Pass 2: the test split, once per run.
        for seed in seeds:
            run = runs[arm][str(seed)]
            threshold = run["validation"].get("calibrated_anytime", {}).get("threshold", 1.0)
            run["test"] = read_test(*loaded[arm, seed], dataset, seed, threshold, max_examples)
            log(f"[{name}] {arm} seed {seed}: test {run['test']['accuracy']:.4f}")
    return {"name": name, "dataset": dataset, "seeds": seeds, "published_seed": published,
            "calibration": calibration, "targets": recipe.get("targets", {}),
            "arms": {arm: {"summary": (recipe.get("arms", {}).get(arm) or {}).get(
                "summary", recipe["summary"]), "runs": runs[arm]} for arm in arms}}


# ---------------------------------------------------------------------------------- summaries


def per_seed(protocol, arm, read):
    """`read(run)` for each seed of `arm`, in seed order."""
    runs = protocol["arms"][arm]["runs"]
    return [read(runs[str(seed)]) for seed in protocol["seeds"]]


def mean_std(values):
    import numpy as np

    values = np.asarray(values, "float64")
    return {"mean": float(values.mean()), "std": float(values.std()), "values": values.tolist()}


def quantities(protocol, arm):
    """Per-seed quantities of one arm (accuracies as fractions, costs and gaps in points)."""
    q = {
        "test": per_seed(protocol, arm, lambda r: r["test"]["accuracy"]),
        "validation": per_seed(protocol, arm, lambda r: r["validation"]["accuracy"]),
        "seconds_per_epoch": per_seed(protocol, arm, lambda r: r["seconds_per_epoch"]),
        "parameters": per_seed(protocol, arm, lambda r: r["parameters"]),
    }
    for name in per_seed(protocol, arm, lambda r: r["test"]["robustness"])[0]:
        q[name] = per_seed(protocol, arm, lambda r, name=name: r["test"]["robustness"][name])
    if "anytime" in protocol["arms"][arm]["runs"][str(protocol["seeds"][0])]["test"]:
        blocks = len(protocol["arms"][arm]["runs"][str(protocol["seeds"][0])]["test"]["exit_accuracy"])
        q.update(
            num_blocks=blocks,
            half=per_seed(protocol, arm, lambda r: r["test"]["exit_accuracy"][blocks // 2 - 1]),
            half_gap=per_seed(protocol, arm, lambda r: 100 * (
                r["test"]["accuracy"] - r["test"]["exit_accuracy"][blocks // 2 - 1])),
            threshold=per_seed(protocol, arm,
                               lambda r: r["validation"]["calibrated_anytime"]["threshold"]),
            anytime=per_seed(protocol, arm, lambda r: r["test"]["anytime"]["accuracy"]),
            blocks=per_seed(protocol, arm, lambda r: r["test"]["anytime"]["mean_blocks"]),
            block_fraction=per_seed(protocol, arm,
                                    lambda r: r["test"]["anytime"]["mean_blocks"] / blocks),
            cost=per_seed(protocol, arm, lambda r: 100 * (r["test"]["accuracy"]
                                                          - r["test"]["anytime"]["accuracy"])),
            exits=per_seed(protocol, arm, lambda r: r["test"]["exit_accuracy"]),
        )
    return q


def summary(protocol):
    """The card's record: per arm mean ± std of what the protocol measured, and the publication."""
    arms = {}
    for arm, entry in protocol["arms"].items():
        q = quantities(protocol, arm)
        arms[arm] = {"summary": entry["summary"],
                     **{key: mean_std(q[key]) for key in q
                        if key not in ("num_blocks", "exits", "parameters")},
                     "parameters": q["parameters"][0]}
    against = protocol.get("targets", {}).get("time_against")
    if against:
        arms[PRESET_ARM]["time_ratio"] = {"against": against,
                                          **mean_std(time_ratio(protocol, against))}
    return {"seeds": protocol["seeds"], "published_seed": protocol["published_seed"],
            "calibration": protocol["calibration"], "arms": arms,
            "targets": protocol.get("targets", {}),
            "selection": "the preset arm's seed with the highest validation accuracy",
            "robustness": f"test accuracy under {SHIFT_PIXELS}-pixel shifts (mean of four, zero "
                          f"fill) and Gaussian noise sigma {', '.join(map(str, NOISE_SIGMAS))} on "
                          "the [0, 1] scale (seed 0, clipped, rounded to uint8)"}


# ------------------------------------------------------------------------------------ verdicts


def twin_arms(targets):
    """The arms the "twin" rule compares the preset with: `targets["twin"]` names one arm or a
    tuple of them."""
    twin = targets.get("twin", ())
    return (twin,) if isinstance(twin, str) else tuple(twin)


def time_ratio(protocol, arm):
    """Per seed, the preset's median seconds per epoch over `arm`'s (the recipe's
    `targets["time_against"]`): reported beside the verdicts, never judged (a speed claim is a
    benchmark's, and these runs may share a machine)."""
    ours = quantities(protocol, PRESET_ARM)["seconds_per_epoch"]
    theirs = quantities(protocol, arm)["seconds_per_epoch"]
    return [o / t for o, t in zip(ours, theirs)]


def verdicts(protocol):
    """The recipe's `targets` applied (docs/RESULTS.md's rules): {name: (verdict, per-seed values,
    the rule in words, unit)}. Each rule judges a per-seed quantity's mean against its threshold, a
    mean within one std being "inconclusive" (experiment_common.verdict)."""
    return judge(protocol["targets"], lambda arm: quantities(protocol, arm))


def summary_verdicts(record):
    """`verdicts` from a card's record (`summary`: per arm, each quantity's per-seed `values`), so
    a card is judged by the same rules without the protocol file; {} for a record without targets
    (a card packaged before the record carried them)."""
    def per_seed_of(arm):
        return {key: entry["values"] for key, entry in record["arms"][arm].items()
                if isinstance(entry, dict) and "values" in entry}

    return judge(record.get("targets") or {}, per_seed_of)


def judge(targets, per_seed_of):
    """`targets` applied to `per_seed_of(arm)`: {quantity: per-seed values in seed order} of an
    arm (`quantities`' keys)."""
    if not targets:
        return {}
    ours = per_seed_of(PRESET_ARM)
    found = {}

    def rule(key, values, threshold, words, unit="points"):  # held = mean(values) <= threshold
        found[key] = (verdict([("held", values, threshold)]), values, words, unit)

    if "accuracy" in targets:
        rule("accuracy", [100 * (targets["accuracy"] - v) for v in ours["test"]], 0.0,
             f"test accuracy at least {100 * targets['accuracy']:.1f} %; the values: target "
             "minus accuracy")
    twins = twin_arms(targets)
    for arm in twins:  # One twin: the rule "twin"; several: "twin <arm>" each.
        twin = per_seed_of(arm)
        rule("twin" if len(twins) == 1 else f"twin {arm}",
             [100 * (t - o) for t, o in zip(twin["test"], ours["test"])], 0.0,
             f"the preset at least level with {arm}; the values: twin minus preset")
    if "half_exit" in targets:
        rule("half_exit", ours["half_gap"], targets["half_exit"],
             f"full model minus exit L/2 at most {targets['half_exit']:g} point")
    if "anytime_saving" in targets:
        rule("anytime_saving", ours["block_fraction"], targets["anytime_saving"],
             f"mean blocks run at most {targets['anytime_saving']:g} of L", unit="of L")
    if "anytime_cost" in targets:
        rule("anytime_cost", ours["cost"], targets["anytime_cost"],
             f"anytime cost at most {targets['anytime_cost']:g} point")
    parts = [found[key][0] for key in ("anytime_saving", "anytime_cost") if key in found]
    if len(parts) == 2:
        overall = ("held" if all(p == "held" for p in parts) else "did not hold"
                   if any(p.startswith("did not hold") for p in parts) else "inconclusive")
        found["anytime"] = (overall, None, "saving and cost both held", None)
    if "without" in targets:
        without = per_seed_of(targets["without"])
        rule("without", [100 * (w - o) for w, o in zip(without["test"], ours["test"])],
             targets.get("without_cost", 0.5),
             f"{targets['without']} minus preset at most {targets.get('without_cost', 0.5):g} "
             "point")
    return found


# -------------------------------------------------------------------------------------- report


def _fmt(values, scale=100.0, digits=1):
    return fmt(values, scale=scale, digits=digits)


def report(protocol):
    """docs/RESULTS.md's body for a protocol record: per-arm table, per-seed table, verdicts."""

    arms = list(protocol["arms"])
    qs = {arm: quantities(protocol, arm) for arm in arms}
    robust = [k for k in qs[arms[0]] if k.startswith(("shift_", "noise_"))]
    header = ["arm", "parameters", "test accuracy", "validation", *robust, "s / epoch",
              "exit L/2 gap (points)", "threshold (validation)", "anytime accuracy",
              "mean blocks", "cost (points)"]
    rows = []
    for arm in arms:
        q = qs[arm]
        row = [f"{arm}: {protocol['arms'][arm]['summary']}", f"{q['parameters'][0]:,}",
               _fmt(q["test"]), _fmt(q["validation"]), *[_fmt(q[k]) for k in robust],
               _fmt(q["seconds_per_epoch"], scale=1, digits=1)]
        if "threshold" in q:
            row += [_fmt(q["half_gap"], 1, 2), _fmt(q["threshold"], 1, 3), _fmt(q["anytime"]),
                    f"{_fmt(q['blocks'], 1, 2)} of {q['num_blocks']}", _fmt(q["cost"], 1, 2)]
        else:
            row += ["n/a"] * 5
        rows.append(row)
    per_seed_rows = []
    for arm in arms:
        for seed in protocol["seeds"]:
            run = protocol["arms"][arm]["runs"][str(seed)]
            calibrated = run["validation"].get("calibrated_anytime")
            anytime = run["test"].get("anytime")
            per_seed_rows.append([
                arm, seed, f"{100 * run['validation']['accuracy']:.2f}",
                f"{100 * run['test']['accuracy']:.2f}",
                *[f"{100 * run['test']['robustness'][k]:.2f}" for k in robust],
                f"{calibrated['threshold']:.3f}" if calibrated else "n/a",
                f"{100 * anytime['accuracy']:.2f}, {anytime['mean_blocks']:.2f} blocks"
                if anytime else "n/a",
                f"{run['seconds_per_epoch']:.1f}"])
    lines = [table(header, rows), "",
             f"Per seed (published: seed {protocol['published_seed']}, the preset arm's best "
             "validation accuracy):", "",
             table(["arm", "seed", "validation", "test", *robust, "threshold", "test anytime",
                    "s / epoch"], per_seed_rows), ""]
    exit_arms = [arm for arm in arms if "exits" in qs[arm]]
    if exit_arms:
        blocks = qs[exit_arms[0]]["num_blocks"]
        import numpy as np

        lines += ["Test accuracy of every exit k = 1..L (mean over seeds, %):", "",
                  table(["arm", *map(str, range(1, blocks + 1))],
                        [[arm, *[f"{100 * a:.1f}" for a in np.mean(qs[arm]["exits"], 0)]]
                         for arm in exit_arms]), ""]
    against = protocol["targets"].get("time_against")
    if against:
        ratios = time_ratio(protocol, against)
        lines += [f"Time per epoch, the preset over {against} (the median epoch of each run, paired "
                  f"by seed; a reading, not a benchmark): {_fmt(ratios, 1, 2)} (seeds "
                  + ", ".join(f"{r:.2f}" for r in ratios) + ").", ""]
    lines.append("**Verdicts** (the rules above; a mean within one std of its threshold is "
                 "inconclusive):")
    lines.append("")
    lines += verdict_lines(verdicts(protocol))
    return "\n".join(lines)


def verdict_lines(found):
    """One markdown line per verdict (`verdicts`' or `summary_verdicts`' record): the rule, the
    verdict, and the per-seed values it was judged on."""
    lines = []
    for key, (result, values, words, unit) in found.items():
        numbers = "" if values is None else (
            f": {_fmt(values, 1, 2)} {unit} (mean ± std of seeds "
            + ", ".join(f"{v:.2f}" for v in values) + ")")
        lines.append(f"- **{key}** ({words}): **{result}**{numbers}.")
    return lines
