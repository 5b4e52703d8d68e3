"""Answering TF Serving REST predict requests from a loaded SavedModel, without the server binary.

The contract is TF Serving's `POST /v1/models/<name>[/versions/<v>]:predict` body:

- row format: `{"signature_name": "...", "instances": [example, ...]}` where an example is the raw
  input of one item (or `{"<input name>": value}`); answered with `{"predictions": [...]}`, one
  entry per instance: a `{"logits": ..., "probabilities": ...}` dict (TF Serving's shape for
  signatures with several outputs).
- columnar format: `{"signature_name": "...", "inputs": batch}` (or `{"inputs": {"<input name>":
  batch}}`); answered, as TF Serving does, with `{"outputs": {"logits": [...], ...}}`.

A batch of 0 instances is answered like any other: `{"predictions": []}` (or empty output lists).

Signatures with scalar inputs besides the batch (the `anytime` signature's `threshold`): as in TF
Serving, a scalar has no batch dimension, so it travels in the columnar format only
(`{"signature_name": "anytime", "inputs": {"images": batch, "threshold": 0.8}}`). When a request
leaves it out, the default the export recorded in glonet.json (`signature_defaults`, read by `load`)
is used; TF Serving itself has no defaults and needs it in every request.

`predict(loaded, body)` raises `ServingError` (a ValueError) with a message that says what is wrong
with a malformed request, and `respond(loaded, body)` turns it into `(status, {"error": message})`:

- 400: a body that is not UTF-8, not JSON, nested too deeply, not an object; wrong or extra keys;
  an unknown signature; instances that are ragged, of the wrong rank or shape, or hold anything but
  numbers (booleans, strings and null are not numbers); values that are NaN or infinite, that the
  input dtype cannot hold (1e39 in float32, 300 or 1.5 in uint8), or integers too large for any
  dtype; an input the exported graph itself refuses.
- 413: a body over `max_body_bytes` (default 16 MiB) or a batch over `max_instances` (default 1024).
- 500: the graph failed for another reason than the input (`ModelFailed`: out of memory, ...).
- 400 also when the model answers NaN or infinity (`NonFiniteOutput`; inputs too large for the
  model in float32, or a broken model): never a 200 whose JSON would carry a NaN.

Nothing else escapes: every malformed request gets a JSON error, never a traceback or a hang.
"""

import json
import numbers
import os
import re

import numpy as np

from glonet_keras.deploy.export import METADATA_FILE, load_metadata

DEFAULT_SIGNATURE = "serving_default"
MAX_BODY_BYTES = 16 * 2**20
MAX_INSTANCES = 1024
_ALLOWED_KEYS = {"signature_name", "instances", "inputs"}


class ServingError(ValueError):
    """A request the model cannot answer; the message says why. `status` is its HTTP status."""

    status = 400


class RequestTooLarge(ServingError):
    """A request over the body-size or batch-size cap (HTTP 413, Payload Too Large)."""

    status = 413


class ModelFailed(ServingError):
    """The exported graph failed on a request for another reason than refusing its input (out of
    memory, a file the graph reads is missing, ...): HTTP 500, a fault of the server's side."""

    status = 500


class NonFiniteOutput(ServingError):
    """The model answered with NaN or infinity (HTTP 400). JSON has no NaN: a 200 carrying one would
    not parse in strict clients and would pass for an answer in lenient ones. Inputs in range can
    still overflow float32 inside the model (3e38 through a Dense layer); so can a model whose
    weights or preprocessing overflow. The helper cannot tell them apart, and names both."""


def load(path):
    """Loads an exported version directory (`<export_dir>/<name>/<version>`).

    The export's glonet.json record, when there is one, is attached as `glonet_metadata`: it holds
    the default of each scalar signature input (`signature_defaults`).
    """
    import tensorflow as tf


    loaded = tf.saved_model.load(path)
    loaded.glonet_metadata = load_metadata(path) if os.path.isfile(
        os.path.join(path, METADATA_FILE)) else {}
    return loaded


