"""The model registry and pretrained presets: `list_models`, `create_model`, `from_preset`.

A *variant* is one registered name (timm style). A pretrained variant is only what is needed to find
and verify its preset: the name, a description, and the sha256 and size of each file. Its
architecture lives in the preset's `config.json` and nowhere else. An architecture-only variant
(`glonet_cnn20_cifar`, ...) has no files, so its class and constructor arguments are registered
with it, in Python at the end of this module. The pretrained registry is data:
`glonet_keras/zoo_registry.json`, written by `training/make_zoo.py` from `zoo/*/`.

A *preset* is a directory (keras-hub style), holding only these files:
    config.json         {"class_name": ..., "config": constructor arguments}
    model.weights.h5    the weights (HDF5; never a pickle)
    metadata.json       task, class names, preprocessing, data set and split, held-out metrics,
                        training command, versions, licence, sha256 of the other files
    README.md           the model card (optional)
    model.keras         instead of config.json + weights, a whole model (optional)

Where pretrained files come from (`resolve_origin`, the one place that decides it), first match wins:
  1. the `origin=` argument,
  2. the `GLONET_KERAS_ORIGIN` environment variable (a mirror URL, `file://...`, or a directory),
  3. the zoo shipped with the library: package data in a wheel, `zoo/` in a source checkout.
An origin holds one folder per preset: `<origin>/<preset name>/<file>`.

Where they are cached (`resolve_cache_dir`): the `cache_dir=` argument, else `GLONET_KERAS_CACHE`,
else `$KERAS_HOME/glonet_keras`, else `~/.keras/glonet_keras`. A cached file whose sha256 matches the
registry is used without touching the network; a file with no known sha256 is fetched every time.
A download is streamed into a temporary file in the cache folder under a per-file lock, bounded by
an overall deadline and a size cap, checked (Content-Length, size, sha256) and only then moved into
place with `os.replace`, so a failed download leaves nothing behind and concurrent loads are safe.

What the loader refuses (each with an error naming the preset and the file): file names outside the
list above, links and special files (FIFO, device, directory) where a file should be, preset and
cache names that are not one plain path component, a cache folder or file that is a symbolic link,
malformed JSON and weights, configs naming a class the library does not define, architectures
estimated over `MAX_PRESET_PARAMETERS` parameters or `MAX_PRESET_BLOCKS` unrolled blocks (refused
before anything is built), preprocessing records that float32 cannot hold or that do not fit the
model's input, class names that do not match its outputs, and any Keras older than `SAFE_KERAS`
(whose safe mode lets a weights or `.keras` file read local files). `.keras` files are loaded with
`safe_mode=True`, after their zip members' sizes (JSON at most 8 MiB) and their model config have
been checked. A `model.keras` in a run directory brings the `preprocessing.json` beside it.
A download killed outright (SIGKILL) leaves its temporary `.part` file behind; the next fetch of
the same file removes it, under the file's lock.
"""

import contextlib
import dataclasses
import difflib
import fnmatch
import hashlib
import http.client
import inspect
import json
import os
import platform
import re
import socket
import stat
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import keras

from glonet_keras import files, skeleton
from glonet_keras.preprocessing import Preprocessing

try:
    import fcntl
except ImportError:  # Windows: fall back to an O_EXCL lock file.
    fcntl = None

ORIGIN_ENV = "GLONET_KERAS_ORIGIN"
CACHE_ENV = "GLONET_KERAS_CACHE"

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
CARD_FILE = "README.md"
KERAS_FILE = "model.keras"
# The files `create_model(..., pretrained=True)` fetches; the model card is documentation only.
PRESET_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE)
# The only file names a preset may hold: nothing a metadata.json says can name another path.
ALLOWED_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE, CARD_FILE, KERAS_FILE)

# Keras releases whose safe mode refuses both an HDF5 external dataset in a weights file (fixed in
# 3.12.1 and 3.13.2, not in 3.13.0-3.13.1) and a file-backed StringLookup in a `.keras` (3.12.0).
# Measured on 3.10.0, 3.11.3 and every release from 3.12.0 to 3.15.1 with the two hostile files that
# tests/test_presets_hostile.py builds.
# setup.cfg's requirement must say the same.
SAFE_KERAS = ">=3.12.1,!=3.13.0,!=3.13.1"

