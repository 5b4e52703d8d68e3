"""The one registry of model names: model classes, architecture variants and pretrained presets.

It is filled where each architecture is defined (timm's `@register_model`, keras-hub's per-family
presets files): at the end of `glonet_keras/models/mlp.py`, `cnn.py` and `vit.py`, each family
registers
- its classes under the names the trainer takes (`register_class("glonet_cnn", GloNetCNN)`),
- its architecture-only variants (`register_model("glonet_cnn20_cifar", "GloNetCNN", {...})`), and
- its pretrained presets (`register_pretrained(classes)`): the entries of `zoo_registry.json`
  (data, written by `training/make_zoo.py` from `zoo/*/`) whose class is one of the family's. Each
  entry carries the sha256 and size of the preset's files and, since v0.3, its architecture (the
  class and constructor arguments of its config.json), so `create_model(name)` builds a pretrained
  variant's architecture without fetching anything.

The trainer (`get_model_class`), `create_model`, `from_preset` and `list_models` all read this
registry. It sits below the model modules (they import it; it imports none of them), so a class is
found by name only once its module has been imported: `import glonet_keras` imports them all.
"""

import dataclasses
import difflib
import fnmatch
import inspect
import json
import numbers
from pathlib import Path
import re

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
CARD_FILE = "README.md"
KERAS_FILE = "model.keras"
# The files `create_model(..., pretrained=True)` fetches; the model card is documentation only.
PRESET_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE)
# The only file names a preset may hold: nothing a metadata.json says can name another path.
ALLOWED_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE, CARD_FILE, KERAS_FILE)
_SHA256 = re.compile(r"[0-9a-f]{64}")
# One plain path component: it can never be "", "." or "..", or hold a separator.
_SAFE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,127}")
# A model name from a config.json: Keras' names, never a path (exporters name folders after it).
_SAFE_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
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
    """One registered variant: pretrained (`files`) and/or an architecture (`class_name`, `config`)."""

    name: str
    description: str = ""
    files: dict = dataclasses.field(default_factory=dict)  # file name -> PresetFile
    class_name: str = None
    config: dict = None

    @property
    def pretrained(self):
        return bool(self.files)


_REGISTRY = {}
# Model name (the trainer's `--model`) -> class; also the only classes a config may name.
MODEL_CLASSES = {}


def register_class(name, model_class):
    """Registers `model_class` under the snake_case model name `name` (e.g. `"glonet_mlp"`)."""
    check_name(name, "A model name")
    if MODEL_CLASSES.get(name, model_class) is not model_class:
        raise PresetError(f"A different class is already registered as {name!r}.")
    MODEL_CLASSES[name] = model_class
    return model_class


def classes_by_name():
    """The registered model classes by class name (`"GloNetMLP"` -> GloNetMLP)."""
    return {cls.__name__: cls for cls in MODEL_CLASSES.values()}


def get_model_class(name):
    """The model class for a snake_case model name (e.g. `"glonet_mlp"`) or a class name."""
    if name in MODEL_CLASSES:
        return MODEL_CLASSES[name]
    classes = classes_by_name()
    if name in classes:
        return classes[name]
    raise ValueError(f"Unknown model {name!r}. Available: {sorted(MODEL_CLASSES)}.")


def model_class_named(class_name):
    """The registered class called `class_name`: a config can never name any other class."""
    classes = classes_by_name()
    if not isinstance(class_name, str) or class_name not in classes:
        raise PresetError(
            f"Unknown model class {class_name!r} in a preset. Allowed: {sorted(classes)}."
        )
    return classes[class_name]


