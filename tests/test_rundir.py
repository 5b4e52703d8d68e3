"""Run directories never lose or mix runs: resume, refusals, torn files, NaN, full disk, failures.

In-process runs of `trainer.train` on tiny digits configs; an interruption is a KeyboardInterrupt
raised right after an epoch's state is written (what Ctrl-C does at that moment). The runs killed
for real (SIGKILL, SIGINT) and the command line are in test_train.py.
"""

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from glonet_keras.training import callbacks, rundir, trainer
from glonet_keras import data as data_lib
from glonet_keras.training.trainer import TrainConfig
from tests import harness

TINY = dict(model="glonet_mlp", depth=3, width=16, dataset="digits", batch_size=8,
            max_examples=64, tensorboard=False, verbose=0)


def _train(model_dir, **changes):
    return trainer.train(TrainConfig(**dict(TINY, **changes), model_dir=str(model_dir)))


def _interrupted(monkeypatch, model_dir, after_epoch, **changes):
    """Trains until the state of `after_epoch` is written, then stops as Ctrl-C would."""
    original = callbacks.RunStateCheckpoint.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch + 1 == after_epoch:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(callbacks.RunStateCheckpoint, "on_epoch_end", on_epoch_end)
        with pytest.raises(KeyboardInterrupt):
            _train(model_dir, **changes)


def _max_difference(model_a, model_b):
    return max(float(np.abs(a - b).max()) for a, b in zip(model_a.get_weights(), model_b.get_weights()))


