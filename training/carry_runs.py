"""Carries training runs across machines whose disk does not last: into a folder git tracks, and back.

A recipe of many runs (zoo v2's CNN: 9 runs, about 12 core-hours) outlasts a work session on a small
CPU, and where each session starts from a fresh clone, everything under the git-ignored `runs/` is
lost with it, interrupted runs included. This program copies what a run needs to go on (or, once
finished, to be measured) into `carried_runs/` (tracked), and copies it back into `runs/`:

    python training/carry_runs.py save      # at the end of a session (pause or stop training first)
    git add carried_runs && git commit -m "..."
    python training/carry_runs.py restore   # at the start of the next one (make_zoo.py does it
                                            # itself before --resume, protocol and package)

What is carried, per run directory (one holding a run.json), under the same relative path:
  finished     run.json, metrics.json, preprocessing.json, model.keras, command.json (make_zoo's
               record), the `<run>.log` beside the directory where there is one
  interrupted  run.json, command.json (if any), the log, and from backup/ its newest complete state
               (checked against its sha256, as a resume checks it) and the best epoch's state where
               it is another one (`restore_best` needs it); train.py resumes from it
Nothing else (checkpoints/ links, TensorBoard logs): they are rebuilt or not needed.

Each carried run has a `carried.json` beside its files: the sha256 and size of each, and how far the
run got. `restore` copies a run back only where every file matches it, only into a run directory
that does not exist yet (a run already here is never touched: delete it to take the carried one),
and atomically (into a temporary folder renamed into place), so a kill leaves no half-restored run.
`save` never replaces a carried run with one that got less far (a fresh run started before
`restore` cannot overwrite a day of training), and writes each run atomically too.

The paths come from the files, so both directions refuse what would reach outside their folders:
names other than the ones above, `..`, absolute paths, symbolic links and anything but regular
files and folders.
"""

import os
import re
import shutil
import sys
from pathlib import Path

from absl import app, flags

from glonet_keras.training import rundir

REPO = Path(__file__).resolve().parent.parent
RECORD = "carried.json"
FORMAT = 1
# The files of a run directory that are carried (the backup states are matched by STATE below).
RUN_FILES = ("run.json", "metrics.json", "preprocessing.json", "model.keras", "command.json")
STATE = re.compile(r"backup/epoch_(\d{4,})\.(json|keras)")
# A run's log lies beside its directory (`seed_0/` and `seed_0.log`): carried as `../<name>.log`.
LOG = "../{name}.log"
# Run directories are found at most this deep below the folder (runs/zoo/<recipe>/<arm>/seed_N).
MAX_DEPTH = 6
# A path part: what make_zoo and depth_sweep name their folders (no separators, no leading dot).
PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]*")
_COPY_CHUNK = 1 << 20


class CarryError(ValueError):
    """A carried run (or a run to carry) that is not what this program writes."""


# --------------------------------------------------------------------------------------------------
# Reading what is there.


def _relative(path):
    """`path` (a relative string with '/') checked: only PART names, no '.', '..' or empty parts."""
    parts = path.split("/")
    if not parts or any(not PART.fullmatch(part) or part in (".", "..") for part in parts):
        raise CarryError(f"{path!r} is not a run path this program writes (names of letters, "
                         "digits and _.+=- only, no '..')")
    return path


def _under(folder, relative):
    """`folder/relative`, refused (CarryError) where `relative` is not a run path this program
    writes or where any folder on the way below `folder` is a symbolic link (which would carry
    files from, or write them to, somewhere else)."""
    path = Path(folder)
    for part in _relative(relative).split("/"):
        path = path / part
        if path.is_symlink():
            raise CarryError(f"{path} is a symbolic link; runs are carried only within "
                             f"{folder}")
    return path


def find_runs(folder, marker):
    """The run directories below `folder` (relative paths, sorted): folders holding a regular
    file `marker` (run.json, or carried.json in the carried folder). Symbolic links are not
    followed and hidden or oddly named folders are skipped; at most MAX_DEPTH deep."""
    folder = Path(folder)
    found = []

    def walk(directory, depth):
        marked = directory / marker
        if marked.is_file() and not marked.is_symlink():
            found.append(directory.relative_to(folder).as_posix())
            return
        if depth == MAX_DEPTH:
            return
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False) and PART.fullmatch(entry.name):
                walk(Path(entry.path), depth + 1)

    if folder.is_dir():
        walk(folder, 0)
    return [path for path in found if path != "."]