def _short(value, limit=60):
    """A request value for an error message: repr, cut so that a huge value cannot flood it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_body(body, max_body_bytes):
    if isinstance(body, (bytes, bytearray, str)):
        if len(body) > max_body_bytes:
            raise RequestTooLarge(
                f"The request body has {len(body)} bytes, over the limit of {max_body_bytes}."
            )
    if isinstance(body, (bytes, bytearray)):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ServingError(f"The request body is not UTF-8 text: {error}.") from None
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except RecursionError:
            raise ServingError("The request body is not valid JSON: it is nested too deeply.") from None
        except ValueError as error:  # JSONDecodeError, and integers of more than 4300 digits.
            raise ServingError(f"The request body is not valid JSON: {error}.") from None
    if not isinstance(body, dict):
        raise ServingError(
            f"The request body must be a JSON object, received {type(body).__name__}."
        )
    unknown = set(body) - _ALLOWED_KEYS
    if unknown:
        raise ServingError(
            f"Unknown request keys {_short(sorted(map(str, unknown)))}: use 'instances' (row "
            "format) or 'inputs' (columnar format), and optionally 'signature_name'."
        )
    formats = [key for key in ("instances", "inputs") if key in body]
    if len(formats) != 1:
        raise ServingError(
            "The request must contain exactly one of 'instances' or 'inputs', found "
            f"{formats or 'neither'}."
        )
    return body, formats[0]


def _signature(loaded, name):
    """`(signature, batch input name, its spec, {scalar input name: spec})` of signature `name`."""
    if not isinstance(name, str):
        raise ServingError(f"'signature_name' must be a string, received {_short(name)}.")
    if name not in loaded.signatures:
        raise ServingError(
            f"Unknown signature {_short(name)}. This model has {sorted(loaded.signatures.keys())}."
        )
    signature = loaded.signatures[name]
    _, specs = signature.structured_input_signature
    batched = [key for key, spec in specs.items() if spec.shape.rank != 0]
    if len(batched) != 1:
        raise ServingError(
            f"Signature {name!r} takes {len(batched)} batched inputs; this helper serves one (and "
            "scalar inputs)."
        )
    (input_name,) = batched
    scalars = {key: spec for key, spec in specs.items() if key != input_name}
    return signature, input_name, specs[input_name], scalars


def _unwrap_named(value, input_name, where, scalar_names=()):
    """Accepts `{"<input name>": value, ...}` in place of `value`; returns (value, scalars given)."""
    if not isinstance(value, dict):
        return value, {}
    allowed = {input_name, *scalar_names}
    if input_name not in value or not set(value) <= allowed:
        only = (f"inputs are {sorted(allowed)}" if scalar_names
                else f"only input is {input_name!r}")
        raise ServingError(
            f"{where} names inputs {_short(sorted(map(str, value)))}, but the signature's {only}."
        )
    return value[input_name], {key: value[key] for key in value if key != input_name}


def _scalar_inputs(loaded, signature_name, scalars, given):
    """The scalar inputs as tensors: each given value, else the export's recorded default."""
    import tensorflow as tf

    metadata = getattr(loaded, "glonet_metadata", None) or {}
    defaults = (metadata.get("signature_defaults") or {}).get(signature_name, {})
    values = {}
    for name, spec in scalars.items():
        if name in given:
            value = given[name]
        elif name in defaults:
            value = defaults[name]
        else:
            raise ServingError(
                f"Signature {signature_name!r} needs the scalar input {name!r}, and this SavedModel "
                f"records no default: send it in the columnar format, "
                f'{{"inputs": {{..., "{name}": value}}}}.'
            )
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ServingError(f"Input {name!r} must be a number, received {_short(value)}.")
        try:
            array = np.array(value, dtype=np.float64)
        except OverflowError:  # An integer beyond float64 (10**400): JSON allows it.
            raise ServingError(
                f"Input {name!r} holds an integer too large for any numeric dtype (above 1.8e308), "
                f"received {_short(value)}; it takes {spec.dtype.name} values."
            ) from None
        if not np.isfinite(array):
            raise ServingError(f"Input {name!r} must be finite, received {_short(value)}.")
        _check_range(array, spec.dtype, name)
        values[name] = tf.constant(array.astype(spec.dtype.as_numpy_dtype))
    return values


def _type_names(kinds):
    """JSON's names for Python types, for messages: ['null', 'str'] rather than NoneType, str."""
    return sorted("null" if kind is type(None) else kind.__name__ for kind in kinds)


def _is_number_type(kind):
    return issubclass(kind, numbers.Real) and not issubclass(kind, (bool, np.bool_))


