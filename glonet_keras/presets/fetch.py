"""Where preset files come from and where they are cached: origins, the cache, and a verified download.

Why not `keras.utils.get_file` (the well-kept library that would serve): measured against Keras
3.15's source, it downloads with `urllib.request.urlretrieve`, which has no read timeout or overall
deadline (a stalled server hangs the process), no size cap (a hostile server fills the disk), writes
straight to the final cache path (a concurrent loader can read a half-written file; there is no
lock), and leaves a file that fails its hash check in the cache. Every one of those is a guarantee that
tests/test_presets_hostile.py checks, so this module keeps its own small download: a per-file lock,
a watchdog deadline, a size cap, Content-Length and sha256 checks, and an atomic `os.replace` into
the cache."""

import contextlib
import hashlib
import http.client
import os
from pathlib import Path
import re
import socket
import stat
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

try:
    import fcntl
except ImportError:  # Windows: fall back to an O_EXCL lock file.
    fcntl = None

from glonet_keras import files
from glonet_keras.presets.registry import (
    PRESET_FILES, PresetDownloadError, PresetError, check_name, get_variant,
)

ORIGIN_ENV = "GLONET_KERAS_ORIGIN"
CACHE_ENV = "GLONET_KERAS_CACHE"

DOWNLOAD_DEADLINE_S = 600.0  # for one whole file, headers included
READ_TIMEOUT_S = 60.0  # for any single network operation
MAX_DOWNLOAD_BYTES = 256 * 2**20  # for a file whose size no registry records
MAX_JSON_BYTES = 8 * 2**20
LOCK_TIMEOUT_S = 600.0
_CHUNK = 1 << 16
_URL_SCHEMES = ("http", "https", "file")


# --------------------------------------------------------------------------------------------
# Origins, cache, verified download.


def shipped_zoo_dir():
    """The presets shipped with the library: package data in a wheel, `zoo/` in a source checkout.

    Returns None when there are none (a wheel built without them).
    """
    package = Path(__file__).resolve().parent.parent  # glonet_keras/
    if (package / "zoo").is_dir():
        return package / "zoo"
    checkout = package.parent
    if (checkout / "setup.cfg").is_file() and (checkout / "zoo").is_dir():
        return checkout / "zoo"
    return None


def resolve_origin(origin=None):
    """The URL that pretrained files are fetched from (see the module docstring for the order).

    Raises:
        PresetError: no origin given or set in `GLONET_KERAS_ORIGIN`, and no shipped zoo.
    """
    if origin is None:
        origin = os.environ.get(ORIGIN_ENV) or None
    if origin is None:
        origin = shipped_zoo_dir()
    if origin is None:
        raise PresetError(
            f"No origin for pretrained files: this installation ships no presets and {ORIGIN_ENV} "
            f"is not set. Set {ORIGIN_ENV} (or pass origin=) to a URL or directory laid out as "
            "<origin>/<preset name>/<file>, e.g. a copy of the repository's zoo/ folder."
        )
    return _as_url(os.fspath(origin)).rstrip("/")


def resolve_cache_dir(cache_dir=None):
    """The cache directory: argument, `GLONET_KERAS_CACHE`, `$KERAS_HOME/glonet_keras`, ~/.keras."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or None
    if cache_dir is None:
        keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
        cache_dir = os.path.join(keras_home, "glonet_keras")
    return Path(cache_dir).expanduser()


def _is_url(location):
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", location))


def _as_url(location):
    if _is_url(location):
        return location
    return Path(location).expanduser().resolve().as_uri()


def sha256_of(path, what=None):
    """The sha256 of a regular file; a link, FIFO, device or directory raises PresetError."""
    digest = hashlib.sha256()
    with _open_regular(path, what or "sha256") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _open_regular(path, what, follow_links=False):
    """Opens `path` for reading only if it is a regular file; never blocks on a FIFO or device."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    if not follow_links:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        handle = os.open(path, flags)
    except FileNotFoundError:
        raise PresetError(f"{what}: {path} does not exist.") from None
    except OSError as error:
        if os.path.islink(path):
            raise PresetError(
                f"{what}: {path} is a symbolic link; a preset's files must be regular files."
            ) from None
        raise PresetError(f"{what}: cannot open {path}: {error.strerror}.") from None
    mode = os.fstat(handle).st_mode
    if not stat.S_ISREG(mode):
        os.close(handle)
        raise PresetError(f"{what}: {path} is {files.file_kind(mode)}, not a regular file.")
    with os.fdopen(handle, "rb") as stream:
        yield stream