def progress(run_path):
    """How far the run in `run_path` got: ("finished", epochs) or ("training", its last complete
    epoch, 0 for none). Raises CarryError for a directory that holds no readable run."""
    status, epoch, _ = _files_to_carry(run_path, Path(run_path).name)
    return status, epoch


def _rank(status, epoch):
    return (status == "finished", epoch)


def _files_to_carry(run_path, name):
    """`(status, epoch, paths)`: how far the run in `run_path` got, and the paths (relative to its
    directory) of the files to carry for it."""
    run_path = Path(run_path)
    run = rundir.RunDirectory(run_path)
    try:
        record = run.record()
    except rundir.RunDirectoryError as error:
        raise CarryError(str(error)) from None
    if record is None:
        raise CarryError(f"{run_path} holds no run.json")
    chosen = [entry for entry in RUN_FILES if (run_path / entry).is_file()
              and not (run_path / entry).is_symlink()]
    if record["status"] == "finished":
        missing = [entry for entry in ("metrics.json", "preprocessing.json", "model.keras")
                   if entry not in chosen]
        if missing:
            raise CarryError(f"{run_path} is marked finished but lacks {missing}")
        try:
            epoch = rundir.read_json_record(run_path / "metrics.json")["epochs"]
        except (FileNotFoundError, ValueError, KeyError) as error:
            raise CarryError(f"{run_path / 'metrics.json'}: {error}") from None
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise CarryError(f"{run_path / 'metrics.json'}: `epochs` is not a number")
        status = "finished"
    else:
        chosen = [entry for entry in chosen if entry in ("run.json", "command.json")]
        state = run.latest_state()
        status, epoch = "training", state.epoch if state else 0
        epochs = {state.epoch} if state else set()
        if state and state.best and state.best["epoch"] != state.epoch:
            try:
                run.state_model(state.best["epoch"])
                epochs.add(state.best["epoch"])
            except (OSError, ValueError, KeyError, TypeError):
                pass  # Already dropped or damaged: a resume does without it, as here.
        for kept in sorted(epochs):
            chosen += [f"backup/epoch_{kept:04d}.keras", f"backup/epoch_{kept:04d}.json"]
    log = run_path.parent / f"{name}.log"
    if log.is_file() and not log.is_symlink():
        chosen.append(LOG.format(name=name))
    return status, epoch, chosen


def read_record(carried_path):
    """A carried run's carried.json, checked: its file names are ones this program writes."""
    try:
        record = rundir.read_json_record(Path(carried_path) / RECORD)
    except (FileNotFoundError, ValueError) as error:
        raise CarryError(f"{Path(carried_path) / RECORD}: {error}") from None
    entries = record.get("files")
    if (record.get("format") != FORMAT or record.get("status") not in ("finished", "training")
            or not isinstance(record.get("epoch"), int) or not isinstance(entries, dict)
            or "run.json" not in entries):
        raise CarryError(f"{Path(carried_path) / RECORD} is not a record of this program (format "
                         f"{FORMAT}, status, epoch and files with run.json)")
    name = Path(carried_path).name
    for entry, facts in entries.items():
        if not (entry in RUN_FILES or STATE.fullmatch(entry) or entry == LOG.format(name=name)):
            raise CarryError(f"{Path(carried_path) / RECORD} names {entry!r}, not a file this "
                             "program carries")
        if not (isinstance(facts, dict) and isinstance(facts.get("sha256"), str)
                and isinstance(facts.get("bytes"), int)):
            raise CarryError(f"{Path(carried_path) / RECORD}: {entry!r} has no sha256 and size")
    return record


