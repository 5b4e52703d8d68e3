"""training/depth_sweep.py: section 11's sweeps as data, and train -> evaluate -> report end to end
on a tiny sweep (depth 8, 128 images, 1 epoch) in a temporary directory."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from glonet_keras.training import rundir, trainer
from tests.harness import REPO_ROOT, training_module

depth_sweep = training_module("depth_sweep")
train_runs = training_module("train_runs")
SECTION = Path(REPO_ROOT) / "docs" / "sections" / "11_depth_sweep.md"
# The real sweeps and recipe (the module-scoped `tiny` fixture replaces them while it lives).
SWEEPS, RECIPE = depth_sweep.SWEEPS, depth_sweep.RECIPE

# Section 11's setting, written out by hand: the runs the CNN launcher started before this program
# existed use exactly these flags, so the program must produce them to see those runs as its own.
BASE = ["--width=16", "--dataset=fashion_mnist", "--max_examples=20000", "--epochs=10",
        "--batch_size=128", "--optimizer=adamw", "--learning_rate=0.002", "--weight_decay=0.05",
        "--schedule=cosine", "--warmup_epochs=1", "--label_smoothing=0.1"]
CNN_FAMILIES = {"glonet": ["--model=glonet_cnn"], "plain": ["--model=plain_cnn"],
                "resnet_nobn": ["--model=resnet_cnn", "--normalization=none"],
                "resnet_bn": ["--model=resnet_cnn", "--normalization=batch"]}


@pytest.mark.parametrize("family", list(CNN_FAMILIES))
def test_a_cnn_runs_command_is_the_launchers(family):
    directory = f"runs/depth_sweep/cnn/{family}/depth_56/seed_2"
    assert depth_sweep.train_command("cnn", family, 56, 2, directory) == [
        "python", "training/train.py", *CNN_FAMILIES[family], "--depth=56", *BASE, "--seed=2",
        "--jit_compile=false", "--verbose=2", "--tensorboard=false", f"--model_dir={directory}"]
    assert depth_sweep.run_directory("runs/depth_sweep", "cnn", family, 56, 2) == Path(directory)


def test_the_sweeps_are_section_11s():
    cnn, vit = depth_sweep.SWEEPS["cnn"], depth_sweep.SWEEPS["vit"]
    assert (cnn["depths"], cnn["seeds"], vit["depths"], vit["seeds"]) == (
        (20, 56, 110), (0, 1, 2), (6, 12, 24), (0, 1, 2))
    command = depth_sweep.train_command("vit", "glonet", 24, 0, "d", ["--jit_compile=auto"])
    vit_base = ["--width=96", "--patch_size=4", "--num_heads=4", "--mlp_dim=192", "--tokenizer=conv",
                *BASE[1:]]
    assert command[2:] == ["--model=glonet_vit", "--head_initializer=zeros", "--depth=24",
                           *vit_base, "--seed=0", "--jit_compile=false", "--verbose=2",
                           "--tensorboard=false", "--jit_compile=auto", "--model_dir=d"]
    assert depth_sweep.train_command("vit", "vit", 6, 1, "d")[2:4] == ["--model=vit", "--depth=6"]
    # Depth-major: every seed and family at the shallowest depth first.
    order = depth_sweep.runs("cnn")
    assert order[:5] == [("glonet", 20, 0), ("plain", 20, 0), ("resnet_nobn", 20, 0),
                         ("resnet_bn", 20, 0), ("glonet", 20, 1)]
    assert {d for _, d, _ in order[:12]} == {20} and len(order) == 36
    assert depth_sweep.runs("vit", depths=[12], seeds=[1]) == [("glonet", 12, 1), ("vit", 12, 1)]


# ------------------------------------------------------------------------------ formatting rules


def test_cells_give_mean_std_and_seeds_and_never_a_zero_std():
    assert depth_sweep.cell([]) == "–"
    assert depth_sweep.cell([0.8766]) == "87.7 (1 seed)"
    assert depth_sweep.cell([0.5, 0.5]) == "50.0 ± < 0.1 (2 seeds)"
    assert depth_sweep.cell([0.5, 0.6, 0.7]) == "60.0 ± 8.2 (3 seeds)"


def test_verdicts_pending_held_not_held_and_inconclusive():
    seeds = (0, 1, 2)
    assert depth_sweep.judge([1.0, 1.5], 2.0, seeds) == "pending (2 of 3 seeds)"
    assert depth_sweep.judge([0.5, 1.0, 1.5], 2.0, seeds) == "held"
    assert depth_sweep.judge([5.0, 6.0, 7.0], 2.0, seeds) == "did not hold"
    assert depth_sweep.judge([1.0, 3.0, 2.5], 2.0, seeds) == \
        "inconclusive (within one std of the threshold)"
    assert depth_sweep.judge([5.0, 6.0, 7.0], 2.0, seeds, held_if="more_than") == "held"
    assert depth_sweep.judge([0.5, 1.0, 1.5], 2.0, seeds, held_if="more_than") == "did not hold"
    assert depth_sweep.judge([3.0], 2.0, (0,)) == "did not hold; 1 seed"


def synthetic(family, depth, seed, test, *, blocks=None, k=None, ratio=None, recalibrated=None):
    """An evaluation record as `evaluate` writes one, with only what the report reads."""
    record = {"family": family, "depth": depth, "seed": seed, "parameters": 1000,
              "validation": {"accuracy": test}, "test": {"accuracy": test},
              "train_py": {"validation": test, "test": test}, "seconds_per_epoch": 60.0,
              "versions": {"keras": "3", "backend": "tensorflow"},
              "evaluated_on": {"platform": "p", "cpu_cores": 2, "keras": "3",
                               "backend": "tensorflow"}}
    if recalibrated is not None:
        record["recalibrated"] = {"validation": {"accuracy": recalibrated},
                                  "test": {"accuracy": recalibrated}}
    if blocks is not None:
        record["glonet"] = {"num_blocks": blocks, "exit_k": k, "exit_test_accuracy": test - 0.01,
                            "deeper_half_share": 0.2 * ratio,
                            "initial": {"deeper_half_share": 0.2}}
    return record


def full_cnn_sweep():
    found = {}
    for depth, blocks in ((20, 9), (56, 27), (110, 54)):
        for seed in (0, 1, 2):
            found["glonet", depth, seed] = synthetic("glonet", depth, seed, 0.90 - 0.001 * seed,
                                                     blocks=blocks, k=blocks // 4, ratio=0.5)
            found["plain", depth, seed] = synthetic("plain", depth, seed, 0.10)
            found["resnet_nobn", depth, seed] = synthetic("resnet_nobn", depth, seed, 0.85)
            found["resnet_bn", depth, seed] = synthetic("resnet_bn", depth, seed, 0.80,
                                                        recalibrated=0.91)
    return found


def test_the_verdicts_read_what_section_11_says():
    lines = "\n".join(depth_sweep.verdict_lines("cnn", full_cnn_sweep()))
    assert "**Depth resilience** (GloNet's test accuracy at depth 20 minus at depth 110; held = " \
           "at most 2 points): **held**: 0.00, 0.00, 0.00 points per seed." in lines
    assert "ResNet-v2's recalibrated test accuracy minus GloNet's" in lines
    assert "**No batch norm needed**" in lines and "depth 110: held (1.00, 1.10, 1.20 points)" in lines
    assert "plain chain (no BN, no skips) at depth 110: 10.0 ± < 0.1 (3 seeds) %, collapsed " \
           "(below 20 %) in 3 of 3 seeds" in lines
    assert "**Ahead of the BN-free baselines**" in lines and "**held**: 5.00, 4.90, 4.80" in lines
    assert "at depth 110 (54 blocks); held = at most half the blocks): **held**: 13, 13, 13 blocks " \
           "per seed" in lines
    assert "**Self-regulation**" in lines and "**held**: 0.50, 0.50, 0.50 per seed" in lines


def test_a_zero_head_initialisation_is_named_as_an_even_split_not_a_measurement():
    found = {}
    for seed in (0, 1, 2):
        record = synthetic("glonet", 24, seed, 0.9, blocks=24, k=6, ratio=0.5)
        record["glonet"]["initial"] = {"shares": [1 / 24] * 24, "deeper_half_share": 0.5}
        record["glonet"]["deeper_half_share"] = 0.3
        found["glonet", 24, seed] = record
    found["glonet", 24, 2]["glonet"]["initial"]["shares"][0] += 0.01  # A measured, uneven one.
    lines = "\n".join(depth_sweep.verdict_lines("vit", found))
    assert "**held**: 0.60, 0.60, 0.60 per seed." in lines  # The rule as written still decides.
    assert "In 2 of 3 run(s) every contribution was zero at initialisation" in lines
    # A ViT's depth is its number of blocks: named once, not "at blocks 24 (24 blocks)".
    assert "on validation, at 24 blocks; held = at most half the blocks): **held**: 6, 6, 6 " \
           "blocks per seed." in lines
    assert "| family | 6 blocks | 12 blocks | 24 blocks |" in depth_sweep.accuracy_table("vit", {})
    table = depth_sweep.glonet_table("vit", found)
    assert table.count("| 50.0 (zero head: even split) | 0.60 |") == 2
    assert table.count("| 50.0 | 0.60 |") == 1
    assert "zero at initialisation" not in "\n".join(depth_sweep.verdict_lines("cnn", full_cnn_sweep()))


def test_a_partial_sweep_says_pending_and_renders(tmp_path):
    found = full_cnn_sweep()
    for key in [k for k in found if k[1] == 110 and k[2] > 0] + [("resnet_bn", 56, 1)]:
        del found[key]
    lines = "\n".join(depth_sweep.verdict_lines("cnn", found))
    assert "**Depth resilience**" in lines and "**pending (1 of 3 seeds)**: 0.00 points" in lines
    assert "**No batch norm needed**" in lines and "**pending**; depth 20: held" in lines
    assert "depth 56: pending (2 of 3 seeds)" in lines
    assert "collapsed (below 20 %) in 1 of 1 seeds" in lines
    table = depth_sweep.accuracy_table("cnn", found)
    assert "| GloNet (no BN) | 89.9 ± 0.1 (3 seeds) | 89.9 ± 0.1 (3 seeds) | 90.0 (1 seed) |" in table
    assert "| ResNet-v2 (BN), recalibrated | 91.0 ± < 0.1 (3 seeds) | 91.0 ± < 0.1 (2 seeds) |" in table
    assert depth_sweep.accuracy_table("vit", {}).count("–") == 6


def test_the_report_rewrites_only_below_the_marker(tmp_path):
    section = tmp_path / "11.md"
    shutil.copyfile(SECTION, section)
    original = SECTION.read_text(encoding="utf-8")
    kept = original[:original.index("<!-- results:")]
    kept += original[len(kept):].split("\n", 1)[0] + "\n"
    depth_sweep.write_section(section, "Body.\n")
    assert section.read_text(encoding="utf-8") == kept + "\nBody.\n"
    depth_sweep.write_section(section, "Again.\n")  # Idempotent: the marker stays where it was.
    assert section.read_text(encoding="utf-8") == kept + "\nAgain.\n"
    section.write_text("# No marker\n\ntext\n")
    with pytest.raises(ValueError, match="no line starting with '<!-- results:'"):
        depth_sweep.write_section(section, "Body.\n")
    assert section.read_text() == "# No marker\n\ntext\n"


# ----------------------------------------------------------------------------------- end to end

TINY_RECIPE = dict(depth_sweep.RECIPE, max_examples=128, epochs=1, warmup_epochs=0, batch_size=64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny CNN sweep (GloNet and the BN ResNet at depth 8, seeds 0 and 1) whose seed 0 is trained
    by train.py itself; seed 1 stays untrained (the report says pending)."""
    with pytest.MonkeyPatch.context() as patch:
        sweep = dict(depth_sweep.SWEEPS["cnn"], depths=(8,), seeds=(0, 1),
                     families={k: v for k, v in depth_sweep.SWEEPS["cnn"]["families"].items()
                               if k in ("glonet", "resnet_bn")},
                     labels={k: v for k, v in depth_sweep.SWEEPS["cnn"]["labels"].items()
                             if k in ("glonet", "resnet_bn")},
                     architecture=dict(width=4), baselines=())
        patch.setattr(depth_sweep, "SWEEPS", {"cnn": sweep})
        patch.setattr(depth_sweep, "RECIPE", TINY_RECIPE)
        runs_dir = tmp_path_factory.mktemp("depth_sweep")
        messages = []
        depth_sweep.train("cnn", runs_dir, seeds=[0], log=messages.append)
        yield runs_dir, messages


