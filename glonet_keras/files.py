"""Opening a file someone else named, safely: only regular files, and never a blocking open.

A plain `open()` of a FIFO waits forever for a writer, a device may never end, and a socket
cannot be opened at all. The data sets (`data`), the run directory (`rundir`) and the presets
(`presets`) all open paths that a user or a file chose, so they share these functions; the
exporters share `check_output_path` for the paths they write.
"""

import contextlib
import os
import stat


def file_kind(mode):
    """What a stat mode is, in words ("a FIFO", "a directory", ...)."""
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISREG, "a regular file")):
        if test(mode):
            return kind
    return "a special file"


@contextlib.contextmanager
def open_regular(path, mode="rb", *, refuse):
    """Opens `path` (a link to a regular file is fine) only if it is a regular file; never blocks.

    The kind is judged before opening (sockets cannot be opened) and again on the open
    descriptor (the path may have been swapped since). Anything else raises `refuse(path, kind)`,
    the caller's exception naming the file and what it is; a missing file or a link loop is the
    OSError `open` gives.

    Args:
        mode: "rb" or "r" (text, with universal newlines left to the reader: newline="").
        refuse: `(path, kind) -> Exception`.
    """
    kind = os.stat(path).st_mode
    if not stat.S_ISREG(kind):
        raise refuse(path, file_kind(kind))
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        kind = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(kind):
            raise refuse(path, file_kind(kind))
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)
        handle = os.fdopen(descriptor, mode, **({} if "b" in mode else {"newline": ""}))
    except BaseException:
        os.close(descriptor)
        raise
    with handle:
        yield handle


def check_output_path(path, *, folder, overwrite, hint):
    """Raises unless `path` may be written: never through a symbolic link, never over the other
    kind (a file where a folder goes, or the reverse), and over an existing one only with
    `overwrite` (else FileExistsError ending in `hint`, what to do instead)."""
    if os.path.islink(path):
        raise ValueError(f"{path} is a symbolic link: refusing to write through it.")
    if os.path.lexists(path):
        if not (os.path.isdir(path) if folder else os.path.isfile(path)):
            raise ValueError(f"{path} exists and is not a {'folder' if folder else 'file'}.")
        if not overwrite:
            raise FileExistsError(f"{path} exists: {hint}.")

