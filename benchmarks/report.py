"""Tables of the benchmarks' results, from their result lists or from the JSON files they write.

Each benchmark script prints its table last through these functions, and this module's command
line prints the short tables of any number of result files (the GPU suite's last step):

    python benchmarks/report.py "$OUT"/*.json
"""

import json
import os
import sys

if __package__ in (None, ""):
    # Run as a script (`python benchmarks/...py`): make the repository root importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import timing  # noqa: E402

#: The reference of fit_overhead's ratios: one compiled step per call.
RAW_STEP = "raw:device:1"
#: The target of issue 12: fit within 10 % of the raw step.
FIT_TARGET = 1.10
PAIRS = (("glonet_mlp", "resnet_mlp"), ("glonet_cnn", "resnet_cnn"))


def mlp_speed_table(results, log=print):
    header = ["depth", "GloNet s/epoch", "ResNet-v2(BN) s/epoch", "ResNet form", "ratio", "paper",
              "compile s (G / R)"]
    rows = []
    for row in results:
        compile_s = "/".join(f"{row[k]:.1f}" if row.get(k) is not None else "-"
                             for k in ("glonet_compile_s", "resnet_bn_compile_s"))
        rows.append([row["depth"], row.get("glonet_skipped") and "skipped" or
                     timing.spread(row, "glonet_s_per_epoch"),
                     row.get("resnet_bn_skipped") and "skipped" or
                     timing.spread(row, "resnet_bn_s_per_epoch"),
                     row.get("resnet_bn_form", "-"), timing.spread(row, "ratio", digits=2),
                     f"{row['paper_ratio']:.2f}" if row.get("paper_ratio") else "-", compile_s])
    timing.print_table(header, rows, log=log)
    for row in results:
        for key in ("glonet", "resnet_bn"):
            if row.get(f"{key}_skipped"):
                log(f"depth {row['depth']}: {key} skipped: {row[f'{key}_skipped']}")


def cnn_speed_table(rows, log=print):
    header = ["depth", "GloNet img/s", "ResNet-v2(BN) img/s", "GloNet s/epoch", "ResNet s/epoch",
              "time ratio", "compile s (G / R)"]
    timing.print_table(header, [
        [row["depth"], f"{row['glonet_images_per_s']:.0f}", f"{row['resnet_bn_images_per_s']:.0f}",
         timing.spread(row, "glonet_s_per_epoch"), timing.spread(row, "resnet_bn_s_per_epoch"),
         timing.spread(row, "ratio", digits=2),
         f"{row['glonet_compile_s']:.1f}/{row['resnet_bn_compile_s']:.1f}"]
        for row in rows], log=log)


def augmented(name):
    """Whether a fit_overhead variant trains with augmentation (`aug`/`kaug`/`mix`,
    `trainer:recipe`, `trainer:mix`)."""
    parts = name.split(":")
    return bool({"aug", "kaug", "mix"} & set(parts[3:])) or parts[:2] in (["trainer", "recipe"],
                                                                   ["trainer", "mix"])


def best_fit(result, with_augmentation=False, trainer=True):
    """(name, entry) of the fastest fit/fused (and, with `trainer`, trainer) variant of one model,
    by median ms per step, among those with (or without) augmentation."""
    fits = {name: entry for name, entry in result["variants"].items()
            if not name.startswith("raw") and augmented(name) == with_augmentation
            and (trainer or not name.startswith("trainer:"))}
    if not fits:
        return None, None
    name = min(fits, key=lambda n: fits[n]["ms_per_step"]["median"])
    return name, fits[name]


