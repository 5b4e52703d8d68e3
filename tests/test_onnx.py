"""ONNX export run in ONNX Runtime: serve, exit_k and anytime graphs equal Keras to 1e-4 relative,
the anytime graph keeps each further block in an If branch, and nothing half-written is left."""

import collections
import os
from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime
import pytest

from glonet_keras import GloNetCNN, GloNetMLP, GloNetViT, analysis, deploy, presets
from glonet_keras.data import load_arrays
from glonet_keras.deploy.onnx_export import export_onnx, load_metadata, onnx_paths
from glonet_keras.data.preprocessing import Preprocessing
from tests.harness import relative_error

REPO_ROOT = Path(__file__).resolve().parent.parent
CNN_PREPROCESSING = Preprocessing(input_dtype="uint8", scale=1 / 255, mean=(0.5, 0.4, 0.3),
                                  std=(0.2, 0.25, 0.3), image_size=(12, 12))


def _run(path, **feeds):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def test_cnn_serve_and_exits_equal_keras_with_preprocessing_inside(tmp_path):
    model = GloNetCNN(depth=14, width=4, input_shape=(12, 12, 3), num_classes=5, dropout=0.5)
    files = export_onnx(model, tmp_path / "cnn.onnx", exits=[1, 4], preprocessing=CNN_PREPROCESSING)
    assert files == onnx_paths(tmp_path / "cnn.onnx", [1, 4])
    assert sorted(os.listdir(tmp_path)) == ["cnn.onnx", "cnn_exit_1.onnx", "cnn_exit_4.onnx"]
    images = np.random.default_rng(0).integers(0, 256, (4, 17, 9, 3), dtype=np.uint8)  # resized
    ready = CNN_PREPROCESSING(images)
    served = _run(files["serve"], images=images)
    expected = np.asarray(model(ready, training=False))  # dropout off
    assert relative_error(served["logits"], expected) < 1e-4
    assert relative_error(served["probabilities"], keras.ops.softmax(expected)) < 1e-4
    for k in (1, 4):
        exit_logits = _run(files[f"exit_{k}"], images=images)["logits"]
        assert relative_error(exit_logits, analysis.truncate(model, k).predict(ready, verbose=0)) < 1e-4
    metadata = load_metadata(files["exit_4"])
    assert metadata["signature"] == "exit_4" and metadata["preprocessing"] == CNN_PREPROCESSING.to_dict()
    session = onnxruntime.InferenceSession(files["serve"], providers=["CPUExecutionProvider"])
    (images_input,) = session.get_inputs()
    assert images_input.name == "images" and images_input.type == "tensor(uint8)"
    assert images_input.shape[0] == "batch"
    assert _run(files["serve"], images=np.zeros((0, 12, 12, 3), np.uint8))["logits"].shape == (0, 5)
    with pytest.raises(Exception, match="Invalid rank"):
        _run(files["serve"], images=np.zeros((12, 12, 3), np.uint8))


def test_the_digits_preset_and_its_anytime_graph(tmp_path):
    model = presets.load_preset_directory(REPO_ROOT / "zoo" / "glonet_mlp_digits")
    _, (raw, labels) = load_arrays("digits", seed=0)
    files = export_onnx(model, tmp_path / "digits.onnx", exits=[4], anytime=True)
    ready = model.preprocessing(raw)
    served = _run(files["serve"], features=raw)["logits"]
    assert relative_error(served, model.predict(ready, verbose=0)) < 1e-4
    published = model.preset_metadata["metrics"]["test_accuracy"]
    assert np.mean(served.argmax(-1) == labels) == pytest.approx(published)
    exit_logits = analysis.early_exit_logits(model, ready)
    for threshold in (0.0, 0.9, 0.99, 1.0):
        answer = _run(files["anytime"], features=raw, threshold=np.array(threshold, np.float32))
        exits, logits = deploy.first_confident_exits(exit_logits, threshold)
        np.testing.assert_array_equal(answer["exit"], exits)
        assert relative_error(answer["logits"], logits) < 1e-4, threshold
    assert load_metadata(files["anytime"])["defaults"] == {"threshold": 0.9}


def test_a_vit_with_exact_gelu_converts_and_equals_keras(tmp_path):
    # TensorFlow's exact GELU is built on Erfc, which tf2onnx 1.17 cannot convert: the export
    # rewrites it as 1 - Erf. The ViT presets use this GELU, so every ViT failed before.
    model = GloNetViT(num_blocks=2, hidden_dim=8, num_heads=2, mlp_dim=16, patch_size=4,
                      input_shape=(8, 8, 1), num_classes=3)
    files = export_onnx(model, tmp_path / "vit.onnx", anytime=True)
    x = np.random.default_rng(0).normal(scale=3.0, size=(5, 8, 8, 1)).astype("float32")
    expected = np.asarray(model(x, training=False))
    assert relative_error(_run(files["serve"], images=x)["logits"], expected) < 1e-4
    answer = _run(files["anytime"], images=x, threshold=np.array(1.0, np.float32))
    assert relative_error(answer["logits"], expected) < 1e-4 and answer["exit"].tolist() == [2] * 5
    assert all(node.op_type != "Erfc" for node in onnx.load(files["serve"]).graph.node)