def _state_files(model_dir):
    return sorted(os.listdir(os.path.join(model_dir, rundir.STATE_DIR)))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: TINY for 2 epochs without a stop."""
    return _train(tmp_path_factory.mktemp("whole") / "run", epochs=2)


def test_resume_keeps_the_whole_history_and_matches_an_uninterrupted_run(
        tmp_path, monkeypatch, uninterrupted):
    _interrupted(monkeypatch, tmp_path, after_epoch=1, epochs=2)
    assert _state_files(tmp_path) == ["epoch_0001.json", "epoch_0001.keras"]
    assert not (tmp_path / "metrics.json").exists()

    resumed = _train(tmp_path, epochs=2)
    assert resumed.initial_epoch == 1
    # metrics.json and the result hold both epochs, the one before the stop included.
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "finished" and len(metrics["seconds_per_epoch"]) == 2
    for key, values in uninterrupted.history.items():
        assert metrics["history"][key] == pytest.approx(values, abs=1e-5), key
        assert resumed.history[key] == pytest.approx(values, abs=1e-5), key
    assert _max_difference(resumed.model, uninterrupted.model) <= 1e-5
    assert not (tmp_path / rundir.STATE_DIR).exists()  # Dropped once the run finished.


def test_restore_best_after_a_resume_ends_with_the_uninterrupted_model(tmp_path, monkeypatch):
    # SGD at 0.1 on 64 digits: validation loss 2.38, 2.33, 2.53 -> epoch 2 is the best.
    config = dict(epochs=3, restore_best=True, optimizer="sgd", learning_rate=0.1)
    whole = _train(tmp_path / "whole", **config)
    assert int(np.argmin(whole.history["val_loss"])) == 1, whole.history["val_loss"]

    _interrupted(monkeypatch, tmp_path / "resumed", after_epoch=2, **config)
    resumed = _train(tmp_path / "resumed", **config)
    assert resumed.initial_epoch == 2
    # Only epoch 3 ran after the resume; it is worse, and the best-so-far from before is kept.
    assert _max_difference(resumed.model, whole.model) <= 1e-5
    assert resumed.test_metrics["loss"] == pytest.approx(whole.test_metrics["loss"], abs=1e-5)
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["best_epoch"]["epoch"] == 2


def test_an_augmented_run_with_dropout_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    # Every random draw of an epoch (tf.data augmentation, MixUp, dropout) is seeded by
    # (seed, epoch), so the epoch after a resume draws what the uninterrupted run drew there.
    config = dict(model="glonet_cnn", depth=8, width=4, epochs=2, augment=("flip", "crop", "erase",
                  "mixup"), model_kwargs={"dropout": 0.5}, optimizer="sgd", learning_rate=0.1)
    whole = _train(tmp_path / "whole", **config)
    _interrupted(monkeypatch, tmp_path / "resumed", after_epoch=1, **config)
    resumed = _train(tmp_path / "resumed", **config)
    assert resumed.initial_epoch == 1
    assert resumed.history["loss"] == pytest.approx(whole.history["loss"], abs=1e-5)
    assert _max_difference(resumed.model, whole.model) <= 1e-5


@pytest.mark.parametrize("torn", ["weights", "metadata"])
def test_a_torn_state_falls_back_to_the_previous_one(tmp_path, monkeypatch, capfd, uninterrupted,
                                                     torn):
    _interrupted(monkeypatch, tmp_path, after_epoch=2, epochs=2)
    assert "epoch_0001.json" in _state_files(tmp_path)  # The previous state is kept.
    # What a write cut short by a kill would leave (had it not been written aside and renamed).
    newest = tmp_path / rundir.STATE_DIR / ("epoch_0002.keras" if torn == "weights"
                                            else "epoch_0002.json")
    content = newest.read_bytes()
    newest.write_bytes(content[: len(content) // 2])

    resumed = _train(tmp_path, epochs=2)
    assert resumed.initial_epoch == 1
    assert "skipping the state of epoch 2" in capfd.readouterr().err
    assert _max_difference(resumed.model, uninterrupted.model) <= 1e-5


def test_another_config_or_fewer_epochs_is_refused_and_overwrite_starts_fresh(tmp_path, monkeypatch):
    _interrupted(monkeypatch, tmp_path, after_epoch=2, epochs=2)
    with pytest.raises(rundir.RunDirectoryError) as refused:
        _train(tmp_path, epochs=2, learning_rate=0.01, seed=1, optimizer="sgd")
    message = str(refused.value)
    for difference in ("learning_rate: 0.001 -> 0.01", "seed: 0 -> 1", "optimizer: 'adam' -> 'sgd'",
                       "--overwrite"):
        assert difference in message
    with pytest.raises(rundir.RunDirectoryError, match="already trained for 2 epochs, more than the 1"):
        _train(tmp_path, epochs=1)
    # Nothing was lost by the refusals.
    assert _state_files(tmp_path) == ["epoch_0001.json", "epoch_0001.keras",
                                      "epoch_0002.json", "epoch_0002.keras"]

    fresh = _train(tmp_path, epochs=1, learning_rate=0.01, overwrite=True)
    assert fresh.initial_epoch == 0 and len(fresh.history["loss"]) == 1
    record = json.loads((tmp_path / rundir.RUN_FILE).read_text())
    assert record["status"] == "finished" and record["fingerprint"]["learning_rate"] == 0.01


def test_a_finished_run_is_never_overwritten_unless_asked(tmp_path):
    _train(tmp_path / "run", epochs=1)
    model_bytes = (tmp_path / "run" / "model.keras").read_bytes()
    for changes in (dict(epochs=1), dict(epochs=3)):
        with pytest.raises(rundir.RunDirectoryError, match="holds a finished run .*--overwrite"):
            _train(tmp_path / "run", **changes)
    assert (tmp_path / "run" / "model.keras").read_bytes() == model_bytes

    # A directory with files a run does not write is refused, even with overwrite, and kept.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(rundir.RunDirectoryError, match="notes.txt"):
            _train(tmp_path / "mine", epochs=1, overwrite=overwrite)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_a_non_finite_loss_stops_with_an_error_and_nothing_is_exported(tmp_path):
    with pytest.raises(callbacks.NonFiniteError, match="Lower the learning rate"):
        _train(tmp_path / "run", epochs=2, learning_rate=1e30, export_dir=str(tmp_path / "serving"))
    assert not (tmp_path / "serving").exists()
    assert not (tmp_path / "run" / "model.keras").exists()
    assert not (tmp_path / "run" / rundir.STATE_DIR).exists()  # No non-finite state was saved.


def test_a_failed_final_evaluation_keeps_the_model_and_a_rerun_only_evaluates(tmp_path, monkeypatch):
    evaluate, calls = trainer._evaluate, []

    def test_split_is_corrupt(model, split):  # Called for validation, then test.
        calls.append(split)
        if len(calls) == 2:
            raise OSError("test/cat/1.png: corrupt image")
        return evaluate(model, split)

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "_evaluate", test_split_is_corrupt)
        with pytest.raises(trainer.EvaluationError, match="corrupt image.*saved in .*model.keras"):
            _train(tmp_path, epochs=2)
    # Trained model and training record on disk; the state kept for the re-run.
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "evaluating" and len(metrics["history"]["loss"]) == 2
    assert (tmp_path / "model.keras").exists() and "epoch_0002.json" in _state_files(tmp_path)

    rerun = _train(tmp_path, epochs=2)
    assert rerun.initial_epoch == 2 and rerun.history == metrics["history"]  # No retraining.
    assert set(rerun.test_metrics) == {"loss", "accuracy"}
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "finished"


def test_a_full_disk_gives_one_error_and_the_rerun_resumes(tmp_path, monkeypatch):
    """ENOSPC while the second epoch's state is written (injected: see the tmpfs test for a real one)."""
    import builtins

    from keras.src.saving import saving_lib

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        if "epoch_0002" in str(path) and "w" in mode:
            with builtins.open(path, "wb") as handle:
                handle.write(b"PK\x03\x04 the start of a zip")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return builtins.open(path, mode, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(saving_lib, "open", open_on_a_full_disk, raising=False)
        with pytest.raises(rundir.DiskFullError) as full:
            _train(tmp_path, epochs=2)
    assert "epoch_0002.keras" in str(full.value)
    assert "state of epoch 1 is kept" in str(full.value)
    assert _state_files(tmp_path) == ["epoch_0001.json", "epoch_0001.keras"]  # No partial file.
    assert _train(tmp_path, epochs=2).initial_epoch == 1


def _mount_tmpfs(path, size):
    path.mkdir()
    finished = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True)
    if finished.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {finished.stderr.decode().strip()}")
    return path