def augmentation_rows(result):
    """What augmentation adds, and how far the trainer's own path is from the best fit variant.

    Rows of [what, numerator variant, denominator variant, paired ratio summary] for every pair
    present in `result`: X:aug / X (and X:kaug / X, X:mix / X), trainer:recipe / trainer:plain,
    trainer:mix / trainer:recipe (what MixUp and CutMix add to the recipe), and each
    trainer variant / the best fit or fused variant (never a trainer variant: the trainer is
    measured against what plain `fit` reaches) with the same augmentation, else without any.
    """
    variants = result["variants"]
    pairs = []
    for name in variants:
        parts = name.split(":")
        for option in ("aug", "kaug", "mix"):
            if option in parts[3:]:
                base = ":".join(p for p in parts if p != option)
                if base in variants:
                    what = "MixUp+CutMix (mix) add" if option == "mix" else \
                        f"augmentation ({option}) adds"
                    pairs.append((what, name, base))
    for spe in sorted({name.split(":")[2] for name in variants if name.startswith("trainer:")}):
        recipe, plain, mix = (f"trainer:{form}:{spe}" for form in ("recipe", "plain", "mix"))
        if recipe in variants and plain in variants:
            pairs.append(("augmentation adds, trainer", recipe, plain))
        if mix in variants and recipe in variants:
            pairs.append(("MixUp+CutMix add, trainer", mix, recipe))
    for name in variants:
        if name.startswith("trainer:"):
            best, _ = best_fit(result, augmented(name), trainer=False)
            what = "trainer / best fit"
            if best is None:
                best, _ = best_fit(result, False, trainer=False)
                what = "trainer / best fit without augmentation"
            if best:
                pairs.append((what, name, best))
    rows = []
    for what, numerator, denominator in pairs:
        ratio = timing.paired_ratios(variants[numerator]["samples_ms_per_step"],
                                     variants[denominator]["samples_ms_per_step"])
        rows.append([what, numerator, denominator, ratio])
    return rows


def fit_overhead_model_table(result, log=print):
    """Every variant of one model: steps per execution, ms/step, compile s, ratios to raw."""
    header = ["variant", "spe", "ms/step median [min-max]", "compile s", "fit/raw", "fit/raw loop"]
    rows = []
    for name, entry in result["variants"].items():
        rows.append([name, entry["steps_per_execution"],
                     timing.format_summary(entry["ms_per_step"], digits=3),
                     f"{entry['compile_s']:.1f}",
                     timing.format_summary(entry["ratio_to_raw"], digits=2)
                     if "ratio_to_raw" in entry else "-",
                     timing.format_summary(entry["ratio_to_raw_loop"], digits=2)
                     if "ratio_to_raw_loop" in entry else "-"])
    log(f"\n{result['model']} (batch {result['batch_size']}, {result['steps']} steps/repetition)")
    timing.print_table(header, rows, log=log)


def fit_overhead_summary(results, log=print):
    """Best fit variant per model against the raw step, and GloNet/ResNet ratios side by side."""
    header = ["model", "best fit variant", "fit ms/step", "raw ms/step", "fit/raw",
              f"within {round((FIT_TARGET - 1) * 100)} %"]
    rows, medians = [], {}
    for result in results:
        name, entry = best_fit(result)
        raw = result["variants"].get(RAW_STEP)
        fit_ms = entry["ms_per_step"]["median"] if entry else None
        raw_ms = raw["ms_per_step"]["median"] if raw else None
        ratio = entry.get("ratio_to_raw") if entry else None
        medians[result["model"]] = (fit_ms, raw_ms)
        rows.append([result["model"], name or "-", _number(fit_ms), _number(raw_ms),
                     timing.format_summary(ratio, digits=2) if ratio else "-",
                     ("yes" if ratio["median"] <= FIT_TARGET else "no") if ratio else "-"])
    timing.print_table(header, rows, log=log)
    for result in results:
        extra = augmentation_rows(result)
        if extra:
            log(f"\n{result['model']}: augmentation and the trainer's own path (paired ratios)")
            timing.print_table(["what", "variant", "against", "ratio median [min-max]"],
                               [[what, a, b, timing.format_summary(r, digits=2)]
                                for what, a, b, r in extra], log=log)
    pairs = []
    for spec in medians:
        family, _, depth = spec.partition(":")
        for glonet, resnet in PAIRS:
            if family == glonet and f"{resnet}:{depth}" in medians:
                pairs.append((spec, f"{resnet}:{depth}"))
    if pairs:
        log("")
        timing.print_table(
            ["GloNet / ResNet-v2, same depth", "best fit", "raw step"],
            [[f"{glonet} / {resnet}", _ratio_text(medians[glonet][0], medians[resnet][0]),
              _ratio_text(medians[glonet][1], medians[resnet][1])] for glonet, resnet in pairs],
            log=log)