def test_train_runs_each_run_once_and_skips_finished_ones(tiny, monkeypatch):
    runs_dir, messages = tiny
    for family in ("glonet", "resnet_bn"):
        run_dir = runs_dir / "cnn" / family / "depth_8" / "seed_0"
        assert rundir.RunDirectory(run_dir).record()["status"] == "finished"
        assert (run_dir.parent / "seed_0.log").exists()
        assert not (runs_dir / "cnn" / family / "depth_8" / "seed_1").exists()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(subprocess, "run", no_training)
    skipped = []
    depth_sweep.train("cnn", runs_dir, seeds=[0], log=skipped.append)
    assert skipped == ["[cnn glonet depth 8 seed 0] finished; skipped",
                       "[cnn resnet_bn depth 8 seed 0] finished; skipped"]
    # A run the CNN launcher trained has no command.json, only its flags in run.json: its own.
    glonet_dir = runs_dir / "cnn" / "glonet" / "depth_8" / "seed_0"
    command = glonet_dir / "command.json"
    saved = command.read_bytes()
    command.unlink()
    try:
        depth_sweep.train("cnn", runs_dir, seeds=[0], families=["glonet"], log=skipped.append)
        record = rundir.RunDirectory(glonet_dir).record()
        other = dict(record, command=[a.replace("--seed=0", "--seed=5") for a in record["command"]])
        rundir.write_json(glonet_dir / "run.json", other)
        with pytest.raises(SystemExit, match="other flags than this sweep's"):
            depth_sweep.train("cnn", runs_dir, seeds=[0], families=["glonet"], log=skipped.append)
        rundir.write_json(glonet_dir / "run.json", record)
    finally:
        command.write_bytes(saved)