@pytest.mark.slow
def test_a_real_full_disk_gives_one_error_and_the_rerun_resumes(tmp_path, monkeypatch):
    disk = _mount_tmpfs(tmp_path / "disk", "4m")
    try:
        filler = disk / "filler"
        original = callbacks.RunStateCheckpoint.on_epoch_end

        def fill_the_disk_after_epoch_1(self, epoch, logs=None):
            if epoch == 1:
                with open(filler, "wb") as handle:
                    try:
                        while True:
                            handle.write(b"\0" * 65536)
                    except OSError as error:
                        assert error.errno == errno.ENOSPC
            original(self, epoch, logs)

        with monkeypatch.context() as patch:
            patch.setattr(callbacks.RunStateCheckpoint, "on_epoch_end", fill_the_disk_after_epoch_1)
            with pytest.raises(rundir.DiskFullError, match="No space left on device while writing"):
                _train(disk / "run", epochs=2)
        assert _state_files(disk / "run") == ["epoch_0001.json", "epoch_0001.keras"]
        filler.unlink()
        assert _train(disk / "run", epochs=2).initial_epoch == 1
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_the_data_set_is_opened_once_and_steps_run_per_execution(tmp_path, monkeypatch):
    opened = []
    source = data_lib.pipeline._source

    def counting_source(*args, **kwargs):
        opened.append(args)
        return source(*args, **kwargs)

    batch_end_calls = []
    batch_end = callbacks.StopOnNonFinite.on_train_batch_end

    def counting_batch_end(self, batch, logs=None):
        batch_end_calls.append(batch)
        return batch_end(self, batch, logs)

    monkeypatch.setattr(data_lib.pipeline, "_source", counting_source)
    monkeypatch.setattr(callbacks.StopOnNonFinite, "on_train_batch_end", counting_batch_end)
    result = _train(tmp_path, epochs=2, max_examples=256)  # 32 steps per epoch
    assert len(opened) == 1
    # "auto": 32 steps in 4 executions of 8; per-batch callbacks run once per execution.
    assert result.steps_per_execution == 8 and result.model.steps_per_execution == 8
    assert batch_end_calls == [7, 15, 23, 31] * 2