@pytest.mark.parametrize("activation", ["gelu", "celu"])  # TensorFlow's Erfc and Expm1
def test_rewritten_ops_keep_their_activation_at_extreme_values(tmp_path, activation):
    # Of Keras' activations, these two became ops tf2onnx 1.17 cannot convert.
    features = keras.Input((25,), name="features")
    model = keras.Model(features, keras.layers.Activation(activation)(features))
    x = np.concatenate([np.linspace(-30.0, 30.0, 24), [1e-7]]).astype("float32")[None]
    files = export_onnx(model, tmp_path / f"{activation}.onnx")
    served = _run(files["serve"], features=x)["logits"]
    np.testing.assert_allclose(served, np.asarray(model(x)), rtol=1e-6, atol=1e-6)


def _compute_nodes_by_depth(graph, depth=0, found=None):
    """MatMul/Conv nodes per If nesting depth, over every branch."""
    found = collections.Counter() if found is None else found
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv"):
            found[depth] += 1
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _compute_nodes_by_depth(attribute.g, depth + 1, found)
    return found


def test_the_anytime_graph_keeps_every_further_block_in_an_if_branch(tmp_path):
    # Structure, not timing: block k+1 exists only inside the else branch of block k's If, so ONNX
    # Runtime (which runs only the branch taken) never computes it once every example is confident.
    model = GloNetMLP(num_blocks=5, width=8, input_shape=(6,), num_classes=3)
    files = export_onnx(model, tmp_path / "mlp.onnx", anytime=True)
    by_depth = _compute_nodes_by_depth(onnx.load(files["anytime"]).graph)
    # Depth 1 (inside the batch-size guard): stem + block 1 + head; then block + head per level.
    assert by_depth == {1: 3, 2: 2, 3: 2, 4: 2, 5: 2}, by_depth
    x = np.random.default_rng(1).normal(size=(7, 6)).astype("float32")
    answer = _run(files["anytime"], features=x, threshold=np.array(1.0, np.float32))
    assert relative_error(answer["logits"], model.predict(x, verbose=0)) < 1e-4
    assert answer["exit"].tolist() == [5] * 7


def test_refusals_and_nothing_half_written(tmp_path, monkeypatch):
    model = GloNetMLP(num_blocks=2, width=4, input_shape=(3,), num_classes=2)
    with pytest.raises(ValueError, match="must name an .onnx file"):
        export_onnx(model, tmp_path / "model.pb")
    with pytest.raises(ValueError, match="`exits` must be a list of integers in \\[1, 2\\]"):
        export_onnx(model, tmp_path / "model.onnx", exits=[3])
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ValueError, match="runs on the TensorFlow backend; the backend is 'jax'"):
        export_onnx(model, tmp_path / "model.onnx")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []

    files = export_onnx(model, tmp_path / "model.onnx", exits=[1])
    before = {name: Path(path).read_bytes() for name, path in files.items()}
    with pytest.raises(FileExistsError, match="model.onnx exists"):
        export_onnx(model, tmp_path / "model.onnx", exits=[1])
    saved = []

    def save_then_fail(proto, path, *args, **kwargs):
        saved.append(path)
        if len(saved) == 2:
            raise OSError("No space left on device")
        return onnx.save_model(proto, path, *args, **kwargs)

    monkeypatch.setattr(onnx, "save", save_then_fail)
    with pytest.raises(OSError, match="No space left"):
        export_onnx(model, tmp_path / "model.onnx", exits=[1], overwrite=True)
    monkeypatch.undo()
    assert {name: Path(path).read_bytes() for name, path in files.items()} == before
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "model_exit_1.onnx"]  # no temporaries


def test_a_deep_anytime_graph_needs_fewer_checks_in_onnx(tmp_path):
    model = GloNetMLP(num_blocks=20, width=4, input_shape=(3,), num_classes=2)
    with pytest.raises(ValueError, match="has 20: .* range\\(2, 21, 2\\)"):
        export_onnx(model, tmp_path / "deep.onnx", anytime=True)
    assert os.listdir(tmp_path) == []
    files = export_onnx(model, tmp_path / "deep.onnx", anytime=True, anytime_exits=range(5, 21, 5))
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    early = analysis.early_exit_logits(model, x)
    threshold = float(np.median(deploy.top_probability(early.reshape(-1, 2))))
    answer = _run(files["anytime"], features=x, threshold=np.array(threshold, np.float32))
    exits, logits = deploy.first_confident_exits(early, threshold, exits=[5, 10, 15])
    np.testing.assert_array_equal(answer["exit"], exits)
    assert relative_error(answer["logits"], logits) < 1e-4
    assert load_metadata(files["anytime"])["anytime_exits"] == [5, 10, 15, 20]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.name for p in (REPO_ROOT / "zoo").iterdir()
                                        if (p / "metadata.json").exists()))
def test_every_published_preset_converts_and_equals_keras(tmp_path, name):
    # Every zoo preset, the ViTs (exact GELU) included, converts and answers as Keras does.
    model = presets.load_preset_directory(REPO_ROOT / "zoo" / name)
    files = export_onnx(model, tmp_path / f"{name}.onnx")
    session = onnxruntime.InferenceSession(files["serve"], providers=["CPUExecutionProvider"])
    (raw_input,) = session.get_inputs()
    shape = [3] + [d if isinstance(d, int) else 12 for d in raw_input.shape[1:]]
    dtype = np.uint8 if raw_input.type == "tensor(uint8)" else np.float32
    raw = np.random.default_rng(0).integers(0, 256, shape).astype(dtype)
    served = _run(files["serve"], **{raw_input.name: raw})["logits"]
    assert relative_error(served, model.predict(model.preprocessing(raw), verbose=0)) < 1e-4