def _nested_shape(batch, rank, input_name):
    """The shape of `batch`, nested lists of `rank` dimensions holding numbers.

    Walks one depth at a time (never deeper than `rank`, so no nesting can exhaust the stack) and
    raises ServingError naming the first problem: a wrong depth, ragged lists, an empty dimension,
    or a value that is not a number. Returns the shape and the set of the leaves' types.
    """
    shape, level = [], [batch]
    for depth in range(rank):
        kinds = set(map(type, level))
        if kinds - {list}:
            raise ServingError(
                f"Input {input_name!r} must have {rank} dimensions (batch first), but holds "
                f"{'/'.join(_type_names(kinds - {list}))} values where a list of dimension "
                f"{depth} is expected."
            )
        lengths = set(map(len, level))
        if len(lengths) > 1:
            raise ServingError(
                f"Input {input_name!r} is ragged: dimension {depth} has lists of lengths "
                f"{_short(sorted(lengths))}; every instance needs the same shape."
            )
        (length,) = lengths
        if length == 0 and depth > 0:
            raise ServingError(
                f"Input {input_name!r} has an empty list in dimension {depth}: every dimension "
                "but the batch needs at least one value."
            )
        shape.append(length)
        level = [item for sublist in level for item in sublist]
    kinds = set(map(type, level))
    if list in kinds:
        raise ServingError(
            f"Input {input_name!r} has more than {rank} dimensions (batch first): the signature "
            f"takes rank {rank}."
        )
    if any(issubclass(kind, (bool, np.bool_)) for kind in kinds):
        raise ServingError(f"Input {input_name!r} holds booleans: send numbers (0 or 1), not true/false.")
    wrong = [kind for kind in kinds if not _is_number_type(kind)]
    if wrong:
        raise ServingError(
            f"Input {input_name!r} must hold numbers, received values of type {_type_names(wrong)}."
        )
    return tuple(shape), kinds


def _to_array(batch, spec, input_name):
    """Checks a JSON batch against the signature's input and converts it to its dtype."""
    import tensorflow as tf

    dtype = spec.dtype
    expected = spec.shape.as_list()
    if batch == []:
        # Batch 0: the graph answers with empty outputs of the right shape.
        empty = [0] + [1 if d is None else d for d in expected[1:]]
        return tf.zeros(empty, dtype)
    shape, kinds = _nested_shape(batch, len(expected), input_name)
    if any(want is not None and want != got for want, got in zip(expected, shape)):
        raise ServingError(
            f"Input {input_name!r} has shape {_shape_text(shape)} (batch first); the signature "
            f"expects {_shape_text(expected)}."
        )
    if dtype.is_floating or kinds != {int}:
        try:
            array = np.array(batch, dtype=np.float64)
        except OverflowError:
            raise ServingError(
                f"Input {input_name!r} holds an integer too large for any numeric dtype "
                f"(above 1.8e308); it takes {dtype.name} values."
            ) from None
        if not np.all(np.isfinite(array)):
            raise ServingError(f"Input {input_name!r} contains NaN or infinite values.")
    else:
        try:
            array = np.array(batch)
        except OverflowError:
            array = None
        if array is None or array.dtype == object:
            raise ServingError(
                f"Input {input_name!r} holds integers beyond the 64-bit range; it takes "
                f"{dtype.name} values in [{dtype.min}, {dtype.max}]."
            )
    _check_range(array, dtype, input_name)
    return tf.constant(array.astype(dtype.as_numpy_dtype))


def _check_range(array, dtype, input_name):
    if dtype.is_integer and array.dtype.kind == "f" and not np.all(array == np.round(array)):
        raise ServingError(
            f"Input {input_name!r} takes integers ({dtype.name}), received fractional values."
        )
    low, high = (-dtype.max, dtype.max) if dtype.is_floating else (dtype.min, dtype.max)
    if array.min() < low or array.max() > high:
        raise ServingError(
            f"Input {input_name!r} takes {dtype.name} values in [{low}, {high}], received values "
            f"in [{array.min()}, {array.max()}]."
        )


def _shape_text(shape):
    dims = shape.as_list() if hasattr(shape, "as_list") else list(shape)
    return "(" + ", ".join("None" if d is None else str(d) for d in dims) + ")"


