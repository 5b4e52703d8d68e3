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
import secrets
import signal
import stat
import sys
import threading
import time

from glonet_keras import files

try:
    import fcntl
except ImportError:  # Windows: no advisory lock (a second concurrent run is not detected there).
    fcntl = None

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
# A temporary file of this library: `.partial-<pid>-<8 hex digits>-<final name>`, unique per
# process and write, so two writers never share one. Only names of exactly this form are ever
# treated as the run's own (and deleted as leftovers of a killed write); at the top of a run
# directory, only those of a file a run writes (`RUN_ENTRIES`).
_PARTIAL_FILE = re.compile(r"\.partial-\d+-[0-9a-f]{8}-(.+)")
# The largest run.json / epoch state record read back (they are a few kB; a run.json of 300 MB is
# no record of this library's).
MAX_RECORD_BYTES = 16 * 2**20
# Run entries that are directories; the others are regular files.
_DIRECTORY_ENTRIES = (STATE_DIR, CHECKPOINT_DIR, "logs")
# Tests name a file here to hold its write between the temporary file and the rename, so that a
# SIGKILL lands in the middle of that write.
_TEST_PAUSE_ENV = "GLONET_KERAS_TEST_PAUSE_BEFORE_RENAME"


# realpath -> [descriptor holding its flock, RunDirectory objects of this process using it].
_LOCKS = {}


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
    temporary = os.path.join(directory, partial_name(name))
    try:
        with interrupts_deferred() as interrupted:
            write(temporary)
            _fsync(temporary)
            if os.environ.get(_TEST_PAUSE_ENV) == name:
                _pause(interrupted)
            os.replace(temporary, path)
            _fsync(directory)
    except BaseException as error:
        _remove(temporary)
        if is_disk_full(error):
            raise DiskFullError(
                errno.ENOSPC, f"No space left on device while writing {path}. {hint}".strip()
            ) from error
        raise


def partial_name(name):
    """A temporary name for `name` that no other process or write uses (see `_PARTIAL_FILE`)."""
    return f"{_PARTIAL_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{name}"


def is_partial_name(entry, final_names=None):
    """True for a temporary file of this library (of one of `final_names`, when given)."""
    match = _PARTIAL_FILE.fullmatch(entry)
    return bool(match) and (final_names is None or match.group(1) in final_names)


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


def is_disk_full(error):
    """True for an OSError of a full disk or quota (ENOSPC, EDQUOT, h5py's errno 28) not yet
    explained by a DiskFullError."""
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
    with open_regular(path) as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def open_regular(path):
    """Opens `path` for binary reading only if it is a regular file (a link to one is fine).

    Never blocks: a FIFO, a device, a socket or a directory is refused with an OSError naming the
    file and what it is, without reading from it (`files.open_regular`).
    """
    return files.open_regular(path, refuse=_not_regular)


def _not_regular(path, kind):
    return OSError(errno.EINVAL, f"{kind}, not a regular file", path)