def test_evaluate_then_report(tiny, tmp_path):
    runs_dir, _ = tiny
    messages = []
    evaluations_dir = tmp_path / "evaluations"
    depth_sweep.evaluate("cnn", runs_dir, evaluations_dir, log=messages.append)
    glonet = json.loads((evaluations_dir / "cnn" / "glonet_depth_8_seed_0.json").read_text())
    resnet = json.loads((evaluations_dir / "cnn" / "resnet_bn_depth_8_seed_0.json").read_text())
    assert glonet["num_examples"] == {"validation": 128, "test": 128}
    # The same model on the same split as train.py evaluated it: the same accuracy.
    for record in (glonet, resnet):
        assert record["test"]["accuracy"] == pytest.approx(record["train_py"]["test"], abs=1e-6)
        assert record["validation"]["accuracy"] == pytest.approx(record["train_py"]["validation"],
                                                                 abs=1e-6)
    g = glonet["glonet"]
    assert g["num_blocks"] == 3 and len(glonet["validation"]["exit_accuracy"]) == 3
    assert glonet["test"]["exit_accuracy"][-1] == glonet["test"]["accuracy"]
    assert 1 <= g["exit_k"] <= 3 and sum(g["shares"]) == pytest.approx(1.0, abs=1e-5)
    assert "shares" in g["initial"] and g["initial"]["shares"] != g["shares"]
    assert "recalibrated" in resnet and "recalibrated" not in glonet and "glonet" not in resnet
    assert resnet["recalibrated"]["num_examples"] == 128

    # Up to date: nothing measured again; a retrained run (another record) is measured again.
    again = []
    depth_sweep.evaluate("cnn", runs_dir, evaluations_dir, log=again.append)
    assert all(message.endswith("evaluation up to date") for message in again) and len(again) == 2
    run_dir = runs_dir / "cnn" / "resnet_bn" / "depth_8" / "seed_0"
    record = rundir.RunDirectory(run_dir).record()
    rundir.write_json(run_dir / "run.json", dict(record, finished="2099-01-01T00:00:00+00:00"))
    again = []
    depth_sweep.evaluate("cnn", runs_dir, evaluations_dir, log=again.append)
    assert again[0].endswith("evaluation up to date") and "recalibrated" in again[1]
    rewritten = json.loads((evaluations_dir / "cnn" / "resnet_bn_depth_8_seed_0.json").read_text())
    assert rewritten["run"]["finished"] == "2099-01-01T00:00:00+00:00"

    section = tmp_path / "11.md"
    shutil.copyfile(SECTION, section)
    depth_sweep.write_section(section, depth_sweep.report_body(runs_dir, evaluations_dir))
    text = section.read_text(encoding="utf-8")
    original = SECTION.read_text(encoding="utf-8")
    marker = original.index("<!-- results:")
    assert text[:marker] == original[:marker]
    body = text[marker:]
    assert "Measured: 2 of the 4 runs" in body
    assert f"{100 * glonet['test']['accuracy']:.1f} (1 seed)" in body
    assert "| ResNet-v2 (BN), recalibrated |" in body
    assert "pending (1 of 2 seeds)" in body and "± 0.0 " not in body
    assert "--model=glonet_cnn --depth=8 --width=4" in body
    # From the evaluations alone (a clone: no run directories): the same report, nothing waiting.
    assert depth_sweep.report_body(tmp_path / "no_runs", evaluations_dir) == \
        depth_sweep.report_body(runs_dir, evaluations_dir)


