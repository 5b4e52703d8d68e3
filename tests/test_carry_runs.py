"""training/carry_runs.py: runs carried through a folder git tracks resume as if never moved, and
nothing a carried folder says reaches outside it, replaces a run or leaves half a run."""

import json
import os
import shutil

import numpy as np
import pytest

from glonet_keras.training import callbacks, trainer
from glonet_keras.training.trainer import TrainConfig
from tests.harness import training_module

carry_runs = training_module("carry_runs")

TINY = dict(model="glonet_mlp", depth=3, width=16, dataset="digits", batch_size=8,
            max_examples=64, tensorboard=False, verbose=0, epochs=3)
RUN = "recipe/preset/seed_0"


def _train(model_dir, stop_after=None, monkeypatch=None):
    config = TrainConfig(**TINY, model_dir=str(model_dir))
    if stop_after is None:
        return trainer.train(config)
    original = callbacks.RunStateCheckpoint.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch + 1 == stop_after:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(callbacks.RunStateCheckpoint, "on_epoch_end", on_epoch_end)
        with pytest.raises(KeyboardInterrupt):
            trainer.train(config)


@pytest.fixture
def interrupted(tmp_path, monkeypatch):
    """runs/recipe/preset/seed_0 stopped after 2 of 3 epochs, with make_zoo's log beside it."""
    runs = tmp_path / "runs"
    _train(runs / RUN, stop_after=2, monkeypatch=monkeypatch)
    (runs / RUN).parent.joinpath("seed_0.log").write_text("epochs 1-2\n")
    return runs


def _save(runs, carried, **kwargs):
    lines = []
    failures = carry_runs.save(runs, carried, log=lines.append, **kwargs)
    return failures, lines


def _restore(carried, runs, **kwargs):
    lines = []
    failures = carry_runs.restore(carried, runs, log=lines.append, **kwargs)
    return failures, lines


def test_an_interrupted_run_carried_to_a_fresh_machine_ends_as_if_never_moved(
        interrupted, tmp_path):
    carried = tmp_path / "carried"
    assert _save(interrupted, carried) == (0, [f"{RUN}: carried (2 epochs saved, 4 files)"])
    # What is carried: the record, the newest state (model and its record), the log; no links.
    assert sorted(p.relative_to(carried).as_posix() for p in carried.rglob("*") if p.is_file()) == [
        "recipe/preset/seed_0.log", f"{RUN}/backup/epoch_0002.json",
        f"{RUN}/backup/epoch_0002.keras", f"{RUN}/carried.json", f"{RUN}/run.json"]
    fresh = tmp_path / "fresh_clone_runs"  # the next session's machine: no runs/ at all
    assert _restore(carried, fresh) == (0, [f"{RUN}: restored (2 epochs saved)"])
    assert (fresh / "recipe/preset/seed_0.log").read_text() == "epochs 1-2\n"
    resumed = _train(fresh / RUN)
    assert resumed.initial_epoch == 2 and len(resumed.history["loss"]) == 3
    whole = _train(tmp_path / "whole")
    for a, b in zip(whole.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Finished, it is carried as a model to measure, and restored as one.
    assert _save(fresh, carried)[1] == [f"{RUN}: carried (finished, 3 epochs, 5 files)"]
    again = tmp_path / "third"
    assert _restore(carried, again)[0] == 0
    assert json.loads((again / RUN / "run.json").read_text())["status"] == "finished"
    assert (again / RUN / "model.keras").read_bytes() == (fresh / RUN / "model.keras").read_bytes()
    assert not (again / RUN / "backup").exists()


def test_save_never_replaces_a_run_that_got_further_and_restore_never_touches_a_run_here(
        interrupted, tmp_path, monkeypatch):
    carried = tmp_path / "carried"
    _save(interrupted, carried)
    before = (carried / RUN / "carried.json").read_bytes()
    # A new session that trained 1 epoch before restoring must not overwrite 2 carried epochs.
    behind = tmp_path / "behind"
    _train(behind / RUN, stop_after=1, monkeypatch=monkeypatch)
    failures, lines = _save(behind, carried)
    assert failures == 0 and lines[0].startswith(f"kept the carried {RUN} (2 epochs saved)")
    assert (carried / RUN / "carried.json").read_bytes() == before
    # Nor is a run here replaced by the carried one, whichever got further.
    state = (behind / RUN / "run.json").read_bytes()
    failures, lines = _restore(carried, behind)
    assert failures == 0 and lines[0].startswith(f"left {RUN} as it is (1 epochs saved")
    assert (behind / RUN / "run.json").read_bytes() == state
    assert not (behind / RUN / "backup" / "epoch_0002.json").exists()
    # Saving the same progress again rewrites nothing.
    assert _save(interrupted, carried)[1] == [f"{RUN}: already carried (2 epochs saved)"]


@pytest.mark.parametrize("entry", ["../../../outside", "backup/../../x.keras", "/etc/passwd",
                                   "notes.txt", "../seed_1.log"])
def test_a_carried_record_naming_another_file_is_refused_and_nothing_is_written(
        interrupted, tmp_path, entry):
    carried = tmp_path / "carried"
    _save(interrupted, carried)
    record_path = carried / RUN / "carried.json"
    record = json.loads(record_path.read_text())
    record["files"][entry] = record["files"]["run.json"]
    record_path.write_text(json.dumps(record))
    failures, lines = _restore(carried, tmp_path / "out")
    assert failures == 1 and "not a file this program carries" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "outside").exists()


