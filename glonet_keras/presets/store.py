"""Loading and saving preset directories, `.keras` files and run directories: `from_preset`,
`create_model`, `save_preset`. Every file is checked before it is used (see the package docstring)."""

import contextlib
import hashlib
import json
import os
from pathlib import Path
import platform
import urllib.error
import urllib.parse
import urllib.request

import keras

from glonet_keras import skeleton
from glonet_keras.data.preprocessing import Preprocessing
from glonet_keras.presets.fetch import (
    _URL_SCHEMES, MAX_JSON_BYTES, _cache_folder, _is_url, _open_regular, fetch_file, fetch_preset,
    resolve_cache_dir, sha256_of,
)
from glonet_keras.presets.registry import (
    _REGISTRY, _SAFE_MODEL_NAME, _SHA256, ALLOWED_FILES, CONFIG_FILE, KERAS_FILE, METADATA_FILE,
    MODEL_CLASSES, PRESET_FILES, WEIGHTS_FILE, PresetError, _check_file_name, check_arguments,
    classes_by_name, get_variant, list_models, model_class_named, short_repr,
)
from glonet_keras.version import __version__

# Keras releases whose safe mode refuses both an HDF5 external dataset in a weights file (fixed in
# 3.12.1 and 3.13.2, not in 3.13.0-3.13.1) and a file-backed StringLookup in a `.keras` (3.12.0).
# Measured on 3.10.0, 3.11.3 and every release from 3.12.0 to 3.15.1 with the two hostile files that
# tests/test_presets_hostile.py builds.
# setup.cfg's requirement must say the same.
SAFE_KERAS = ">=3.12.1,!=3.13.0,!=3.13.1"
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
    if variant.class_name is not None:  # The registry holds its architecture: nothing to fetch.
        model_class, config = model_class_named(variant.class_name), variant.config
    else:  # A variant registered with files only: its architecture is in its config.json.
        directory = fetch_preset(name, cache_dir=cache_dir, origin=origin, files=(CONFIG_FILE,))
        model_class, config = _read_config(directory, f"preset {name!r}")
    what = f"variant {name!r}"
    check_arguments(model_class, overrides, what, TypeError)
    return _build(model_class, {**config, **overrides}, what)


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
        model_class = model_class_named(saved.get("class_name"))
    except PresetError as error:
        raise PresetError(f"{what}: {path}: {error}") from None
    _check_config(model_class, saved["config"], f"{what}: {path}")
    return model_class, saved["config"]


def _check_config(model_class, config, what):
    """A config.json's constructor arguments: known keys, a plain name, a bounded architecture."""
    check_arguments(model_class, config, what, PresetError)
    name = config.get("name")
    if name is not None and not (isinstance(name, str) and _SAFE_MODEL_NAME.fullmatch(name)):
        raise PresetError(
            f"{what} names the model {_short(name)}; a model name is letters, digits, '_', '.' "
            "and '-', never a path."
        )
    check_architecture(model_class, config, what)


def _short(value):
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
    check_arguments(model_class, overrides, what, TypeError)
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
        classes = classes_by_name()
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
    versions = {
        "glonet_keras": __version__,
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
    if type(model) not in MODEL_CLASSES.values():
        raise PresetError(
            f"save_to_preset needs a model of a registered glonet_keras class (one of "
            f"{sorted(classes_by_name())}), received "
            f"{type(model).__name__}."
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
