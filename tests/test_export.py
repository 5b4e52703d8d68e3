"""SavedModel export (TF Serving layout, signatures, preprocessing inside) and the REST helper."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from glonet_keras import GloNetCNN, GloNetMLP, ResNetCNN, analysis, serving
from glonet_keras.data import Preprocessing
from glonet_keras.export import export_saved_model, load_metadata

PREPROCESSING = Preprocessing(input_dtype="uint8", scale=1 / 255, mean=(0.5, 0.4, 0.3),
                              std=(0.2, 0.25, 0.3), image_size=(16, 16))


@pytest.fixture(scope="module")
def cnn_export(tmp_path_factory):
    model = GloNetCNN(depth=8, width=4, input_shape=(16, 16, 3), num_classes=5, dropout=0.5)
    export_dir = str(tmp_path_factory.mktemp("serving"))
    path = export_saved_model(model, export_dir, version=3, preprocessing=PREPROCESSING,
                              model_name="cnn")
    return model, path, tf.saved_model.load(path)


def _images(batch, height=16, width=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def test_layout_signatures_and_metadata(cnn_export):
    model, path, loaded = cnn_export
    assert path.endswith(os.path.join("cnn", "3"))
    assert os.path.exists(os.path.join(path, "saved_model.pb"))
    assert {"serving_default", "serve", "early_exits"} <= set(loaded.signatures)
    _, inputs = loaded.signatures["serving_default"].structured_input_signature
    assert list(inputs) == ["images"]
    assert inputs["images"].dtype == tf.uint8 and inputs["images"].shape.as_list() == [None, None, None, 3]
    assert set(loaded.signatures["serve"].structured_outputs) == {"logits", "probabilities"}
    metadata = load_metadata(path)
    assert metadata["preprocessing"] == PREPROCESSING.to_dict()
    assert metadata["input_name"] == "images" and metadata["num_blocks"] == model.num_blocks


@pytest.mark.parametrize("batch", [1, 7])
def test_round_trip_equals_keras_with_preprocessing_inside(cnn_export, batch):
    model, _, loaded = cnn_export
    images = _images(batch, 20, 13)  # any size: resized inside the graph
    outputs = loaded.signatures["serving_default"](images=tf.constant(images))
    # Dropout (0.5) must be off: training=False in the trace.
    expected = np.asarray(model(PREPROCESSING(images), training=False))
    np.testing.assert_allclose(outputs["logits"].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(outputs["probabilities"].numpy(), tf.nn.softmax(expected).numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(outputs["probabilities"].numpy().sum(axis=1), 1.0, atol=1e-5)


def test_early_exit_signature(cnn_export):
    model, _, loaded = cnn_export
    images = _images(4)
    exits = loaded.signatures["early_exits"](images=tf.constant(images))["logits"].numpy()
    assert exits.shape == (4, model.num_blocks, 5)
    expected = analysis.early_exit_logits(model, PREPROCESSING(images).numpy())
    np.testing.assert_allclose(exits, expected, atol=1e-5)
    # The last prefix is the full model.
    full = loaded.signatures["serve"](images=tf.constant(images))["logits"].numpy()
    np.testing.assert_allclose(exits[:, -1], full, atol=1e-5)


def test_saved_model_cli_lists_the_signatures(cnn_export):
    _, path, _ = cnn_export
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True,
                           check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")).stdout
    for signature in ("serving_default", "serve", "early_exits"):
        assert f"signature_def['{signature}']" in shown
    assert "inputs['images']" in shown and "outputs['probabilities']" in shown


def test_baseline_without_aggregation_has_no_early_exits_and_float_inputs(tmp_path):
    model = ResNetCNN(depth=8, width=4, input_shape=(12, 12, 1), num_classes=3)
    path = export_saved_model(model, str(tmp_path), version=1)
    loaded = tf.saved_model.load(path)
    assert "early_exits" not in loaded.signatures
    _, inputs = loaded.signatures["serving_default"].structured_input_signature
    assert inputs["images"].dtype == tf.float32 and inputs["images"].shape.as_list() == [None, 12, 12, 1]
    x = np.random.default_rng(1).random((3, 12, 12, 1)).astype("float32")
    np.testing.assert_allclose(loaded.serve(x)["logits"].numpy(),
                               np.asarray(model(x, training=False)), atol=1e-5)


def test_export_errors(tmp_path):
    model = GloNetMLP(num_blocks=2, width=4, input_shape=(5,), num_classes=2)
    export_saved_model(model, str(tmp_path), version=1)
    with pytest.raises(FileExistsError, match="exists"):
        export_saved_model(model, str(tmp_path), version=1)
    with pytest.raises(ValueError, match="version"):
        export_saved_model(model, str(tmp_path), version=0)
    with pytest.raises(ValueError, match="Unknown task"):
        export_saved_model(model, str(tmp_path), version=2, task="ranking")


@pytest.fixture(scope="module")
def mlp_loaded(tmp_path_factory):
    model = GloNetMLP(num_blocks=3, width=8, input_shape=(4,), num_classes=3)
    preprocessing = Preprocessing(mean=(1.0, 2.0, 3.0, 4.0), std=(2.0, 2.0, 2.0, 2.0))
    path = export_saved_model(model, str(tmp_path_factory.mktemp("mlp")), version=1,
                              preprocessing=preprocessing)
    return model, preprocessing, serving.load(path)


def test_rest_row_and_columnar_formats(mlp_loaded):
    model, preprocessing, loaded = mlp_loaded
    x = np.arange(8, dtype="float32").reshape(2, 4)
    expected = np.asarray(model(preprocessing(x), training=False))
    rows = serving.predict(loaded, json.dumps({"instances": x.tolist()}))
    assert len(rows["predictions"]) == 2
    np.testing.assert_allclose([p["logits"] for p in rows["predictions"]], expected, atol=1e-5)
    named = serving.predict(loaded, {"instances": [{"features": row} for row in x.tolist()]})
    assert named == rows
    columns = serving.predict(loaded, {"inputs": {"features": x.tolist()}})
    np.testing.assert_allclose(columns["outputs"]["logits"], expected, atol=1e-5)
    exits = serving.predict(loaded, {"signature_name": "early_exits", "inputs": x.tolist()})
    assert np.asarray(exits["outputs"]["logits"]).shape == (2, 3, 3)


@pytest.mark.parametrize(
    "body, message",
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "must be a JSON object"),
        ({"instance": [[1, 2, 3, 4]]}, "Unknown request keys \\['instance'\\]"),
        ({"instances": [[1, 2, 3, 4]], "inputs": [[1, 2, 3, 4]]}, "exactly one of"),
        ({"instances": []}, "non-empty list"),
        ({"instances": [[1, 2, 3]]}, "shape \\(1, 3\\).*expects \\(None, 4\\)"),
        ({"instances": [[1, 2, 3, 4], [1, 2]]}, "ragged"),
        ({"instances": [["a", "b", "c", "d"]]}, "must hold numbers"),
        ({"instances": [{"images": [1, 2, 3, 4]}]}, "only input is 'features'"),
        ('{"instances": [[1, 2, NaN, 4]]}', "NaN or infinite"),
        ({"signature_name": "predict", "instances": [[1, 2, 3, 4]]}, "Unknown signature 'predict'"),
    ],
)
def test_malformed_requests_get_clear_errors(mlp_loaded, body, message):
    _, _, loaded = mlp_loaded
    with pytest.raises(serving.ServingError, match=message):
        serving.predict(loaded, body)
    status, response = serving.respond(loaded, body)
    assert status == 400 and "error" in response


def test_uint8_requests_are_range_checked(cnn_export):
    _, _, loaded = cnn_export
    status, response = serving.respond(loaded, {"instances": _images(2).tolist()})
    assert status == 200 and len(response["predictions"]) == 2
    with pytest.raises(serving.ServingError, match="uint8 values in \\[0, 255\\]"):
        serving.predict(loaded, {"instances": (_images(1).astype(int) + 300).tolist()})
    with pytest.raises(serving.ServingError, match="fractional"):
        serving.predict(loaded, {"instances": (_images(1) / 2.0 + 0.25).tolist()})