def test_a_damaged_or_linked_carried_file_is_refused_and_leaves_no_half_run(interrupted, tmp_path):
    carried = tmp_path / "carried"
    _save(interrupted, carried)
    state = carried / RUN / "backup" / "epoch_0002.keras"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 1
    state.write_bytes(bytes(data))
    failures, lines = _restore(carried, tmp_path / "out")
    assert failures == 1 and "does not match the sha256" in lines[0]
    assert not (tmp_path / "out" / RUN).exists()
    # A link where a file was (to a secret outside the folder) is not followed.
    (tmp_path / "secret").write_bytes(bytes(data))
    state.unlink()
    state.symlink_to(tmp_path / "secret")
    failures, lines = _restore(carried, tmp_path / "out")
    assert failures == 1 and "not a regular file" in lines[0]
    assert not (tmp_path / "out" / RUN).exists()


def test_a_restore_that_fails_midway_leaves_nothing_and_the_next_one_completes(
        interrupted, tmp_path, monkeypatch):
    carried = tmp_path / "carried"
    _save(interrupted, carried)
    copy, copied = carry_runs._copy, []

    def failing_copy(source, target):
        if len(copied) == 2:
            raise OSError(28, "No space left on device")
        copied.append(target)
        copy(source, target)

    monkeypatch.setattr(carry_runs, "_copy", failing_copy)
    failures, lines = _restore(carried, tmp_path / "out")
    assert failures == 1 and "No space left" in lines[0]
    parent = tmp_path / "out" / "recipe" / "preset"
    assert sorted(os.listdir(parent)) == []  # no run, no temporary folder, no log
    monkeypatch.setattr(carry_runs, "_copy", copy)
    assert _restore(carried, tmp_path / "out")[0] == 0
    assert _train(tmp_path / "out" / RUN).initial_epoch == 2


def test_a_state_dropped_while_it_is_copied_is_copied_again_from_the_newer_one(
        interrupted, tmp_path, monkeypatch):
    # Saving while the run trains: the state chosen may be deleted (a newer epoch saved) before
    # it is copied; the save chooses again instead of carrying a run without its state.
    carried = tmp_path / "carried"
    copy, dropped = carry_runs._copy, []

    def copy_racing_an_epoch(source, target):
        if str(source).endswith("epoch_0002.keras") and not dropped:
            dropped.append(source)
            raise FileNotFoundError(2, "No such file", str(source))
        copy(source, target)

    monkeypatch.setattr(carry_runs, "_copy", copy_racing_an_epoch)
    assert _save(interrupted, carried) == (0, [f"{RUN}: carried (2 epochs saved, 4 files)"])
    assert dropped and not [p for p in (carried / "recipe/preset").iterdir()
                            if p.name.startswith(".partial-")]


def test_only_selects_runs_by_their_path_and_other_folders_are_not_runs(interrupted, tmp_path):
    shutil.copytree(interrupted / "recipe", interrupted / "other")
    (interrupted / "recipe" / "notes").mkdir()
    (interrupted / "recipe" / "notes" / "x.txt").write_text("not a run")
    carried = tmp_path / "carried"
    assert _save(interrupted, carried, only=["recipe"])[1] == [
        f"{RUN}: carried (2 epochs saved, 4 files)"]
    assert not (carried / "other").exists() and not (carried / "recipe" / "notes").exists()
    assert carry_runs.find_runs(interrupted, "run.json") == ["other/preset/seed_0", RUN]


def test_a_measured_recipe_is_not_carried_again_unless_only_names_it(interrupted, tmp_path):
    shutil.copytree(interrupted / "recipe", interrupted / "measured")
    (interrupted / "measured" / carry_runs.PROTOCOL).write_text("{}")
    carried = tmp_path / "carried"
    assert _save(interrupted, carried)[1] == [
        "measured/preset/seed_0: skipped (its recipe's protocol.json says it is measured; "
        "--only=measured/preset/seed_0 carries it)",
        f"{RUN}: carried (2 epochs saved, 4 files)"]
    assert not (carried / "measured").exists()
    assert _save(interrupted, carried, only=["measured"])[1] == [
        "measured/preset/seed_0: carried (2 epochs saved, 4 files)"]


def test_what_a_killed_save_left_is_removed_by_the_next_and_never_committed(interrupted, tmp_path):
    carried = tmp_path / "carried"
    parent = carried / "recipe" / "preset"
    parent.mkdir(parents=True)
    # A save killed mid-copy: its staging folder and its log's temporary file, under the
    # library's temporary names (which `git add` would otherwise pick up).
    (parent / ".partial-123-0123abcd-seed_0" / "backup").mkdir(parents=True)
    (parent / ".partial-123-0123abcd-seed_0.log").write_text("half")
    (parent / "notes.md").write_text("someone's notes")
    assert _save(interrupted, carried)[0] == 0
    assert sorted(os.listdir(parent)) == ["notes.md", "seed_0", "seed_0.log"]


def test_a_linked_folder_on_the_way_is_never_followed_either_way(interrupted, tmp_path):
    outside = tmp_path / "outside"
    carried = tmp_path / "carried"
    _save(interrupted, carried)
    shutil.move(carried / "recipe", outside)
    (carried / "recipe").symlink_to(outside)  # e.g. committed as a link by someone else
    with pytest.raises(carry_runs.CarryError, match="is a symbolic link"):
        carry_runs.restore_run(carried, tmp_path / "out", RUN)
    assert not (tmp_path / "out").exists()
    before = sorted(p for p in outside.rglob("*"))
    assert _save(interrupted, carried)[0] == 1  # would write through the link
    assert sorted(p for p in outside.rglob("*")) == before
