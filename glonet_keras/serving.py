"""Answering TF Serving REST predict requests from a loaded SavedModel, without the server binary.

The contract is TF Serving's `POST /v1/models/<name>[/versions/<v>]:predict` body:

- row format: `{"signature_name": "...", "instances": [example, ...]}` where an example is the raw
  input of one item (or `{"<input name>": value}`); answered with `{"predictions": [...]}`, one
  entry per instance: a `{"logits": ..., "probabilities": ...}` dict (TF Serving's shape for
  signatures with several outputs).
- columnar format: `{"signature_name": "...", "inputs": batch}` (or `{"inputs": {"<input name>":
  batch}}`); answered, as TF Serving does, with `{"outputs": {"logits": [...], ...}}`.

`predict(loaded, body)` raises `ServingError` (a ValueError) with a message that says what is wrong
with a malformed request: not JSON, wrong or extra keys, unknown signature, ragged or wrongly shaped
instances, values of the wrong type, out of range for uint8, or not finite. `respond(loaded, body)`
wraps it as `(http_status, json_dict)` with TF Serving's `{"error": message}` body on status 400.
"""

import json

import numpy as np

DEFAULT_SIGNATURE = "serving_default"
_ALLOWED_KEYS = {"signature_name", "instances", "inputs"}


class ServingError(ValueError):
    """A request the model cannot answer; the message says why (HTTP 400)."""


def load(path):
    """Loads an exported version directory (`<export_dir>/<name>/<version>`)."""
    import tensorflow as tf

    return tf.saved_model.load(path)


def _parse_body(body):
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except json.JSONDecodeError as error:
            raise ServingError(f"The request body is not valid JSON: {error}.") from None
    if not isinstance(body, dict):
        raise ServingError(
            f"The request body must be a JSON object, received {type(body).__name__}."
        )
    unknown = set(body) - _ALLOWED_KEYS
    if unknown:
        raise ServingError(
            f"Unknown request keys {sorted(unknown)}: use 'instances' (row format) or 'inputs' "
            "(columnar format), and optionally 'signature_name'."
        )
    formats = [key for key in ("instances", "inputs") if key in body]
    if len(formats) != 1:
        raise ServingError(
            "The request must contain exactly one of 'instances' or 'inputs', found "
            f"{formats or 'neither'}."
        )
    return body, formats[0]


def _signature(loaded, name):
    if not isinstance(name, str):
        raise ServingError(f"'signature_name' must be a string, received {name!r}.")
    if name not in loaded.signatures:
        raise ServingError(
            f"Unknown signature {name!r}. This model has {sorted(loaded.signatures.keys())}."
        )
    signature = loaded.signatures[name]
    _, specs = signature.structured_input_signature
    if len(specs) != 1:
        raise ServingError(f"Signature {name!r} takes {len(specs)} inputs; this helper serves one.")
    ((input_name, spec),) = specs.items()
    return signature, input_name, spec


def _unwrap_named(value, input_name, where):
    """Accepts `{"<input name>": value}` in place of `value`."""
    if isinstance(value, dict):
        if set(value) != {input_name}:
            raise ServingError(
                f"{where} names inputs {sorted(value)}, but the signature's only input is "
                f"{input_name!r}."
            )
        return value[input_name]
    return value


def _to_array(batch, spec, input_name):
    import tensorflow as tf

    dtype = spec.dtype
    try:
        array = np.asarray(batch)
    except ValueError:
        array = None
    if array is None or array.dtype == object:
        raise ServingError(
            f"Input {input_name!r} is ragged or mixes types: every instance needs the same shape "
            f"{_shape_text(spec.shape[1:])} and numeric values."
        )
    if array.dtype.kind not in "biuf":
        raise ServingError(
            f"Input {input_name!r} must hold numbers, received values of type {array.dtype.name}."
        )
    expected = spec.shape
    if array.ndim != expected.rank or any(
        want is not None and want != got for want, got in zip(expected.as_list(), array.shape)
    ):
        raise ServingError(
            f"Input {input_name!r} has shape {_shape_text(array.shape)} (batch first); the signature "
            f"expects {_shape_text(expected)}."
        )
    if array.shape[0] == 0:
        raise ServingError(f"Input {input_name!r} has no instances.")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ServingError(f"Input {input_name!r} contains NaN or infinite values.")
    if dtype.is_integer:
        if array.dtype.kind == "f" and not np.all(array == np.round(array)):
            raise ServingError(
                f"Input {input_name!r} takes integers ({dtype.name}), received fractional values."
            )
        if array.min() < dtype.min or array.max() > dtype.max:
            raise ServingError(
                f"Input {input_name!r} takes {dtype.name} values in [{dtype.min}, {dtype.max}], "
                f"received values in [{array.min()}, {array.max()}]."
            )
    return tf.constant(array.astype(dtype.as_numpy_dtype))


def _shape_text(shape):
    dims = shape.as_list() if hasattr(shape, "as_list") else list(shape)
    return "(" + ", ".join("None" if d is None else str(d) for d in dims) + ")"


def predict(loaded, body):
    """Answers a TF Serving REST predict body (dict, JSON str or bytes) from a loaded SavedModel.

    Returns `{"predictions": [...]}` for `instances` and `{"outputs": {...}}` for `inputs`.
    Raises ServingError naming what is wrong with a malformed request.
    """
    body, request_format = _parse_body(body)
    signature, input_name, spec = _signature(loaded, body.get("signature_name", DEFAULT_SIGNATURE))
    if request_format == "instances":
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ServingError("'instances' must be a non-empty list, one entry per example.")
        batch = [_unwrap_named(item, input_name, f"Instance {i}") for i, item in enumerate(instances)]
    else:
        batch = _unwrap_named(body["inputs"], input_name, "'inputs'")
    outputs = signature(**{input_name: _to_array(batch, spec, input_name)})
    outputs = {key: value.numpy() for key, value in outputs.items()}
    if request_format == "inputs":
        return {"outputs": {key: value.tolist() for key, value in outputs.items()}}
    count = len(next(iter(outputs.values())))
    return {
        "predictions": [
            {key: value[i].tolist() for key, value in outputs.items()} for i in range(count)
        ]
    }


def respond(loaded, body):
    """`(200, predict(...))`, or `(400, {"error": message})` for a malformed request."""
    try:
        return 200, predict(loaded, body)
    except ServingError as error:
        return 400, {"error": str(error)}
