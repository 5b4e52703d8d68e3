"""The model registry and pretrained presets: `list_models`, `create_model`, `from_preset`.

A *variant* is one registered line (timm style): a name, the model class and its constructor
arguments, and, for a pretrained variant, the sha256 of every file of its preset and what a user
needs to feed it correctly (data set, preprocessing, licence, headline metric).

A *preset* is a directory (keras-hub style):
    config.json         {"class_name": ..., "config": constructor arguments}
    model.weights.h5    the weights (HDF5; never a pickle)
    metadata.json       data set and split, preprocessing, held-out metrics, training command,
                        versions, licence, sha256 of the other files
    README.md           the model card

Where pretrained files come from (`resolve_origin`, the one place that decides it), first match wins:
  1. the `origin=` argument,
  2. the `GLONET_KERAS_ORIGIN` environment variable (a mirror URL, `file://...`, or a directory),
  3. the `zoo/` directory of a source checkout (so the small presets work offline out of the box),
  4. `RELEASE_ORIGIN` (the published release assets).
An origin holds one folder per preset: `<origin>/<preset name>/<file>`.

Where they are cached (`resolve_cache_dir`): the `cache_dir=` argument, else `GLONET_KERAS_CACHE`,
else `$KERAS_HOME/glonet_keras`, else `~/.keras/glonet_keras`. A cached file whose sha256 matches the
registry is used without touching the network. A download is streamed into a temporary file in the
cache directory, checked (Content-Length, sha256) and only then moved into place with `os.replace`,
under a per-file lock, so a failed download leaves nothing behind and concurrent loads are safe.

Only `.weights.h5` and `.keras` files are ever loaded, the latter with `safe_mode=True`; a
`config.json` can only name the library's own model classes.
"""

import contextlib
import dataclasses
import difflib
import fnmatch
import hashlib
import http.client
import json
import os
import platform
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import keras

try:
    import fcntl
except ImportError:  # Windows: fall back to an O_EXCL lock file.
    fcntl = None

ORIGIN_ENV = "GLONET_KERAS_ORIGIN"
CACHE_ENV = "GLONET_KERAS_CACHE"
# Where the release assets of the zoo are published: `<RELEASE_ORIGIN>/<preset>/<file>`.
RELEASE_ORIGIN = "https://github.com/glonet-keras/glonet-keras/releases/download/zoo-v1"
# A source checkout (or an editable install) carries the zoo itself: use it, no network needed.
_SOURCE_ZOO = Path(__file__).resolve().parent.parent / "zoo"

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
CARD_FILE = "README.md"
# The files `create_model(..., pretrained=True)` fetches; the model card is documentation only.
PRESET_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE)

DOWNLOAD_TIMEOUT_S = 60.0
LOCK_TIMEOUT_S = 600.0


class PresetError(ValueError):
    """A preset that cannot be used: unknown name, bad config, files that do not match."""


class PresetDownloadError(OSError):
    """A preset file that could not be fetched or failed verification. Names the file and URL."""


# --------------------------------------------------------------------------------------------
# The registry.


@dataclasses.dataclass(frozen=True)
class ModelVariant:
    """One registered variant. `files` (file name -> sha256) is empty for architecture-only ones."""

    name: str
    class_name: str
    config: dict
    files: dict = dataclasses.field(default_factory=dict)
    dataset: str = None
    preprocessing: dict = None
    metrics: dict = None
    license: str = None

    @property
    def pretrained(self):
        return bool(self.files)


_REGISTRY = {}


