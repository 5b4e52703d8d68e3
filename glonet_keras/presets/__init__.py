"""The model registry and pretrained presets: `list_models`, `create_model`, `from_preset`.

A *variant* is one registered name (timm style): its model class and constructor arguments, and,
for a pretrained variant, the sha256 and size of each file of its preset. The registry
(`presets.registry`) is filled by the model modules, each registering its own classes and variants;
the pretrained entries are data, `glonet_keras/presets/zoo_registry.json`, written by
`training/make_zoo.py` from `zoo/*/`.

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

Modules: `registry` (names, classes, variants; no model imports), `fetch` (origins, cache, verified
download under a lock) and `store` (load and save preset directories, `.keras` files, run
directories).
"""

from glonet_keras.presets.fetch import (
    CACHE_ENV, DOWNLOAD_DEADLINE_S, LOCK_TIMEOUT_S, MAX_DOWNLOAD_BYTES, MAX_JSON_BYTES, ORIGIN_ENV,
    READ_TIMEOUT_S, fetch_file, fetch_preset, resolve_cache_dir, resolve_origin, sha256_of,
    shipped_zoo_dir,
)
from glonet_keras.presets.registry import (
    ALLOWED_FILES, CARD_FILE, CONFIG_FILE, KERAS_FILE, METADATA_FILE, MODEL_CLASSES, PRESET_FILES,
    WEIGHTS_FILE, ModelVariant, PresetDownloadError, PresetError, PresetFile, check_name,
    get_model_class, get_variant, list_models, load_registry_file, register_class, register_model,
    register_pretrained,
)
from glonet_keras.presets.store import (
    MAX_KERAS_JSON_BYTES, MAX_KERAS_MEMBER_BYTES, MAX_KERAS_MEMBERS, MAX_PRESET_BLOCKS,
    MAX_PRESET_PARAMETERS, RUN_PREPROCESSING_FILE, SAFE_KERAS, check_architecture, check_metadata,
    create_model, from_preset, library_versions, load_preset_directory, require_safe_keras,
    save_preset, write_metadata,
)

__all__ = [
    "ALLOWED_FILES", "CACHE_ENV", "CARD_FILE", "CONFIG_FILE", "DOWNLOAD_DEADLINE_S", "KERAS_FILE",
    "LOCK_TIMEOUT_S", "MAX_DOWNLOAD_BYTES", "MAX_JSON_BYTES", "MAX_KERAS_JSON_BYTES",
    "MAX_KERAS_MEMBER_BYTES", "MAX_KERAS_MEMBERS", "MAX_PRESET_BLOCKS", "MAX_PRESET_PARAMETERS",
    "METADATA_FILE", "MODEL_CLASSES", "ORIGIN_ENV", "PRESET_FILES", "READ_TIMEOUT_S",
    "RUN_PREPROCESSING_FILE", "SAFE_KERAS", "WEIGHTS_FILE", "ModelVariant", "PresetDownloadError",
    "PresetError", "PresetFile", "check_architecture", "check_metadata", "check_name",
    "create_model", "fetch_file", "fetch_preset", "from_preset", "get_model_class", "get_variant",
    "library_versions", "list_models", "load_preset_directory", "load_registry_file",
    "register_class", "register_model", "register_pretrained", "require_safe_keras",
    "resolve_cache_dir", "resolve_origin", "save_preset", "sha256_of", "shipped_zoo_dir",
    "write_metadata",
]