def read_json_record(path, max_bytes=MAX_RECORD_BYTES):
    """A JSON object read from a regular file of at most `max_bytes`.

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: naming the file, for anything else (not a regular file, unreadable, too
            large, not JSON, nested too deeply, not an object).
    """
    try:
        with open_regular(path) as handle:
            content = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({error.strerror or error})") from None
    if len(content) > max_bytes:
        raise ValueError(f"{path} is larger than {max_bytes:,} bytes")
    try:
        record = json.loads(content)
    except RecursionError:
        raise ValueError(f"{path} is nested too deeply to be a record") from None
    except ValueError as error:  # Includes UnicodeDecodeError.
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} is not a JSON object")
    return record


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
        self._lock = None  # The descriptor holding this directory's lock, once claimed.

    def __del__(self):
        self.release()

    def release(self):
        """Lets another process use the directory (the kernel also drops the lock when the
        process ends, however it ends). `train` calls it when it returns or fails."""
        key, self._lock = getattr(self, "_lock", None), None
        if key is None:
            return
        held = _LOCKS.get(key)
        if held is not None:
            held[1] -= 1
            if held[1] <= 0:
                del _LOCKS[key]
                try:
                    os.close(held[0])
                except OSError:
                    pass

    def _acquire(self):
        """Locks the directory for this process, or refuses: two runs never share one directory.

        The lock is an advisory `flock` on the directory itself (no lock file is written into a
        folder that may be the user's). It is per process: this process may claim a directory
        again (a retry after an error), another process may not until this one releases it or ends.
        """
        if self._lock is not None or fcntl is None:
            return
        key = os.path.realpath(self.path)
        if key in _LOCKS:
            _LOCKS[key][1] += 1
            self._lock = key
            return
        descriptor = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(descriptor)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirectoryError(
                    f"{self.path} is in use by another training process (it holds the "
                    "directory's lock). Wait for it to end, or use another --model_dir."
                ) from None
            return  # A file system without flock (some network mounts): run unlocked.
        _LOCKS[key] = [descriptor, 1]
        self._lock = key

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
        if os.path.lexists(self.path) and not os.path.isdir(self.path):
            raise RunDirectoryError(f"The run directory {self.path} exists and is not a directory.")
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as error:
            raise RunDirectoryError(
                f"Cannot create the run directory {self.path}: {error.strerror or error}."
            ) from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise RunDirectoryError(
                f"The run directory {self.path} is not writable by this user: choose another "
                "--model_dir, or make it writable."
            )
        self._acquire()
        fingerprint = normalize(fingerprint)
        if overwrite:
            self._remove_run_files()
        record = self.record()
        if record is None:
            self._check_only_run_files()
            try:
                self._write_record({
                    "format": FORMAT_VERSION, "status": "training", "fingerprint": fingerprint,
                    "command": command, "started": _now(), "finished": None,
                })
            except DiskFullError:
                raise
            except OSError as error:
                raise RunDirectoryError(
                    f"Cannot write {self.run_file}: {error.strerror or error}."
                ) from None
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
            if not os.path.lexists(self.run_file):
                return None
            if os.path.islink(self.run_file):
                raise ValueError(f"{self.run_file} is a symbolic link, which a run never writes")
            record = read_json_record(self.run_file)
        except FileNotFoundError:
            return None
        except ValueError as error:
            raise RunDirectoryError(
                f"{error}: it is not a run record of this library. Delete the run with --overwrite "
                "or use a new --model_dir."
            ) from None
        status = record.get("status")
        if status not in ("training", "finished") or not isinstance(record.get("fingerprint"), dict):
            raise RunDirectoryError(
                f"{self.run_file} is not a run record of this library (status {status!r}, "
                "fingerprint missing or not an object). Delete the run with --overwrite or use a new "
                "--model_dir."
            )
        return record

    def _write_record(self, record):
        write_json(self.run_file, record)

    def _foreign_entries(self):
        """What is in the directory that no run writes: anything but the run's own files and
        folders (of the right kind: a link or a FIFO named `model.keras` is foreign), workers'
        folders and temporary files of this library's exact form."""
        foreign = []
        for entry in os.listdir(self.path):
            if entry in RUN_ENTRIES or WORKER_DIR.fullmatch(entry):
                mode = os.lstat(os.path.join(self.path, entry)).st_mode
                expected = stat.S_ISDIR if (entry in _DIRECTORY_ENTRIES
                                            or WORKER_DIR.fullmatch(entry)) else stat.S_ISREG
                if expected(mode):
                    continue
                foreign.append(f"{entry} ({files.file_kind(mode)})")
            elif not is_partial_name(entry, RUN_ENTRIES):
                foreign.append(entry)
        return sorted(foreign)

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
        metadata = read_json_record(metadata_path)
        if metadata.get("epoch") != epoch:
            raise ValueError(f"{metadata_path} says epoch {metadata.get('epoch')!r}")
        history, seconds, best = (metadata.get("history"), metadata.get("seconds_per_epoch"),
                                  metadata.get("best"))
        if not (isinstance(history, dict) and all(
                isinstance(key, str) and isinstance(values, list) and len(values) <= epoch
                and all(_is_number(v) for v in values) for key, values in history.items())):
            raise ValueError(f"{metadata_path}: `history` is not a list of at most {epoch} numbers per metric")
        if not (isinstance(seconds, list) and all(_is_number(v) for v in seconds)):
            raise ValueError(f"{metadata_path}: `seconds_per_epoch` is not a list of numbers")
        if best is not None and not (
                isinstance(best, dict) and isinstance(best.get("epoch"), int)
                and not isinstance(best.get("epoch"), bool) and 1 <= best["epoch"] <= epoch
                and isinstance(best.get("monitor"), str) and _is_number(best.get("value"))):
            raise ValueError(f"{metadata_path}: `best` is not an epoch record")
        if sha256(model_path) != metadata.get("model_sha256"):
            raise ValueError(f"{model_path} does not match the sha256 recorded with it")
        return TrainingState(epoch=epoch, model_path=model_path, history=history,
                             seconds_per_epoch=seconds, best=best)

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
                    if is_partial_name(entry, RUN_ENTRIES if directory == self.path else None):
                        _remove(os.path.join(directory, entry))

    # ----------------------------------------------------------------------------------------------
    # Finishing.

    def finish(self, summary):
        """Marks the run finished (it will not be resumed or overwritten), then drops backup/."""
        record = self.record() or {}
        record.update(status="finished", finished=_now(), summary=summary)
        self._write_record(record)
        shutil.rmtree(self.state_dir, ignore_errors=True)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
