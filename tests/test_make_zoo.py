"""training/make_zoo.py --resume: an interrupted zoo run continues, and its wall time adds up.

train.py itself is replaced by a stand-in here (its resuming is tested in test_train.py and
test_rundir.py); what is tested is what make_zoo.py keeps, deletes and records around it.
"""

import json
import shutil
import subprocess
import types
from pathlib import Path

import keras
import numpy as np
import pytest
from absl import flags

from glonet_keras.training import rundir
from tests.harness import training_module

NAME = "glonet_mlp_digits"


@pytest.fixture
def make_zoo(tmp_path, monkeypatch):
    module = training_module("make_zoo")
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        kwargs["stdout"].write("trained\n")
        return types.SimpleNamespace(returncode=0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    saved = flags.FLAGS.flag_values_dict()
    flags.FLAGS(["make_zoo", f"--runs_dir={tmp_path}"])
    module.calls = calls
    yield module
    for key in ("resume", "runs_dir", "parallel", "arms", "seeds", "runs_at_once", "steps",
                "names", "pin_cores", "carried_dir"):
        flags.FLAGS[key].value = saved[key]


def interrupted_run(run_dir, epochs=2, seconds=(40.0, 41.5)):
    """A run directory as train.py leaves it when killed after `epochs` complete epochs."""
    run = rundir.RunDirectory(run_dir)
    run.claim({"model": "test"}, epochs=5)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    run.save_state(rundir.TrainingState(epoch=epochs, model_path=None, history={"loss": [1.0] * epochs},
                                        seconds_per_epoch=list(seconds)), model.save)
    (run_dir.parent / f"{NAME}.log").write_text("epochs 1-2\n")
    return run


def test_resume_keeps_the_run_and_adds_the_earlier_epochs_time(make_zoo, tmp_path):
    run_dir = tmp_path / NAME
    interrupted_run(run_dir)
    flags.FLAGS.resume = True
    make_zoo.run_training(NAME)
    assert rundir.RunDirectory(run_dir).latest_state().epoch == 2  # kept for train.py to resume
    record = json.loads((run_dir / "command.json").read_text())
    assert record["resumed_after_epoch"] == 2
    assert record["wall_seconds"] >= 81.5
    assert (tmp_path / f"{NAME}.log").read_text() == "epochs 1-2\ntrained\n"
    assert make_zoo.calls[0][-1] == f"--model_dir={run_dir}"


def test_without_resume_the_old_run_is_deleted(make_zoo, tmp_path):
    run_dir = tmp_path / NAME
    interrupted_run(run_dir)
    make_zoo.run_training(NAME)
    assert rundir.RunDirectory(run_dir).latest_state() is None
    record = json.loads((run_dir / "command.json").read_text())
    assert "resumed_after_epoch" not in record and record["wall_seconds"] < 81.5
    assert (tmp_path / f"{NAME}.log").read_text() == "trained\n"


def test_resume_of_a_finished_run_trains_nothing(make_zoo, tmp_path):
    run_dir = tmp_path / NAME
    interrupted_run(run_dir).finish("done")
    flags.FLAGS.resume = True
    with pytest.raises(SystemExit, match="without the command.json"):
        make_zoo.run_training(NAME)
    (run_dir / "command.json").write_text('{"wall_seconds": 7}')
    make_zoo.run_training(NAME)
    assert make_zoo.calls == []
    assert json.loads((run_dir / "command.json").read_text()) == {"wall_seconds": 7}


def test_a_run_finished_before_its_command_was_recorded_is_recorded_not_retrained(make_zoo,
                                                                                  tmp_path):
    # Killed between train.py's end and make_zoo's command.json: the run is finished and is the
    # recipe's (run.json holds the same command), so it is recorded, not trained again.
    run_dir = tmp_path / NAME
    command = make_zoo.train_command(NAME, str(run_dir))
    run = rundir.RunDirectory(run_dir)
    run.claim({"model": "test"}, epochs=2, command=command)
    (run_dir / "metrics.json").write_text(json.dumps(
        {"status": "finished", "seconds_per_epoch": [40.0, 41.5]}))
    run.finish("done")
    flags.FLAGS.resume = True
    make_zoo.run_training(NAME)
    assert make_zoo.calls == []
    record = json.loads((run_dir / "command.json").read_text())
    assert record["command"] == " ".join(command) and record["wall_seconds"] == 81.5
    assert "the sum of the epochs' times" in record["recovered"]

    # Another command (the recipe changed since) is still refused: that run is not this recipe's.
    (run_dir / "command.json").unlink()
    flags.FLAGS.extra_train_flags = ["--epochs=3"]
    try:
        with pytest.raises(SystemExit, match="without the command.json"):
            make_zoo.run_training(NAME)
    finally:
        flags.FLAGS.extra_train_flags = []
    assert not (run_dir / "command.json").exists() and make_zoo.calls == []


def test_check_subset_records_the_first_images_accuracies():
    module = training_module("make_zoo")
    n = module.CHECK_EXAMPLES
    y = np.arange(n + 500) % 3
    logits = np.eye(3)[y]
    logits[: n // 2] = np.eye(3)[(y[: n // 2] + 1) % 3]  # the first half wrong, the rest right
    exits = np.stack([np.eye(3)[(y + 1) % 3], logits], axis=1)  # k=1 always wrong, k=2 = logits
    record = module.check_subset(logits, exits, y)
    assert record == {"num_examples": n, "test_accuracy": 0.5,
                      "early_exit_accuracy": {"1": 0.0, "2": 0.5}}
    assert module.check_subset(logits, None, y) == {"num_examples": n, "test_accuracy": 0.5}


MULTI = "glonet_mlp_fashion_mnist"  # zoo v2: 3 seeds, a preset arm and two comparison arms


def test_a_multi_seed_recipe_trains_every_arm_and_seed_in_its_own_directory(make_zoo, tmp_path):
    make_zoo.run_training(MULTI)
    recipe = make_zoo.RECIPES[MULTI]
    arms = ["preset", *recipe["arms"]]
    assert len(make_zoo.calls) == len(arms) * len(recipe["seeds"])
    expected = [f"--model_dir={tmp_path / MULTI / arm / f'seed_{seed}'}"
                for arm in arms for seed in recipe["seeds"]]
    assert [call[-1] for call in make_zoo.calls] == expected
    for arm in arms:
        for seed in recipe["seeds"]:
            record = json.loads((tmp_path / MULTI / arm / f"seed_{seed}" / "command.json").read_text())
            assert f"--seed={seed} " in record["command"]
            assert (tmp_path / MULTI / arm / f"seed_{seed}.log").read_text() == "trained\n"


def test_parallel_trains_every_run_at_once_and_says_so_and_a_failure_stops_no_other(
        make_zoo, tmp_path, monkeypatch):
    import threading

    recipe = make_zoo.RECIPES[MULTI]
    runs = len(["preset", *recipe["arms"]]) * len(recipe["seeds"])
    together = threading.Barrier(runs, timeout=30)  # passes only when every run is in flight at once

    def fake_run(command, **kwargs):
        together.wait()
        make_zoo.calls.append(command)
        failed = "resnet_v2_twin/seed_1" in command[-1]
        kwargs["stdout"].write("failed\n" if failed else "trained\n")
        return types.SimpleNamespace(returncode=3 if failed else 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    flags.FLAGS.parallel = runs
    with pytest.raises(SystemExit, match=r"resnet_v2_twin seed 1\] train.py failed \(exit 3\)"):
        make_zoo.run_training(MULTI)
    assert len(make_zoo.calls) == runs
    for arm in ["preset", *recipe["arms"]]:
        for seed in recipe["seeds"]:
            record_path = tmp_path / MULTI / arm / f"seed_{seed}" / "command.json"
            if (arm, seed) == ("resnet_v2_twin", 1):
                assert not record_path.exists()  # a failed run records no command
                continue
            assert json.loads(record_path.read_text())["machine"].endswith(f"; {runs} runs at once")


def test_runs_get_tensorflows_onednn_kernels_unless_the_caller_says_otherwise(
        make_zoo, tmp_path, monkeypatch):
    """TensorFlow turns oneDNN on by itself only on CPUs with AVX-512 VNNI and the like; the runs
    these programs start get it everywhere (a resumed run keeps its kernels on another CPU), unless
    the caller's environment sets TF_ENABLE_ONEDNN_OPTS, and the machine record says which."""
    seen = []

    def fake_run(command, **kwargs):
        seen.append(kwargs["env"].get("TF_ENABLE_ONEDNN_OPTS"))
        kwargs["stdout"].write("trained\n")
        return types.SimpleNamespace(returncode=0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    for caller, expected in ((None, "1"), ("0", "0")):
        if caller is None:
            monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
        else:
            monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", caller)
        run_dir = tmp_path / f"run_{expected}"
        make_zoo.train_runs.train_run("tiny", run_dir, ["python", "train.py"], resume=False,
                                      log=lambda line: None)
        assert seen[-1] == expected
        machine = json.loads((run_dir / "command.json").read_text())["machine"]
        assert f"(tensorflow backend, TF_ENABLE_ONEDNN_OPTS={expected};" in machine, machine
    # On JAX the variable means nothing, and the record does not mention it.
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert "ONEDNN" not in make_zoo.train_runs.describe_machine(
        env=make_zoo.train_runs.run_environment())


@pytest.fixture
def five_of_eight_cores(monkeypatch):
    """This process may use cores 0-4 of 8, and taskset is installed."""
    import os
    import shutil

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")


def test_pinned_runs_hold_disjoint_cores_and_a_long_run_holds_up_no_other(
        make_zoo, tmp_path, monkeypatch, five_of_eight_cores):
    import threading

    recipe = make_zoo.RECIPES[MULTI]
    runs = len(["preset", *recipe["arms"]]) * len(recipe["seeds"])
    lock, held, overlaps, pins = threading.Lock(), [], [], []
    others_done = threading.Event()

    def fake_run(command, **kwargs):
        assert command[:2] == ["taskset", "-c"]
        cores = frozenset(int(core) for core in command[2].split(","))
        with lock:
            overlaps.extend(cores & other for other in held if cores & other)
            held.append(cores)
            pins.append(cores)
            first = len(pins) == 1
        if first:  # The first run is long: every other run must get through on the other slot.
            assert others_done.wait(timeout=30), "the runs after a long one waited for it"
        with lock:
            held.remove(cores)
            make_zoo.calls.append(command)
            if len(make_zoo.calls) == runs - 1:
                others_done.set()
        kwargs["stdout"].write("trained\n")
        return types.SimpleNamespace(returncode=0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    flags.FLAGS.parallel = 2
    flags.FLAGS.pin_cores = True
    make_zoo.run_training(MULTI)
    assert len(make_zoo.calls) == runs and overlaps == []
    # Five cores between two runs: two each, the fifth unused; the long run's slot served it alone.
    assert set(pins) == {frozenset({0, 1}), frozenset({2, 3})}
    assert pins.count(pins[0]) == 1
    record = json.loads((tmp_path / MULTI / "preset" / "seed_0" / "command.json").read_text())
    assert record["machine"].startswith("2 of 8 CPU cores (pinned), no GPU")
    assert record["machine"].endswith("; 2 runs at once")


def test_several_recipes_train_in_one_queue(make_zoo, tmp_path, monkeypatch):
    # The next recipe's runs start while the last of the previous one trains: no core idles
    # between recipes (the CNN's last runs, then the ViT's, on a 2-core CPU).
    import threading

    recipe = make_zoo.RECIPES[MULTI]
    last_of_first = f"--model_dir={tmp_path / MULTI / recipe_arms(recipe)[-1] / 'seed_2'}"
    second_started = threading.Event()

    def fake_run(command, **kwargs):
        if command[-1] == last_of_first:
            assert second_started.wait(timeout=30), "the second recipe waited for the first"
        if command[-1] == f"--model_dir={tmp_path / NAME}":
            second_started.set()
        make_zoo.calls.append(command)
        kwargs["stdout"].write("trained\n")
        return types.SimpleNamespace(returncode=0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    flags.FLAGS.parallel = 2
    make_zoo.run_training(MULTI, NAME)
    assert len(make_zoo.calls) == len(recipe_arms(recipe)) * len(recipe["seeds"]) + 1
    assert make_zoo.calls[-1][-1] == last_of_first


def recipe_arms(recipe):
    return ["preset", *recipe["arms"]]


@pytest.mark.parametrize("parallel, which, message", [
    (1, True, r"--pin_cores shares the cores between runs trained at once: pass --parallel=2"),
    (6, True, r"6 runs at once, each pinned to its own cores, need at least 6 cores; this process "
              r"may use 5"),
    (2, False, r"needs Linux's taskset \(util-linux\), not found here"),
])
def test_pinning_runs_the_cores_cannot_hold_is_refused_before_anything_trains(
        make_zoo, monkeypatch, five_of_eight_cores, parallel, which, message):
    import shutil

    if not which:
        monkeypatch.setattr(shutil, "which", lambda name: None)
    flags.FLAGS.pin_cores = True
    flags.FLAGS.parallel = parallel
    flags.FLAGS.steps = ["train"]
    flags.FLAGS.names = [MULTI]
    with pytest.raises(SystemExit, match=message):
        make_zoo.main([])
    assert make_zoo.calls == []


def test_status_says_where_each_run_stands_and_never_shows_the_test_split(make_zoo, tmp_path,
                                                                          capsys):
    finished = tmp_path / MULTI / "preset" / "seed_0"
    finished.mkdir(parents=True)
    (finished / "metrics.json").write_text(json.dumps({
        "status": "finished", "epochs": 20, "seconds_per_epoch": [600.0, 650.0],
        "validation": {"accuracy": 0.9061}, "test": {"accuracy": 0.8765}}))
    interrupted_run(tmp_path / MULTI / "preset" / "seed_1", epochs=2, seconds=(40.0, 41.5))
    corrupt = tmp_path / MULTI / "preset" / "seed_2"
    corrupt.mkdir(parents=True)
    (corrupt / "metrics.json").write_text("{not json")
    flags.FLAGS.steps = ["status"]
    flags.FLAGS.names = [MULTI]
    make_zoo.main([])
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        f"[{MULTI} preset seed 0] finished: 20 epochs in 1,250 s, validation 90.61 %",
        f"[{MULTI} preset seed 1] training or interrupted: 2 of 20 epochs saved (82 s, about "
        "12 min left); --steps=train --resume continues it",
        f"[{MULTI} preset seed 2] unreadable record in {corrupt}: {corrupt / 'metrics.json'} is "
        "not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
        "(char 1))",
    ]
    runs = len(recipe_arms(make_zoo.RECIPES[MULTI])) * len(make_zoo.RECIPES[MULTI]["seeds"])
    assert lines[-1] == f"[{MULTI}] 1 finished, 1 training, 1 unreadable, {runs - 3} not started"
    assert "87.65" not in "\n".join(lines)  # the test split waits for --steps=protocol
    assert make_zoo.calls == []  # nothing trains


def test_an_arm_shares_the_recipe_but_its_overrides(make_zoo):
    preset = make_zoo.run_flags(MULTI, "preset", 2)
    twin = make_zoo.run_flags(MULTI, "resnet_v2_twin", 2)
    without = make_zoo.run_flags(MULTI, "no_exit_losses", 2)
    assert preset["exit_loss_weight"] == 1 and list(preset)[-1] == "seed" and preset["seed"] == 2
    assert twin["model"] == "resnet_mlp" and "exit_loss_weight" not in twin
    assert without["model"] == "glonet_mlp" and "exit_loss_weight" not in without
    shared = {key: value for key, value in preset.items() if key not in ("model", "exit_loss_weight")}
    for arm in (twin, without):
        assert {key: arm[key] for key in shared} == shared
    # A single-seed recipe's flags are its own, seed included.
    assert make_zoo.run_flags(NAME) == make_zoo.RECIPES[NAME]["flags"]


def test_a_multi_seed_preset_is_packaged_only_from_its_protocol_record(make_zoo):
    with pytest.raises(SystemExit, match="--steps=protocol"):
        make_zoo.package(MULTI)


def test_a_recipes_caveats_reach_the_card_and_leave_it_with_the_recipe(make_zoo, tmp_path, monkeypatch):
    import shutil

    name = "resnet_cnn_fashion_mnist"
    zoo_dir = tmp_path / "zoo"
    shutil.copytree(make_zoo.REPO / "zoo" / name, zoo_dir / name)
    saved = flags.FLAGS["zoo_dir"].value
    flags.FLAGS["zoo_dir"].value = str(zoo_dir)
    try:
        caveat = "Selection: chosen after a test score was seen."
        monkeypatch.setitem(make_zoo.RECIPES, name, {**make_zoo.RECIPES[name], "caveats": (caveat,)})
        make_zoo.refresh(name)
        card = (zoo_dir / name / "README.md").read_text()
        assert f"- {caveat}" in card
        assert card.index("## Limitations") < card.index(caveat)
        assert json.loads((zoo_dir / name / "metadata.json").read_text())["caveats"] == [caveat]

        recipe = {k: v for k, v in make_zoo.RECIPES[name].items() if k != "caveats"}
        monkeypatch.setitem(make_zoo.RECIPES, name, recipe)
        make_zoo.refresh(name)
        assert caveat not in (zoo_dir / name / "README.md").read_text()
        assert "caveats" not in json.loads((zoo_dir / name / "metadata.json").read_text())
    finally:
        flags.FLAGS["zoo_dir"].value = saved


def test_refresh_gives_a_protocol_card_the_verdicts_of_its_recipes_targets(make_zoo, tmp_path):
    """A card packaged before records carried the targets gets them from the recipe on refresh,
    and with them its verdicts; nothing is measured again."""
    import shutil

    name = "glonet_mlp_fashion_mnist"
    zoo_dir = tmp_path / "zoo"
    shutil.copytree(make_zoo.REPO / "zoo" / name, zoo_dir / name)
    path = zoo_dir / name / "metadata.json"
    metadata = json.loads(path.read_text())
    del metadata["protocol"]["targets"]
    path.write_text(json.dumps(metadata))
    saved = flags.FLAGS["zoo_dir"].value
    flags.FLAGS["zoo_dir"].value = str(zoo_dir)
    try:
        make_zoo.refresh(name)
    finally:
        flags.FLAGS["zoo_dir"].value = saved
    refreshed = json.loads(path.read_text())
    targets = make_zoo.RECIPES[name]["targets"]
    assert refreshed["protocol"]["targets"] == json.loads(json.dumps(targets))
    assert refreshed["protocol"]["arms"] == metadata["protocol"]["arms"]  # not measured again
    card = (zoo_dir / name / "README.md").read_text()
    assert "Verdicts, by the rules written down before any run" in card
    for rule in ("accuracy", "twin", "half_exit", "anytime_saving", "anytime_cost", "without"):
        assert f"- **{rule}** (" in card, rule


def test_the_v1_cnn_cards_say_their_recipe_was_chosen_after_a_test_score():
    from pathlib import Path

    from tests.harness import REPO_ROOT

    zoo = Path(REPO_ROOT) / "zoo"
    glonet = (zoo / "glonet_cnn_bn_fashion_mnist" / "README.md").read_text()
    assert "test accuracy (92.60 %) had been seen" in glonet
    assert "not an untouched test estimate" in glonet
    twin = (zoo / "resnet_cnn_fashion_mnist" / "README.md").read_text()
    assert "chosen after a test score had been seen" in twin


def test_the_bn_free_cnn_recipe_is_v1s_without_batch_norm_beside_its_twins(make_zoo):
    # RESULTS.md section 12 says the only change from v1's CNN recipe is the normalisation, and the
    # twins share everything but their blocks.
    name = "glonet_cnn_fashion_mnist"
    recipe = make_zoo.RECIPES[name]
    assert recipe["seeds"] == (0, 1, 2) and set(recipe["arms"]) == {"resnet_v2_twin",
                                                                   "resnet_nobn_twin"}
    v1 = {k: v for k, v in make_zoo.RECIPES["glonet_cnn_bn_fashion_mnist"]["flags"].items()
          if k not in ("normalization", "seed")}
    v1_twin = {k: v for k, v in make_zoo.RECIPES["resnet_cnn_fashion_mnist"]["flags"].items()
               if k != "seed"}
    for seed in recipe["seeds"]:
        preset = make_zoo.run_flags(name, "preset", seed)
        assert preset == {**v1, "seed": seed} and "normalization" not in preset
        assert make_zoo.run_flags(name, "resnet_v2_twin", seed) == {
            **v1_twin, "normalization": "batch", "seed": seed}
        assert make_zoo.run_flags(name, "resnet_nobn_twin", seed) == {
            **v1_twin, "normalization": "none", "seed": seed}
    assert recipe["targets"] == dict(accuracy=0.94, twin=("resnet_v2_twin", "resnet_nobn_twin"),
                                     time_against="resnet_v2_twin")


def test_arms_and_seeds_train_only_the_runs_they_name_and_runs_at_once_is_recorded(make_zoo,
                                                                                    tmp_path):
    # One process per core (taskset) on a CPU: each trains its share, and every run's machine
    # record says that two runs shared the machine.
    flags.FLAGS.arms = ["resnet_v2_twin", "preset"]
    flags.FLAGS.seeds = ["2", "0"]
    flags.FLAGS.runs_at_once = 2
    make_zoo.run_training(MULTI)
    # The recipe's order, not the flags'.
    assert [call[-1] for call in make_zoo.calls] == [
        f"--model_dir={tmp_path / MULTI / arm / f'seed_{seed}'}"
        for arm in ("preset", "resnet_v2_twin") for seed in (0, 2)]
    record = json.loads((tmp_path / MULTI / "preset" / "seed_0" / "command.json").read_text())
    assert record["machine"].endswith("; 2 runs at once")
    assert not (tmp_path / MULTI / "preset" / "seed_1").exists()


@pytest.mark.parametrize("flag, value, message", [
    # The MLP recipe has this arm; the CNN recipe, named second, does not.
    ("arms", ["no_exit_losses"],
     r"glonet_cnn_fashion_mnist has no arm\(s\) \['no_exit_losses'\]; its arms: \['preset'"),
    ("seeds", ["0", "3"], r"no seed\(s\) \[3\]; its seeds: \[0, 1, 2\]"),
    ("seeds", ["one"], r"--seeds must be whole numbers, got \['one'\]"),
])
def test_an_arm_or_seed_the_recipe_lacks_is_refused_before_anything_trains(
        make_zoo, flag, value, message):
    flags.FLAGS[flag].value = value
    flags.FLAGS.steps = ["train"]
    flags.FLAGS.names = [MULTI, "glonet_cnn_fashion_mnist"]
    with pytest.raises(SystemExit, match=message):
        make_zoo.main([])
    assert make_zoo.calls == []


def test_arms_or_seeds_for_a_one_run_recipe_are_refused(make_zoo):
    flags.FLAGS.seeds = ["0"]
    with pytest.raises(SystemExit, match=r"multi-seed recipe; glonet_mlp_digits is one run"):
        make_zoo.run_training(NAME)
    assert make_zoo.calls == []


def test_the_vit_recipe_is_v1s_under_the_protocol_beside_a_standard_vit_twin(make_zoo):
    # RESULTS.md section 13: v1's ViT recipe unchanged, 3 seeds, and a standard ViT twin that differs
    # only in its model (baselines take no head_initializer).
    import shlex

    from tests.harness import REPO_ROOT

    name = "glonet_vit_fashion_mnist"
    recipe = make_zoo.RECIPES[name]
    assert recipe["seeds"] == (0, 1, 2) and set(recipe["arms"]) == {"vit_twin"}
    assert recipe["targets"] == dict(accuracy=0.935, twin="vit_twin", time_against="vit_twin")
    for seed in recipe["seeds"]:
        preset = make_zoo.run_flags(name, "preset", seed)
        twin = make_zoo.run_flags(name, "vit_twin", seed)
        assert preset["seed"] == seed and preset["model"] == "glonet_vit"
        assert twin == {**{k: v for k, v in preset.items() if k != "head_initializer"},
                        "model": "vit"}
    metadata = json.loads((Path(REPO_ROOT) / "zoo" / name / "metadata.json").read_text())
    if "protocol" not in metadata:  # v1's single run is still the published one: same recipe
        v1 = shlex.split(metadata["training"]["command"])
        ours = make_zoo.train_command(name, f"runs/zoo/{name}", "preset", 0)
        assert ours[1:] == v1[1:]


def test_a_run_carried_through_git_is_restored_before_it_resumes_and_status_says_so(
        make_zoo, tmp_path, capsys):
    # A session on a fresh clone: runs/ is empty, carried_runs/ holds the last session's run.
    carry_runs = training_module("carry_runs")
    interrupted_run(tmp_path / "elsewhere" / NAME)
    carried = tmp_path / "carried"
    assert carry_runs.save(tmp_path / "elsewhere", carried, log=lambda line: None) == 0
    runs = tmp_path / "runs"
    flags.FLAGS.runs_dir, flags.FLAGS.carried_dir = str(runs), str(carried)
    flags.FLAGS.names, flags.FLAGS.steps = [NAME], ["status"]
    make_zoo.main([])
    assert capsys.readouterr().out.splitlines()[0] == (
        f"[{NAME}] carried in {carried}: 2 epochs saved; --steps=train --resume (or protocol, "
        "package) restores it here first")
    assert not runs.exists()  # status changes nothing
    flags.FLAGS.steps, flags.FLAGS.resume = ["train"], True
    make_zoo.main([])
    assert f"[{NAME}] {NAME}: restored (2 epochs saved) from {carried}" in capsys.readouterr().out
    assert json.loads((runs / NAME / "command.json").read_text())["resumed_after_epoch"] == 2
    assert (runs / f"{NAME}.log").read_text() == "epochs 1-2\ntrained\n"
    # A damaged carried run stops the resume instead of training it again from nothing.
    shutil.rmtree(runs)
    state = carried / NAME / "backup" / "epoch_0002.keras"
    state.write_bytes(state.read_bytes()[:-1])
    make_zoo.calls.clear()
    with pytest.raises(SystemExit, match="does not match the sha256"):
        make_zoo.main([])
    assert make_zoo.calls == [] and not (runs / NAME).exists()


def test_runs_are_carried_from_carried_runs_only_for_the_default_runs_dir(make_zoo, tmp_path):
    assert make_zoo.carried_dir() is None  # the fixture's --runs_dir: a test's folder
    flags.FLAGS.runs_dir = flags.FLAGS["runs_dir"].default
    assert make_zoo.carried_dir() == make_zoo.REPO / "carried_runs" / "zoo"
    flags.FLAGS.carried_dir = str(tmp_path)
    assert make_zoo.carried_dir() == tmp_path