def register_model(name, class_name=None, config=None, *, files=None, description="",
                   overwrite=False):
    """Registers a variant and returns it.

    Args:
        name: one plain, lower-case path component (`[a-z0-9][a-z0-9_.-]*`): it names the cache
            folder and the origin folder of the preset.
        class_name, config: the model class and its constructor arguments. Required for an
            architecture-only variant; optional for a pretrained one, whose config.json then need
            not be fetched to build its architecture (`create_model(name)`).
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
    if (class_name is None) != (config is None):
        raise PresetError(f"Variant {name!r}: give `class_name` and `config` together.")
    if not files and class_name is None:
        raise PresetError(
            f"Variant {name!r} needs either `files` (pretrained) or `class_name` and `config`."
        )
    if class_name is not None:
        if not isinstance(config, dict):
            raise PresetError(f"Variant {name!r}: `config` must be a dict, received {config!r}.")
        check_arguments(model_class_named(class_name), config, f"variant {name!r}", TypeError)
        config = dict(config)
    variant = ModelVariant(name, description, files=_preset_files(name, files) if files else {},
                           class_name=class_name, config=config)
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


# Arguments of keras.applications, keras-hub, timm and transformers that mean something else here: say
# what to use instead ({cls} is the class the user called).
_FOREIGN_ARGUMENTS = {
    "pretrained": "pretrained= is timm's create_model argument; load pretrained weights with "
                  "glonet_keras.create_model(name, pretrained=True) or {cls}.from_preset(name)",
    "weights": "weights= is keras.applications'; load pretrained weights with "
               "glonet_keras.create_model(name, pretrained=True) or {cls}.from_preset(name)",
    "load_weights": "load_weights= is from_preset's argument: {cls}.from_preset(name, "
                    "load_weights=False) builds a preset's architecture without its weights",
    "include_top": "a GloNet always ends in its linear head; for features read `model.block_outputs`",
    "pooling": "GloNet taps pool every block already; the head reads their sum",
    "classes": "use `num_classes`",
    "num_labels": "use `num_classes`",
    "input_tensor": "pass `input_shape`",
    "in_chans": "pass `input_shape=(height, width, channels)`",
    "img_size": "pass `input_shape=(height, width, channels)`",
    "drop_rate": "use `dropout` (the rate before the head)",
    "classifier_activation": "the head returns logits; apply keras.ops.softmax, or read an "
                             "export's `probabilities`",
    "checkpoint_path": "load a preset folder or .keras file with {cls}.from_preset(path), or "
                       "weights with model.load_weights(path)",
}
# The same keywords given to from_preset / create_model(pretrained=True), which load weights anyway.
_FOREIGN_PRESET_ARGUMENTS = {
    "pretrained": "pretrained= is timm's; from_preset(name) always loads the preset's pretrained "
                  "weights (load_weights=False skips them)",
    "weights": "weights= is keras.applications'; from_preset loads the preset's weights, "
               "load_weights=False skips them",
    "load_weights": "load_weights= is an argument of from_preset, not of create_model: use "
                    "create_model(name) for the architecture without weights",
}


def foreign_argument_advice(key, cls, *, preset=False):
    """What to use instead of another library's keyword `key`, or None if it is not one."""
    advice = (_FOREIGN_PRESET_ARGUMENTS.get(key) if preset else None) or _FOREIGN_ARGUMENTS.get(key)
    return None if advice is None else advice.format(cls=cls.__name__)


def short_repr(value):
    """repr(value), except that a huge integer is named by its number of digits."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and abs(value) > 10**15:
        return f"<an integer of about {int(abs(int(value)).bit_length() * 0.30103) + 1} digits>"
    if isinstance(value, (list, tuple)):
        items = ", ".join(short_repr(v) for v in value[:8]) + (", ..." if len(value) > 8 else "")
        return f"({items})" if isinstance(value, tuple) else f"[{items}]"
    return repr(value)


def check_arguments(model_class, arguments, what, error_class):
    """Raises `error_class` for an argument `model_class` does not take, naming the closest one.

    Another library's keyword (keras.applications' `weights=`, timm's `pretrained=`) gets advice
    on what to use here instead of the closest name (which would be `width` and `trainable`).
    """
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
# Loading and saving preset directories.


# --------------------------------------------------------------------------------------------
# The registered variants.


def load_registry_file(path, class_names=None):
    """Registers the pretrained variants listed in a registry file (see `zoo_registry.json`).

    Args:
        path: the registry file.
        class_names: register only the entries whose class is one of these (a family's); None
            for all of them.

    Returns:
        The names registered.
    """
    try:
        with open(path, encoding="utf-8") as stream:
            registry = json.load(stream)
        presets = registry["presets"]
        entries = [(name, entry, entry.get("class_name")) for name, entry in presets.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise PresetError(f"The preset registry {path} is unreadable: {error!r}.") from None
    names = []
    for name, entry, class_name in entries:
        if class_names is not None and class_name not in class_names:
            continue
        register_model(name, class_name, entry.get("config"), files=entry["files"],
                       description=entry.get("description", ""), overwrite=True)
        names.append(name)
    return names


def register_pretrained(*model_classes, path=_REGISTRY_FILE):
    """Registers the published presets of `model_classes` (one family's), read from `path`."""
    return load_registry_file(path, {cls.__name__ for cls in model_classes})
