"""SavedModel export in the TF Serving layout, with preprocessing inside and early exits as a signature.

    <export_dir>/<model_name>/<version>/saved_model.pb, variables/, assets.extra/glonet.json

Signatures (all traced with `training=False`, so dropout and any augmentation stay off):
- `serving_default` and `serve`: one named input (the model's input name, e.g. `images` or
  `features`) taking RAW inputs with a dynamic batch dimension: uint8 pixels (or floats on the
  same 0..255 scale) for image data sets, floats for array data sets. The graph applies the
  `data.Preprocessing` the model was trained with (cast, resize, scale, normalise) and returns
  `{"logits": (batch, classes), "probabilities": (batch, classes)}` (regression: `logits` only).
- `early_exits` (GloNets only): the same input, returning `{"logits": (batch, L, classes),
  "probabilities": ...}`, entry k - 1 on axis 1 being the prediction of the first k blocks with the
  shared head (`glonet_keras.analysis.early_exit_model`). A server can pick its precision per request.

`assets.extra/glonet.json` records the preprocessing, task, model class and config, and the
signatures' input name and dtype, for people and tools (TF Serving ignores it).
"""

import json
import os

import keras

from glonet_keras import analysis
from glonet_keras.preprocessing import Preprocessing

TASKS = ("classification", "regression")
METADATA_FILE = os.path.join("assets.extra", "glonet.json")


def _outputs(logits, task):
    import tensorflow as tf

    logits = tf.cast(logits, "float32")  # Mixed-precision models compute logits in float16.
    if task == "regression":
        return {"logits": logits}
    return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1)}


def export_saved_model(
    model,
    export_dir,
    version=1,
    *,
    preprocessing=None,
    model_name=None,
    input_dtype=None,
    task="classification",
    early_exits=True,
    overwrite=False,
):
    """Writes `model` as a SavedModel for TF Serving; returns the version directory.

    Args:
        model: a built keras.Model with one named input (every glonet_keras model).
        export_dir: the model base path of TF Serving (`--model_base_path` is export_dir/model_name).
        version: positive integer version (TF Serving serves the highest).
        preprocessing: the `data.Preprocessing` (or its dict) the model was trained with. None means
            the model takes its inputs as they are (float32, no scaling).
        model_name: folder name under export_dir; default `model.name`.
        input_dtype: dtype of the raw input ("uint8", "float32", ...); default the preprocessing's.
        task: "classification" (logits + probabilities) or "regression" (logits).
        early_exits: add the `early_exits` signature when the model is a GloNet.
        overwrite: replace an existing version directory instead of raising.

    Returns:
        The path `<export_dir>/<model_name>/<version>`.
    """
    import tensorflow as tf

    if keras.backend.backend() not in ("tensorflow", "jax"):
        raise ValueError(f"SavedModel export needs TensorFlow installed; backend is {keras.backend.backend()!r}.")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"`version` must be an integer >= 1, received {version!r}.")
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}. Available: {list(TASKS)}.")
    if not isinstance(model, keras.Model) or not model.inputs or len(model.inputs) != 1:
        raise ValueError("export_saved_model needs a functional keras.Model with exactly one input.")
    if isinstance(preprocessing, dict):
        preprocessing = Preprocessing.from_dict(preprocessing)
    preprocessing = preprocessing or Preprocessing(
        mean=(0.0,) * int(model.inputs[0].shape[-1]), std=(1.0,) * int(model.inputs[0].shape[-1])
    )
    input_dtype = input_dtype or preprocessing.input_dtype
    model_name = model_name or model.name
    path = os.path.join(export_dir, model_name, str(version))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists: pick another version or pass overwrite=True.")

    input_name = model.inputs[0].name
    example_shape = tuple(model.inputs[0].shape[1:])
    if preprocessing.image_size is not None:
        # Any image size is accepted and resized inside the graph.
        example_shape = (None, None) + example_shape[2:]
    spec = tf.TensorSpec((None,) + example_shape, tf.as_dtype(input_dtype), name=input_name)

    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(inputs):
        return _outputs(model(preprocessing(inputs), training=False), task)

    # The first endpoint added is also exported as `serving_default`.
    archive.add_endpoint("serve", serve, input_signature=[spec])
    has_early_exits = False
    if early_exits:
        try:
            exits = analysis.early_exit_model(model)
        except ValueError:
            exits = None  # A baseline without `glonet_aggregation` has no prefixes to read.
        if exits is not None:
            archive.track(exits)

            def serve_early_exits(inputs):
                return _outputs(exits(preprocessing(inputs), training=False), task)

            archive.add_endpoint("early_exits", serve_early_exits, input_signature=[spec])
            has_early_exits = True

    if os.path.exists(path):
        import shutil

        shutil.rmtree(path)
    archive.write_out(path, verbose=False)
    metadata = {
        "model_class": type(model).__name__,
        "model_config": _jsonable_config(model),
        "task": task,
        "input_name": input_name,
        "input_dtype": tf.as_dtype(input_dtype).name,
        "preprocessing": preprocessing.to_dict(),
        "signatures": ["serving_default", "serve"] + (["early_exits"] if has_early_exits else []),
        "num_blocks": getattr(model, "num_blocks", None),
        "keras_version": keras.__version__,
    }
    os.makedirs(os.path.join(path, "assets.extra"), exist_ok=True)
    with open(os.path.join(path, METADATA_FILE), "w") as handle:
        json.dump(metadata, handle, indent=2)
    return path


def _jsonable_config(model):
    try:
        config = model.get_config()
        json.dumps(config)
        return config
    except (TypeError, ValueError, NotImplementedError):
        return None


def load_metadata(path):
    """The `assets.extra/glonet.json` record of an exported version directory."""
    with open(os.path.join(path, METADATA_FILE)) as handle:
        return json.load(handle)


def measure_latency(model, export_path, batch_sizes=(1, 64), repeats=50, seed=0):
    """Median milliseconds per call: the exported `serving_default` vs the Keras model.

    Feeds random raw inputs of each batch size to (a) the loaded SavedModel's signature
    (preprocessing included), (b) `model.predict_on_batch` and (c) `model(x, training=False)`
    on the preprocessed inputs. Warm-up calls (tracing) are excluded. Returns
    `{batch: {"saved_model": ms, "keras_predict_on_batch": ms, "keras_call": ms}}`.
    """
    import time

    import numpy as np
    import tensorflow as tf

    metadata = load_metadata(export_path)
    preprocessing = Preprocessing.from_dict(metadata["preprocessing"])
    signature = tf.saved_model.load(export_path).signatures["serving_default"]
    shape = tuple(model.inputs[0].shape[1:])
    rng = np.random.default_rng(seed)
    results = {}
    for batch in batch_sizes:
        if metadata["input_dtype"] == "uint8":
            raw = rng.integers(0, 256, (batch,) + shape, dtype=np.uint8)
        else:
            raw = rng.random((batch,) + shape).astype(metadata["input_dtype"])
        raw_tensor = tf.constant(raw)
        ready = preprocessing(raw).numpy()
        candidates = {
            "saved_model": lambda: signature(**{metadata["input_name"]: raw_tensor})["logits"].numpy(),
            "keras_predict_on_batch": lambda: model.predict_on_batch(ready),
            "keras_call": lambda: np.asarray(model(ready, training=False)),
        }
        timings = {}
        for name, call in candidates.items():
            for _ in range(3):
                call()
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                call()
                samples.append(time.perf_counter() - start)
            timings[name] = 1000 * float(np.median(samples))
        results[batch] = timings
    return results