def test_the_committed_section_is_its_committed_evaluations_report(tmp_path, monkeypatch):
    """Section 11's results, as committed, are what the report renders from the evaluations git
    tracks (docs/evaluations/depth_sweep): neither was edited or committed without the other."""
    monkeypatch.setattr(depth_sweep, "SWEEPS", SWEEPS)
    monkeypatch.setattr(depth_sweep, "RECIPE", RECIPE)
    section = tmp_path / "11.md"
    shutil.copyfile(SECTION, section)
    depth_sweep.write_section(section, depth_sweep.report_body(tmp_path / "no_runs",
                                                               depth_sweep.EVALUATIONS_DIR))
    assert section.read_text(encoding="utf-8") == SECTION.read_text(encoding="utf-8")


def test_the_rebuilt_initialisation_is_the_trainers(tmp_path, monkeypatch):
    """`trainer.initial_model` with a finished run's recorded config rebuilds, bit for bit and
    whatever ran before, the weights `train` started that run from (same process and backend)."""
    built = []
    original = trainer.initial_model

    def recording(config, info):
        model = original(config, info)
        built.append([np.array(w) for w in model.get_weights()])
        return model

    monkeypatch.setattr(trainer, "initial_model", recording)
    config = trainer.TrainConfig(model="glonet_cnn", depth=8, width=4, dataset="fashion_mnist",
                                 max_examples=64, epochs=1, batch_size=64, seed=3,
                                 jit_compile=False, tensorboard=False, verbose=0,
                                 model_dir=str(tmp_path / "run"))
    trainer.train(config)
    monkeypatch.setattr(trainer, "initial_model", original)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    rebuilt = depth_sweep.initial_model(depth_sweep.train_config(metrics))
    keras.random.normal((3,))  # Random state consumed in between changes nothing.
    np.random.rand(5)
    again = depth_sweep.initial_model(depth_sweep.train_config(metrics))
    (start,) = built
    for expected, first, second in zip(start, rebuilt.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(first, expected)
        np.testing.assert_array_equal(second, expected)


def test_the_machine_record_says_when_a_run_was_pinned_to_fewer_cores(monkeypatch):
    """A run pinned (taskset) to 1 of 2 cores says so: its seconds per epoch are not a 2-core run's."""
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1}, raising=False)
    assert train_runs.describe_machine().startswith("1 of 2 CPU cores (pinned), no GPU")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert train_runs.describe_machine().startswith("2 CPU cores, no GPU")


