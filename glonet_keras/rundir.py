"""A training run's directory: never loses a run, never mixes two.

`RunDirectory(path)` owns what a run writes under its `model_dir`:

    run.json           what the run is (its config fingerprint) and whether it finished
    backup/            the resumable state: `epoch_NNNN.keras` (the model with its optimizer state)
                       with `epoch_NNNN.json` (history, epoch times, best-so-far, the model's sha256)
    checkpoints/       last.keras / best.keras: links to the last and the best epoch's model
    model.keras, preprocessing.json, metrics.json, logs/   (written by the trainer)

Guarantees (the "what a run directory guarantees" section of docs/security.md):
- Every file is written to a temporary name, flushed to disk, then renamed over the old one, so a
  kill at any moment leaves the old file or the new one, never part of one. A Ctrl-C (SIGINT)
  during a write lets the write finish, then stops.
- The state of an epoch is complete once its `.json` exists (written last, with the sha256 of its
  weights). The previous epoch's state is kept until a newer one is complete; a state that fails
  its check (torn, truncated, edited) is skipped, with a warning, for the one before it.
- `run.json` fingerprints the config (model, its arguments, data, optimizer, learning rate, seed,
  batch, ...). A run resumes only with a matching config; a mismatch, fewer epochs than already
  trained, a finished run, or a directory holding files a run does not write is refused with a
  message saying what differs and how to start fresh (`overwrite=True` / `--overwrite`, which
  deletes only the files a run writes, or a new directory).
- A full disk raises one `DiskFullError` naming the file; the complete states stay, so the same
  command resumes once there is space. (States are `.keras` archives, which Keras fills in memory
  and writes with Python's I/O: HDF5 writing straight to a full disk crashes the process. Keras
  falls back to HDF5 on disk for models larger than about half the free RAM.)
"""

import contextlib
import dataclasses
import datetime
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import threading
import time

RUN_FILE = "run.json"
STATE_DIR = "backup"
CHECKPOINT_DIR = "checkpoints"
# Everything a run writes at the top of its directory: `overwrite` deletes these and nothing else.
RUN_ENTRIES = (RUN_FILE, STATE_DIR, CHECKPOINT_DIR, "logs", "model.keras", "preprocessing.json",
               "metrics.json")
# Other workers of a multi-worker run write their copies into these sub-directories.
WORKER_DIR = re.compile(r"worker_\d+")
FORMAT_VERSION = 1
_STATE_FILE = re.compile(r"epoch_(\d{4,})\.json")
_STATE_SUFFIX = ".keras"
_PARTIAL_PREFIX = ".partial-"
# Tests name a file here to hold its write between the temporary file and the rename, so that a
# SIGKILL lands in the middle of that write.
_TEST_PAUSE_ENV = "GLONET_KERAS_TEST_PAUSE_BEFORE_RENAME"


class RunDirectoryError(ValueError):
    """The directory holds something this run must not resume or overwrite."""


class DiskFullError(OSError):
    """No space left while writing a run's file; the complete files written before are intact."""


def write_atomically(path, write, hint=""):
    """Calls `write(temporary_path)`, flushes it to disk and renames it to `path`.

    Readers (and a run resumed after a kill) see the old file or the new one, never a torn one.
    The temporary name keeps `path`'s suffix (Keras checks `.keras` and `.weights.h5`).

    Args:
        path: the file to (re)place.
        write: a function that writes the whole file at the path it is given.
        hint: appended to a full-disk error (what is kept, how to resume).

    Raises:
        DiskFullError: the device is full (the temporary file is removed).
    """
    directory, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(directory, _PARTIAL_PREFIX + name)
    try:
        with interrupts_deferred() as interrupted:
            _remove(temporary)
            write(temporary)
            _fsync(temporary)
            if os.environ.get(_TEST_PAUSE_ENV) == name:
                _pause(interrupted)
            os.replace(temporary, path)
            _fsync(directory)
    except BaseException as error:
        _remove(temporary)
        if _is_disk_full(error):
            raise DiskFullError(
                errno.ENOSPC, f"No space left on device while writing {path}. {hint}".strip()
            ) from error
        raise


_held_interrupts = None  # The list of the outermost `interrupts_deferred` block, while one runs.


@contextlib.contextmanager
def interrupts_deferred():
    """Holds a Ctrl-C (SIGINT) until the block is done, then raises KeyboardInterrupt.

    A KeyboardInterrupt raised inside h5py or zipfile can leave them unable to finish or close the
    file (seen as a process that never exits), and one between two files of an epoch's state
    leaves it incomplete; writes are short, so they complete first. Yields a list that holds the
    signal once received. Nested blocks wait for the outermost one. Only the main thread can handle
    signals: elsewhere nothing is deferred.
    """
    global _held_interrupts
    if _held_interrupts is not None or threading.current_thread() is not threading.main_thread():
        yield _held_interrupts if _held_interrupts is not None else []
        return
    received = _held_interrupts = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)
        _held_interrupts = None
    if received and previous is not signal.SIG_IGN:
        raise KeyboardInterrupt


