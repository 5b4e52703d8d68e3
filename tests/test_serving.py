"""The REST helper: TF Serving's request formats, and a fuzz test of hostile requests.

Every hostile body must get a 4xx JSON error with a message that says what is wrong: never an
exception, a hang, a 200 with garbage, or a message that floods the log.
"""

import json
import re
import time

import numpy as np
import pytest
import tensorflow as tf

from glonet_keras import GloNetCNN, GloNetMLP
from glonet_keras.deploy import serving
from glonet_keras.deploy.export import export_saved_model
from glonet_keras.data.preprocessing import Preprocessing

MLP_PREPROCESSING = Preprocessing(mean=(1.0, 2.0, 3.0, 4.0), std=(2.0, 2.0, 2.0, 2.0))
CNN_PREPROCESSING = Preprocessing(input_dtype="uint8", scale=1 / 255, mean=(0.5,), std=(0.25,))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two exports: `mlp` takes float32 `features` (None, 4); `cnn` uint8 `images` (None, 8, 8, 3)."""
    export_dir = tmp_path_factory.mktemp("serving")
    mlp = GloNetMLP(num_blocks=3, width=8, input_shape=(4,), num_classes=3)
    cnn = GloNetCNN(depth=8, width=4, input_shape=(8, 8, 3), num_classes=5)
    return {
        "mlp": (mlp, serving.load(export_saved_model(mlp, export_dir, model_name="mlp",
                                                     preprocessing=MLP_PREPROCESSING))),
        "cnn": (cnn, serving.load(export_saved_model(cnn, export_dir, model_name="cnn",
                                                     preprocessing=CNN_PREPROCESSING))),
    }


ROW = [1.0, 2.0, 3.0, 4.0]
IMAGE = np.zeros((8, 8, 3), "int64").tolist()


def _image_with(value):
    image = np.zeros((8, 8, 3), "int64").tolist()
    image[3][4][1] = value
    return image


def _nested(depth):
    value = [1.0]
    for _ in range(depth):
        value = [value]
    return value


# (model, body, status, what the message must say). Bodies are bytes, str (JSON text) or dicts.
HOSTILE = [
    # The body itself.
    ("mlp", b"\xff\xfe\x00garbage", 400, "not UTF-8"),
    ("mlp", b'{"instances": [[1, 2, 3, 4]]}\xff', 400, "not UTF-8"),
    ("mlp", b"\xc3\x28", 400, "not UTF-8"),
    ("mlp", "", 400, "not valid JSON"),
    ("mlp", "{not json", 400, "not valid JSON"),
    ("mlp", '{"instances": [[1, 2, 3, 4]]', 400, "not valid JSON"),
    ("mlp", "[" * 100_000, 400, "nested too deeply"),
    ("mlp", '{"instances": ' + "[" * 50_000 + "]" * 50_000 + "}", 400, "nested too deeply"),
    ("mlp", '{"instances": [[' + "1" * 5000 + ", 2, 3, 4]]}", 400, "not valid JSON.*digits"),
    ("mlp", b'\xef\xbb\xbf{"instances": [[1, 2, 3, 4]]}', 400, "not valid JSON.*BOM"),
    ("mlp", "null", 400, "must be a JSON object, received NoneType"),
    ("mlp", "[[1, 2, 3, 4]]", 400, "must be a JSON object, received list"),
    ("mlp", '"instances"', 400, "must be a JSON object, received str"),
    ("mlp", "42", 400, "must be a JSON object, received int"),
    # Its keys.
    ("mlp", {}, 400, "exactly one of 'instances' or 'inputs', found neither"),
    ("mlp", {"instance": [ROW]}, 400, r"Unknown request keys \['instance'\]"),
    ("mlp", {"instances": [ROW], "inputs": [ROW]}, 400, "exactly one of"),
    ("mlp", '{"\\ud800": 1}', 400, "Unknown request keys"),
    ("mlp", {f"key_{i}": 0 for i in range(10_000)}, 400, "Unknown request keys"),
    ("mlp", {"signature_name": "predict", "instances": [ROW]}, 400, "Unknown signature 'predict'"),
    ("mlp", {"signature_name": None, "instances": [ROW]}, 400, "must be a string, received None"),
    ("mlp", {"signature_name": ["serve"], "instances": [ROW]}, 400, "must be a string"),
    ("mlp", {"signature_name": "x" * 100_000, "instances": [ROW]}, 400, "Unknown signature 'xxx"),
    # The structure of the batch.
    ("mlp", {"instances": "abc"}, 400, "'instances' must be a list"),
    ("mlp", {"instances": {"features": [ROW]}}, 400, "'instances' must be a list"),
    ("mlp", {"instances": 5}, 400, "'instances' must be a list"),
    ("mlp", {"instances": [[1, 2, 3]]}, 400, r"shape \(1, 3\) \(batch first\); the signature expects \(None, 4\)"),
    ("mlp", {"instances": [ROW, [1, 2]]}, 400, "ragged: dimension 1 has lists of lengths \\[2, 4\\]"),
    ("mlp", {"instances": [ROW, 5]}, 400, "must have 2 dimensions.*int values where a list"),
    ("mlp", {"instances": ROW}, 400, "must have 2 dimensions.*float values where a list"),
    ("mlp", {"instances": [[ROW]]}, 400, "more than 2 dimensions"),
    ("mlp", {"instances": [[1, 2, 3, [4]]]}, 400, "more than 2 dimensions"),
    ("mlp", {"instances": [[]]}, 400, "empty list in dimension 1"),
    ("mlp", {"instances": _nested(500)}, 400, "more than 2 dimensions"),
    ("mlp", {"instances": [["a", "b", "c", "d"]]}, 400, r"must hold numbers, received values of type \['str'\]"),
    ("mlp", {"instances": [[None, 1, 2, 3]]}, 400, r"must hold numbers, received values of type \['null'\]"),
    ("mlp", {"instances": [[{"a": 1}, 1, 2, 3]]}, 400, r"must hold numbers.*\['dict'\]"),
    ("mlp", {"instances": [[True, False, True, False]]}, 400, "holds booleans"),
    ("mlp", {"instances": [[1, True, 2, 3]]}, 400, "holds booleans"),
    ("mlp", {"instances": [{"images": ROW}]}, 400, "only input is 'features'"),
    ("mlp", {"instances": [{"features": ROW, "extra": 1}]}, 400, "names inputs"),
    ("mlp", {"inputs": {"images": [ROW]}}, 400, "only input is 'features'"),
    ("mlp", {"inputs": "abc"}, 400, "must have 2 dimensions.*str values"),
    ("mlp", {"inputs": 3.5}, 400, "must have 2 dimensions.*float values"),
    ("mlp", {"inputs": None}, 400, "must have 2 dimensions.*null values"),
    ("mlp", {"inputs": [[1, 2, 3]]}, 400, r"shape \(1, 3\)"),
    # The values.
    ("mlp", '{"instances": [[1, 2, NaN, 4]]}', 400, "NaN or infinite"),
    ("mlp", '{"instances": [[1, 2, Infinity, 4]]}', 400, "NaN or infinite"),
    ("mlp", '{"instances": [[1, 2, -Infinity, 4]]}', 400, "NaN or infinite"),
    ("mlp", '{"instances": [[1, 2, 1e400, 4]]}', 400, "NaN or infinite"),
    ("mlp", {"instances": [[1, 2, 1e39, 4]]}, 400, r"takes float32 values in \[-3.4\d*e\+38"),
    ("mlp", {"instances": [[1, 2, -1e39, 4]]}, 400, "takes float32 values in"),
    ("mlp", {"instances": [[1, 2, 10**400, 4]]}, 400, "integer too large for any numeric dtype"),
    ("cnn", {"instances": [_image_with(300)]}, 400, r"takes uint8 values in \[0, 255\]"),
    ("cnn", {"instances": [_image_with(-1)]}, 400, r"takes uint8 values in \[0, 255\]"),
    ("cnn", {"instances": [_image_with(1.5)]}, 400, "takes integers \\(uint8\\), received fractional"),
    ("cnn", {"instances": [_image_with(2**64)]}, 400, "integers beyond the 64-bit range"),
    ("cnn", {"instances": [_image_with(10**400)]}, 400, "integers beyond the 64-bit range"),
    ("cnn", {"instances": [_image_with(True)]}, 400, "holds booleans"),
    ("cnn", {"instances": [IMAGE[:7]]}, 400, r"shape \(1, 7, 8, 3\).*expects \(None, 8, 8, 3\)"),
    ("cnn", {"instances": [np.zeros((8, 8, 1), "int64").tolist()]}, 400, r"shape \(1, 8, 8, 1\)"),
    ("cnn", {"instances": [np.zeros((8, 8), "int64").tolist()]}, 400, "must have 4 dimensions"),
    # Size caps (413 Payload Too Large).
    ("mlp", b" " * (serving.MAX_BODY_BYTES + 1), 413, "over the limit of 16777216"),
    ("mlp", {"instances": [ROW] * (serving.MAX_INSTANCES + 1)}, 413, "1025 instances, over the limit of 1024"),
    ("mlp", {"inputs": [ROW] * (serving.MAX_INSTANCES + 1)}, 413, "over the limit of 1024"),
]


def _check_refused(loaded, body, status, message, **limits):
    start = time.monotonic()
    got_status, response = serving.respond(loaded, body, **limits)
    assert time.monotonic() - start < 10  # never a hang
    assert (got_status, list(response)) == (status, ["error"]), response
    error = response["error"]
    assert isinstance(error, str) and re.search(message, error), error
    assert len(error) < 400, error  # a huge request value cannot flood the answer
    json.dumps(response).encode("utf-8")  # always sendable as a JSON body


@pytest.mark.parametrize("model, body, status, message", HOSTILE,
                         ids=[f"{i}-{case[3][:30]}" for i, case in enumerate(HOSTILE)])
def test_hostile_requests_get_a_clear_4xx(exported, model, body, status, message):
    _check_refused(exported[model][1], body, status, message)
    with pytest.raises(serving.ServingError, match=message):
        serving.predict(exported[model][1], body)


def test_the_caps_can_be_set_per_call(exported):
    _, loaded = exported["mlp"]
    body = json.dumps({"instances": [ROW] * 3})
    assert serving.respond(loaded, body)[0] == 200
    _check_refused(loaded, body, 413, f"{len(body)} bytes, over the limit of 20", max_body_bytes=20)
    _check_refused(loaded, body, 413, "3 instances, over the limit of 2", max_instances=2)


def test_the_graph_refusing_an_input_is_a_400_with_its_reason(tmp_path):
    # Defence in depth: a signature whose declared shape is looser than what its graph accepts.
    module = tf.Module()
    module.serve = tf.function(lambda x: {"y": tf.ensure_shape(x, (None, 4)) * 2.0},
                               input_signature=[tf.TensorSpec((None, None), tf.float32, name="x")])
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.serve})
    loaded = serving.load(str(tmp_path))
    _check_refused(loaded, {"instances": [[1, 2, 3]]}, 400,
                   r"The model refused input 'x': Shape of tensor x \[1,3\] is not compatible "
                   r"with expected shape \[\?,4\]\.$")


def test_a_model_answering_nan_is_a_400_never_a_200_with_nan(tmp_path):
    # JSON has no NaN: a 200 carrying one (weights or preprocessing overflowing float32) would not
    # even parse in a strict client, and would look like an answer in a lenient one.
    module = tf.Module()
    module.serve = tf.function(lambda x: {"y": x * 1e30, "z": x},
                               input_signature=[tf.TensorSpec((None, 2), tf.float32, name="x")])
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.serve})
    loaded = serving.load(str(tmp_path))
    assert serving.respond(loaded, {"instances": [[1.0, 2.0]]})[0] == 200
    _check_refused(loaded, {"instances": [[1e10, 2.0]]}, 400, r"outputs \['y'\] hold NaN or infinite")
    _check_refused(loaded, {"inputs": [[-1e10, 0.0]]}, 400, "too large for the model in float32")


def test_a_graph_failing_for_another_reason_is_a_500_not_an_exception(tmp_path):
    # Out of memory, a missing file the graph reads...: the server's fault, answered in JSON.
    module = tf.Module()
    module.serve = tf.function(
        lambda x: {"y": tf.strings.length(tf.io.read_file(tf.strings.as_string(x[0, 0]) + "/no"))},
        input_signature=[tf.TensorSpec((None, 1), tf.float32, name="x")])
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.serve})
    _check_refused(serving.load(str(tmp_path)), {"instances": [[1.0]]}, 500,
                   "The model failed on this request \\(NotFoundError\\)")


def test_row_and_columnar_formats(exported):
    model, loaded = exported["mlp"]
    x = np.arange(8, dtype="float32").reshape(2, 4)
    expected = np.asarray(model(MLP_PREPROCESSING(x), training=False))
    rows = serving.predict(loaded, json.dumps({"instances": x.tolist()}))
    assert len(rows["predictions"]) == 2
    np.testing.assert_allclose([p["logits"] for p in rows["predictions"]], expected, atol=1e-5)
    named = serving.predict(loaded, {"instances": [{"features": row} for row in x.tolist()]})
    assert named == rows
    assert serving.predict(loaded, json.dumps({"instances": x.tolist()}).encode()) == rows
    _check_refused(loaded, {"instances": [x[0]]}, 400, "holds ndarray values")  # JSON types only
    columns = serving.predict(loaded, {"inputs": {"features": x.tolist()}})
    np.testing.assert_allclose(columns["outputs"]["logits"], expected, atol=1e-5)
    exits = serving.predict(loaded, {"signature_name": "early_exits", "inputs": x.tolist()})
    assert np.asarray(exits["outputs"]["logits"]).shape == (2, 3, 3)


def test_integers_and_large_finite_values_are_accepted(exported):
    _, loaded = exported["mlp"]
    status, response = serving.respond(loaded, {"instances": [[1, 2, 3, 4], [3e8, -3e8, 0, 10**9]]})
    assert status == 200 and len(response["predictions"]) == 2
    # In float32's range, but the logits overflow: a 400 that says so, never NaN in a 200.
    _check_refused(loaded, {"instances": [[3e38, -3e38, 0, 10**30]]}, 400, "NaN or infinite")
    model, loaded = exported["cnn"]
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3))
    status, response = serving.respond(loaded, {"instances": images.tolist()})
    assert status == 200
    expected = np.asarray(model(CNN_PREPROCESSING(images.astype("uint8")), training=False))
    np.testing.assert_allclose([p["logits"] for p in response["predictions"]], expected, atol=1e-5)
    as_floats = serving.predict(loaded, {"instances": images.astype(float).tolist()})  # 3.0 is 3
    assert as_floats == response


@pytest.mark.parametrize("signature, shape", [("serving_default", (0, 3)), ("early_exits", (0, 3, 3))])
def test_a_batch_of_zero_gets_an_empty_answer(exported, signature, shape):
    # As TF Serving: 200 and empty lists, not an error.
    _, loaded = exported["mlp"]
    assert serving.respond(loaded, {"signature_name": signature, "instances": []}) == (
        200, {"predictions": []})
    status, response = serving.respond(loaded, {"signature_name": signature, "inputs": []})
    assert status == 200 and set(response["outputs"]) == {"logits", "probabilities"}
    assert all(value == [] for value in response["outputs"].values())
    assert serving.respond(exported["cnn"][1], {"instances": []}) == (200, {"predictions": []})


def _random_json(rng, depth=0):
    kind = rng.integers(0, 9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return bool(rng.integers(0, 2))
    if kind == 2:
        return int(rng.choice([0, 1, -1, 255, 256, 2**31, 2**63, 2**64, -(2**70)]))
    if kind == 3:
        return float(rng.choice([0.5, -1e39, 1e39, 3.4e38, 1e-320, float("nan"), float("inf")]))
    if kind == 4:
        return "".join(map(chr, rng.integers(1, 0x2FF, rng.integers(0, 6))))
    if kind == 5:
        return [float(v) for v in rng.normal(size=rng.integers(0, 6))]
    if kind in (6, 7):
        return [_random_json(rng, depth + 1) for _ in range(rng.integers(0, 4))]
    keys = ["instances", "inputs", "signature_name", "features", "images", "x"]
    return {str(rng.choice(keys)): _random_json(rng, depth + 1) for _ in range(rng.integers(0, 3))}


def _random_leaf(rng):
    """Mostly a plain number; sometimes a value the input cannot take."""
    if rng.random() < 0.8:
        return float(rng.normal())
    return [True, None, "1", 1e39, -1e39, float("nan"), float("inf"), 10**400, 2**64, [1.0],
            {"x": 1}][rng.integers(0, 11)]


def _random_bodies(count, seed=0):
    """Random bytes, mutated valid bodies, random JSON documents and random batches (fixed seed)."""
    rng = np.random.default_rng(seed)
    valid = json.dumps({"instances": [ROW, ROW]}).encode()
    for i in range(count):
        kind = i % 4
        if kind == 0:
            yield bytes(rng.integers(0, 256, rng.integers(0, 300), dtype=np.uint8))
        elif kind == 1:
            body = bytearray(valid)
            for _ in range(rng.integers(1, 4)):
                position = int(rng.integers(0, len(body)))
                action = rng.integers(0, 3)
                if action == 0:
                    body[position] = int(rng.integers(0, 256))
                elif action == 1:
                    del body[position:]
                else:
                    body[position:position] = bytes(rng.integers(0, 256, 3, dtype=np.uint8))
                if not body:
                    break
            yield bytes(body)
        elif kind == 2:
            body = {"instances": _random_json(rng)} if i % 2 else _random_json(rng)
            yield json.dumps(body).encode()
        else:
            rows = [[_random_leaf(rng) for _ in range(rng.choice([4, 4, 4, 3, 5]))]
                    for _ in range(rng.integers(0, 4))]
            yield json.dumps({"instances" if i % 2 else "inputs": rows}).encode()


def test_random_bodies_never_escape_or_hang(exported):
    # Property: whatever the bytes, the answer is a status and a JSON dict, within a few seconds.
    _, loaded = exported["mlp"]
    statuses = {}
    for body in _random_bodies(600):
        start = time.monotonic()
        status, response = serving.respond(loaded, body)
        assert time.monotonic() - start < 10
        json.dumps(response).encode("utf-8")
        if status == 200:
            assert set(response) in ({"predictions"}, {"outputs"}), response
        else:
            assert status == 400 and list(response) == ["error"] and response["error"], response
        statuses[status] = statuses.get(status, 0) + 1
    # Most random bodies are malformed and say so; the well-formed ones are answered.
    assert statuses[400] > 400 and statuses[200] > 20, statuses
