"""SavedModel export in the TF Serving layout, with preprocessing inside and early exits as a signature.

    <export_dir>/<model_name>/<version>/saved_model.pb, variables/, assets.extra/glonet.json

Signatures (all traced with `training=False`, so dropout and any augmentation stay off):
- `serving_default` and `serve`: one named input (the model's input name, e.g. `images` or
  `features`) taking RAW inputs with a dynamic batch dimension: uint8 pixels (or floats on the
  same 0..255 scale) for image data sets, floats for array data sets. The graph applies the
  `Preprocessing` the model was trained with (cast, resize, scale, normalise) and returns
  `{"logits": (batch, outputs), "probabilities": (batch, outputs)}`: softmax over several outputs,
  the sigmoid of a single (binary) logit; regression returns `logits` only.
- `early_exits` (GloNets only): the same input, returning `{"logits": (batch, L, outputs),
  "probabilities": ...}`, entry k - 1 on axis 1 being the prediction of the first k blocks with the
  shared head (`glonet_keras.analysis.early_exit_model`). It computes all L blocks.
- `exit_<k>` (with `exits=[k, ...]`): the same input and outputs as `serve`, from the first k blocks
  only (`analysis.truncate(model, k)`): its graph holds no layer of blocks k+1..L, so it costs about
  k / L of the full model.
- `anytime` (with `anytime=True`, GloNet classifiers): inputs `<input name>` and `threshold` (a float32
  scalar in [0, 1]); runs the blocks in order and stops once every example of the batch has an exit
  whose top probability reaches `threshold` (1.0: never, i.e. every block). Returns `logits` and
  `probabilities` of each example's exit and `exit` (int32, 1..L). Each further block sits in the
  false branch of a `tf.cond`, so blocks after the stop never run. A SignatureDef cannot carry a
  default that TF Serving applies (it requires every input), so the default threshold is recorded in
  glonet.json (`signature_defaults`), where `glonet_keras.deploy.serving` reads it; TF Serving clients send
  `threshold` themselves.

The graph checks its input itself, because a loaded signature does not: a tensor of the wrong rank,
channel count or (for fixed-size models) spatial size is an InvalidArgumentError, never a crash of
the serving process; a batch of 0 returns empty outputs of the right shape.

`assets.extra/glonet.json` records the preprocessing (`Preprocessing.to_dict()`), task, class names,
model class and config, the signatures' input name and dtype, the exits and the anytime default
threshold (and whether it was given, the preset's calibrated one or 0.9), for people and tools (TF
Serving ignores it).

Works on the TensorFlow backend and on the JAX backend when TensorFlow is installed (the model is
converted with jax2tf; preprocessing and checks are TensorFlow ops around it). Everything is traced
before anything is written, and a version directory is replaced only once its successor is complete.
"""

import collections
import dataclasses
import json
import numbers
import os
import shutil
import tempfile
import uuid

import keras

from glonet_keras import files
from glonet_keras.data.preprocessing import Preprocessing
from glonet_keras.deploy.depth import trace_nodes
# DEFAULT_ANYTIME_THRESHOLD, TASKS, ServingPlan, check_exits and serving_computations stay
# export's names (its v0.2 API).
from glonet_keras.deploy.plan import (  # noqa: F401
    DEFAULT_ANYTIME_THRESHOLD, TASKS, ServingPlan, check_exits, check_model, preset_metadata,
    serving_computations, serving_plan,
)

METADATA_FILE = os.path.join("assets.extra", "glonet.json")
THRESHOLD_INPUT = "threshold"  # The anytime signature's second input.


def check_path_component(name, what="model_name"):
    """Returns `name` if it is one safe folder name; raises ValueError otherwise.

    Refused: non-strings, "", ".", "..", any name starting with "." (hidden, and the export's own
    temporary folders), names holding "/", "\\" or control characters (NUL included): a name read
    from a preset must never lead outside the folder it is joined to. Names over 255 bytes (what a
    folder name may hold) are refused too, before anything is traced.
    """
    if not isinstance(name, str):
        raise ValueError(f"`{what}` must be a string, received {type(name).__name__}.")
    if (not name or name.startswith(".") or "/" in name or "\\" in name
            or any(ord(c) < 32 or ord(c) == 127 for c in name)
            or len(name.encode("utf-8", "surrogatepass")) > 255  # NAME_MAX: fails at the write
            or os.path.splitdrive(name)[0]):  # "C:name" on Windows
        raise ValueError(
            f"`{what}` must be one plain folder name (no '/', '\\', control characters, not empty, "
            f"not starting with '.', at most 255 bytes), received {name[:80]!r}. Pass a safe "
            "`model_name`."
        )
    return name