DOWNLOAD_DEADLINE_S = 600.0  # for one whole file, headers included
READ_TIMEOUT_S = 60.0  # for any single network operation
MAX_DOWNLOAD_BYTES = 256 * 2**20  # for a file whose size no registry records
MAX_JSON_BYTES = 8 * 2**20
LOCK_TIMEOUT_S = 600.0
# The largest architecture a preset's config may describe, checked on an estimate before anything is
# built: 500 million parameters (2 GB of float32 weights; a ViT-L/16 has 304 million), and 1,024
# unrolled blocks (an unrolled depth-1,000 GloNet MLP takes about 4 minutes to build and compile on 2
# CPU cores; a scanned GloNetMLP builds in a second at any depth and is not counted).
MAX_PRESET_PARAMETERS = 500_000_000
MAX_PRESET_BLOCKS = 1024
# A .keras archive: its JSON members are read whole by Keras, so they get the JSON cap; the weights
# member may hold at most MAX_PRESET_PARAMETERS float32 values, plus room for HDF5's own records.
MAX_KERAS_JSON_BYTES = 8 * 2**20
MAX_KERAS_MEMBER_BYTES = 4 * MAX_PRESET_PARAMETERS + 64 * 2**20
MAX_KERAS_MEMBERS = 1000
_CHUNK = 1 << 16
_SHA256 = re.compile(r"[0-9a-f]{64}")
# One plain path component: it can never be "", "." or "..", or hold a separator.
_SAFE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,127}")
# A model name from a config.json: Keras' names, never a path (exporters name folders after it).
_SAFE_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_URL_SCHEMES = ("http", "https", "file")
_REGISTRY_FILE = Path(__file__).resolve().parent / "zoo_registry.json"


class PresetError(ValueError):
    """A preset that cannot be used: unknown name, bad config, files that do not match."""


class PresetDownloadError(OSError):
    """A preset file that could not be fetched or failed verification. Names the file and URL."""


# --------------------------------------------------------------------------------------------
# The registry.


@dataclasses.dataclass(frozen=True)
class PresetFile:
    """What the registry knows of one file of a pretrained preset."""

    sha256: str
    size: int = None  # bytes; caps the download when known


@dataclasses.dataclass(frozen=True)
class ModelVariant:
    """One registered variant: pretrained (`files`) or architecture-only (`class_name`, `config`)."""

    name: str
    description: str = ""
    files: dict = dataclasses.field(default_factory=dict)  # file name -> PresetFile
    class_name: str = None
    config: dict = None

    @property
    def pretrained(self):
        return bool(self.files)


_REGISTRY = {}


def register_model(name, class_name=None, config=None, *, files=None, description="",
                   overwrite=False):
    """Registers a variant and returns it.

    Args:
        name: one plain, lower-case path component (`[a-z0-9][a-z0-9_.-]*`): it names the cache
            folder and the origin folder of the preset.
        class_name, config: an architecture-only variant: the model class and its constructor
            arguments. A pretrained variant takes neither: its architecture is its config.json.
        files: a pretrained variant: `{file name: sha256}` or `{file name: {"sha256", "bytes"}}`
            for config.json, model.weights.h5 and metadata.json.
        description: one line for listings.
        overwrite: replace a variant of the same name.

    Raises:
        PresetError: a bad name, a duplicate, an unknown class, missing or malformed hashes.
        TypeError: a config argument the class does not take (naming the closest one).

    Example:
    >>> register_model("my_mlp", files={"config.json": "…", "model.weights.h5": "…",
    ...                                 "metadata.json": "…"}, description="My MLP.")
    """
    check_name(name, "A variant name")
    if name in _REGISTRY and not overwrite:
        raise PresetError(f"A variant named {name!r} is already registered.")
    if files:
        if class_name is not None or config is not None:
            raise PresetError(
                f"Pretrained variant {name!r}: give only `files`; its architecture is its "
                f"{CONFIG_FILE}."
            )
        variant = ModelVariant(name, description, files=_preset_files(name, files))
    else:
        if class_name is None or config is None:
            raise PresetError(
                f"Variant {name!r} needs either `files` (pretrained) or `class_name` and `config`."
            )
        _check_arguments(_model_class(class_name), config, f"variant {name!r}", TypeError)
        variant = ModelVariant(name, description, class_name=class_name, config=dict(config))
    _REGISTRY[name] = variant
    return variant


def check_name(name, what="A preset name"):
    """Returns `name` if it is one plain path component; raises PresetError otherwise."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise PresetError(
            f"{what} must be one plain path component matching [a-z0-9][a-z0-9_.-]*, "
            f"received {name!r}."
        )
    return name


def _preset_files(name, files):
    missing = sorted(set(PRESET_FILES) - set(files))
    if missing:
        raise PresetError(f"Pretrained variant {name!r} lacks the sha256 of {missing}.")
    return {file_name: _preset_file(name, file_name, record) for file_name, record in files.items()}


def _preset_file(name, file_name, record):
    """A registry entry's file: a sha256 string, or {"sha256": ..., "bytes": ...}."""
    _check_file_name(file_name, f"pretrained variant {name!r}")
    if not isinstance(record, dict):
        record = {"sha256": record}
    sha256, size = record.get("sha256"), record.get("bytes")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise PresetError(f"{name!r}: {file_name} has no valid sha256 ({record!r}).")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise PresetError(f"{name!r}: {file_name} has an invalid size ({size!r}).")
    return PresetFile(sha256, size)


def _check_file_name(file_name, what):
    if file_name not in ALLOWED_FILES:
        raise PresetError(
            f"{what} names the file {file_name!r}; a preset may only hold {list(ALLOWED_FILES)}."
        )