def test_parallel_training_runs_several_at_once_and_reports_every_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(depth_sweep, "SWEEPS", SWEEPS)
    monkeypatch.setattr(depth_sweep, "RECIPE", RECIPE)
    import threading
    import time

    running, most, calls, pins, lock = [0], [0], [], [], threading.Lock()

    def fake_run(label, run_dir, command, *, resume, concurrent=1, cores=None, log=print):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            calls.append((label, concurrent, command[-1]))
            pins.append(cores)
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        if "seed 1" in label:
            raise SystemExit(f"[{label}] train.py failed")

    monkeypatch.setattr(depth_sweep.train_runs, "train_run", fake_run)
    with pytest.raises(SystemExit) as failure:
        depth_sweep.train("cnn", tmp_path, depths=[20], families=["glonet", "plain"], parallel=3,
                          extra_flags=["--jit_compile=auto"], log=lambda message: None)
    assert most[0] == 3 and len(calls) == 6  # 2 families x 3 seeds, 3 at a time, none lost
    assert {concurrent for _, concurrent, _ in calls} == {3}
    assert str(failure.value).splitlines() == ["[cnn glonet depth 20 seed 1] train.py failed",
                                               "[cnn plain depth 20 seed 1] train.py failed"]
    assert pins == [None] * 6  # not pinned unless asked
    with pytest.raises(SystemExit, match="--parallel must be at least 1"):
        depth_sweep.train("cnn", tmp_path, parallel=0)

    # --pin_cores on 3 cores: each of 3 runs at once holds one core of its own.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    calls.clear()
    pins.clear()
    with pytest.raises(SystemExit):
        depth_sweep.train("cnn", tmp_path, depths=[20], families=["glonet", "plain"], parallel=3,
                          pin_cores=True, log=lambda message: None)
    assert len(calls) == 6 and set(pins) == {frozenset({0}), frozenset({1}), frozenset({2})}
    with pytest.raises(SystemExit, match="pass --parallel=2 or more"):
        depth_sweep.train("cnn", tmp_path, parallel=1, pin_cores=True)