def export_saved_model(
    model,
    export_dir,
    version=1,
    *,
    preprocessing=None,
    model_name=None,
    input_dtype=None,
    task=None,
    class_names=None,
    early_exits=True,
    exits=None,
    anytime=False,
    anytime_threshold=None,
    anytime_exits=None,
    overwrite=False,
):
    """Writes `model` as a SavedModel for TF Serving; returns the version directory.

    Defaults come from what the model carries: a loaded preset or a trained model has
    `model.preprocessing` (a `Preprocessing`) and `model.preset_metadata` (with "task" and
    "class_names"), so `export_saved_model(model, export_dir)` serves it as it was trained.

    Args:
        model: a built keras.Model with one named input and one output (every glonet_keras model).
        export_dir: the model base path of TF Serving (`--model_base_path` is export_dir/model_name).
        version: integer >= 1 (TF Serving serves the highest).
        preprocessing: the `Preprocessing` (or its dict) the model was trained with. None: the
            model's `preprocessing` attribute if it has one, else identity on float32 inputs.
        model_name: folder name under export_dir; default the preset's name
            (`model.preset_metadata["name"]`), else `model.name` (`default_model_name`). Either
            must be one plain folder name (see `check_path_component`).
        input_dtype: dtype of the raw input ("uint8", "float32", ...; one of
            `preprocessing.NUMERIC_DTYPES`); default the preprocessing's.
        task: "classification" (logits + probabilities) or "regression" (logits). None: the task
            in `model.preset_metadata`, else "classification" (a single output is then read as a
            binary logit, with sigmoid probabilities; regression is never guessed).
        class_names: the label of each output index (recorded in glonet.json so a served index
            maps back to a label); default `model.preset_metadata["class_names"]` when present.
        early_exits: add the `early_exits` signature when the model is a GloNet.
        exits: depths k (1..L) of a GloNet to serve as `exit_<k>` signatures, each computing only
            its first k blocks. (To ship only k blocks, export `analysis.truncate(model, k)`.)
        anytime: add the `anytime` signature (a GloNet classifier whose blocks are separate layers;
            a scanned stack must be unrolled first, `glonet_keras.models.mlp.to_unrolled`).
        anytime_threshold: the default `threshold` of `anytime`, in [0, 1], recorded in glonet.json
            (`signature_defaults`, and `anytime_threshold` with its source). None: the threshold
            the preset calibrated on its validation split (`deploy.default_threshold`), else 0.9.
        anytime_exits: the depths where `anytime` checks confidence (and may stop); default every
            block, L always. Each check costs the head and a softmax: for a deep model of cheap
            blocks, check every few blocks (`glonet_keras.deploy.anytime_stages`).
        overwrite: replace an existing version directory instead of raising. The new export is
            written beside it first; the old one is removed only once the new one is in place.

    Returns:
        The path `<export_dir>/<model_name>/<version>`.

    Raises:
        ImportError: TensorFlow is not installed.
        ValueError: bad arguments, an unsafe model name, a preprocessing that does not fit the
            model's input, or a version path that is a symlink or not a folder.
        FileExistsError: the version exists and `overwrite` is False.

    Example:

    ```python
    model = glonet_keras.create_model("glonet_cnn_digits", pretrained=True)
    path = export_saved_model(model, "/tmp/serving")  # /tmp/serving/glonet_cnn_digits/1
    ```
    """
    return prepare_saved_model(
        model, export_dir, version, preprocessing=preprocessing, model_name=model_name,
        input_dtype=input_dtype, task=task, class_names=class_names, early_exits=early_exits,
        exits=exits, anytime=anytime, anytime_threshold=anytime_threshold,
        anytime_exits=anytime_exits, overwrite=overwrite,
    ).write()