def list_models(pattern=None, pretrained=False):
    """Sorted names of the registered variants, optionally filtered by a glob (`"glonet_*digits"`).

    With `pretrained=True`, only the variants that have published weights.
    """
    names = [v.name for v in _REGISTRY.values() if v.pretrained or not pretrained]
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return sorted(names)


def get_variant(name):
    """The registered `ModelVariant` for `name`; an unknown name lists the closest known ones."""
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    known = sorted(_REGISTRY)
    closest = difflib.get_close_matches(str(name), known, n=5, cutoff=0.5)
    hint = f"Closest known names: {closest}." if closest else f"Known names: {known}."
    raise PresetError(
        f"Unknown model {name!r}. {hint} `glonet_keras.list_models()` lists them all."
    )


def create_model(name, pretrained=False, *, cache_dir=None, origin=None, **overrides):
    """Builds a registered variant, with its pretrained weights when `pretrained=True`.

    Args:
        name: a name from `list_models()`.
        pretrained: load the published weights (downloaded, verified and cached on first use).
            The same path as `GloNetModelBase.from_preset(name, **overrides)`.
        cache_dir, origin: override where files are cached and fetched from (see the module doc).
        **overrides: constructor arguments replacing the variant's (e.g. `num_classes=3`,
            `dropout=0.1`). With `pretrained=True`, a new `num_classes` gives a freshly initialised
            head on the pretrained body; every other override must keep every weight's shape.

    Returns:
        The model. A pretrained one carries `model.preprocessing` and `model.preset_metadata`.

    Raises:
        TypeError: an override the model class does not take (naming the closest one).
        PresetError: an unknown name, no pretrained weights, an override that changes a weight.
        PresetDownloadError: a file that cannot be fetched or verified.

    Example:
    >>> model = glonet_keras.create_model("glonet_mlp_digits", pretrained=True)
    >>> finetune = glonet_keras.create_model("glonet_mlp_digits", pretrained=True, num_classes=3)
    """
    variant = get_variant(name)
    if pretrained:
        if not variant.pretrained:
            raise PresetError(
                f"{name!r} has no pretrained weights. Pretrained variants: "
                f"{list_models(pretrained=True)}."
            )
        return from_preset(name, cache_dir=cache_dir, origin=origin, **overrides)
    if variant.pretrained:  # Its architecture is only in its config.json: fetch that one file.
        directory = fetch_preset(name, cache_dir=cache_dir, origin=origin, files=(CONFIG_FILE,))
        model_class, config = _read_config(directory, f"preset {name!r}")
    else:
        model_class, config = _model_class(variant.class_name), variant.config
    what = f"variant {name!r}"
    _check_arguments(model_class, overrides, what, TypeError)
    return _build(model_class, {**config, **overrides}, what)


def _check_arguments(model_class, arguments, what, error_class):
    """Raises `error_class` for an argument `model_class` does not take, naming the closest one.

    Another library's keyword (keras.applications' `weights=`, timm's `pretrained=`) gets advice
    on what to use here instead of the closest name (which would be `width` and `trainable`).
    """
    from glonet_keras.models.common import foreign_argument_advice

    valid = _constructor_arguments(model_class)
    for key in arguments:
        if key not in valid:
            advice = foreign_argument_advice(key, model_class, preset=True)
            closest = difflib.get_close_matches(str(key), sorted(valid), n=1, cutoff=0.4)
            if advice is not None:
                hint = f" {advice}."
            else:
                hint = f" Did you mean {closest[0]!r}?" if closest else ""
            raise error_class(
                f"{what}: {model_class.__name__} takes no argument {key!r}.{hint} "
                f"Valid arguments: {sorted(valid)}."
            )