def register_model(name, class_name, config, *, files=None, dataset=None, preprocessing=None,
                   metrics=None, license=None, overwrite=False):
    """Registers a variant; `files` (name -> sha256) makes it pretrained. Returns the variant."""
    if not re.fullmatch(r"[a-z0-9_.-]+", name or ""):
        raise PresetError(f"A variant name must match [a-z0-9_.-]+, received {name!r}.")
    if name in _REGISTRY and not overwrite:
        raise PresetError(f"A variant named {name!r} is already registered.")
    _model_class(class_name)  # Fails early, naming the classes that exist.
    if files:
        missing = sorted(set(PRESET_FILES) - set(files))
        if missing:
            raise PresetError(f"Pretrained variant {name!r} lacks the sha256 of {missing}.")
        for file_name, digest in files.items():
            if not re.fullmatch(r"[0-9a-f]{64}", str(digest)):
                raise PresetError(f"{name!r}: {file_name} has no valid sha256 ({digest!r}).")
    variant = ModelVariant(
        name=name, class_name=class_name, config=dict(config), files=dict(files or {}),
        dataset=dataset, preprocessing=preprocessing, metrics=metrics, license=license,
    )
    _REGISTRY[name] = variant
    return variant


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
    if name in _REGISTRY:
        return _REGISTRY[name]
    known = sorted(_REGISTRY)
    closest = difflib.get_close_matches(str(name), known, n=5, cutoff=0.5)
    hint = f"Closest known names: {closest}." if closest else f"Known names: {known}."
    raise PresetError(
        f"Unknown model {name!r}. {hint} `glonet_keras.list_models()` lists them all."
    )


def create_model(name, pretrained=False, num_classes=None, *, cache_dir=None, origin=None,
                 **overrides):
    """Builds a registered variant, with its pretrained weights when `pretrained=True`.

    Args:
        name: a name from `list_models()`.
        pretrained: load the published weights (downloaded, verified and cached on first use).
        num_classes: a new head size. With `pretrained=True` the body keeps its pretrained weights
            and the head (`head` layer) is freshly initialised, ready for fine-tuning.
        cache_dir, origin: override where files are cached and fetched from (see the module doc).
        **overrides: constructor arguments replacing the variant's (e.g. `dropout=0.1`). With
            `pretrained=True` they must keep every weight shape except the head's.

    Example:
    >>> model = glonet_keras.create_model("glonet_mlp_digits", pretrained=True)
    >>> finetune = glonet_keras.create_model("glonet_mlp_digits", pretrained=True, num_classes=3)
    """
    variant = get_variant(name)
    config = dict(variant.config)
    config.update(overrides)
    if num_classes is not None:
        config["num_classes"] = num_classes
    model_class = _model_class(variant.class_name)
    if not pretrained:
        return _build(model_class, config, f"variant {name!r}")
    if not variant.pretrained:
        raise PresetError(
            f"{name!r} has no pretrained weights. Pretrained variants: {list_models(pretrained=True)}."
        )
    directory = fetch_preset(name, cache_dir=cache_dir, origin=origin)
    pretrained_model = load_preset_directory(directory)
    if config == {**variant.config}:
        return pretrained_model
    model = _build(model_class, config, f"variant {name!r}")
    new_head = config.get("num_classes") != pretrained_model.get_config().get("num_classes")
    _transfer_weights(pretrained_model, model, name, skip_head=new_head)
    model.preset_metadata = pretrained_model.preset_metadata
    return model


def _transfer_weights(source, target, name, skip_head):
    """Copies every layer's weights by layer name; with `skip_head`, the head stays freshly initialised."""
    source_layers = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        if (skip_head and layer.name == "head") or not layer.weights:
            continue
        if layer.name not in source_layers:
            raise PresetError(
                f"The overrides give {name!r} a layer {layer.name!r} that the pretrained model lacks; "
                "only `num_classes` and shape-preserving arguments can change with pretrained=True."
            )
        source_weights = source_layers[layer.name].get_weights()
        shapes = [w.shape for w in source_weights]
        wanted = [tuple(w.shape) for w in layer.weights]
        if [tuple(s) for s in shapes] != wanted:
            raise PresetError(
                f"The overrides change layer {layer.name!r} of {name!r} (weights {wanted} instead of "
                f"the pretrained {[tuple(s) for s in shapes]}): only `num_classes` and "
                "shape-preserving arguments can change with pretrained=True."
            )
        layer.set_weights(source_weights)


# --------------------------------------------------------------------------------------------
# Origins, cache, verified download.


def resolve_origin(origin=None):
    """The URL that pretrained files are fetched from (see the module docstring for the order)."""
    if origin is None:
        origin = os.environ.get(ORIGIN_ENV) or None
    if origin is None:
        origin = _SOURCE_ZOO.as_uri() if _SOURCE_ZOO.is_dir() else RELEASE_ORIGIN
    return _as_url(str(origin)).rstrip("/")