@pytest.mark.parametrize(
    "requested, steps, expected",
    [("auto", 32, 8), ("auto", 1000, 25), ("auto", 31, 1), ("auto", 3, 1), ("auto", None, 1),
     (10, 32, 8), (64, 32, 32), (1, 32, 1), (5, None, 5)],
)
def test_steps_per_execution_divides_the_epoch(requested, steps, expected):
    assert trainer.choose_steps_per_execution(requested, steps) == expected
    assert trainer.choose_steps_per_execution("auto", steps, tf_replicas=2) == 1
    with pytest.raises(trainer.ConfigError, match="several replicas on TensorFlow"):
        trainer.choose_steps_per_execution(4, steps, tf_replicas=2)


def test_run_directory_writes_are_atomic(tmp_path):
    target = tmp_path / "file.json"
    rundir.write_json(target, {"a": 1})

    def torn(path):
        with open(path, "w") as handle:
            handle.write('{"a": ')
        raise KeyboardInterrupt  # Killed mid-write.

    with pytest.raises(KeyboardInterrupt):
        rundir.write_atomically(target, torn)
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["file.json"]


# --------------------------------------------------------------------------------------------------
# Hostile run directories (issue 22): foreign temporary names, concurrent runs, odd files.

_FINGERPRINT = {"model": "x"}


def test_a_users_partial_named_file_is_foreign_never_deleted(tmp_path):
    (tmp_path / ".partial-notes.txt").write_text("precious")
    (tmp_path / ".partial-123-abcdef01-notes.txt").write_text("precious too")
    for overwrite in (False, True):
        with pytest.raises(rundir.RunDirectoryError, match=r"\.partial-notes\.txt"):
            rundir.RunDirectory(tmp_path).claim(_FINGERPRINT, epochs=1, overwrite=overwrite)
    # In a run's own directory, cleaning leftovers deletes only this library's exact temporary names.
    run = rundir.RunDirectory(tmp_path / "run")
    run.claim(_FINGERPRINT, epochs=1)
    leftover = tmp_path / "run" / rundir.partial_name("model.keras")
    leftover.write_text("torn")
    (tmp_path / "run" / ".partial-mine").write_text("precious")
    run.remove_partial_files()
    assert not leftover.exists() and (tmp_path / "run" / ".partial-mine").read_text() == "precious"
    assert (tmp_path / ".partial-notes.txt").read_text() == "precious"
    run.release()


def test_temporary_names_are_unique_per_process_and_write(tmp_path):
    used = []
    for _ in range(2):
        rundir.write_atomically(tmp_path / "model.keras",
                                lambda path: used.append(os.path.basename(path))
                                or open(path, "w").close())
    assert used[0] != used[1]
    assert all(rundir.is_partial_name(name, ["model.keras"]) and f"-{os.getpid()}-" in name
               for name in used)


_CLAIM_IN_ANOTHER_PROCESS = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("rundir", sys.argv[1])
rundir = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rundir)
try:
    rundir.RunDirectory(sys.argv[2]).claim({"model": "x"}, epochs=1)
    print("claimed")
except rundir.RunDirectoryError as error:
    print(error)