@dataclasses.dataclass
class PreparedSavedModel:
    """A traced export not yet written: `path` is where `write()` puts it (and returns it).

    `prepare_saved_model` checks everything and traces every signature; only `write()` touches the
    disk. A program writing several outputs (a SavedModel and ONNX files) prepares them all first,
    so a failure in any of them leaves nothing half-written."""

    path: str
    archive: object
    metadata: dict
    overwrite: bool

    def write(self):
        _write_atomically(self.archive, self.metadata, self.path, self.overwrite)
        return self.path


def prepare_saved_model(
    model,
    export_dir,
    version=1,
    *,
    preprocessing=None,
    model_name=None,
    input_dtype=None,
    task=None,
    class_names=None,
    early_exits=True,
    exits=None,
    anytime=False,
    anytime_threshold=None,
    anytime_exits=None,
    overwrite=False,
):
    """`export_saved_model` up to the write: checks, traces, and returns a `PreparedSavedModel`.

    Same arguments and errors as `export_saved_model`; nothing is written until `.write()`.
    """
    tf = import_tensorflow()
    if keras.backend.backend() not in ("tensorflow", "jax"):
        raise ValueError(
            "SavedModel export runs on the TensorFlow or JAX backend (with TensorFlow installed); "
            f"the backend is {keras.backend.backend()!r}."
        )
    check_model(model)
    path = export_path(model, export_dir, version, model_name)
    plan = serving_plan(
        model, preprocessing=preprocessing, input_dtype=input_dtype, task=task,
        class_names=class_names, early_exits=early_exits, exits=exits, anytime=anytime,
        anytime_threshold=anytime_threshold, anytime_exits=anytime_exits,
    )
    _check_version_path(path, overwrite)

    # Trace everything first: nothing touches the disk until the whole graph exists.
    preprocessing = plan.preprocessing
    input_dtype = tf.as_dtype(preprocessing.input_dtype)
    specs = input_specs(model, preprocessing, input_dtype)
    converter = keras.export.ExportArchive()
    converter.track(model)
    archive = keras.export.ExportArchive()
    # The first endpoint added is also exported as `serving_default`.
    for name, computation in plan.computations().items():
        archive.add_endpoint(
            name, serving_function(converter, name, computation, specs, preprocessing, plan.task)
        )
    signature_defaults = {}
    if plan.anytime is not None:
        archive.add_endpoint("anytime", anytime_serving_function(converter, plan.anytime, specs,
                                                                 preprocessing))
        signature_defaults["anytime"] = {THRESHOLD_INPUT: plan.anytime_threshold}
    metadata = {
        **plan.record(),
        "model_class": type(model).__name__,
        "model_config": _jsonable_config(model),
        "input_name": specs.raw.name,
        "input_dtype": input_dtype.name,
        "input_shape": specs.raw.shape.as_list(),
        "signatures": ["serving_default"] + list(archive._endpoint_names),
        "signature_defaults": signature_defaults,
        "keras_backend": keras.backend.backend(),
        "keras_version": keras.__version__,
    }
    return PreparedSavedModel(path=path, archive=archive, metadata=metadata, overwrite=overwrite)


def export_path(model, export_dir, version=1, model_name=None):
    """`<export_dir>/<model_name>/<version>`, where `export_saved_model` would write, checked: a
    safe folder name (default `default_model_name(model)`) and an integer version >= 1."""
    if isinstance(version, bool) or not isinstance(version, numbers.Integral) or version < 1:
        raise ValueError(f"`version` must be an integer >= 1, received {version!r}.")
    model_name = check_path_component(default_model_name(model) if model_name is None
                                      else model_name)
    return os.path.join(os.fspath(export_dir), model_name, str(int(version)))


def default_model_name(model):
    """The folder an export goes to by default: the preset's name (`preset_metadata["name"]`, so
    two presets of one family never share a folder), else `model.name`."""
    name = preset_metadata(model).get("name")
    return name if isinstance(name, str) else model.name