def resolve_cache_dir(cache_dir=None):
    """The cache directory: argument, `GLONET_KERAS_CACHE`, `$KERAS_HOME/glonet_keras`, ~/.keras."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or None
    if cache_dir is None:
        keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
        cache_dir = os.path.join(keras_home, "glonet_keras")
    return Path(cache_dir).expanduser()


def _as_url(location):
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", location):
        return location
    return Path(location).expanduser().resolve().as_uri()


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_preset(name, *, cache_dir=None, origin=None):
    """Makes sure the verified files of pretrained variant `name` are cached; returns their folder."""
    variant = get_variant(name)
    if not variant.pretrained:
        raise PresetError(f"{name!r} has no pretrained weights to fetch.")
    base = resolve_origin(origin)
    directory = resolve_cache_dir(cache_dir) / name
    for file_name in PRESET_FILES:
        url = f"{base}/{urllib.parse.quote(name)}/{urllib.parse.quote(file_name)}"
        fetch_file(url, directory / file_name, variant.files[file_name])
    return directory


def fetch_file(url, destination, sha256=None, *, timeout=DOWNLOAD_TIMEOUT_S,
               lock_timeout=LOCK_TIMEOUT_S):
    """Returns `destination`, downloading `url` there first unless a verified copy is cached.

    With `sha256=None` (a preset given by URL, whose hashes come from its metadata) any cached copy
    is used; otherwise the cached copy must match. A download goes to a temporary file next to
    `destination`, is checked against the Content-Length and the sha256, and is then moved into
    place atomically; on any failure the temporary file is removed and a `PresetDownloadError`
    names the file and the URL. A lock file serialises processes fetching the same file.
    """
    destination = Path(destination)
    if _is_valid(destination, sha256):
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(destination.with_name(destination.name + ".lock"), lock_timeout):
        if _is_valid(destination, sha256):  # Another process fetched it while we waited.
            return destination
        _download(url, destination, sha256, timeout)
    return destination


def _is_valid(path, sha256):
    return path.is_file() and (sha256 is None or sha256_of(path) == sha256)


def _download(url, destination, sha256, timeout):
    what = f"{destination.name!r} from {url}"
    handle, temporary = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
    )
    try:
        digest = hashlib.sha256()
        received = 0
        with os.fdopen(handle, "wb") as stream:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)
            except urllib.error.HTTPError as error:
                raise PresetDownloadError(
                    f"Could not download {what}: HTTP {error.code} {error.reason}."
                ) from None
            except (urllib.error.URLError, OSError, ValueError) as error:
                reason = getattr(error, "reason", error)
                raise PresetDownloadError(f"Could not download {what}: {reason}.") from None
            with response:
                expected_length = response.headers.get("Content-Length")
                try:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        digest.update(chunk)
                        stream.write(chunk)
                        received += len(chunk)
                except (http.client.HTTPException, OSError) as error:
                    raise PresetDownloadError(
                        f"Download of {what} broke off after {received} bytes "
                        f"({type(error).__name__}); nothing was cached, try again."
                    ) from None
        if expected_length is not None and received != int(expected_length):
            raise PresetDownloadError(
                f"Download of {what} is truncated: received {received} of {expected_length} bytes; "
                "nothing was cached, try again."
            )
        if sha256 is not None and digest.hexdigest() != sha256:
            raise PresetDownloadError(
                f"sha256 mismatch for {what}: expected {sha256}, received {digest.hexdigest()} "
                f"({received} bytes). The file is corrupt or the origin serves another version; "
                "nothing was cached."
            )
        os.replace(temporary, destination)
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


def _try_lock(path):
    if fcntl is None:
        try:
            return os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            return None
    handle = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        return None
    # The previous holder unlinks the path on release: if it did so after we opened it, we hold a
    # lock on a file nobody else will see, so start over on the current one.
    try:
        current = os.stat(path).st_ino
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
    if class_name not in classes:
        raise PresetError(
            f"Unknown model class {class_name!r} in a preset. Allowed: {sorted(classes)}."
        )
    return classes[class_name]


def _build(model_class, config, what):
    try:
        return model_class.from_config(config)
    except (TypeError, ValueError) as error:
        raise PresetError(f"Cannot build {what} as {model_class.__name__}: {error}") from error


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except FileNotFoundError:
        raise PresetError(f"The preset file {path} does not exist.") from None
    except json.JSONDecodeError as error:
        raise PresetError(f"{path} is not valid JSON: {error}.") from None


def load_preset_directory(directory, expected_class=None, verify=True):
    """Builds the model stored in a preset directory (or a `.keras` file) and loads its weights.

    With `verify`, every file whose sha256 metadata.json records must match it. The loaded model
    carries the metadata as `model.preset_metadata` (a dict; empty if the preset has none).
    """
    path = Path(directory)
    if path.is_file() and path.suffix == ".keras":
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
        _check_class(model, expected_class, path)
        model.preset_metadata = {}
        return model
    if not path.is_dir():
        raise PresetError(f"{path} is neither a preset directory nor a .keras file.")
    metadata = _read_json(path / METADATA_FILE) if (path / METADATA_FILE).exists() else {}
    if verify:
        for file_name, digest in (metadata.get("files") or {}).items():
            file_path = path / file_name
            if file_path.exists() and sha256_of(file_path) != digest:
                raise PresetError(
                    f"{file_path} does not match the sha256 recorded in {path / METADATA_FILE} "
                    f"({digest}): the preset was modified or corrupted."
                )
    if not (path / CONFIG_FILE).exists() and (path / "model.keras").exists():
        model = keras.saving.load_model(path / "model.keras", compile=False, safe_mode=True)
    else:
        saved = _read_json(path / CONFIG_FILE)
        if not isinstance(saved, dict) or "class_name" not in saved or "config" not in saved:
            raise PresetError(f"{path / CONFIG_FILE} must hold {{'class_name': ..., 'config': ...}}.")
        model_class = _model_class(saved["class_name"])
        if expected_class is not None and not issubclass(model_class, expected_class):
            raise PresetError(
                f"The preset {path} holds a {saved['class_name']}, not a {expected_class.__name__}: "
                f"load it with {saved['class_name']}.from_preset or GloNetModelBase.from_preset."
            )
        model = _build(model_class, saved["config"], f"the preset {path}")
        weights = path / WEIGHTS_FILE
        if not weights.exists():
            raise PresetError(f"The preset {path} has no {WEIGHTS_FILE}.")
        model.load_weights(weights)
    _check_class(model, expected_class, path)
    model.preset_metadata = metadata
    return model


def _check_class(model, expected_class, path):
    if expected_class is not None and not isinstance(model, expected_class):
        raise PresetError(
            f"The preset {path} holds a {type(model).__name__}, not a {expected_class.__name__}."
        )


def from_preset(preset, expected_class=None, *, cache_dir=None, origin=None):
    """Loads a model from a registered name, a preset directory / `.keras` file, or a preset URL.

    A URL (`http(s)://` or `file://`) points at a preset folder: its files are cached under a folder
    named after the URL, and the weights and config are checked against the sha256 recorded in
    its metadata.json.
    """
    preset = os.fspath(preset)
    if preset in _REGISTRY and os.sep not in preset:
        if not _REGISTRY[preset].pretrained:
            raise PresetError(
                f"{preset!r} has no pretrained weights: use glonet_keras.create_model({preset!r})."
            )
        directory = fetch_preset(preset, cache_dir=cache_dir, origin=origin)
        return load_preset_directory(directory, expected_class)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", preset):
        directory = _fetch_url_preset(preset, cache_dir)
        return load_preset_directory(directory, expected_class)
    if os.path.exists(preset):
        return load_preset_directory(preset, expected_class)
    get_variant(preset)  # Raises, listing the closest names.


def _fetch_url_preset(url, cache_dir):
    url = url.rstrip("/")
    directory = resolve_cache_dir(cache_dir) / "url" / hashlib.sha256(url.encode()).hexdigest()[:16]
    metadata_path = fetch_file(f"{url}/{METADATA_FILE}", directory / METADATA_FILE)
    hashes = _read_json(metadata_path).get("files") or {}
    for file_name in (CONFIG_FILE, WEIGHTS_FILE):
        fetch_file(f"{url}/{file_name}", directory / file_name, hashes.get(file_name))
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


def save_preset(model, directory, metadata=None):
    """Writes `model` as a preset directory: config.json, model.weights.h5, metadata.json.

    `metadata` (a dict) is merged into metadata.json, which also gets the class, the versions and the
    sha256 of every other file in the directory (so a hand-written README.md is covered too).
    Returns the directory.
    """
    from glonet_keras.models.common import GloNetModelBase

    if not isinstance(model, GloNetModelBase):
        raise PresetError(
            f"save_to_preset needs a model built by glonet_keras, received {type(model).__name__}."
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "class_name": type(model).__name__,
        "registered_name": keras.saving.get_registered_name(type(model)),
        "config": _jsonable(model.get_config()),
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
        **(metadata or {}),
    }
    write_metadata(directory, record)
    return directory


def write_metadata(directory, record):
    """Writes `record` as `directory`/metadata.json, its "files" the sha256 of every other file."""
    directory = Path(directory)
    record = dict(record)
    record["files"] = {
        p.name: sha256_of(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != METADATA_FILE and not p.name.startswith(".")
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
# Architecture-only variants: `create_model(name)` builds them untrained.

register_model("glonet_mlp_30x32", "GloNetMLP", {"num_blocks": 30, "width": 32, "input_shape": (784,)})
register_model("glonet_cnn20_cifar", "GloNetCNN", {"depth": 20, "input_shape": (32, 32, 3)})
register_model("glonet_cnn56_cifar", "GloNetCNN", {"depth": 56, "input_shape": (32, 32, 3)})
register_model("resnet_cnn20_cifar", "ResNetCNN", {"depth": 20, "input_shape": (32, 32, 3)})
register_model("resnet_cnn56_cifar", "ResNetCNN", {"depth": 56, "input_shape": (32, 32, 3)})
register_model("glonet_cnn18_imagenet", "GloNetCNN",
               {"depth": 18, "layout": "imagenet", "input_shape": (224, 224, 3), "num_classes": 1000})
register_model("glonet_vit_cifar", "GloNetViT", {"num_blocks": 6, "input_shape": (32, 32, 3)})

# Pretrained variants: one line each, generated by training/make_zoo.py from zoo/*/metadata.json.
# BEGIN ZOO REGISTRY
register_model('glonet_cnn_digits', 'GloNetCNN', {'activation': 'relu', 'aggregation': 'sum', 'blocks_per_stage': None, 'depth': 14, 'dropout': 0.0, 'dtype': None, 'include_stem': False, 'initializer': 'he', 'input_shape': [8, 8, 1], 'layout': 'cifar', 'normalization': None, 'num_classes': 10, 'width': 16}, files={'config.json': '565356319e6a7ff6f543ca23cf4d80aecf20e6d93d92ee7b08ec192010fb6305', 'model.weights.h5': '7c16c5b5a372fe89e938855a131a5c6192f94d0a2d98c8e1a523db234c0f4291', 'metadata.json': 'bb514a81a199de8e03e24cf0538963673060a966fea87bc1aa78247bcdee277e'}, dataset='digits', preprocessing={'image_size': None, 'input_dtype': 'float32', 'mean': [0.3054488109048724], 'scale': 1.0, 'std': [0.37629962495912844], 'input_shape': [8, 8, 1]}, metrics={'test_accuracy': 0.9861111111111112}, license='Apache-2.0')  # noqa: E501
register_model('glonet_cnn_mnist1d', 'GloNetCNN', {'activation': 'relu', 'aggregation': 'sum', 'blocks_per_stage': None, 'depth': 14, 'dropout': 0.0, 'dtype': None, 'include_stem': False, 'initializer': 'he', 'input_shape': [40, 1], 'layout': 'cifar', 'normalization': None, 'num_classes': 10, 'width': 32}, files={'config.json': 'c664c49f646db9af9058b17c05818336d53e574534e1f6450b5e30d27f3d0cc1', 'model.weights.h5': '059b292fb30c1e14419154929d93677783fb63935023d51c3a0be3feabf728bd', 'metadata.json': 'f8488ce202ff5d50059d3ee2598c2582d192c1eb02116d12d9561f969219134c'}, dataset='mnist1d', preprocessing={'image_size': None, 'input_dtype': 'float32', 'mean': [-0.0016148937789952685], 'scale': 1.0, 'std': [0.9979636172110014], 'input_shape': [40, 1]}, metrics={'test_accuracy': 0.986}, license='Apache-2.0')  # noqa: E501
register_model('glonet_mlp_digits', 'GloNetMLP', {'activation': 'relu', 'aggregation': 'sum', 'dropout': 0.0, 'dtype': None, 'include_stem': False, 'initializer': 'he', 'input_shape': [8, 8, 1], 'normalization': None, 'num_blocks': 8, 'num_classes': 10, 'width': 64}, files={'config.json': '95d06b7a0d27cafb46dcd042fd8ec578177b36cee0b4ab0d6cb05cb82d7b8875', 'model.weights.h5': 'd4996c86ee2959e242c91bbb8cae04b5d58197dc0bb6e41e9ff71e2dee778142', 'metadata.json': '11d0f4b2ac2061b580316a6ac98d83767fb3649974081b3582aa78c59f557784'}, dataset='digits', preprocessing={'image_size': None, 'input_dtype': 'float32', 'mean': [0.3054488109048724], 'scale': 1.0, 'std': [0.37629962495912844], 'input_shape': [8, 8, 1]}, metrics={'test_accuracy': 0.9583333333333334}, license='Apache-2.0')  # noqa: E501
register_model('glonet_mlp_mnist1d', 'GloNetMLP', {'activation': 'relu', 'aggregation': 'sum', 'dropout': 0.3, 'dtype': None, 'include_stem': False, 'initializer': 'he', 'input_shape': [40, 1], 'normalization': None, 'num_blocks': 8, 'num_classes': 10, 'width': 128}, files={'config.json': '1c3d280db66916ae3a538346f8b6bf06e4789aa49b9bf79d532b14a292f525a1', 'model.weights.h5': '08e0f54c2ff2430240392c7a5d4956c37c2094738747fc3bbf89091c84d6fa45', 'metadata.json': 'cca05bd9f3674024fa3e5109e2c0b53e1e163ccf43d6176bdc33f6e55a88180b'}, dataset='mnist1d', preprocessing={'image_size': None, 'input_dtype': 'float32', 'mean': [-0.0016148937789952685], 'scale': 1.0, 'std': [0.9979636172110014], 'input_shape': [40, 1]}, metrics={'test_accuracy': 0.677}, license='Apache-2.0')  # noqa: E501
register_model('glonet_vit_digits', 'GloNetViT', {'activation': 'gelu', 'aggregation': 'sum', 'dropout': 0.0, 'dtype': None, 'hidden_dim': 64, 'include_stem': False, 'initializer': 'he', 'input_shape': [8, 8, 1], 'mlp_dim': 256, 'num_blocks': 4, 'num_classes': 10, 'num_heads': 4, 'patch_size': 4}, files={'config.json': '312fabbef4f55db9134f3bf084787715a5804f13295b7ad0eb1d5f1d0456ab70', 'model.weights.h5': 'f71e4e9fb487bedcdb96906afa6c52b165e841301778a584c554ccc0b56d96cb', 'metadata.json': 'e868a9bb0738e38bf4403150a261a5a47d0cecc9abc71d25d821130d0ddd6231'}, dataset='digits', preprocessing={'image_size': None, 'input_dtype': 'float32', 'mean': [0.3054488109048724], 'scale': 1.0, 'std': [0.37629962495912844], 'input_shape': [8, 8, 1]}, metrics={'test_accuracy': 0.9805555555555555}, license='Apache-2.0')  # noqa: E501
register_model('resnet_cnn_digits', 'ResNetCNN', {'activation': 'relu', 'blocks_per_stage': None, 'depth': 14, 'dropout': 0.0, 'dtype': None, 'initializer': 'he', 'input_shape': [8, 8, 1], 'layout': 'cifar', 'normalization': 'batch', 'num_classes': 10, 'width': 16}, files={'config.json': 'c2d2fd50b4c73f0d1a89d492d62942ead9cb348a1d884b5fd75ce27c42710b2f', 'model.weights.h5': '72379f55199c935de28622ecd08426dc8827625d64432124d60873afa5de1f6a', 'metadata.json': 'f10823ceb3d3a0e488e26818ffdab78fcc0ce7e2b23e00e7db1d87c3f3bab84e'}, dataset='digits', preprocessing={'image_size': None, 'input_dtype': 'float32', 'mean': [0.3054488109048724], 'scale': 1.0, 'std': [0.37629962495912844], 'input_shape': [8, 8, 1]}, metrics={'test_accuracy': 0.9833333333333333}, license='Apache-2.0')  # noqa: E501
# END ZOO REGISTRY