def _constructor_arguments(model_class):
    parameters = inspect.signature(model_class.__init__).parameters.values()
    explicit = {
        p.name for p in parameters
        if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    # keras.Model's own keywords, which every saved config carries.
    return explicit | {"name", "trainable", "dtype"}


# --------------------------------------------------------------------------------------------
# Origins, cache, verified download.


def shipped_zoo_dir():
    """The presets shipped with the library: package data in a wheel, `zoo/` in a source checkout.

    Returns None when there are none (a wheel built without them).
    """
    package = Path(__file__).resolve().parent
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


# --------------------------------------------------------------------------------------------
# Loading and saving preset directories.


def _model_class(class_name):
    # Only the library's own classes: a config can never name an arbitrary (e.g. Lambda) layer.
    from glonet_keras.models import MODEL_CLASSES

    classes = {cls.__name__: cls for cls in MODEL_CLASSES.values()}
    if not isinstance(class_name, str) or class_name not in classes:
        raise PresetError(
            f"Unknown model class {class_name!r} in a preset. Allowed: {sorted(classes)}."
        )
    return classes[class_name]


def _build(model_class, config, what):
    try:
        return model_class.from_config(config)
    except (TypeError, ValueError) as error:
        raise PresetError(f"Cannot build {what} as {model_class.__name__}: {error}") from error


def _read_json(path, what):
    """Parses a preset's JSON file: a regular file of at most `MAX_JSON_BYTES`."""
    with _open_regular(path, what) as stream:
        text = stream.read(MAX_JSON_BYTES + 1)
    if len(text) > MAX_JSON_BYTES:
        raise PresetError(f"{what}: {path} is larger than {MAX_JSON_BYTES} bytes.")
    return _parse_json(text, what, path)


def _parse_json(text, what, path):
    try:
        return json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        # ValueError beyond JSONDecodeError: an integer of more than 4,300 digits (Python's limit).
        reason = "nested too deeply" if isinstance(error, RecursionError) else error
        raise PresetError(f"{what}: {path} is not valid JSON ({reason}).") from None


def _read_config(directory, what):
    """The model class and constructor arguments of a preset's config.json."""
    path = Path(directory) / CONFIG_FILE
    saved = _read_json(path, what)
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise PresetError(f"{what}: {path} must hold {{'class_name': ..., 'config': {{...}}}}.")
    try:
        model_class = _model_class(saved.get("class_name"))
    except PresetError as error:
        raise PresetError(f"{what}: {path}: {error}") from None
    _check_config(model_class, saved["config"], f"{what}: {path}")
    return model_class, saved["config"]


def _check_config(model_class, config, what):
    """A config.json's constructor arguments: known keys, a plain name, a bounded architecture."""
    _check_arguments(model_class, config, what, PresetError)
    name = config.get("name")
    if name is not None and not (isinstance(name, str) and _SAFE_MODEL_NAME.fullmatch(name)):
        raise PresetError(
            f"{what} names the model {_short(name)}; a model name is letters, digits, '_', '.' "
            "and '-', never a path."
        )
    check_architecture(model_class, config, what)


def _short(value):
    from glonet_keras.models.common import short_repr

    text = short_repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def check_architecture(model_class, config, what):
    """Refuses constructor arguments whose model would exceed `MAX_PRESET_PARAMETERS` parameters or
    `MAX_PRESET_BLOCKS` unrolled blocks, on an estimate computed before anything is built.

    Raises:
        PresetError: naming the arguments that set the size and their values.
    """
    size = model_class.estimate_size(config)
    fields = ", ".join(f"{key}={_short(config[key])}" for key in model_class.size_arguments
                       if key in config)
    parameters = size["parameters"]
    if parameters > MAX_PRESET_PARAMETERS:
        amount = (f"{parameters:,}" if parameters < 10**15
                  else f"about 10^{int(parameters.bit_length() * 0.30103)}")
        raise PresetError(
            f"{what} describes a {model_class.__name__} of {amount} parameters ({fields}), over "
            f"the limit of {MAX_PRESET_PARAMETERS:,} for a preset; nothing was built. "
            "Build a model that large in code, not from a preset file."
        )
    if size["unrolled"] and size["blocks"] > MAX_PRESET_BLOCKS:
        raise PresetError(
            f"{what} describes a {model_class.__name__} of {_short(size['blocks'])} blocks "
            f"({fields}), over the limit of {MAX_PRESET_BLOCKS} unrolled blocks for a preset; "
            "nothing was built. Build it in code (a GloNetMLP with scan=True builds at any depth)."
        )


def _read_metadata(directory, what):
    """A preset's metadata.json, checked; {} when the preset has none."""
    path = Path(directory) / METADATA_FILE
    if not os.path.lexists(path):
        return {}
    return check_metadata(_read_json(path, what), f"{what}: {path}")


def check_metadata(metadata, what):
    """Returns `metadata` if the fields the loader uses are well-formed; raises PresetError.

    `files` maps allowed file names (never a path) to sha256 digests; `preprocessing` is a
    `Preprocessing.to_dict()`; `class_names` a list of strings; `task` a string.
    """
    if not isinstance(metadata, dict):
        raise PresetError(f"{what} must hold a JSON object, not a {type(metadata).__name__}.")
    files = metadata.get("files", {})
    if not isinstance(files, dict):
        raise PresetError(f"{what}: 'files' must map file names to sha256, not a "
                          f"{type(files).__name__}.")
    for file_name, digest in files.items():
        if file_name == METADATA_FILE:
            raise PresetError(f"{what} lists its own sha256 under 'files'.")
        _check_file_name(file_name, what)
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise PresetError(f"{what}: the sha256 of {file_name} is malformed ({digest!r}).")
    if metadata.get("preprocessing") is not None:
        _preprocessing(metadata["preprocessing"], what)
    names = metadata.get("class_names")
    if names is not None and (not isinstance(names, list)
                              or not all(isinstance(n, str) for n in names)):
        raise PresetError(f"{what}: 'class_names' must be a list of strings.")
    if metadata.get("task") is not None and not isinstance(metadata["task"], str):
        raise PresetError(f"{what}: 'task' must be a string.")
    return metadata


def _preprocessing(record, what):
    try:
        return Preprocessing.from_dict(record)
    except (TypeError, ValueError) as error:
        raise PresetError(f"{what}: invalid 'preprocessing' ({error}).") from None


def _verify_files(directory, metadata, what):
    for file_name, digest in metadata.get("files", {}).items():
        path = Path(directory) / file_name
        if not os.path.lexists(path):
            continue  # The card may be left out; config and weights are required below.
        if sha256_of(path, what) != digest:
            raise PresetError(
                f"{what}: {path} does not match the sha256 recorded in its {METADATA_FILE} "
                f"({digest}): the preset was modified or corrupted."
            )


def require_safe_keras():
    """Raises PresetError under a Keras whose safe mode lets a saved file read local files."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    if Version(keras.__version__) not in SpecifierSet(SAFE_KERAS):
        raise PresetError(
            f"Keras {keras.__version__} can let a weights or .keras file read local files even in "
            f"safe mode; loading presets needs keras{SAFE_KERAS} (pip install -U keras)."
        )


def load_preset_directory(directory, expected_class=None, verify=True, *, source=None,
                          load_weights=True, **overrides):
    """Builds the model stored in a preset directory (or a `.keras` file) and loads its weights.

    Args:
        directory: a preset directory or a `.keras` file.
        expected_class: the class the preset must hold (None: any library class).
        verify: check every file whose sha256 metadata.json records.
        source: how the user named the preset (a name or URL), for messages and the record of a
            fine-tune; default the directory.
        load_weights: False builds the architecture only (a preset directory, not a .keras file).
        **overrides: constructor arguments replacing the config's (see `create_model`).

    Returns:
        The model, with `model.preset_metadata` (a dict) and `model.preprocessing` (a
        `Preprocessing`, or None when the preset records none). With overrides that change the
        config, the metadata says what the model was fine-tuned from and carries no metrics.
        A `model.keras` written by the trainer gets the `preprocessing.json` beside it (checked as
        a preset's record is).
    """
    require_safe_keras()
    path = Path(directory)
    source = source or str(path)
    what = f"preset {source!r}"
    if path.suffix == ".keras" and not path.is_dir():
        _check_load_weights(load_weights, what)
        # The path the user gave may be a link; only the files inside a preset folder may not.
        model = _load_keras_file(path, what, overrides, follow_links=True)
        _check_class(model, expected_class, what)
        return _attach_metadata(model, _run_metadata(path, what), {}, source)
    if not path.is_dir():
        raise PresetError(f"{what}: {path} is neither a preset directory nor a .keras file.")
    metadata = _read_metadata(path, what)
    if verify:
        _verify_files(path, metadata, what)
    if not os.path.lexists(path / CONFIG_FILE) and os.path.lexists(path / KERAS_FILE):
        _check_load_weights(load_weights, what)
        model = _load_keras_file(path / KERAS_FILE, what, overrides)
        _check_class(model, expected_class, what)
        return _attach_metadata(model, metadata, {}, source)
    model_class, config = _read_config(path, what)
    if expected_class is not None and not issubclass(model_class, expected_class):
        raise PresetError(
            f"The {what} holds a {model_class.__name__}, not a {expected_class.__name__}: "
            f"load it with {model_class.__name__}.from_preset or GloNetModelBase.from_preset."
        )
    _check_arguments(model_class, overrides, what, TypeError)
    changed = {k: v for k, v in overrides.items() if _jsonable(v) != _jsonable(config.get(k))}
    model = _build(model_class, config, what)
    if load_weights:
        _load_weights(model, path / WEIGHTS_FILE, what)
    if changed:
        pretrained, model = model, _build(model_class, {**config, **changed}, what)
        new_head = model.output.shape != pretrained.output.shape
        _transfer_weights(pretrained, model, what, skip_head=new_head)
    return _attach_metadata(model, metadata, changed, source)


def _check_load_weights(load_weights, what):
    if not load_weights:
        raise PresetError(
            f"{what}: a .keras file always loads with its weights; load_weights=False applies to "
            "preset directories and registered names."
        )


# What the trainer writes beside its model.keras in a run directory.
RUN_PREPROCESSING_FILE = "preprocessing.json"


def _run_metadata(path, what):
    """A run directory's `model.keras` carries the `preprocessing.json` the trainer wrote beside it.

    The record is read like a preset's (a regular file, never through a link, at most 8 MiB, the
    same validation); a record that is there but invalid is refused, not ignored.
    """
    sibling = Path(path).parent / RUN_PREPROCESSING_FILE
    if Path(path).name != KERAS_FILE or not os.path.lexists(sibling):
        return {}
    record = _read_json(sibling, what)
    _preprocessing(record, f"{what}: {sibling}")
    return {"preprocessing": record}


def _check_keras_archive(path, what, follow_links):
    """Refuses a .keras zip whose members would make Keras read more than the caps (a member that
    inflates to gigabytes), and one whose model config is too large to build, before Keras reads
    any of it."""
    import zipfile

    with _open_regular(path, what, follow_links) as stream:
        try:
            with zipfile.ZipFile(stream) as archive:
                members = archive.infolist()
                if len(members) > MAX_KERAS_MEMBERS:
                    raise PresetError(f"{what}: {path} holds {len(members)} members; a .keras "
                                      f"file holds a few (at most {MAX_KERAS_MEMBERS}).")
                for member in members:
                    json_member = member.filename.endswith(".json")
                    cap = MAX_KERAS_JSON_BYTES if json_member else MAX_KERAS_MEMBER_BYTES
                    if member.file_size > cap:
                        raise PresetError(
                            f"{what}: {path} holds {member.filename!r}, which inflates to "
                            f"{member.file_size:,} bytes, over the limit of {cap:,} bytes; "
                            "nothing was read."
                        )
                names = {member.filename for member in members}
                saved = None
                if "config.json" in names:
                    saved = _parse_json(archive.read("config.json"), what, f"{path}: config.json")
        except zipfile.BadZipFile as error:
            raise PresetError(
                f"{what}: {path} cannot be loaded safely: it is not a .keras (zip) file ({error})."
            ) from None
    if isinstance(saved, dict) and isinstance(saved.get("config"), dict):
        from glonet_keras.models import MODEL_CLASSES

        classes = {cls.__name__: cls for cls in MODEL_CLASSES.values()}
        if saved.get("class_name") in classes:
            arguments = {k: v for k, v in saved["config"].items() if k != "trainable"}
            check_architecture(classes[saved["class_name"]], arguments,
                               f"{what}: {path} (config.json)")


def _load_keras_file(path, what, overrides, follow_links=False):
    if overrides:
        raise PresetError(
            f"{what}: a .keras file cannot take overrides ({sorted(overrides)}); save it as a "
            "preset directory (model.save_to_preset) first."
        )
    _check_keras_archive(path, what, follow_links)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # noqa: BLE001  (an untrusted file: every failure is the file's)
        raise PresetError(f"{what}: {path} cannot be loaded safely: {error}") from error


def _load_weights(model, path, what):
    with _open_regular(path, what):
        pass  # A regular file, not a link, a directory or a FIFO.
    try:
        model.load_weights(path)
    except Exception as error:  # noqa: BLE001  (an untrusted file: every failure is the file's)
        raise PresetError(
            f"{what}: {path} cannot be loaded as the weights of this "
            f"{type(model).__name__}: {error}"
        ) from error


def _transfer_weights(source, target, what, skip_head):
    """Copies every layer's weights by layer name; with `skip_head`, the head stays as initialised."""
    source_layers = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        if (skip_head and layer.name == skeleton.HEAD) or not layer.weights:
            continue
        if layer.name not in source_layers:
            raise PresetError(
                f"The overrides give the {what} a layer {layer.name!r} that the pretrained model "
                "lacks; only `num_classes` and shape-preserving arguments can change a pretrained "
                "model."
            )
        source_weights = source_layers[layer.name].get_weights()
        shapes = [tuple(w.shape) for w in source_weights]
        wanted = [tuple(w.shape) for w in layer.weights]
        if shapes != wanted:
            raise PresetError(
                f"The overrides change layer {layer.name!r} of the {what} (weights {wanted} "
                f"instead of the pretrained {shapes}): only `num_classes` and shape-preserving "
                "arguments can change a pretrained model."
            )
        layer.set_weights(source_weights)


def _attach_metadata(model, metadata, changed, source):
    """Sets `model.preset_metadata` and `model.preprocessing`; a fine-tune start gets its own."""
    if changed:
        metadata = _fine_tune_metadata(metadata, changed, source, model)
    what = f"preset {source!r}"
    record = metadata.get("preprocessing")
    preprocessing = None if record is None else _preprocessing(record, what)
    if preprocessing is not None:
        try:
            preprocessing.check_fits(model.inputs[0].shape, f"its {type(model).__name__}")
        except ValueError as error:
            raise PresetError(f"{what}: invalid 'preprocessing' ({error})") from None
    names = metadata.get("class_names")
    units = model.outputs[0].shape[-1]
    if names is not None and units is not None and len(names) != units:
        raise PresetError(
            f"{what}: 'class_names' names {len(names)} classes, but the model has {units} "
            "outputs."
        )
    model.preset_metadata = metadata
    model.preprocessing = preprocessing
    return model


# What a model built with overrides keeps of its preset's metadata; the metrics, data set and
# training record belong to the published weights only.
_KEPT_WHEN_FINE_TUNED = ("task", "preprocessing", "license")


def _fine_tune_metadata(metadata, changed, source, model):
    record = {key: metadata[key] for key in _KEPT_WHEN_FINE_TUNED if key in metadata}
    names = metadata.get("class_names")
    if names is not None and len(names) == model.output.shape[-1]:
        record["class_names"] = names
    record["fine_tuned_from"] = {
        "preset": metadata.get("name") or source,
        "weights_sha256": metadata.get("files", {}).get(WEIGHTS_FILE),
        "overrides": _jsonable(changed),
    }
    return record


def _check_class(model, expected_class, what):
    if expected_class is not None and not isinstance(model, expected_class):
        raise PresetError(
            f"The {what} holds a {type(model).__name__}, not a {expected_class.__name__}."
        )


def from_preset(preset, expected_class=None, *, load_weights=True, cache_dir=None, origin=None,
                **overrides):
    """Loads a model from a registered name, a preset directory / `.keras` file, or a preset URL.

    A registered name is fetched from the origin and verified against the registry. A URL
    (`http(s)://` or `file://`) points at a preset folder: its metadata.json is fetched again at
    every load and must be a valid preset record; the config and weights are cached under a
    folder named after the URL and verified against the sha256 it records. `**overrides` are
    constructor arguments, as in `create_model(name, pretrained=True, **overrides)`.
    `load_weights=False` (keras-hub's argument) builds the architecture without fetching or loading
    the weights.

    Raises:
        PresetError: an unknown name, a path that does not exist, an invalid preset.
        PresetDownloadError: a file that cannot be fetched or verified.
        TypeError: an override the model class does not take.
    """
    if not isinstance(preset, (str, os.PathLike)):
        raise PresetError(f"A preset is a name, a path or a URL, received {type(preset).__name__}.")
    preset = os.fspath(preset)
    if preset in _REGISTRY:
        if not _REGISTRY[preset].pretrained:
            raise PresetError(
                f"{preset!r} has no pretrained weights: use glonet_keras.create_model({preset!r})."
            )
        files = PRESET_FILES if load_weights else (CONFIG_FILE, METADATA_FILE)
        directory = fetch_preset(preset, cache_dir=cache_dir, origin=origin, files=files)
    elif _is_url(preset):
        directory = _fetch_url_preset(preset, cache_dir, load_weights)
    elif os.path.lexists(preset):
        directory = preset
    elif _looks_like_path(preset):
        raise PresetError(f"The preset path {preset} does not exist.")
    else:
        get_variant(preset)  # Raises, listing the closest names.
    return load_preset_directory(directory, expected_class, source=preset,
                                 load_weights=load_weights, **overrides)


def _looks_like_path(preset):
    separators = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    return (any(s in preset for s in separators) or preset.startswith((".", "~"))
            or preset.endswith(".keras"))


def _fetch_url_preset(url, cache_dir, load_weights=True):
    url = url.rstrip("/")
    if urllib.parse.urlsplit(url).scheme.lower() not in _URL_SCHEMES:
        raise PresetError(f"Cannot load the preset {url}: only {list(_URL_SCHEMES)} URLs are "
                          "allowed.")
    folder = hashlib.sha256(url.encode()).hexdigest()[:16]
    directory = _cache_folder(resolve_cache_dir(cache_dir), "url", folder)
    what = f"preset {url!r}"
    metadata_path = fetch_file(
        f"{url}/{METADATA_FILE}", directory / METADATA_FILE, max_bytes=MAX_JSON_BYTES,
        validate=lambda path: check_metadata(_read_json(path, what), f"its {METADATA_FILE}"),
    )
    hashes = _read_metadata(metadata_path.parent, what).get("files", {})
    for file_name in (CONFIG_FILE, WEIGHTS_FILE):
        if file_name not in hashes:
            raise PresetError(
                f"The {what} does not record the sha256 of {file_name} in its {METADATA_FILE}: a "
                "preset loaded by URL must let every file be verified."
            )
        if file_name == WEIGHTS_FILE and not load_weights:
            continue
        fetch_file(f"{url}/{file_name}", directory / file_name, hashes[file_name])
    return directory


def library_versions():
    """The versions a preset records (TensorFlow only when it is installed)."""
    import glonet_keras

    versions = {
        "glonet_keras": glonet_keras.__version__,
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(ImportError):
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    return versions


# What `save_preset` carries over from the model's own `preset_metadata`: what the model does and
# where its weights came from. Metrics are never carried: the weights may have been trained since.
_CARRIED_WHEN_SAVED = ("task", "class_names", "license")


def save_preset(model, directory, metadata=None, *, name=None):
    """Writes `model` as a preset directory: config.json, model.weights.h5, metadata.json.

    The model is saved under `name`, by default the directory's name (the preset's name, which
    metadata.json records too), so that a loaded preset is never called `glo_net_cnn_1` and its
    export lands in `<export_dir>/<preset name>/`. A directory name that is not a plain model name
    keeps the model's own name.

    metadata.json gets the class, the versions, `model.preprocessing` (as `to_dict()`), the task,
    class names and licence of the model's `preset_metadata`, what the weights were fine-tuned
    from (for a model loaded from a preset), then `metadata` (a dict, which wins), and the sha256
    of every other file of the preset (so a hand-written README.md is covered too).

    Returns:
        The directory.
    """
    from glonet_keras.models.common import GloNetModelBase

    if not isinstance(model, GloNetModelBase):
        raise PresetError(
            f"save_to_preset needs a model built by glonet_keras, received {type(model).__name__}."
        )
    directory = Path(directory)
    if name is None:
        name = directory.name if _SAFE_MODEL_NAME.fullmatch(directory.name) else model.name
    if not isinstance(name, str) or not _SAFE_MODEL_NAME.fullmatch(name):
        raise PresetError(
            f"A preset's model name is letters, digits, '_', '.' and '-', received {name!r}."
        )
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "class_name": type(model).__name__,
        "registered_name": keras.saving.get_registered_name(type(model)),
        "config": {**_jsonable(model.get_config()), "name": name},
    }
    with open(directory / CONFIG_FILE, "w", encoding="utf-8") as stream:
        json.dump(config, stream, indent=2, sort_keys=True)
        stream.write("\n")
    model.save_weights(directory / WEIGHTS_FILE)
    record = {
        "name": directory.name,
        "class_name": type(model).__name__,
        "num_parameters": int(model.count_params()),
        "num_blocks": int(getattr(model, "num_blocks", 0)),
        "versions": library_versions(),
        **_inherited_metadata(model),
        **(metadata or {}),
    }
    write_metadata(directory, record)
    return directory


def _inherited_metadata(model):
    previous = getattr(model, "preset_metadata", None) or {}
    record = {key: previous[key] for key in _CARRIED_WHEN_SAVED if key in previous}
    if "fine_tuned_from" in previous:
        record["fine_tuned_from"] = previous["fine_tuned_from"]
    elif WEIGHTS_FILE in previous.get("files", {}):
        record["fine_tuned_from"] = {
            "preset": previous.get("name"), "weights_sha256": previous["files"][WEIGHTS_FILE],
        }
    preprocessing = getattr(model, "preprocessing", None)
    if isinstance(preprocessing, Preprocessing):
        record["preprocessing"] = preprocessing.to_dict()
    return record


def write_metadata(directory, record):
    """Writes `record` as `directory`/metadata.json, its "files" the sha256 of every other file.

    Only the file names a preset may hold are listed (`ALLOWED_FILES`); anything else in the
    directory is not part of the preset.
    """
    directory = Path(directory)
    record = dict(record)
    record["files"] = {
        name: sha256_of(directory / name)
        for name in sorted(ALLOWED_FILES)
        if name != METADATA_FILE and (directory / name).is_file()
    }
    with open(directory / METADATA_FILE, "w", encoding="utf-8") as stream:
        json.dump(_jsonable(record), stream, indent=2, sort_keys=True)
        stream.write("\n")
    return directory / METADATA_FILE


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


# --------------------------------------------------------------------------------------------
# The registered variants.


def load_registry_file(path):
    """Registers the pretrained variants listed in a registry file (see `zoo_registry.json`)."""
    try:
        with open(path, encoding="utf-8") as stream:
            registry = json.load(stream)
        presets = registry["presets"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PresetError(f"The preset registry {path} is unreadable: {error!r}.") from None
    for name, entry in presets.items():
        register_model(name, files=entry["files"], description=entry.get("description", ""),
                       overwrite=True)


# Architecture-only variants (untrained): library API written here, like timm's model functions.
# They have no files, so their class and arguments are the variant itself.
register_model("glonet_mlp_30x32", "GloNetMLP",
               {"num_blocks": 30, "width": 32, "input_shape": (784,)},
               description="GloNet MLP, 30 dense blocks of width 32, for 28x28 inputs.")
register_model("glonet_cnn20_cifar", "GloNetCNN", {"depth": 20, "input_shape": (32, 32, 3)},
               description="Convolutional GloNet, CIFAR layout, depth 20.")
register_model("glonet_cnn56_cifar", "GloNetCNN", {"depth": 56, "input_shape": (32, 32, 3)},
               description="Convolutional GloNet, CIFAR layout, depth 56.")
register_model("resnet_cnn20_cifar", "ResNetCNN", {"depth": 20, "input_shape": (32, 32, 3)},
               description="ResNet-v2 baseline, CIFAR layout, depth 20.")
register_model("resnet_cnn56_cifar", "ResNetCNN", {"depth": 56, "input_shape": (32, 32, 3)},
               description="ResNet-v2 baseline, CIFAR layout, depth 56.")
register_model("glonet_cnn18_imagenet", "GloNetCNN",
               {"depth": 18, "layout": "imagenet", "input_shape": (224, 224, 3),
                "num_classes": 1000},
               description="Convolutional GloNet, ImageNet layout, depth 18.")
register_model("glonet_vit_cifar", "GloNetViT", {"num_blocks": 6, "input_shape": (32, 32, 3)},
               description="GloNet ViT, 6 blocks, for 32x32 images.")

# Pretrained variants: data, written by training/make_zoo.py from zoo/*/.
load_registry_file(_REGISTRY_FILE)