def _graph_error_reason(message):
    """The line of a TensorFlow runtime error that says what was wrong, without the node trace."""
    boilerplate = ("Graph execution error", "Detected at node", "<stack traces")
    lines = [re.sub(r"\{\{[^}]*\}\}", "", line).strip() for line in message.splitlines()]
    reasons = [line for line in lines
               if line and not line.startswith(boilerplate) and not line.startswith("[[")]
    return reasons[-1] if reasons else "invalid input"


def predict(loaded, body, *, max_body_bytes=MAX_BODY_BYTES, max_instances=MAX_INSTANCES):
    """Answers a TF Serving REST predict body (dict, JSON str or bytes) from a loaded SavedModel.

    Args:
        loaded: the result of `load(path)`.
        body: the request: bytes (UTF-8 JSON), str (JSON) or an already parsed dict
            (JSON types only: lists, not numpy arrays).
        max_body_bytes: largest body accepted (for a str body, counted in characters).
        max_instances: largest batch accepted.

    Returns:
        `{"predictions": [...]}` for `instances` and `{"outputs": {...}}` for `inputs`.

    Raises:
        ServingError: naming what is wrong with a malformed request (`RequestTooLarge`, a
            subclass, for requests over the caps).
    """
    import tensorflow as tf

    body, request_format = _parse_body(body, max_body_bytes)
    signature_name = body.get("signature_name", DEFAULT_SIGNATURE)
    signature, input_name, spec, scalars = _signature(loaded, signature_name)
    if request_format == "instances":
        instances = body["instances"]
        if not isinstance(instances, list):
            raise ServingError("'instances' must be a list, one entry per example.")
        # A scalar input has no batch dimension: it cannot be given per instance (as in TF Serving).
        per_instance = sorted({key for item in instances if isinstance(item, dict)
                               for key in item if key in scalars})
        if per_instance:
            raise ServingError(
                f"{per_instance} are scalar inputs of signature {signature_name!r}: they have no "
                "batch dimension, so send them once, in the columnar format ('inputs')."
            )
        batch = [_unwrap_named(item, input_name, f"Instance {i}")[0]
                 for i, item in enumerate(instances)]
        given = {}
    else:
        batch, given = _unwrap_named(body["inputs"], input_name, "'inputs'", tuple(scalars))
    if isinstance(batch, list) and len(batch) > max_instances:
        raise RequestTooLarge(
            f"The request holds {len(batch)} instances, over the limit of {max_instances}: "
            "split it into smaller batches."
        )
    inputs = {input_name: _to_array(batch, spec, input_name),
              **_scalar_inputs(loaded, signature_name, scalars, given)}
    try:
        outputs = signature(**inputs)
    except tf.errors.InvalidArgumentError as error:
        # The exported graph checks its input too (shape, image size); say what it refused.
        refused = f"input {input_name!r}" if len(inputs) == 1 else f"inputs {sorted(inputs)}"
        raise ServingError(
            f"The model refused {refused}: {_graph_error_reason(error.message)}"
        ) from None
    except tf.errors.OpError as error:  # Not the request's fault: never a traceback either.
        raise ModelFailed(
            f"The model failed on this request ({type(error).__name__}): "
            f"{_short(_graph_error_reason(error.message), 200)}"
        ) from None
    outputs = {key: value.numpy() for key, value in outputs.items()}
    broken = sorted(key for key, value in outputs.items()
                    if value.dtype.kind == "f" and not np.all(np.isfinite(value)))
    if broken:
        raise NonFiniteOutput(
            f"The model's outputs {broken} hold NaN or infinite values for this request: its "
            "inputs are too large for the model in float32 (or the model's weights or "
            "preprocessing overflow). Nothing is answered."
        )
    if request_format == "inputs":
        return {"outputs": {key: value.tolist() for key, value in outputs.items()}}
    count = len(next(iter(outputs.values())))
    return {
        "predictions": [
            {key: value[i].tolist() for key, value in outputs.items()} for i in range(count)
        ]
    }


def respond(loaded, body, **limits):
    """`(200, predict(...))`, or `(status, {"error": message})` for a malformed request.

    `status` is 400, 413 for a request over the caps, or 500 when the graph itself fails
    (`ModelFailed`); `limits` are `predict`'s keywords.
    """
    try:
        return 200, predict(loaded, body, **limits)
    except ServingError as error:
        return error.status, {"error": str(error)}