def test_extra_flags_may_not_change_the_recipe(tmp_path, monkeypatch):
    monkeypatch.setattr(depth_sweep, "SWEEPS", SWEEPS)
    monkeypatch.setattr(depth_sweep, "RECIPE", RECIPE)
    assert depth_sweep.overridden_flags(["--jit_compile=auto", "--verbose=1"]) == []
    assert depth_sweep.overridden_flags(["--epochs=1", "--max_examples=64", "--jit_compile=auto"]) \
        == ["epochs", "max_examples"]
    calls = []
    monkeypatch.setattr(depth_sweep.train_runs, "train_run", lambda *a, **k: calls.append(a))
    with pytest.raises(SystemExit, match="would change the sweep's epochs"):
        depth_sweep.train("cnn", tmp_path, extra_flags=["--epochs=1"], depths=[20], seeds=[0])
    assert calls == []
    depth_sweep.train("cnn", tmp_path, extra_flags=["--epochs=1"], depths=[20], seeds=[0],
                      families=["glonet"], allow_overrides=True, log=lambda message: None)
    assert len(calls) == 1 and calls[0][2][-2] == "--epochs=1"


def test_the_report_refuses_evaluations_that_are_not_the_sweeps(tmp_path, monkeypatch):
    monkeypatch.setattr(depth_sweep, "SWEEPS", SWEEPS)
    monkeypatch.setattr(depth_sweep, "RECIPE", RECIPE)

    def write(evaluation, family="glonet", seed=0):
        path = depth_sweep.evaluation_path(tmp_path, "cnn", family, 20, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(evaluation) if isinstance(evaluation, dict) else evaluation)
        return path

    def evaluation(family="glonet", seed=0, extra=()):
        return {"sweep": "cnn", "family": family, "depth": 20, "seed": seed,
                "command": depth_sweep.train_command("cnn", family, 20, seed, "r", list(extra))}

    write(evaluation(extra=["--jit_compile=auto"]))  # A GPU run's: the sweep's own.
    assert list(depth_sweep.load_evaluations("cnn", tmp_path)) == [("glonet", 20, 0)]
    cases = {"overrode the sweep's epochs": evaluation(seed=1, extra=["--epochs=1"]),  # a smoke run's
             "is not of cnn glonet depth 20 seed 1": evaluation(seed=2),  # another seed's, renamed
             r"differing: \['--width=16', '--width=8'\]": dict(evaluation(seed=1), command=[
                 c.replace("--width=16", "--width=8") for c in evaluation(seed=1)["command"]]),
             "not an evaluation": "{truncated"}
    for message, bad in cases.items():
        path = write(bad, seed=1)
        with pytest.raises(ValueError, match=message) as refused:
            depth_sweep.load_evaluations("cnn", tmp_path)
        assert str(path) in str(refused.value)
        path.unlink()