def import_tensorflow():
    """TensorFlow, or an ImportError saying why an export needs it."""
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError(
            "SavedModel export needs TensorFlow (pip install tensorflow-cpu, or tensorflow for "
            "GPUs), also on the JAX backend: the serving graph is a TensorFlow graph."
        ) from None
    return tf


def _check_version_path(path, overwrite):
    files.check_output_path(path, folder=True, overwrite=overwrite,
                            hint="pick another version or pass overwrite=True")


# The raw input the signatures take, the preprocessed input the model takes (tf.TensorSpec), and
# the smallest size the raw input's unknown spatial dimensions may have (None: it has none).
InputSpecs = collections.namedtuple("InputSpecs", ["raw", "model", "minimum_size"])

# The largest size `minimum_input_size` tries before giving up on finding one.
_MAX_PROBED_SIZE = 4096


def input_specs(model, preprocessing, input_dtype):
    """The raw input the signatures take, the preprocessed input the model takes, and the
    smallest size of the raw input's unknown spatial dimensions (`InputSpecs`)."""
    import tensorflow as tf

    model_input = model.inputs[0]
    shape = tuple(model_input.shape[1:])
    raw_shape = shape
    if preprocessing.image_size is not None:
        # Any image size is accepted and resized inside the graph: from 1 pixel up.
        raw_shape = (None, None) + shape[2:]
        shape = tuple(preprocessing.image_size) + shape[2:]
        minimum = 1
    else:
        minimum = minimum_input_size(model)
    return InputSpecs(
        raw=tf.TensorSpec((None,) + raw_shape, input_dtype, name=model_input.name),
        model=tf.TensorSpec((None,) + shape, model_input.dtype),
        minimum_size=minimum,
    )


def minimum_input_size(model):
    """The smallest size of the unknown (None) spatial dimensions of the model's input at which no
    layer computes an empty tensor; None when the input has no unknown spatial dimension.

    An image of 0 pixels (or one smaller than a 'valid' convolution or pooling can take) leaves a
    global pooling nothing to average: NaN logits, or a misleading error deep in the graph. The
    exported graph refuses such inputs up front. Found from the model's graph symbolically (no
    computation): 1 for 'same'-padded CNNs, more with 'valid' convolutions or pooling. If no size
    up to 4096 passes the symbolic walk (a layer it cannot follow), 1 is used: non-empty only.
    """
    shape = tuple(model.inputs[0].shape)
    dynamic = [i for i in range(1, len(shape) - 1) if shape[i] is None]
    if not dynamic:
        return None

    def fits(size):
        probe = tuple(size if i in dynamic else d for i, d in enumerate(shape))
        try:
            records = trace_nodes(model, [(1,) + probe[1:]])
        except Exception:  # Keras refuses sizes a layer cannot take ("would be negative").
            return False
        return all(d is None or d > 0 for *_, outputs in records for output in outputs
                   for d in output.shape)

    if fits(1):
        return 1
    low, high = 1, 2  # fits(low) is False
    while not fits(high):
        low, high = high, 2 * high
        if high > _MAX_PROBED_SIZE:
            return 1
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def _check_raw_input(inputs, specs):
    """`inputs` with the graph's checks on it: its rank and known sizes (EnsureShape), and the
    minimum size of its unknown spatial dimensions (an Assert, InvalidArgumentError when it fails)."""
    import tensorflow as tf

    # A loaded signature runs on any shape it is given; a wrong rank reaching a convolution
    # aborts the process (oneDNN check failure). EnsureShape makes it an InvalidArgumentError.
    inputs = tf.ensure_shape(inputs, specs.raw.shape)
    shape = specs.raw.shape.as_list()
    dynamic = [i for i in range(1, len(shape) - 1) if shape[i] is None]
    if specs.minimum_size is None or not dynamic:
        return inputs
    sizes = tf.gather(tf.shape(inputs), dynamic)
    check = tf.debugging.Assert(
        tf.logical_or(tf.equal(tf.shape(inputs)[0], 0),  # A batch of 0 has nothing to compute.
                      tf.reduce_all(sizes >= specs.minimum_size)),
        [f"`{specs.raw.name}` must be at least {specs.minimum_size} in each spatial dimension "
         "(the smallest input every layer can take), received sizes", sizes])
    with tf.control_dependencies([check]):
        return tf.identity(inputs)


