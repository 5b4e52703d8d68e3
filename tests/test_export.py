"""SavedModel export: TF Serving layout, signatures, preprocessing inside, defaults from the model,
safe paths, an atomic overwrite, a graph that checks its own input, and the JAX backend."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from glonet_keras import GloNetCNN, GloNetMLP, ResNetCNN, analysis, presets
from glonet_keras.data import load_arrays
from glonet_keras.deploy.export import export_saved_model, load_metadata
from glonet_keras.data.preprocessing import Preprocessing

REPO_ROOT = Path(__file__).resolve().parent.parent
PREPROCESSING = Preprocessing(input_dtype="uint8", scale=1 / 255, mean=(0.5, 0.4, 0.3),
                              std=(0.2, 0.25, 0.3), image_size=(16, 16))


def _run_python(script, *args, backend="tensorflow", timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), KERAS_BACKEND=backend,
               TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


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
    assert {"serving_default", "serve", "early_exits"} == set(loaded.signatures)
    _, inputs = loaded.signatures["serving_default"].structured_input_signature
    assert list(inputs) == ["images"]
    assert inputs["images"].dtype == tf.uint8 and inputs["images"].shape.as_list() == [None, None, None, 3]
    assert set(loaded.signatures["serve"].structured_outputs) == {"logits", "probabilities"}
    metadata = load_metadata(path)
    assert metadata["preprocessing"] == PREPROCESSING.to_dict()
    assert metadata["input_name"] == "images" and metadata["num_blocks"] == model.num_blocks
    assert metadata["task"] == "classification" and metadata["class_names"] is None
    assert metadata["signatures"] == ["serving_default", "serve", "early_exits"]
    assert sorted(os.listdir(os.path.dirname(path))) == ["3"]  # no temporary folder left


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
    expected = analysis.early_exit_logits(model, PREPROCESSING(images))
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
    with pytest.raises(ValueError, match="`task` must be one of"):
        export_saved_model(model, str(tmp_path), version=2, task="ranking")
    with pytest.raises(ValueError, match="class_names` must be a list of 2 strings"):
        export_saved_model(model, str(tmp_path), version=2, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="3 channel statistics.*5 channels"):
        export_saved_model(model, str(tmp_path), version=2,
                           preprocessing=Preprocessing(mean=(0.0,) * 3, std=(1.0,) * 3))
    with pytest.raises(ValueError, match="resizes images to \\(4, 4\\)"):
        export_saved_model(model, str(tmp_path), version=2, preprocessing=Preprocessing(image_size=(4, 4)))
    with pytest.raises(ValueError, match="`input_dtype` must be a numeric dtype"):
        export_saved_model(model, str(tmp_path), version=2, input_dtype="string")
    with pytest.raises(ValueError, match="Unknown preprocessing keys"):
        export_saved_model(model, str(tmp_path), version=2, preprocessing={"mean": [0.0], "typo": 1})
    cnn = GloNetCNN(depth=8, width=4, input_shape=(12, 12, 1), num_classes=3)
    with pytest.raises(ValueError, match="takes \\(12, 12\\) images"):
        export_saved_model(cnn, str(tmp_path), preprocessing=Preprocessing(image_size=(16, 16)))
    model.preset_metadata = {"task": "ranking"}
    with pytest.raises(ValueError, match="task in `model.preset_metadata`"):
        export_saved_model(model, str(tmp_path), version=2)
    # Every refusal came before anything was written.
    assert sorted(os.listdir(tmp_path)) == [model.name]
    assert sorted(os.listdir(tmp_path / model.name)) == ["1"]


def test_a_preset_is_exported_with_its_own_preprocessing_task_and_labels(tmp_path):
    # Exporting a pretrained model used to drop its preprocessing: 84 % on raw digits, not 98.6 %.
    model = presets.load_preset_directory(REPO_ROOT / "zoo" / "glonet_cnn_digits")
    metadata = model.preset_metadata
    # What the presets part attaches to a loaded preset (set by hand until that lands).
    model.preprocessing = Preprocessing.from_dict(metadata["preprocessing"])
    model.preset_metadata = {**metadata, "class_names": metadata["dataset"]["labels"]}
    path = export_saved_model(model, tmp_path)  # no preprocessing, task or labels given

    _, (raw, labels) = load_arrays("digits", seed=0)
    loaded = tf.saved_model.load(path)
    served = loaded.signatures["serving_default"](images=tf.constant(raw))["logits"].numpy()
    accuracy = float(np.mean(served.argmax(-1) == labels))
    published = metadata["metrics"]["test_accuracy"]
    assert abs(accuracy - published) <= 0.005, (accuracy, published)
    # Raw digits straight into the model are far worse: the preprocessing really is in the graph.
    unprocessed = float(np.mean(model.predict(raw, verbose=0).argmax(-1) == labels))
    assert unprocessed < published - 0.05, unprocessed

    recorded = load_metadata(path)
    assert recorded["preprocessing"] == metadata["preprocessing"]
    assert recorded["task"] == "classification"
    assert recorded["class_names"] == [str(i) for i in range(10)]


def test_task_from_metadata_and_single_logit_classifiers(tmp_path):
    regression = GloNetMLP(num_blocks=2, width=4, input_shape=(3,), num_classes=1)
    regression.preset_metadata = {"task": "regression"}
    loaded = tf.saved_model.load(export_saved_model(regression, tmp_path, model_name="regression"))
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    assert set(loaded.signatures["serving_default"](features=tf.constant(x))) == {"logits"}
    assert load_metadata(tmp_path / "regression" / "1")["task"] == "regression"

    # Without metadata a single output is a binary classifier: sigmoid, not a softmax that is 1.
    binary = GloNetMLP(num_blocks=2, width=4, input_shape=(3,), num_classes=1)
    path = export_saved_model(binary, tmp_path, model_name="binary", class_names=["no", "yes"])
    outputs = tf.saved_model.load(path).signatures["serving_default"](features=tf.constant(x))
    logits = np.asarray(binary(x, training=False))
    np.testing.assert_allclose(outputs["probabilities"].numpy(), 1 / (1 + np.exp(-logits)), atol=1e-6)
    assert load_metadata(path)["class_names"] == ["no", "yes"]


@pytest.mark.parametrize(
    "name", ["..", ".", "", "a/b", "../outside", "/tmp/absolute", "a\\b", "a\x00b", ".hidden", 7,
             "a" * 256, "é" * 128]
)
def test_unsafe_model_names_are_refused_before_writing(tmp_path, name):
    model = GloNetMLP(num_blocks=2, width=4, input_shape=(3,), num_classes=2)
    export_dir = tmp_path / "export"
    with pytest.raises(ValueError, match="model_name"):
        export_saved_model(model, export_dir, model_name=name)
    assert not export_dir.exists()


def test_a_preset_named_dotdot_cannot_delete_outside_export_dir(tmp_path):
    # The attack: a preset's config.json says "name": "..", and the export overwrites version 1.
    # <export_dir>/../1 is an unrelated folder that used to be deleted by rmtree.
    victim = tmp_path / "1"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    config = GloNetMLP(num_blocks=2, width=4, input_shape=(3,), num_classes=2).get_config()
    model = GloNetMLP.from_config(json.loads(json.dumps({**config, "name": ".."})))
    assert model.name == ".."
    with pytest.raises(ValueError, match="model_name"):
        export_saved_model(model, tmp_path / "export", version=1, overwrite=True)
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not (tmp_path / "export").exists()


def test_overwrite_is_atomic_and_never_loses_the_previous_export(tmp_path, monkeypatch):
    model = GloNetMLP(num_blocks=2, width=4, input_shape=(3,), num_classes=2)
    path = Path(export_saved_model(model, tmp_path, model_name="m"))
    before = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}

    archive_class = type(keras.export.ExportArchive())
    write_out = archive_class.write_out

    def write_then_fail(self, filepath, *args, **kwargs):
        write_out(self, filepath, *args, **kwargs)
        raise OSError("No space left on device")

    monkeypatch.setattr(archive_class, "write_out", write_then_fail)
    with pytest.raises(OSError, match="No space left"):
        export_saved_model(model, tmp_path, model_name="m", overwrite=True,
                           preprocessing=Preprocessing(scale=2.0))
    after = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert after == before  # the previous export, untouched
    assert sorted(os.listdir(tmp_path / "m")) == ["1"]  # and no half-written folder beside it
    monkeypatch.undo()

    export_saved_model(model, tmp_path, model_name="m", overwrite=True,
                       preprocessing=Preprocessing(scale=2.0))
    assert load_metadata(path)["preprocessing"]["scale"] == 2.0
    assert sorted(os.listdir(tmp_path / "m")) == ["1"]


def test_a_symlinked_version_folder_is_refused(tmp_path):
    model = GloNetMLP(num_blocks=2, width=4, input_shape=(3,), num_classes=2)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "export" / "m").mkdir(parents=True)
    (tmp_path / "export" / "m" / "1").symlink_to(target)
    with pytest.raises(ValueError, match="symbolic link"):
        export_saved_model(model, tmp_path / "export", model_name="m", overwrite=True)
    assert os.listdir(target) == []


_CALL_SIGNATURES = """
    import json, sys
    import tensorflow as tf

    for label, path, dtype, shapes in json.loads(sys.argv[1]):
        loaded = tf.saved_model.load(path)
        for shape in shapes:
            for name in ("serving_default", "early_exits"):
                try:
                    outputs = loaded.signatures[name](images=tf.zeros(shape, dtype))
                    answer = {k: v.shape.as_list() for k, v in sorted(outputs.items())}
                except tf.errors.InvalidArgumentError:
                    answer = "InvalidArgumentError"
                print(label, name, shape, "->", answer, flush=True)
