"""The benchmark scripts at tiny sizes: what they measure, how they summarise it, how they refuse."""

import inspect
import json
import os
import subprocess
import sys

import pytest

from benchmarks import cnn_speed, fit_overhead, memory, mlp_speed, onednn, report, timing
from tests.harness import REPO_ROOT

QUIET = dict(log=lambda line: None)


# ---- timing ---------------------------------------------------------------------------------

def test_summaries_and_paired_ratios():
    assert timing.summarize([3, 1, 2]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert timing.format_summary(timing.summarize([1.0, 2.0, 4.0]), scale=1e3, digits=0) == \
        "2000 [1000-4000]"
    ratios = timing.paired_ratios([2.0, 3.0, 8.0], [1.0, 3.0, 2.0])
    assert (ratios["median"], ratios["min"], ratios["max"]) == (2.0, 1.0, 4.0)
    with pytest.raises(ValueError, match="at least one"):
        timing.summarize([])
    with pytest.raises(ValueError, match="pair"):
        timing.paired_ratios([1.0], [1.0, 2.0])


def test_tasks_are_warmed_up_once_then_interleaved_in_rotating_order():
    calls = []

    def task(name, seconds):
        def run():
            calls.append(name)
            return seconds
        return run

    results = timing.time_interleaved({"a": task("a", 1.0), "b": task("b", 2.0), "c": task("c", 3.0)},
                                      repetitions=3)
    assert calls == ["a", "b", "c",  "a", "b", "c",  "b", "c", "a",  "c", "a", "b"]
    assert results["b"] == {"warmup_s": 2.0, "samples_s": [2.0, 2.0, 2.0]}
    with pytest.raises(ValueError, match="repetitions"):
        timing.time_interleaved({"a": task("a", 1.0)}, repetitions=0)


def test_write_json_leaves_the_old_file_when_the_payload_cannot_be_written(tmp_path):
    path = tmp_path / "out.json"
    timing.write_json(str(path), {"ok": 1})
    with pytest.raises(TypeError):
        timing.write_json(str(path), {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert os.listdir(tmp_path) == ["out.json"]  # no temporary file left behind


def test_partial_results_are_saved_and_reported_as_incomplete(tmp_path, capsys):
    path = tmp_path / "partial.json"
    save = timing.json_saver(str(path), {"benchmark": "memory", "machine": "test"}, "points")
    point = dict(family="glonet_mlp", form="unrolled", depth=2, train_rss_mb=5.0)
    save([point])
    assert json.loads(path.read_text())["complete"] is False
    report.print_file(str(path))
    assert "incomplete" in capsys.readouterr().out
    save([point, dict(point, depth=4)], complete=True)
    payload = json.loads(path.read_text())
    assert payload["complete"] is True and len(payload["points"]) == 2
    timing.json_saver(None, {}, "points")([point])  # no path: nothing written, no error


def test_steps_per_execution_and_data_form_are_checked():
    assert timing.parse_steps_per_execution("auto") == "auto"
    assert timing.parse_steps_per_execution("16") == 16
    for bad in ("0", "-3", "many", "1.5"):
        with pytest.raises(ValueError, match="positive integer"):
            timing.parse_steps_per_execution(bad)
    with pytest.raises(ValueError, match="Unknown data form"):
        timing.resolve_form("disk")


def test_scan_support_is_read_from_the_constructor():
    class Scanned:
        def __init__(self, num_blocks=2, scan=False):
            pass

    class Unrolled:
        def __init__(self, num_blocks=2):
            pass

    assert timing.supports_scan(Scanned) and not timing.supports_scan(Unrolled)
    with pytest.raises(ValueError, match="does not accept scan=True"):
        timing.check_scan_available(Unrolled)
    timing.check_scan_available(Scanned)
    assert mlp_speed.model_forms(Scanned, 1000, "auto", 200) == ["scanned"]
    assert mlp_speed.model_forms(Scanned, 100, "auto", 200) == ["unrolled", "scanned"]
    assert "no scan=True" in mlp_speed.model_forms(Unrolled, 1000, "auto", 200)
    assert mlp_speed.model_forms(Unrolled, 100, "unrolled", 200) == ["unrolled"]


# ---- the speed benchmarks -------------------------------------------------------------------

def _check_side_by_side(row, metric="s_per_epoch", repetitions=3):
    for key in ("glonet", "resnet_bn"):
        samples = row[f"{key}_{metric}_samples"]
        assert len(samples) == repetitions
        assert row[f"{key}_{metric}_min"] <= row[f"{key}_{metric}"] <= row[f"{key}_{metric}_max"]
        assert row[f"{key}_{metric}"] == timing.summarize(samples)["median"]
        assert row[f"{key}_warmup_s"] > 0 and row[f"{key}_steps_per_execution"] >= 1
    ratios = [a / b for a, b in zip(row[f"glonet_{metric}_samples"],
                                    row[f"resnet_bn_{metric}_samples"])]
    assert row["ratio"] == pytest.approx(timing.summarize(ratios)["median"])
    assert row["ratio_min"] <= row["ratio"] <= row["ratio_max"]


def test_cnn_speed_times_both_models_side_by_side():
    (row,) = cnn_speed.run_benchmark(depths=(8,), images=64, width=4, batch_size=32,
                                     repetitions=3, image_size=8, **QUIET)
    assert row["depth"] == 8 and row["repetitions"] == 3
    _check_side_by_side(row)
    assert row["glonet_images_per_s"] == pytest.approx(64 / row["glonet_s_per_epoch"])


def test_mlp_speed_rows_json_and_table(tmp_path, capsys):
    (row,) = mlp_speed.run_benchmark(depths=(2,), rows=300, batch_size=64, repetitions=3, **QUIET)
    _check_side_by_side(row)
    assert row["glonet_form"] == row["resnet_bn_form"] == "unrolled"
    assert row["paper_ratio"] is None
    # 300 rows are cut to 4 whole batches of 64: one execution of 4 steps per epoch.
    assert row["glonet_steps_per_execution"] == 4
    path = tmp_path / "mlp.json"
    timing.write_json(str(path), {"benchmark": "mlp_speed", "machine": "test", "results": [row]})
    assert report.main([str(path), str(tmp_path / "missing.json")]) == 1
    printed = capsys.readouterr().out
    assert "unrolled" in printed and timing.spread(row, "ratio", digits=2) in printed
    assert "missing.json: unreadable" in printed


def test_mlp_speed_skips_unrolled_models_deeper_than_the_limit():
    (row,) = mlp_speed.run_benchmark(depths=(3,), rows=128, batch_size=64, repetitions=1,
                                     max_unrolled_depth=2, **QUIET)
    assert "max_unrolled_depth=2" in row["glonet_skipped"]
    assert "no scan=True" in row["resnet_bn_skipped"] or "resnet_bn_s_per_epoch" in row
    assert row["ratio"] is None


def test_mlp_speed_times_the_scanned_glonet_beyond_the_unrolled_limit():
    """--scan: the scanned GloNet is timed at a depth where the unrolled models are skipped."""
    row, = mlp_speed.run_benchmark(depths=(3,), rows=128, batch_size=64, scan=True,
                                   max_unrolled_depth=2, **QUIET)
    assert row["glonet_form"] == "scanned"
    assert row["glonet_s_per_epoch"] > 0
    assert "glonet_skipped" not in row


# ---- fit_overhead ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("fit:numpy", "kind:form:spe"),
    ("train:numpy:1", "kind must be"),
    ("raw:numpy:1", "raw: device"),
    ("fit:numpy:0", "positive integer"),
    ("fit:numpy:auto:fast", "unknown options"),
    ("fused:numpy:auto", "fused steps are for JAX"),
    ("fit:device:auto", "device form is for JAX"),
])
def test_bad_variants_are_refused_with_the_reason(text, message):
    with pytest.raises(ValueError, match=message):
        fit_overhead.Variant.parse(text, "tensorflow")


def test_variants_parse_their_options():
    variant = fit_overhead.Variant.parse("fit:numpy:8:v1:xla", "tensorflow")
    assert (variant.kind, variant.form, variant.spe, variant.verbose, variant.xla) == \
        ("fit", "numpy", 8, 1, True)
    with pytest.raises(ValueError, match="xla option is for TensorFlow"):
        fit_overhead.Variant.parse("fit:numpy:8:xla", "jax")


def test_augmentation_and_trainer_variants_parse_and_are_checked():
    variant = fit_overhead.Variant.parse("fit:numpy:auto:aug", "tensorflow")
    assert (variant.kind, variant.augment) == ("fit", "aug")
    assert variant.group(4) != fit_overhead.Variant.parse("fit:numpy:auto", "tensorflow").group(4)
    trainer = fit_overhead.Variant.parse("trainer:recipe:auto", "jax")
    assert (trainer.kind, trainer.form, trainer.spe) == ("trainer", "recipe", "auto")
    assert fit_overhead.Variant.parse("trainer:mix:2", "jax").form == "mix"
    assert fit_overhead.TRAINER_AUGMENTATIONS["mix"] == ("flip", "crop", "mixup", "cutmix")
    mixed = fit_overhead.Variant.parse("fused:device:4:aug:mix", "jax")
    assert (mixed.augment, mixed.mix) == ("aug", True)
    assert mixed.group(4) != fit_overhead.Variant.parse("fused:device:4:aug", "jax").group(4)
    for text, message in (("raw:device:1:mix", "not in raw steps"),
                          ("fit:numpy:auto:kaug:mix", "not kaug")):
        with pytest.raises(ValueError, match=message):
            fit_overhead.Variant.parse(text, "jax")
    for text, message in (("trainer:fancy:auto", "recipe, mix or plain"),
                          ("trainer:plain:auto:aug", "recipe, mix or plain"),
                          ("fit:numpy:auto:aug:kaug", "not both")):
        with pytest.raises(ValueError, match=message):
            fit_overhead.Variant.parse(text, "tensorflow")
    with pytest.raises(ValueError, match="28x28x1"):
        fit_overhead.trainer_task("glonet_mlp", 2, trainer, steps=2)


def test_the_summary_says_what_augmentation_adds_and_how_far_the_trainer_is(capsys):
    def entry(*samples):
        return {"samples_ms_per_step": list(samples), "ms_per_step": timing.summarize(samples),
                "steps_per_execution": 1, "compile_s": 0.0}

    result = {"model": "glonet_cnn_bn:20", "batch_size": 128, "steps": 8, "variants": {
        "fit:device:auto": entry(10.0, 12.0), "fit:device:auto:aug": entry(11.0, 12.6),
        "raw:device:1": entry(9.0, 9.0), "trainer:plain:auto": entry(10.5, 12.0),
        "trainer:recipe:auto": entry(12.1, 13.2), "trainer:mix:auto": entry(12.1 * 1.2, 13.2)}}
    rows = {(what, a, b): r["median"] for what, a, b, r in report.augmentation_rows(result)}
    assert rows[("MixUp+CutMix add, trainer", "trainer:mix:auto", "trainer:recipe:auto")] == \
        pytest.approx((1.2 + 1.0) / 2)
    del result["variants"]["trainer:mix:auto"]
    mixed = dict(result["variants"], **{"fit:device:auto:aug:mix": entry(11.0 * 1.1, 12.6 * 1.3)})
    rows = {(what, a, b): r["median"]
            for what, a, b, r in report.augmentation_rows(dict(result, variants=mixed))}
    assert rows[("MixUp+CutMix (mix) add", "fit:device:auto:aug:mix", "fit:device:auto:aug")] == \
        pytest.approx((1.1 + 1.3) / 2)
    assert report.best_fit(dict(result, variants=mixed))[0] == "fit:device:auto"  # mixing is augmentation
    rows = {(what, a, b): r["median"] for what, a, b, r in report.augmentation_rows(result)}
    assert rows[("augmentation (aug) adds", "fit:device:auto:aug", "fit:device:auto")] == \
        pytest.approx((1.1 + 1.05) / 2)
    assert rows[("augmentation adds, trainer", "trainer:recipe:auto", "trainer:plain:auto")] == \
        pytest.approx((12.1 / 10.5 + 1.1) / 2)
    # Against the best variant with the same augmentation: fit:device:auto (plain), the aug one.
    assert rows[("trainer / best fit", "trainer:plain:auto", "fit:device:auto")] == \
        pytest.approx((1.05 + 1.0) / 2)
    assert rows[("trainer / best fit", "trainer:recipe:auto", "fit:device:auto:aug")] == \
        pytest.approx((1.1 + 13.2 / 12.6) / 2)
    assert report.best_fit(result)[0] == "fit:device:auto"
    # The trainer is measured against plain fit, never against itself, even where it is the
    # fastest; with no augmented fit variant the recipe is held against the best plain one.
    variants = dict(result["variants"], **{"trainer:plain:auto": entry(9.5, 11.0)})
    del variants["fit:device:auto:aug"]
    rows = {(what, a, b): r["median"]
            for what, a, b, r in report.augmentation_rows(dict(result, variants=variants))}
    assert rows[("trainer / best fit", "trainer:plain:auto", "fit:device:auto")] == \
        pytest.approx((0.95 + 11.0 / 12.0) / 2)
    assert ("trainer / best fit without augmentation", "trainer:recipe:auto",
            "fit:device:auto") in rows
    report.fit_overhead_summary([result])
    assert "augmentation and the trainer's own path" in capsys.readouterr().out


def test_augmented_variants_train_the_model_behind_the_trainers_layers():
    build = fit_overhead.model_and_data("glonet_cnn_bn", 8, steps=1, cnn_width=2, image_size=8,
                                        image_channels=1)[0]
    model = build()
    assert fit_overhead.with_augmentation(model, "") is model
    assert type(model.get_layer("block_1_norm_1")).__name__ == "BatchNormalization"  # the preset
    wrapped = fit_overhead.with_augmentation(model, "aug")
    assert [type(layer).__name__ for layer in wrapped.layers] == ["RandomShiftFlip", "GloNetCNN"]
    assert wrapped.layers[1] is model  # shares the model's weights, as the trainer's wrapper does
    old = fit_overhead.with_augmentation(build(), "kaug")
    assert [type(layer).__name__ for layer in old.layers[:2]] == ["RandomFlip", "RandomTranslation"]


@pytest.mark.slow
def test_fit_overhead_times_a_cnn_behind_the_trainers_augmentation():
    variants = [fit_overhead.Variant.parse(v, "tensorflow")
                for v in ("fit:numpy:1", "fit:numpy:1:aug")]
    result = fit_overhead.run_model("glonet_cnn_bn:8", variants, steps=2, repetitions=1,
                                    cnn_width=2, cnn_batch=4, image_size=8, image_channels=1,
                                    **QUIET)
    assert set(result["variants"]) == {"fit:numpy:1", "fit:numpy:1:aug"}
    assert all(e["ms_per_step"]["median"] > 0 for e in result["variants"].values())


def test_fit_overhead_compares_fit_with_the_raw_step(capsys):
    variants = [fit_overhead.Variant.parse(v, "tensorflow")
                for v in ("fit:numpy:1", "fit:numpy:auto", "raw:device:1", "raw:device:auto")]
    result = fit_overhead.run_model("glonet_mlp:2", variants, steps=4, repetitions=3,
                                    mlp_batch=32, **QUIET)
    entries = result["variants"]
    assert set(entries) == {v.name for v in variants}
    assert entries["fit:numpy:auto"]["steps_per_execution"] == 4
    assert entries["raw:device:1"]["steps"] == entries["raw:device:auto"]["steps"] == 4
    raw = entries["raw:device:1"]
    assert raw["ratio_to_raw"] == {"median": 1.0, "min": 1.0, "max": 1.0, "n": 3}
    for entry in entries.values():
        assert len(entry["samples_ms_per_step"]) == 3 and entry["ms_per_step"]["median"] > 0
        ratios = [a / b for a, b in zip(entry["samples_ms_per_step"], raw["samples_ms_per_step"])]
        assert entry["ratio_to_raw"]["median"] == pytest.approx(timing.summarize(ratios)["median"])
    report.fit_overhead_summary([result])
    assert "glonet_mlp:2" in capsys.readouterr().out


def test_fit_overhead_rejects_unknown_models():
    with pytest.raises(ValueError, match="Unknown model family"):
        fit_overhead.model_and_data("glonet_vit", 2, steps=2)
    with pytest.raises(ValueError, match="<family>:<depth>"):
        fit_overhead.run_model("glonet_mlp", [], steps=2, repetitions=1, **QUIET)


# ---- memory ---------------------------------------------------------------------------------

def test_memory_tables_fit_a_slope_and_pair_glonet_with_resnet(capsys):
    points = [dict(family=f, form="unrolled", depth=d, train_rss_mb=base + slope * d)
              for f, base, slope in (("glonet_mlp", 10.0, 0.5), ("resnet_mlp", 20.0, 1.0))
              for d in (10, 20, 40)]
    points.append(dict(family="glonet_mlp", form="scanned", depth=1000, error="timed out after 1 s"))
    slopes = report.memory_slopes(points, "train_rss_mb")
    assert slopes[("glonet_mlp", "unrolled")] == pytest.approx(0.5)
    assert slopes[("resnet_mlp", "unrolled")] == pytest.approx(1.0)
    report.memory_tables(points)
    printed = capsys.readouterr().out
    assert f"{(10 + 0.5 * 40) / (20 + 40):.2f}" in printed  # the ratio at depth 40
    assert "depth 1000 failed: timed out" in printed


def test_memory_refuses_unknown_families():
    with pytest.raises(ValueError, match="Unknown families"):
        memory.run_benchmark(["glonet_vit"], [2], **QUIET)


@pytest.mark.slow
def test_memory_point_in_a_fresh_process_reports_what_training_added():
    point = memory.run_point("glonet_mlp", 2, "unrolled", steps=2, batch_size=32, width=4,
                             timeout=300)
    assert "error" not in point, point
    assert point["parameters"] > 0 and point["baseline_rss_mb"] > 50
    assert 0 < point["train_rss_mb"] < 2000


@pytest.mark.slow
def test_gpu_suite_smoke_runs_end_to_end_on_jax(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, PYTHONPATH=REPO_ROOT)
    result = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--smoke"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name, benchmark in (("fit_overhead", "fit_overhead"), ("fit_preset", "fit_overhead"),
                            ("mlp_speed", "mlp_speed"), ("mlp_deep", "mlp_speed"),
                            ("memory", "memory")):
        payload = json.loads((tmp_path / f"{name}.json").read_text())
        assert payload["benchmark"] == benchmark and "jax" in payload["machine"], name
    # The preset step times the augmentation and, where Fashion-MNIST is, the trainer's own path.
    (preset,) = json.loads((tmp_path / "fit_preset.json").read_text())["results"]
    assert {"fit:device:auto", "fit:device:auto:aug"} <= set(preset["variants"])
    if "no trainer:* variants" not in result.stdout:
        assert {"trainer:plain:auto", "trainer:recipe:auto"} <= set(preset["variants"])
        assert "augmentation adds, trainer" in result.stdout
    # Depth 6 is past the smoke run's unrolled limit (4): the scanned GloNet alone.
    (deep,) = json.loads((tmp_path / "mlp_deep.json").read_text())["results"]
    assert deep["depth"] == 6 and deep["glonet_form"] == "scanned"
    assert "== summary" in result.stdout and "within 10 %" in result.stdout