def _check_files(carried_path, record):
    """Raises CarryError unless every file of `record` is in `carried_path`, regular, and matches."""
    for entry, facts in record["files"].items():
        path = Path(carried_path) / entry
        if entry.startswith("../"):
            path = Path(carried_path).parent / entry[3:]
        if path.is_symlink() or not path.is_file():
            raise CarryError(f"{path} is missing or not a regular file")
        if path.stat().st_size != facts["bytes"] or rundir.sha256(path) != facts["sha256"]:
            raise CarryError(f"{path} does not match the sha256 and size in {RECORD} (damaged or "
                             "edited); the run is not restored")


# --------------------------------------------------------------------------------------------------
# Copying.


def _copy(source, target):
    """Copies a regular file (never through a link, never blocking on a FIFO) and fsyncs it."""
    with rundir.open_regular(source) as reader, open(target, "xb") as writer:
        shutil.copyfileobj(reader, writer, _COPY_CHUNK)
        writer.flush()
        os.fsync(writer.fileno())


def _copy_run(entries, source, target, *, before_install=None, keep_logs=False):
    """Copies the files `entries` of the run in `source` (its log as `../<name>.log`) to `target`.

    They are staged beside `target` under temporary names and renamed into place once all are
    copied (an older `target` is replaced, and removed only after), so a failure or a kill leaves
    the old run or the new one, never part of one; a leftover temporary is removed by the next
    call. `before_install(staging, copied)` may check the copies, `copied` being {entry: {"sha256",
    "bytes"}}, and add files to `staging`. With `keep_logs`, a log already at `target` is kept.
    Returns `copied`.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for entry in os.listdir(target.parent):  # Left by a killed call.
        if rundir.is_partial_name(entry):
            leftover = target.parent / entry
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
    staging = target.parent / rundir.partial_name(target.name)
    logs, copied = [], {}
    try:
        for entry in entries:
            if entry.startswith("../"):
                final = target.parent / entry[3:]
                if keep_logs and (final.exists() or final.is_symlink()):
                    continue
                copy_to = target.parent / rundir.partial_name(entry[3:])
                logs.append((copy_to, final))
                from_path = source.parent / entry[3:]
            else:
                copy_to, from_path = staging / entry, source / entry
            copy_to.parent.mkdir(parents=True, exist_ok=True)
            _copy(from_path, copy_to)
            copied[entry] = {"sha256": rundir.sha256(copy_to), "bytes": copy_to.stat().st_size}
        if before_install is not None:
            before_install(staging, copied)
        old = None
        if target.exists():
            old = target.parent / rundir.partial_name(target.name)
            os.rename(target, old)
        os.rename(staging, target)
        for staged, final in logs:
            os.replace(staged, final)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
        for staged, _ in logs:
            if staged.exists():
                staged.unlink()
    return copied


def save_run(runs_dir, carried_dir, relative):
    """Carries the run `runs_dir/relative` into `carried_dir/relative`; returns what it did."""
    source, target = _under(runs_dir, relative), _under(carried_dir, relative)
    for attempt in range(3):  # A run training now may drop a state between choosing and copying.
        status, epoch, chosen = _files_to_carry(source, source.name)
        if target.exists():
            try:
                old = read_record(target)
            except CarryError:
                old = None
            if old is not None and _rank(old["status"], old["epoch"]) > _rank(status, epoch):
                return (f"kept the carried {relative} ({describe(old['status'], old['epoch'])}): "
                        f"the run here got less far ({describe(status, epoch)}); restore first")
            if old is not None and _rank(old["status"], old["epoch"]) == _rank(status, epoch):
                try:
                    _check_files(target, old)
                    return f"{relative}: already carried ({describe(status, epoch)})"
                except CarryError:
                    pass  # Damaged: carried again below.

        def check_and_record(staging, copied):
            for entry in copied:  # The states copied must be the ones their records describe.
                match = STATE.fullmatch(entry)
                if match and match.group(2) == "json":
                    state = rundir.read_json_record(staging / entry)
                    if state.get("model_sha256") != copied[entry[:-len("json")] + "keras"]["sha256"]:
                        raise FileNotFoundError(f"{entry} changed while it was copied")
            rundir.write_json(staging / RECORD, {
                "format": FORMAT, "status": status, "epoch": epoch, "files": copied})

        try:
            copied = _copy_run(chosen, source, target, before_install=check_and_record)
            return f"{relative}: carried ({describe(status, epoch)}, {len(copied)} files)"
        except FileNotFoundError:
            if attempt == 2:
                raise CarryError(f"{source} kept changing while it was copied: pause its training "
                                 "(kill -STOP) and save again") from None


def restore_run(carried_dir, runs_dir, relative):
    """Copies the carried run `carried_dir/relative` into `runs_dir/relative` when no run is there."""
    source, target = _under(carried_dir, relative), _under(runs_dir, relative)
    record = read_record(source)
    if target.exists():
        try:
            here = describe(*progress(target))
        except CarryError:
            here = "not a readable run"
        return (f"left {relative} as it is ({here}; carried: "
                f"{describe(record['status'], record['epoch'])}): delete it to take the carried one")
    _check_files(source, record)
    _copy_run(list(record["files"]), source, target, keep_logs=True)  # A log here is newer.
    return f"{relative}: restored ({describe(record['status'], record['epoch'])})"


def describe(status, epoch):
    return f"finished, {epoch} epochs" if status == "finished" else f"{epoch} epochs saved"


def _selected(paths, only):
    if not only:
        return paths
    return [path for path in paths if any(path == prefix or path.startswith(prefix.rstrip("/") + "/")
                                          for prefix in only)]


def _each(runs, carry, failed, log):
    """Calls `carry(relative)` for each run, logging what it did; a run that fails is logged as
    `<relative>: <failed>: <why>` and the others go on. Returns the number of failures."""
    failures = 0
    for relative in runs:
        try:
            log(carry(relative))
        except (CarryError, OSError) as error:
            failures += 1
            log(f"{relative}: {failed}: {error}")
    return failures


# make_zoo --steps=protocol writes it (under this name) beside a recipe's runs once it has read
# their test split.
PROTOCOL = "protocol.json"


def save(runs_dir, carried_dir, only=(), log=print):
    """Carries every run below `runs_dir` (or those under the `only` prefixes); returns failures.

    Without `only`, a run of a recipe whose protocol was read (`<recipe>/protocol.json`) is
    skipped and logged: its preset is published and its runs are done, so carrying them again would
    only add megabytes to git each session. `only` naming it carries it all the same."""
    runs = _selected(find_runs(runs_dir, "run.json"), only)
    if not only:
        done = {relative for relative in runs
                if (Path(runs_dir) / relative.split("/")[0] / PROTOCOL).is_file()}
        for relative in sorted(done):
            log(f"{relative}: skipped (its recipe's {PROTOCOL} says it is measured; "
                f"--only={relative} carries it)")
        runs = [relative for relative in runs if relative not in done]
    return _each(runs, lambda relative: save_run(runs_dir, carried_dir, relative),
                 "NOT carried", log)


def restore(carried_dir, runs_dir, only=(), log=print):
    """Restores every carried run (or those under `only`) that is not here yet; returns failures."""
    return _each(_selected(find_runs(carried_dir, RECORD), only),
                 lambda relative: restore_run(carried_dir, runs_dir, relative), "NOT restored", log)


def define_flags():
    flags.DEFINE_string("runs_dir", str(REPO / "runs" / "zoo"), "Where the runs train.")
    flags.DEFINE_string("carried_dir", str(REPO / "carried_runs" / "zoo"),
                        "The folder git tracks that carries them.")
    flags.DEFINE_list("only", [], "Only runs under these relative paths (e.g. a recipe's name).")


def main(argv):
    if len(argv) != 2 or argv[1] not in ("save", "restore"):
        raise app.UsageError("usage: carry_runs.py save|restore [--runs_dir] [--carried_dir] [--only]")
    options = flags.FLAGS
    if argv[1] == "save":
        failures = save(options.runs_dir, options.carried_dir, options.only)
    else:
        failures = restore(options.carried_dir, options.runs_dir, options.only)
    if failures:
        sys.exit(f"{failures} run(s) failed; see above")


if __name__ == "__main__":
    define_flags()
    app.run(main)