"""


def test_the_graph_checks_its_input_and_never_aborts(tmp_path):
    # A rank-3 tensor sent straight to serving_default used to abort the process (oneDNN check
    # failure, exit 134), and a wrong image size was silently accepted: run it in a subprocess.
    model = GloNetCNN(depth=8, width=4, input_shape=(12, 12, 1), num_classes=3)
    fixed = export_saved_model(model, tmp_path, model_name="fixed")
    resized = export_saved_model(model, tmp_path, model_name="resized",
                                 preprocessing=Preprocessing(input_dtype="uint8", image_size=(12, 12)))
    refused = ("InvalidArgumentError", "InvalidArgumentError")
    answered = ("{'logits': [2, 3], 'probabilities': [2, 3]}",
                "{'logits': [2, 3, 3], 'probabilities': [2, 3, 3]}")
    expected = {
        (2, 12, 12, 1): (answered, answered),
        (0, 12, 12, 1): (("{'logits': [0, 3], 'probabilities': [0, 3]}",
                          "{'logits': [0, 3, 3], 'probabilities': [0, 3, 3]}"),) * 2,
        (12, 12, 1): (refused, refused),
        (2, 12, 12, 1, 1): (refused, refused),
        (2, 12, 12, 3): (refused, refused),
        (2, 20, 20, 1): (refused, answered),  # a resized model takes any image size
        (2, 0, 0, 1): (refused, refused),
    }
    runs = [[label, path, dtype, [list(shape) for shape in expected]]
            for label, path, dtype in (("fixed", fixed, "float32"), ("resized", resized, "uint8"))]
    done = _run_python(_CALL_SIGNATURES, json.dumps(runs))
    assert done.returncode == 0, done.stderr[-3000:]
    answers = dict(line.split(" -> ") for line in done.stdout.splitlines())
    assert len(answers) == 2 * 2 * len(expected), done.stdout
    for shape, by_model in expected.items():
        for label, (default, exits) in zip(("fixed", "resized"), by_model):
            assert answers[f"{label} serving_default {list(shape)}"] == default, (label, shape)
            assert answers[f"{label} early_exits {list(shape)}"] == exits, (label, shape)


def test_an_image_smaller_than_the_network_takes_is_refused_not_nan(tmp_path):
    # A CNN with a dynamic spatial size answered 0-by-N images with NaN logits (or an error about
    # filter depth from deep in the graph); a 'valid' convolution has a larger minimum.
    from glonet_keras.deploy import serving
    from glonet_keras.deploy.export import minimum_input_size

    dynamic = GloNetCNN(depth=8, width=4, input_shape=(None, None, 1), num_classes=3)
    images = keras.Input((None, None, 1), name="images")
    hidden = keras.layers.MaxPooling2D(2)(keras.layers.Conv2D(4, 3, padding="valid")(images))
    valid = keras.Model(images, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(hidden)))
    assert minimum_input_size(dynamic) == 1 and minimum_input_size(valid) == 4
    cases = {"dynamic": (dynamic, 1, [(2, 1, 1, 1), (1, 7, 3, 1)], [(1, 0, 5, 1), (1, 5, 0, 1)]),
             "valid": (valid, 4, [(1, 4, 4, 1), (1, 4, 9, 1)], [(1, 3, 3, 1), (1, 9, 1, 1)])}
    for name, (model, minimum, taken, refused) in cases.items():
        loaded = serving.load(export_saved_model(model, tmp_path, model_name=name))
        serve = loaded.signatures["serving_default"]
        for shape in taken:
            logits = serve(images=tf.ones(shape))["logits"].numpy()
            assert logits.shape[0] == shape[0] and np.all(np.isfinite(logits)), (name, shape)
        for shape in refused:
            with pytest.raises(tf.errors.InvalidArgumentError, match=f"must be at least {minimum} "):
                serve(images=tf.ones(shape))
            status, answer = serving.respond(loaded, {"instances": np.ones(shape).tolist()})
            reason = "empty list" if 0 in shape else f"must be at least {minimum} in each spatial"
            assert status == 400 and reason in answer["error"], answer
        assert serve(images=tf.ones((0, 0, 0, 1)))["logits"].shape[0] == 0  # batch 0: empty answer


_JAX_EXPORT = """
    import sys
    import keras
    import numpy as np
    import tensorflow as tf
    from glonet_keras import GloNetCNN, GloNetMLP, analysis
    from glonet_keras.deploy.export import export_saved_model
    from glonet_keras.data.preprocessing import Preprocessing

    assert keras.backend.backend() == "jax"
    export_dir, family = sys.argv[1:]
    if family == "mlp":
        model = GloNetMLP(num_blocks=3, width=8, input_shape=(4,), num_classes=3, dropout=0.5)
        pre = Preprocessing(mean=(1.0, 2.0, 3.0, 4.0), std=(2.0, 2.0, 2.0, 2.0))
        raw = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    else:
        model = GloNetCNN(depth=8, width=4, input_shape=(12, 12, 3), num_classes=3, dropout=0.5)
        pre = Preprocessing(input_dtype="uint8", scale=1 / 255, mean=(0.5, 0.4, 0.3),
                            std=(0.2, 0.25, 0.3), image_size=(12, 12))
        raw = np.random.default_rng(0).integers(0, 256, (5, 17, 9, 3), dtype=np.uint8)
    loaded = tf.saved_model.load(export_saved_model(model, export_dir, preprocessing=pre))
    name = model.inputs[0].name
    ready = pre(raw)

    def close(signature, expected):
        actual = loaded.signatures[signature](**{name: tf.constant(raw)})["logits"].numpy()
        scale = np.abs(expected).max()
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale)

    close("serving_default", np.asarray(model(ready, training=False)))
    close("early_exits", np.asarray(analysis.early_exit_model(model)(ready, training=False)))
    empty = loaded.signatures["early_exits"](**{name: tf.zeros((0,) + raw.shape[1:], raw.dtype)})
    assert empty["logits"].shape == (0, model.num_blocks, 3), empty["logits"].shape
    try:
        loaded.signatures["serving_default"](**{name: tf.constant(raw[0])})
        raise AssertionError("an input without its batch dimension was accepted")
    except tf.errors.InvalidArgumentError:
        pass
    print("JAX export OK")