def test_gpu_suite_refuses_unknown_steps(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, PYTHONPATH=REPO_ROOT,
               SUITE_STEPS="fit_overhead mlp_sped")
    result = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--smoke"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown step mlp_sped" in result.stderr
    assert not (tmp_path / "fit_overhead.json").exists()


def test_every_benchmark_defaults_to_at_least_three_repetitions():
    assert timing.REPETITIONS >= 3
    for function in (mlp_speed.run_benchmark, cnn_speed.run_benchmark, fit_overhead.run_benchmark):
        assert inspect.signature(function).parameters["repetitions"].default >= 3


# ---- onednn.py ------------------------------------------------------------------------------

def test_onednn_rounds_rotate_the_settings_and_pair_them_by_round(capsys):
    started = []

    def run(setting):  # round r: off 2r+2 s per step, on 1 s; the CNN twice its twin on both
        started.append(setting)
        scale = {"0": 2.0 + len(started) // 2, "1": 1.0}[setting]
        return {"glonet_cnn_fashion_mnist": scale, "resnet_cnn_fashion_mnist": 2 * scale}

    found = onednn.rounds(3, run)
    assert started == ["0", "1", "1", "0", "0", "1"]  # a slow phase hits both settings alike
    presets = ["glonet_cnn_fashion_mnist", "resnet_cnn_fashion_mnist"]
    rows, ratios = onednn.summarize(found, presets)
    assert rows[0]["speedup"] == timing.paired_ratios([r["0"][presets[0]] for r in found],
                                                      [1.0, 1.0, 1.0])
    assert rows[0]["on_ms"]["median"] == 1000.0 and rows[1]["on_ms"]["median"] == 2000.0
    assert ratios[0]["0"]["median"] == ratios[0]["1"]["median"] == 0.5
    onednn.print_summary(rows, ratios)
    out = capsys.readouterr().out
    assert "glonet_cnn_fashion_mnist / resnet_cnn_fashion_mnist: oneDNN off 0.50" in out


def test_onednn_times_a_preset_as_its_recipe_compiles_it():
    seconds = onednn.measure(["glonet_mlp_digits"], steps=2, batch_size=8, epochs=1)
    assert set(seconds) == {"glonet_mlp_digits"} and 0 < seconds["glonet_mlp_digits"] < 60
    assert onednn.recipe("glonet_cnn_fashion_mnist")["jit_compile"] is False  # as the CNNs trained


def test_onednn_refuses_another_backend():
    result = subprocess.run([sys.executable, "benchmarks/onednn.py"], cwd=REPO_ROOT,
                            env=dict(os.environ, KERAS_BACKEND="jax"), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and "oneDNN is a TensorFlow setting" in result.stderr


@pytest.mark.slow
def test_onednn_times_each_setting_in_a_process_of_its_own(tmp_path):
    output = tmp_path / "onednn.json"
    result = subprocess.run([sys.executable, "benchmarks/onednn.py", "--presets=glonet_mlp_digits",
                             "--steps=2", "--batch_size=8", "--repetitions=1",
                             "--epochs_per_process=1", f"--output={output}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(output.read_text())
    assert set(record["rounds"][0]) == {"0", "1"} and "off / on" in result.stdout


# ---- training/gpu_zoo.sh --------------------------------------------------------------------

FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for the interpreter: make_zoo.py "trains" by writing the run's metrics.json; anything
# else runs in the real Python.
if [ "$1" = training/make_zoo.py ]; then
    echo "$@" >>"$FAKE_ZOO_CALLS"
    for arg in "$@"; do
        case $arg in --names=*) name=${arg#--names=};; --runs_dir=*) runs=${arg#--runs_dir=};; esac
    done
    [ "$name" = broken ] && exit 3
    if [ "$name" = multi ]; then  # a multi-seed recipe: <arm>/seed_<s> runs, each with a model
        for run in preset/seed_0 preset/seed_1 twin/seed_0; do
            mkdir -p "$runs/$name/$run"
            echo '{"seconds_per_epoch": [5.0, 1.0]}' >"$runs/$name/$run/metrics.json"
            echo "weights of $run" >"$runs/$name/$run/model.keras"
        done
        exit 0
    fi
    mkdir -p "$runs/$name"
    echo '{"seconds_per_epoch": [9.0, 2.0, 4.0, 3.0]}' >"$runs/$name/metrics.json"
    exit 0
fi
exec "$REAL_PYTHON" "$@"
"""


def test_gpu_zoo_reports_seconds_per_epoch_and_wall_time_per_preset(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = dict(os.environ, PYTHON=str(fake), REAL_PYTHON=sys.executable, FAKE_ZOO_CALLS=str(calls),
               GPU_ZOO_SMOKE="1")
    runs = tmp_path / "runs"
    result = subprocess.run(["bash", "training/gpu_zoo.sh", str(runs), "100", "a_preset", "broken"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # The recipe's flags, then XLA on (JAX) and the smoke run's size.
    assert "--extra_train_flags=--jit_compile=auto,--epochs=2,--max_examples=2048" in \
        calls.read_text().splitlines()[0]
    # The first epoch (compiling) apart; the median of the others: 3.0.
    assert "[a_preset] 4 epochs, 3.0 s per epoch (first, compiling: 9.0 s), wall" in result.stdout
    rows = [line.split("\t") for line in (runs / "gpu_zoo_times.tsv").read_text().splitlines()]
    assert rows[0] == ["preset", "exit", "epochs", "first_epoch_s", "median_s_per_epoch", "wall_s"]
    assert rows[1][:5] == ["a_preset", "0", "4", "9.0", "3.0"] and int(rows[1][5]) >= 0
    assert rows[2][:5] == ["broken", "3", "0", "-", "-"]


def test_gpu_zoo_trains_a_multi_seed_recipe_in_parallel_and_collects_every_run(tmp_path):
    import tarfile

    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    calls, collect, runs = tmp_path / "calls.txt", tmp_path / "collect", tmp_path / "runs"
    collect.mkdir()
    env = dict(os.environ, PYTHON=str(fake), REAL_PYTHON=sys.executable, FAKE_ZOO_CALLS=str(calls),
               GPU_ZOO_PARALLEL="9", GPU_ZOO_COLLECT=str(collect))
    result = subprocess.run(["bash", "training/gpu_zoo.sh", str(runs), "100", "multi"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--parallel=9" in calls.read_text()
    # One line per run, named by its arm and seed.
    for run in ("multi/preset/seed_0", "multi/preset/seed_1", "multi/twin/seed_0"):
        assert f"[{run}] 2 epochs, 1.0 s per epoch (first, compiling: 5.0 s)" in result.stdout
    rows = [line.split("\t")[0] for line in (runs / "gpu_zoo_times.tsv").read_text().splitlines()]
    assert rows == ["preset", "multi/preset/seed_0", "multi/preset/seed_1", "multi/twin/seed_0"]
    with tarfile.open(collect / "multi.models.tgz") as archive:
        assert sorted(archive.getnames()) == [
            "multi/preset/seed_0/model.keras", "multi/preset/seed_1/model.keras",
            "multi/twin/seed_0/model.keras"]
        assert archive.extractfile("multi/twin/seed_0/model.keras").read() == \
            b"weights of twin/seed_0\n"