def serving_function(converter, name, computation, specs, preprocessing, task):
    """A traced tf.function: raw input -> checks -> preprocessing -> model -> output dict.

    The model runs as an endpoint of `converter` (a plain tf.function on TensorFlow, a jax2tf
    conversion on JAX), so the checks and the preprocessing are TensorFlow ops on TensorFlow
    tensors on both backends, and the converter's endpoints stay out of the exported signatures.
    """
    import tensorflow as tf

    infer = converter.add_endpoint(
        name, lambda x: computation(x, training=False), input_signature=[specs.model]
    )
    empty_shape = [0] + [int(d) for d in computation.outputs[0].shape[1:]]

    def serve(inputs):
        inputs = _check_raw_input(inputs, specs)
        x = preprocessing(inputs)
        # Batch 0: answer with empty outputs; convolutions on empty batches are not reliable.
        outputs = tf.cond(
            tf.shape(x)[0] > 0,
            lambda: tf.cast(infer(x), "float32"),  # Mixed-precision models compute in float16.
            lambda: tf.zeros(empty_shape, "float32"),
        )
        return _outputs(outputs, task)

    function = tf.function(serve, input_signature=[specs.raw], autograph=False)
    function.get_concrete_function()  # Traced now: a failure raises before anything is written.
    return function


def anytime_serving_function(converter, stages, specs, preprocessing):
    """The `anytime` tf.function: (raw input, threshold) -> checks -> preprocessing -> blocks until
    every example is confident -> {logits, probabilities, exit}."""
    import tensorflow as tf

    run = _anytime_blocks(converter, stages, specs)
    num_outputs = stages.num_outputs

    def anytime(inputs, threshold):
        inputs = _check_raw_input(inputs, specs)
        threshold = tf.ensure_shape(threshold, [])
        # NaN fails both comparisons; a served threshold outside [0, 1] is a mistake, not "never".
        valid = tf.logical_and(threshold >= 0.0, threshold <= 1.0)
        check = tf.debugging.Assert(valid, ["`threshold` must be in [0, 1], received", threshold])
        with tf.control_dependencies([check]):
            threshold = tf.identity(threshold)
        x = preprocessing(inputs)
        logits, exits = tf.cond(
            tf.shape(x)[0] > 0,
            lambda: run(x, threshold),
            lambda: (tf.zeros([0, num_outputs], "float32"), tf.zeros([0], "int32")),
        )
        return {**_outputs(logits, "classification"), "exit": exits}

    threshold_spec = tf.TensorSpec([], tf.float32, name=THRESHOLD_INPUT)
    function = tf.function(anytime, input_signature=[specs.raw, threshold_spec], autograph=False)
    function.get_concrete_function()
    return function