def fetch_preset(name, *, cache_dir=None, origin=None, files=PRESET_FILES):
    """Makes sure the verified files of pretrained variant `name` are cached; returns their folder.

    Args:
        name: a pretrained variant.
        cache_dir, origin: see the module docstring.
        files: which of its files to fetch (default: config, weights, metadata).
    """
    variant = get_variant(name)
    if not variant.pretrained:
        raise PresetError(f"{name!r} has no pretrained weights to fetch.")
    base = resolve_origin(origin)
    directory = _cache_folder(resolve_cache_dir(cache_dir), name)
    for file_name in files:
        record = variant.files[file_name]
        url = f"{base}/{urllib.parse.quote(name)}/{urllib.parse.quote(file_name)}"
        try:
            fetch_file(url, directory / file_name, record.sha256, max_bytes=record.size)
        except PresetDownloadError as error:
            raise PresetDownloadError(
                f"{error} (origin {base}; choose another with origin= or {ORIGIN_ENV})"
            ) from None
    return directory


def _cache_folder(root, *parts):
    """`root/parts...`, created if needed; every part one plain name, no part a symbolic link."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root
    for part in parts:
        check_name(part, "A cache folder name")
        path = path / part
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)
        mode = os.lstat(path).st_mode
        if not stat.S_ISDIR(mode):
            raise PresetDownloadError(
                f"The cache folder {path} is {files.file_kind(mode)}: refusing to write through it. "
                "Remove it and try again."
            )
    real_root = os.path.realpath(root)
    if os.path.commonpath([os.path.realpath(path), real_root]) != real_root:
        raise PresetDownloadError(f"The cache folder {path} resolves outside the cache {root}.")
    return path


def fetch_file(url, destination, sha256=None, *, max_bytes=None, deadline_s=None,
               timeout=None, lock_timeout=None, validate=None):
    """Returns `destination`, downloading `url` there first unless a verified copy is cached.

    A cached copy is used only when its sha256 matches `sha256`: with `sha256=None` (a URL preset's
    metadata.json, which records the others' hashes) the file is fetched every time. A download
    goes to a temporary file next to `destination` and is moved into place only once complete,
    within `max_bytes`, matching the Content-Length and the sha256, and accepted by `validate`
    (a function of the temporary path that raises on bad content). On any failure the temporary
    file is removed and a `PresetDownloadError` names the file and the URL. A lock file
    serialises processes fetching the same file; it is released on every failure.

    Args:
        url: `http(s)://` or `file://`.
        destination: the cached file; neither it nor its lock may be a symbolic link.
        sha256: the expected digest, or None.
        max_bytes: size cap, checked against the Content-Length before writing and while
            streaming (default `MAX_DOWNLOAD_BYTES`).
        deadline_s: overall time limit for the file, headers included (`DOWNLOAD_DEADLINE_S`).
        timeout: limit for any single network operation (`READ_TIMEOUT_S`).
        lock_timeout: how long to wait for another process's download (`LOCK_TIMEOUT_S`).
        validate: optional check of the downloaded content.
    """
    destination = Path(destination)
    if _is_valid(destination, sha256):
        return destination
    lock = destination.with_name(destination.name + ".lock")
    with _file_lock(lock, LOCK_TIMEOUT_S if lock_timeout is None else lock_timeout):
        if _is_valid(destination, sha256):  # Another process fetched it while we waited.
            return destination
        _remove_stale_partials(destination)
        _download(
            url, destination, sha256,
            max_bytes=MAX_DOWNLOAD_BYTES if max_bytes is None else max_bytes,
            deadline_s=DOWNLOAD_DEADLINE_S if deadline_s is None else deadline_s,
            timeout=READ_TIMEOUT_S if timeout is None else timeout,
            validate=validate,
        )
    return destination


def _is_valid(path, sha256):
    """Whether the cached `path` is a regular file with digest `sha256` (never for None)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(mode):
        raise PresetDownloadError(
            f"The cached file {path} is {files.file_kind(mode)}: refusing to read or replace it. "
            "Remove it and try again."
        )
    return sha256 is not None and sha256_of(path) == sha256


def _partial_pattern(destination):
    # tempfile.mkstemp's names in _stream_to_cache: the prefix, 8 random characters, the suffix.
    return re.compile(re.escape(f".{destination.name}.") + r"[a-z0-9_]{8}\.part")


def _remove_stale_partials(destination):
    """Removes the temporary files that downloads of `destination` left behind when killed.

    Called under the file's lock, so no live download of this file is writing one. Only regular
    files named exactly as `_stream_to_cache` names them are removed (a link, even one with such a
    name, is left alone and never followed), and only in the cache folder itself.
    """
    pattern = _partial_pattern(destination)
    with os.scandir(destination.parent) as entries:
        for entry in entries:
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


class _Watchdog:
    """Shuts every socket of one download at its deadline, so no slow peer can outlast it."""

    def __init__(self, seconds):
        self.expired = False
        self._sockets = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock):
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self):
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def cancel(self):
        self._timer.cancel()