@pytest.mark.slow
def test_the_gpu_script_trains_evaluates_and_packs_without_tensorflow(tmp_path, monkeypatch):
    """training/gpu_depth_sweep.sh in its smoke mode, on the JAX backend with TensorFlow hidden
    (the GPU machine has none): two runs at once, their evaluations and logs packed in $OUT, and
    the report refusing the smoke runs' evaluations (2 epochs of 256 images are not the sweep's)."""
    import tarfile

    pytest.importorskip("jax")
    monkeypatch.setattr(depth_sweep, "SWEEPS", SWEEPS)
    monkeypatch.setattr(depth_sweep, "RECIPE", RECIPE)
    hidden = tmp_path / "no_tensorflow"
    hidden.mkdir()
    (hidden / "tensorflow.py").write_text("raise ImportError('no TensorFlow on the GPU machine')\n")
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, OUT=str(out), WORK=str(work), SMOKE="1", PYTHON=sys.executable,
               PYTHONPATH=str(hidden), PARALLEL="2")
    result = subprocess.run(["bash", "training/gpu_depth_sweep.sh", "--sweeps=cnn", "--depths=20",
                             "--seeds=0", "--families=glonet,resnet_bn"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 evaluations in evaluations.tgz" in result.stdout
    evaluations = tmp_path / "evaluations"
    with tarfile.open(out / "evaluations.tgz") as packed:
        packed.extractall(evaluations, filter="data")
    assert sorted(p.name for p in (evaluations / "cnn").iterdir()) == [
        "glonet_depth_20_seed_0.json", "resnet_bn_depth_20_seed_0.json"]
    record = json.loads((evaluations / "cnn" / "glonet_depth_20_seed_0.json").read_text())
    assert record["versions"]["backend"] == "jax" and "shares" in record["glonet"]["initial"]
    assert record["training_machine"].endswith("; 2 runs at once")
    with tarfile.open(out / "logs.tgz") as packed:
        names = packed.getnames()
    assert "./cnn/glonet/depth_20/seed_0/metrics.json" in names
    assert not any(name.endswith((".keras", ".weights.h5")) for name in names)
    with pytest.raises(ValueError, match="overrode the sweep's epochs, max_examples"):
        depth_sweep.load_evaluations("cnn", evaluations)


def test_parallel_evaluation_runs_one_process_per_run(tiny, tmp_path, monkeypatch):
    """evaluate(parallel=2): this program once per pending run (its own filters), every failure
    reported, and runs already evaluated not measured again."""
    runs_dir, _ = tiny
    commands = []

    class Done:
        def __init__(self, command):
            family = next(a for a in command if a.startswith("--families="))
            self.returncode = 1 if family.endswith("resnet_bn") else 0
            self.stdout, self.stderr = f"evaluated {family}\n", "Traceback ...\nBoom\n"

    def fake_run(command, **kwargs):
        commands.append(command)
        return Done(command)

    monkeypatch.setattr(subprocess, "run", fake_run)
    messages = []
    with pytest.raises(SystemExit, match=r"resnet_bn depth 8 seed 0\] evaluation failed \(exit 1\)"
                                         r":\nTraceback ...\nBoom"):
        depth_sweep.evaluate("cnn", runs_dir, tmp_path, parallel=2, log=messages.append)
    assert sorted(c[c.index("--steps=evaluate") + 4:] for c in commands) == [
        ["--families=glonet", "--depths=8", "--seeds=0"],
        ["--families=resnet_bn", "--depths=8", "--seeds=0"]]
    assert all(f"--evaluations_dir={tmp_path}" in c and "--sweeps=cnn" in c for c in commands)
    assert "evaluated --families=glonet" in messages


def test_the_readme_verdict_table_follows_section_11():
    # The README's verdict table is written by hand from RESULTS.md: a re-render of section 11 that
    # changes a verdict or a GloNet accuracy must show up here until the README follows it.
    import re

    section = SECTION.read_text()
    readme = (Path(REPO_ROOT) / "README.md").read_text()
    cells = {}
    for line in readme.splitlines():
        for claim in ("accuracy flat with depth", "self-regulation", "early exit"):
            if line.startswith(f"| {claim}"):
                _, _, _, cnn, vit, _ = line.split("|")  # | claim | MLP | CNN | ViT |
                cells[claim] = {"cnn": cnn, "vit": vit}
    assert set(cells) == {"accuracy flat with depth", "self-regulation", "early exit"}
    rows = {"Depth resilience": "accuracy flat with depth",
            "Ahead of the BN-free baselines": "accuracy flat with depth",
            "No batch norm needed": "accuracy flat with depth",
            "Self-regulation": "self-regulation", "Early exit": "early exit"}
    for sweep, title in (("cnn", "### CNN"), ("vit", "### ViT")):
        part = section.split(title, 1)[1].split("\n### ", 1)[0]
        glonet = next(line for line in part.splitlines() if line.startswith("| GloNet"))
        means = re.findall(r"(\d+\.\d ± (?:< )?\d+\.\d) \(3 seeds\)", glonet)
        assert len(means) == 3, glonet
        for mean in means:
            assert mean in cells["accuracy flat with depth"][sweep], (sweep, mean)
        verdicts = re.findall(r"^- \*\*([^*]+)\*\* \(.*?\): \*\*([a-z ]+?)(?: \(|\*\*)", part,
                              flags=re.M)
        assert len(verdicts) == (5 if sweep == "cnn" else 4), verdicts
        for name, verdict in verdicts:
            assert f"**{verdict}**" in cells[rows[name]][sweep], (sweep, name, verdict)