"""


@pytest.mark.parametrize(
    "family", ["mlp", pytest.param("cnn", marks=pytest.mark.slow)]  # cnn: uint8 images, resized
)
def test_export_on_the_jax_backend_equals_the_keras_model(tmp_path, family):
    # It used to fail half-way: a pytree error with early exits, TracerArrayConversionError without
    # (TensorFlow ops traced as JAX). Preprocessing and checks are now TF ops around the jax2tf model.
    done = _run_python(_JAX_EXPORT, tmp_path, family, backend="jax")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "JAX export OK" in done.stdout


_WITHOUT_TENSORFLOW = """
    import os, sys
    sys.modules["tensorflow"] = None  # as on the JAX machines, where TensorFlow is not installed
    from glonet_keras import GloNetMLP
    from glonet_keras.deploy.export import export_saved_model

    model = GloNetMLP(num_blocks=2, width=4, input_shape=(3,), num_classes=2)
    try:
        export_saved_model(model, sys.argv[1])
    except ImportError as error:
        print("ImportError:", error)
    print("written:", os.listdir(sys.argv[1]))
"""


def test_without_tensorflow_export_refuses_at_once(tmp_path):
    done = _run_python(_WITHOUT_TENSORFLOW, tmp_path, backend="jax")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ImportError: SavedModel export needs TensorFlow" in done.stdout
    assert "written: []" in done.stdout