def _anytime_blocks(converter, stages, specs):
    """A TF function (model input, threshold) -> (logits float32, exit int32) running the blocks.

    Level j runs the blocks after the previous candidate exit up to the j-th one, k (one function
    call), the head on the first k taps and the confidence check, then a `tf.cond` whose false
    branch calls level j+1: a block runs only if an example is still unsure. The levels are traced
    from the last to the first, each calling the next one's concrete function, so tracing is
    linear in L and never recursive. Blocks and the head are endpoints of `converter`
    (tf.functions on TensorFlow, jax2tf conversions on JAX).
    """
    import tensorflow as tf

    num_outputs = stages.num_outputs
    total_spec = _spec_of(stages.head.inputs[0])

    def run_segment(hidden, total, segment):
        for stage in segment:
            outputs = stage(hidden, training=False)
            hidden = outputs[0]
            for tap in outputs[1:]:
                total = total + tap  # In the order of GlobalAggregation: equal to truncate().
        return hidden, total

    # One function per segment (the blocks between two exits): one call per check, not per block.
    levels = []
    for k, segment in stages.segments():
        first = k == len(segment)  # The segment that starts at block 1 reads the model's input.
        source = specs.model if first else _spec_of(segment[0].inputs[0])
        run_blocks = converter.add_endpoint(
            f"anytime_blocks_to_{k}", lambda h, t, segment=segment: run_segment(h, t, segment),
            input_signature=[source, total_spec],
        )
        levels.append((k, run_blocks, source))
    head = converter.add_endpoint("anytime_head", lambda z: stages.head(z, training=False),
                                  input_signature=[total_spec])
    state_specs = [total_spec, tf.TensorSpec([None, num_outputs], tf.float32),
                   tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.float32)]

    def level_function(k, run_blocks, source, next_level):
        def level(hidden, total, chosen, exits, threshold):
            hidden, total = run_blocks(hidden, total)
            logits = tf.cast(head(stages.aggregate(total, k)), "float32")
            # exits == 0: not confident yet. `threshold` is +inf when it is 1 (never reached).
            newly = tf.logical_and(_top_probability(logits) >= threshold, tf.equal(exits, 0))
            chosen = tf.where(newly[:, None], logits, chosen)
            exits = tf.where(newly, k, exits)
            if next_level is None:  # The last block answers for every example still unsure.
                unsure = tf.equal(exits, 0)
                return tf.where(unsure[:, None], logits, chosen), tf.where(unsure, k, exits)
            return tf.cond(tf.reduce_all(exits > 0), lambda: (chosen, exits),
                           lambda: next_level(hidden, total, chosen, exits, threshold))

        function = tf.function(level, input_signature=[source] + state_specs, autograph=False)
        return function.get_concrete_function()

    first_level = None
    for k, run_blocks, source in reversed(levels):
        first_level = level_function(k, run_blocks, source, first_level)

    def run(x, threshold):
        batch = tf.shape(x)[0]
        never = tf.constant(float("inf"), tf.float32)
        return first_level(
            x, tf.zeros(tf.concat([[batch], total_spec.shape[1:]], 0), total_spec.dtype),
            tf.zeros([batch, num_outputs], "float32"), tf.zeros([batch], "int32"),
            tf.where(threshold < 1.0, threshold, never),
        )

    return run


def _spec_of(keras_tensor):
    import tensorflow as tf

    return tf.TensorSpec((None,) + tuple(keras_tensor.shape[1:]), keras_tensor.dtype)


def _top_probability(logits):
    """The top softmax probability, or max(sigmoid, 1 - sigmoid) for one logit: the confidence of
    `glonet_keras.deploy.top_probability`, in TensorFlow."""
    import tensorflow as tf

    if logits.shape[-1] == 1:
        probability = tf.math.sigmoid(logits[:, 0])
        return tf.maximum(probability, 1.0 - probability)
    return tf.reduce_max(tf.nn.softmax(logits, axis=-1), axis=-1)


def _outputs(logits, task):
    import tensorflow as tf

    if task == "regression":
        return {"logits": logits}
    if logits.shape[-1] == 1:  # One logit: a binary classifier.
        return {"logits": logits, "probabilities": tf.math.sigmoid(logits)}
    return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1)}


def _write_atomically(archive, metadata, path, overwrite):
    """Writes the export beside `path`, then swaps it in; an old version goes only at the end."""
    parent = os.path.dirname(path)
    version = os.path.basename(path)
    os.makedirs(parent, exist_ok=True)
    # Hidden names: TF Serving only loads all-digit folder names, so it never sees these.
    staging = tempfile.mkdtemp(prefix=f".{version}.partial-", dir=parent)
    try:
        archive.write_out(staging, verbose=False)
        os.makedirs(os.path.join(staging, "assets.extra"), exist_ok=True)
        with open(os.path.join(staging, METADATA_FILE), "w") as handle:
            json.dump(metadata, handle, indent=2)
        _check_version_path(path, overwrite)  # Nothing appeared or became a link meanwhile.
        retired = None
        if os.path.lexists(path):
            retired = os.path.join(parent, f".{version}.replaced-{uuid.uuid4().hex}")
            os.rename(path, retired)
        try:
            os.rename(staging, path)
        except OSError:
            if retired is not None:
                os.rename(retired, path)
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


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
        ready = preprocessing(raw)
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