"""


def test_a_second_concurrent_run_in_one_directory_is_refused(tmp_path):
    run = rundir.RunDirectory(tmp_path)
    run.claim(_FINGERPRINT, epochs=1)
    command = [sys.executable, "-c", _CLAIM_IN_ANOTHER_PROCESS, rundir.__file__, str(tmp_path)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60).stdout
    assert "is in use by another training process" in refused and str(tmp_path) in refused
    run.release()
    assert subprocess.run(command, capture_output=True, text=True, timeout=60).stdout == "claimed\n"


@pytest.mark.parametrize("content, message", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"status": "training", "fingerprint": {"a": 1' + "0" * 5000 + "}}", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"status": 7, "fingerprint": {}}', "status 7"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_a_malformed_run_record_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / rundir.RUN_FILE
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(rundir.RunDirectoryError, match=message) as error:
        rundir.RunDirectory(tmp_path).claim(_FINGERPRINT, epochs=1)
    assert str(path) in str(error.value) and "--overwrite" in str(error.value)


def test_special_files_among_the_run_files_are_refused_without_hanging(tmp_path):
    os.mkfifo(tmp_path / rundir.RUN_FILE)
    with pytest.raises(rundir.RunDirectoryError, match="run.json .*a FIFO"):
        harness.within_seconds(30, rundir.RunDirectory(tmp_path).claim, _FINGERPRINT, epochs=1)
    # A link named like a run's folder points elsewhere: never written through, never cleaned.
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "epoch_0001.json").write_text("theirs")
    other = tmp_path / "other"
    other.mkdir()
    (other / rundir.STATE_DIR).symlink_to(tmp_path / "elsewhere")
    for overwrite in (False, True):
        with pytest.raises(rundir.RunDirectoryError, match=r"backup \(a symbolic link\)"):
            rundir.RunDirectory(other).claim(_FINGERPRINT, epochs=1, overwrite=overwrite)
    assert (tmp_path / "elsewhere" / "epoch_0001.json").read_text() == "theirs"


def test_an_unusable_model_dir_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(rundir.RunDirectoryError, match="file exists and is not a directory"):
        rundir.RunDirectory(tmp_path / "file").claim(_FINGERPRINT, epochs=1)
    with pytest.raises(rundir.RunDirectoryError, match="Cannot create the run directory"):
        rundir.RunDirectory(tmp_path / "file" / "run").claim(_FINGERPRINT, epochs=1)
    disk = _mount_tmpfs(tmp_path / "readonly", "1m")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(rundir.RunDirectoryError, match="is not writable"):
            rundir.RunDirectory(disk).claim(_FINGERPRINT, epochs=1)
        with pytest.raises(rundir.RunDirectoryError, match="Cannot create.*Read-only file system"):
            rundir.RunDirectory(disk / "run").claim(_FINGERPRINT, epochs=1)
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.parametrize("metadata", [
    "[" * 100_000 + "]" * 100_000,
    '{"epoch": 1, "history": {"loss": [1.0]}, "seconds_per_epoch": [1], "best": [1]}',
    '{"epoch": 1, "history": {"loss": "abc"}, "seconds_per_epoch": [1], "best": null}',
    '{"epoch": 1e400}',
])
def test_a_malformed_state_is_skipped_for_the_one_before(tmp_path, capfd, metadata):
    run = rundir.RunDirectory(tmp_path)
    run.claim(_FINGERPRINT, epochs=3)
    good = rundir.TrainingState(epoch=1, model_path=None, history={"loss": [1.0]},
                                seconds_per_epoch=[1.0], best={"epoch": 1, "monitor": "loss",
                                                               "value": 1.0})
    run.save_state(good, lambda path: open(path, "wb").write(b"weights"))
    state_dir = tmp_path / rundir.STATE_DIR
    (state_dir / "epoch_0002.keras").write_bytes(b"weights")
    (state_dir / "epoch_0002.json").write_text(metadata)
    state = run.latest_state()
    assert state.epoch == 1 and state.best["epoch"] == 1
    assert "skipping the state of epoch 2" in capfd.readouterr().err
    run.release()