def _number(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio_text(numerator, denominator):
    return f"{numerator / denominator:.2f}" if numerator and denominator else "-"


def memory_slopes(points, key):
    """{(family, form): least-squares MB per depth unit of `key`}, over the points that have it."""
    import numpy as np

    series = {}
    for point in points:
        if key in point:
            series.setdefault((point["family"], point["form"]), []).append((point["depth"], point[key]))
    fitted = {}
    for name, values in series.items():
        if len(values) >= 2:
            depth, memory = np.array(values, dtype="float64").T
            fitted[name] = float(np.polyfit(depth, memory, 1)[0])
    return fitted


def memory_tables(points, log=print):
    """One table per memory kind (host RSS, device): MB by depth and model, GloNet/ResNet, slope."""
    keys = [key for key in ("train_rss_mb", "train_device_mb") if any(key in p for p in points)]
    family_order = [family for pair in PAIRS for family in pair]
    columns = sorted({(p["family"], p["form"]) for p in points if "error" not in p},
                     key=lambda c: (family_order.index(c[0]), c[1]))
    by_point = {(p["family"], p["form"], p["depth"]): p for p in points}
    for key in keys:
        label = "host RSS" if key == "train_rss_mb" else "device"
        log(f"\nPeak {label} added by training, MB (GloNet / ResNet-v2 ratio where both ran)")
        header = ["depth"] + [f"{family} {form}" for family, form in columns] + ["GloNet/ResNet"]
        rows = []
        for depth in sorted({p["depth"] for p in points}):
            cells = [_number(by_point.get((family, form, depth), {}).get(key), 1)
                     for family, form in columns]
            rows.append([depth] + cells + [_memory_ratio(by_point, depth, key)])
        fitted = memory_slopes(points, key)
        rows.append(["MB/block"] + [_number(fitted.get(c)) for c in columns] + [""])
        timing.print_table(header, rows, log=log)
    for point in points:
        if "error" in point:
            log(f"{point['family']} {point['form']} depth {point['depth']} failed: "
                f"{point['error'][-200:]}")


def _memory_ratio(by_point, depth, key):
    """GloNet / ResNet-v2 at one depth (each unrolled where measured, else scanned)."""
    def value(family):
        for form in ("unrolled", "scanned"):
            if key in by_point.get((family, form, depth), {}):
                return by_point[(family, form, depth)][key]
        return None

    for glonet, resnet in PAIRS:
        text = _ratio_text(value(glonet), value(resnet))
        if text != "-":
            return text
    return "-"


def print_file(path, log=print):
    """Prints the short table of one benchmark's JSON file."""
    with open(path) as handle:
        payload = json.load(handle)
    name = payload.get("benchmark")
    log(f"\n== {name} ({os.path.basename(path)}): {payload.get('machine', '?')}")
    if payload.get("complete") is False:
        log("(incomplete: the run stopped before the end; these are the parts it finished)")
    if name == "mlp_speed":
        mlp_speed_table(payload["results"], log=log)
    elif name == "cnn_speed":
        cnn_speed_table(payload["results"], log=log)
    elif name == "fit_overhead":
        fit_overhead_summary(payload["results"], log=log)
    elif name == "memory":
        memory_tables(payload["points"], log=log)
    else:
        raise ValueError(f"{path}: not a benchmark result (its 'benchmark' is {name!r}).")


def main(paths):
    """Prints every file's table; returns the number of files that could not be read."""
    failures = 0
    for path in paths:
        try:
            print_file(path)
        except (OSError, ValueError, KeyError) as error:
            print(f"\n== {path}: unreadable ({type(error).__name__}: {error})")
            failures += 1
    return failures


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