def _shut(sock):
    # The plain socket's shutdown, also for an SSL socket: it wakes a blocked read at once.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _watched(connection_class, watchdog):
    class Watched(connection_class):
        def connect(self):
            super().connect()
            watchdog.watch(self.sock)

    return Watched


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watchdog):
        super().__init__()
        self._connection = _watched(http.client.HTTPConnection, watchdog)

    def http_open(self, request):
        return self.do_open(self._connection, request)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watchdog):
        super().__init__()
        self._connection = _watched(http.client.HTTPSConnection, watchdog)

    def https_open(self, request):
        return self.do_open(self._connection, request, context=self._context)


def _opener(watchdog):
    """http(s) only, redirects included: no ftp:, file: or data: handler a redirect could reach."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), _HTTPHandler(watchdog), _HTTPSHandler(watchdog),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPRedirectHandler(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


@contextlib.contextmanager
def _open_source(url, what, watchdog, timeout):
    """Yields `(read, content_length)` for an http(s) or file URL."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in _URL_SCHEMES:
        raise PresetDownloadError(f"Cannot download {what}: only {list(_URL_SCHEMES)} URLs are "
                                  "allowed.")
    if scheme == "file":
        with _open_file_url(url, what) as (stream, size):
            yield stream.read, size
        return
    try:
        response = _opener(watchdog).open(url, timeout=timeout)
    except urllib.error.HTTPError as error:
        raise PresetDownloadError(
            f"Could not download {what}: HTTP {error.code} {error.reason}."
        ) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        if watchdog.expired:
            raise _deadline_error(what, 0) from None
        reason = getattr(error, "reason", None) or error
        raise PresetDownloadError(f"Could not download {what}: {reason}.") from None
    with response:
        yield response.read1, _content_length(response.headers.get("Content-Length"), what)


@contextlib.contextmanager
def _open_file_url(url, what):
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise PresetDownloadError(f"Cannot download {what}: a file URL must name a local path.")
    path = urllib.request.url2pathname(parts.path)
    try:
        # The origin side may use links (a mirror folder), but must end at a regular file.
        with _open_regular(path, f"Cannot download {what}", follow_links=True) as stream:
            yield stream, os.fstat(stream.fileno()).st_size
    except PresetError as error:
        raise PresetDownloadError(str(error)) from None


def _content_length(value, what):
    if value is None:
        return None
    if not re.fullmatch(r"\s*[0-9]{1,20}\s*", value):
        raise PresetDownloadError(
            f"Could not download {what}: the server sent a malformed Content-Length {value!r}."
        )
    return int(value)


def _deadline_error(what, received):
    return PresetDownloadError(
        f"Download of {what} did not finish within its deadline (received {received} bytes); "
        "nothing was cached. Raise glonet_keras.presets.DOWNLOAD_DEADLINE_S for a slow link."
    )