def _pause(interrupted, seconds=3600):
    """The test hook's hold (see `_TEST_PAUSE_ENV`); a Ctrl-C ends it."""
    deadline = time.monotonic() + seconds
    while not interrupted and time.monotonic() < deadline:
        time.sleep(0.05)


def write_json(path, record, hint=""):
    def write(temporary):
        with open(temporary, "w") as handle:
            json.dump(record, handle, indent=2)

    write_atomically(path, write, hint)


def _is_disk_full(error):
    if isinstance(error, DiskFullError):
        return False  # Already explained.
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # h5py reports the C library's errno inside its message.
    return isinstance(error, OSError) and ("errno = 28" in str(error) or "No space left" in str(error))


def _fsync(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def normalize(record):
    """`record` as JSON gives it back (tuples become lists), so fingerprints compare as stored."""
    return json.loads(json.dumps(record))


def differences(recorded, current, prefix=""):
    """`["key: recorded -> current", ...]` for every leaf where two fingerprints differ."""
    found = []
    for key in sorted(set(recorded) | set(current), key=str):
        old, new = recorded.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(old, dict) and isinstance(new, dict):
            found += differences(old, new, f"{prefix}{key}.")
        elif old != new:
            found.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return found


@dataclasses.dataclass
class TrainingState:
    """One complete epoch's state in `backup/`.

    Attributes:
        epoch: epochs completed (training resumes at this 0-based epoch index).
        model_path: the model, with its optimizer's variables, after that epoch (`.keras`; load
            it into a compiled model with `load_weights`).
        history: the per-epoch logs of the whole run so far ({"loss": [...], ...}).
        seconds_per_epoch: wall time of each of those epochs.
        best: {"epoch", "monitor", "value"} of the best epoch so far, or None.
    """

    epoch: int
    model_path: str
    history: dict
    seconds_per_epoch: list
    best: dict = None


class RunDirectory:
    """The files of one training run (see the module docstring for the guarantees).

    Example:
    >>> run = RunDirectory("/tmp/run")
    >>> state = run.claim(fingerprint, epochs=10)  # None: a fresh start
    >>> ...train, calling run.save_state(...) after every epoch...
    >>> run.finish(summary)
    """

    def __init__(self, path):
        self.path = os.path.abspath(path)
        self.state_dir = os.path.join(self.path, STATE_DIR)
        self.checkpoint_dir = os.path.join(self.path, CHECKPOINT_DIR)
        self.run_file = os.path.join(self.path, RUN_FILE)

    # ----------------------------------------------------------------------------------------------
    # Starting: check what is there, then claim the directory.

    def claim(self, fingerprint, *, epochs, overwrite=False, command=None):
        """Checks that this run may use the directory and records its fingerprint.

        Args:
            fingerprint: a JSON-able dict of everything that changes what the run computes.
            epochs: the epochs asked for.
            overwrite: delete a previous run's files first (never files a run does not write).
            command: the command line, recorded in run.json.

        Returns:
            The `TrainingState` to resume from, or None for a fresh start.

        Raises:
            RunDirectoryError: the directory holds a finished run, a run with another config, a
                run already trained for more than `epochs`, or files a run does not write.
        """
        os.makedirs(self.path, exist_ok=True)
        fingerprint = normalize(fingerprint)
        if overwrite:
            self._remove_run_files()
        record = self.record()
        if record is None:
            self._check_only_run_files()
            self._write_record({
                "format": FORMAT_VERSION, "status": "training", "fingerprint": fingerprint,
                "command": command, "started": _now(), "finished": None,
            })
            return None
        fresh = "start fresh with --overwrite (deletes it) or use a new --model_dir"
        if record.get("status") == "finished":
            raise RunDirectoryError(
                f"{self.path} holds a finished run ({record.get('summary') or 'finished'}); it is "
                f"never overwritten unless asked: {fresh}."
            )
        changed = differences(record.get("fingerprint") or {}, fingerprint)
        if changed:
            raise RunDirectoryError(
                f"{self.path} holds an unfinished run with another config ({'; '.join(changed)}). "
                f"Resume it with its own flags, or {fresh}."
            )
        state = self.latest_state()
        if state is not None and state.epoch > epochs:
            raise RunDirectoryError(
                f"{self.path} holds a run already trained for {state.epoch} epochs, more than the "
                f"{epochs} asked for. Resume it with epochs >= {state.epoch}, or {fresh}."
            )
        return state

    def record(self):
        """The contents of run.json, or None when there is none."""
        try:
            with open(self.run_file) as handle:
                record = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise RunDirectoryError(
                f"{self.run_file} is unreadable ({error}); delete the run with --overwrite or use a "
                "new --model_dir."
            ) from None
        if not isinstance(record, dict):
            raise RunDirectoryError(f"{self.run_file} is not a run record (expected a JSON object).")
        return record

    def _write_record(self, record):
        write_json(self.run_file, record)

    def _foreign_entries(self):
        return sorted(entry for entry in os.listdir(self.path)
                      if entry not in RUN_ENTRIES and not WORKER_DIR.fullmatch(entry)
                      and not entry.startswith(_PARTIAL_PREFIX))

    def _check_only_run_files(self):
        foreign = self._foreign_entries()
        if foreign:
            raise RunDirectoryError(
                f"{self.path} is not empty and holds no {RUN_FILE}: {foreign[:5]} are not files a "
                "run writes. Choose a new or empty --model_dir."
            )
        leftovers = [entry for entry in os.listdir(self.path) if entry in RUN_ENTRIES]
        if leftovers:
            raise RunDirectoryError(
                f"{self.path} holds run files {leftovers} but no {RUN_FILE} (a run of an older "
                "version, or a deleted record). Start fresh with --overwrite (deletes them) or use a "
                "new --model_dir."
            )

    def _remove_run_files(self):
        foreign = self._foreign_entries()
        if foreign:
            raise RunDirectoryError(
                f"Refusing to overwrite {self.path}: it holds files a run does not write "
                f"({foreign[:5]}). Choose a new or empty --model_dir."
            )
        for entry in RUN_ENTRIES:
            target = os.path.join(self.path, entry)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            elif os.path.lexists(target):
                os.remove(target)

    # ----------------------------------------------------------------------------------------------
    # Per epoch.

    def latest_state(self):
        """The newest complete state in backup/ (skipping, with a warning, any that fails its check)."""
        if not os.path.isdir(self.state_dir):
            return None
        for epoch in sorted(self._state_epochs(), reverse=True):
            try:
                return self._read_state(epoch)
            except (OSError, ValueError, KeyError, TypeError) as error:
                print(f"glonet_keras: skipping the state of epoch {epoch} in {self.state_dir}: "
                      f"{error}; falling back to an earlier one.", file=sys.stderr)
        return None

    def _state_epochs(self):
        found = []
        for entry in os.listdir(self.state_dir):
            match = _STATE_FILE.fullmatch(entry)
            if match:
                found.append(int(match.group(1)))
        return found

    def _state_paths(self, epoch):
        stem = os.path.join(self.state_dir, f"epoch_{epoch:04d}")
        return stem + _STATE_SUFFIX, stem + ".json"

    def _read_state(self, epoch):
        model_path, metadata_path = self._state_paths(epoch)
        with open(metadata_path) as handle:
            metadata = json.load(handle)
        if metadata["epoch"] != epoch:
            raise ValueError(f"{metadata_path} says epoch {metadata['epoch']}")
        if sha256(model_path) != metadata["model_sha256"]:
            raise ValueError(f"{model_path} does not match the sha256 recorded with it")
        return TrainingState(epoch=epoch, model_path=model_path,
                             history=dict(metadata["history"]),
                             seconds_per_epoch=list(metadata["seconds_per_epoch"]),
                             best=metadata.get("best"))

    def state_model(self, epoch):
        """The verified model file of a kept epoch (e.g. the best one)."""
        return self._read_state(epoch).model_path

    def save_state(self, state, save_model):
        """Writes `state` (its model with `save_model(path)`), then drops states no longer needed.

        Kept: this state, the one before it (in case this one is damaged later) and the best one.
        """
        os.makedirs(self.state_dir, exist_ok=True)
        model_path, metadata_path = self._state_paths(state.epoch)
        previous = [epoch for epoch in self._state_epochs() if epoch < state.epoch]
        hint = (f"The state of epoch {max(previous)} is kept: free some space and run the same "
                "command again to resume." if previous else
                "Free some space and run the same command again.")
        write_atomically(model_path, save_model, hint)
        write_json(metadata_path, {
            "epoch": state.epoch, "model_sha256": sha256(model_path), "history": state.history,
            "seconds_per_epoch": state.seconds_per_epoch, "best": state.best, "saved": _now(),
        }, hint)
        state.model_path = model_path
        keep = {state.epoch, max(previous, default=None), (state.best or {}).get("epoch")}
        for epoch in self._state_epochs():
            if epoch not in keep:
                old_model, old_metadata = self._state_paths(epoch)
                _remove(old_metadata)  # First: a state without its .json is never used.
                _remove(old_model)

    def publish_checkpoint(self, name, source):
        """Makes `checkpoints/<name>` a hard link to `source` (a copy where links are impossible)."""
        os.makedirs(self.checkpoint_dir, exist_ok=True)

        def link(temporary):
            try:
                os.link(source, temporary)
            except OSError:
                shutil.copyfile(source, temporary)

        write_atomically(os.path.join(self.checkpoint_dir, name), link)

    def remove_partial_files(self):
        """Deletes temporary files left by a write that was killed."""
        for directory in (self.path, self.state_dir, self.checkpoint_dir):
            if os.path.isdir(directory):
                for entry in os.listdir(directory):
                    if entry.startswith(_PARTIAL_PREFIX):
                        _remove(os.path.join(directory, entry))

    # ----------------------------------------------------------------------------------------------
    # Finishing.

    def finish(self, summary):
        """Marks the run finished (it will not be resumed or overwritten), then drops backup/."""
        record = self.record() or {}
        record.update(status="finished", finished=_now(), summary=summary)
        self._write_record(record)
        shutil.rmtree(self.state_dir, ignore_errors=True)


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