def _download(url, destination, sha256, *, max_bytes, deadline_s, timeout, validate):
    what = f"{destination.name!r} from {url}"
    deadline = time.monotonic() + deadline_s
    watchdog = _Watchdog(deadline_s)
    try:
        with _open_source(url, what, watchdog, min(timeout, deadline_s)) as (read, length):
            if length is not None and length > max_bytes:
                raise PresetDownloadError(
                    f"Refusing {what}: its Content-Length ({length} bytes) exceeds the limit of "
                    f"{max_bytes} bytes; nothing was written."
                )
            _stream_to_cache(read, length, destination, sha256, what, max_bytes, deadline,
                             watchdog, validate)
    finally:
        watchdog.cancel()


def _stream_to_cache(read, length, destination, sha256, what, max_bytes, deadline, watchdog,
                     validate):
    handle, temporary = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
    )
    try:
        digest = hashlib.sha256()
        received = 0
        with os.fdopen(handle, "wb") as stream:
            while True:
                if time.monotonic() > deadline:
                    raise _deadline_error(what, received)
                try:
                    chunk = read(_CHUNK)
                except (http.client.HTTPException, OSError, ValueError) as error:
                    if watchdog.expired:
                        raise _deadline_error(what, received) from None
                    raise PresetDownloadError(
                        f"Download of {what} broke off after {received} bytes "
                        f"({type(error).__name__}); nothing was cached, try again."
                    ) from None
                if not chunk:
                    break
                received += len(chunk)
                if received > max_bytes:
                    raise PresetDownloadError(
                        f"Refusing {what}: it exceeds the limit of {max_bytes} bytes; nothing was "
                        "cached."
                    )
                digest.update(chunk)
                stream.write(chunk)
        if watchdog.expired:  # The shut socket read as a clean end of file.
            raise _deadline_error(what, received)
        if length is not None and received != length:
            raise PresetDownloadError(
                f"Download of {what} is truncated: received {received} of {length} bytes; "
                "nothing was cached, try again."
            )
        if sha256 is not None and digest.hexdigest() != sha256:
            raise PresetDownloadError(
                f"sha256 mismatch for {what}: expected {sha256}, received {digest.hexdigest()} "
                f"({received} bytes). The file is corrupt or the origin serves another version; "
                "nothing was cached."
            )
        if validate is not None:
            try:
                validate(Path(temporary))
            except PresetError as error:
                raise PresetDownloadError(f"Refusing {what}: {error} Nothing was cached.") from None
        os.replace(temporary, destination)  # Replaces a link itself, never writes through it.
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def _file_lock(path, timeout):
    """An exclusive inter-process lock on `path` (removed on release), waiting up to `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        handle = _try_lock(path)
        if handle is not None:
            break
        if time.monotonic() > deadline:
            raise PresetDownloadError(
                f"Timed out after {timeout:.0f} s waiting for the lock {path}: another process is "
                "fetching this file (remove the lock file if no such process is running)."
            )
        time.sleep(0.05)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(handle)


def _open_lock_file(path, flags):
    try:
        return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileExistsError:
        raise
    except OSError as error:
        if os.path.islink(path):
            raise PresetDownloadError(
                f"The lock file {path} is a symbolic link: refusing to follow it. Remove it and "
                "try again."
            ) from None
        raise PresetDownloadError(f"Cannot create the lock file {path}: {error.strerror}.") from None


def _try_lock(path):
    if fcntl is None:
        try:
            return _open_lock_file(path, os.O_CREAT | os.O_EXCL | os.O_RDWR)
        except FileExistsError:
            return None
    handle = _open_lock_file(path, os.O_CREAT | os.O_RDWR)
    if not stat.S_ISREG(os.fstat(handle).st_mode):
        os.close(handle)
        raise PresetDownloadError(f"The lock file {path} is not a regular file; remove it.")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        return None
    # The previous holder unlinks the path on release: if it did so after we opened it, we hold a
    # lock on a file nobody else will see, so start over on the current one.
    try:
        current = os.lstat(path).st_ino
    except FileNotFoundError:
        current = None
    if current != os.fstat(handle).st_ino:
        os.close(handle)
        return None
    return handle
