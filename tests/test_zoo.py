"""The published zoo: every preset downloads from a server on 127.0.0.1, verifies, caches, still loads
with the server gone, re-measures to its published accuracy, round-trips and exports.

The accuracy is re-measured here with code independent of training/make_zoo.py: the raw test split
from `load_arrays`, the preprocessing formula applied in numpy from the preset's metadata.
"""

import functools
import json
from pathlib import Path

import numpy as np
import pytest

import glonet_keras
from glonet_keras import analysis, presets
from glonet_keras.data import DatasetUnavailableError, Preprocessing, load_arrays
from glonet_keras.models.common import GloNetModelBase
from tests import harness
from tests.http_server import FileServer

ZOO = Path(__file__).resolve().parent.parent / "zoo"
PUBLISHED = glonet_keras.list_models(pretrained=True)
REQUIRED = ("glonet_mlp_digits", "glonet_cnn_digits", "glonet_vit_digits", "resnet_cnn_digits",
            "glonet_mlp_mnist1d", "glonet_cnn_mnist1d",
            # Fashion-MNIST (issue 8): the GloNet CNN, its ResNet-v2 baseline, the MLP and the ViT.
            "glonet_cnn_bn_fashion_mnist", "resnet_cnn_fashion_mnist", "glonet_mlp_fashion_mnist",
            "glonet_vit_fashion_mnist",
            # Zoo v2 (issue 21): the BN-free GloNet CNN of RESULTS.md section 12.
            "glonet_cnn_fashion_mnist")
TOLERANCE = 0.005  # 0.5 points of accuracy.


@functools.lru_cache(maxsize=None)
def _load_test_split(dataset):
    _, (x, y) = load_arrays(dataset, seed=0)
    return x, y


def _test_split(dataset):
    """The raw test split; a skip with the loader's message (how to get the files) where the data
    set is not on this machine (Fashion-MNIST without `make data`)."""
    try:
        return _load_test_split(dataset)
    except DatasetUnavailableError as error:
        pytest.skip(str(error))


def _preprocessed_test_split(metadata):
    pre = metadata["preprocessing"]
    x, y = _test_split(metadata["dataset"]["name"])
    x = (x.astype("float32") * pre["scale"] - np.asarray(pre["mean"], "float32")) / np.asarray(
        pre["std"], "float32"
    )
    return x, y


def _metadata(name):
    return json.loads((ZOO / name / "metadata.json").read_text())


def _config(name):
    return json.loads((ZOO / name / "config.json").read_text())


def test_the_zoo_has_the_required_presets_and_the_registry_matches_the_files():
    assert set(REQUIRED) <= set(PUBLISHED)
    assert sorted(p.name for p in ZOO.iterdir() if p.is_dir()) == PUBLISHED
    for name in PUBLISHED:
        variant = presets.get_variant(name)
        assert sorted(variant.files) == sorted(presets.PRESET_FILES)
        for file_name, record in variant.files.items():
            assert presets.sha256_of(ZOO / name / file_name) == record.sha256, (name, file_name)
            assert (ZOO / name / file_name).stat().st_size == record.size, (name, file_name)
        metadata = _metadata(name)
        assert set(metadata["files"]) == {"config.json", "model.weights.h5", "README.md"}
        for file_name, digest in metadata["files"].items():
            assert presets.sha256_of(ZOO / name / file_name) == digest, (name, file_name)
        assert metadata["training"]["command"].startswith("python training/train.py ")
        assert f"--dataset={metadata['dataset']['name']}" in metadata["training"]["command"]
        assert metadata["dataset"]["split"] and metadata["dataset"]["evaluated_on"] == "test"
        Preprocessing.from_dict(metadata["preprocessing"])  # exactly the pipeline's record
        config = _config(name)
        assert config["class_name"] == metadata["class_name"]
        assert metadata["input"]["model_input_shape"] == list(config["config"]["input_shape"])
        assert metadata["task"] == "classification"
        assert metadata["class_names"] == metadata["dataset"]["labels"]
        assert len(metadata["class_names"]) == config["config"]["num_classes"]
        assert {"keras", "tensorflow"} <= set(metadata["training_versions"])
        assert metadata["license"] and metadata["dataset"]["license"]
        assert (ZOO / name / "model.weights.h5").stat().st_size < 4 * 2**20  # small files
        if metadata["class_name"].startswith("GloNet"):
            assert len(metadata["metrics"]["early_exit_accuracy"]) == metadata["num_blocks"]
            # The card's early-exit table runs k = 1..L in order (not "1, 10, 11, 2, ..." as text).
            card = (ZOO / name / "README.md").read_text()
            ks = " | ".join(str(k) for k in range(1, metadata["num_blocks"] + 1))
            assert f"| k | {ks} |" in card, name


def _remeasure_cases():
    """(name, subset) per preset: a preset whose metadata records `check_subset` (a test split
    larger than make_zoo's CHECK_EXAMPLES) is re-measured on those first images in the fast suite
    and on the whole split in `make test-slow`; a smaller one on its whole split in the fast suite."""
    cases = []
    for name in PUBLISHED:
        if "check_subset" in _metadata(name)["metrics"]:
            cases += [pytest.param(name, True, id=f"{name}-first"),
                      pytest.param(name, False, id=f"{name}-all", marks=pytest.mark.slow)]
        else:
            cases.append(pytest.param(name, False, id=name))
    return cases


@pytest.mark.parametrize("name, subset", _remeasure_cases())
def test_download_verify_cache_remeasure_and_load_offline(name, subset, tmp_path):
    metadata = _metadata(name)
    with FileServer(ZOO) as server:
        model = glonet_keras.create_model(name, pretrained=True, origin=server.url,
                                          cache_dir=tmp_path)
    assert sorted(server.requests) == sorted(f"/{name}/{f}" for f in presets.PRESET_FILES)
    for file_name in presets.PRESET_FILES:
        assert presets.sha256_of(tmp_path / name / file_name) == presets.get_variant(name).files[
            file_name
        ].sha256
    assert model.preprocessing.to_dict() == metadata["preprocessing"]
    assert model.preset_metadata["class_names"] == metadata["class_names"]

    x, y = _preprocessed_test_split(metadata)
    assert len(y) == metadata["metrics"]["num_test_examples"]
    published = metadata["metrics"]
    if subset:  # The first check_subset["num_examples"] test images, against what they scored.
        published = metadata["metrics"]["check_subset"]
        assert 0 < published["num_examples"] < len(y)
        x, y = x[:published["num_examples"]], y[:published["num_examples"]]
    # One pass over the test images is most of this test's time, so a GloNet takes it once: its
    # last early exit (all L blocks, the same head) is the model's output, checked against
    # `model.predict` on the first 512 examples, and its accuracy is the model's.
    head = x[:512]
    logits = model.predict(head, batch_size=256, verbose=0)
    if "early_exit_accuracy" in metadata["metrics"]:
        exits = analysis.early_exit_logits(model, x)
        assert exits.shape[1] == metadata["num_blocks"]
        np.testing.assert_allclose(exits[:512, -1], logits, rtol=1e-5, atol=1e-5)
        full = exits[:, -1]
        assert len(published["early_exit_accuracy"]) == metadata["num_blocks"]
        for k, expected in published["early_exit_accuracy"].items():
            measured = float(np.mean(exits[:, int(k) - 1].argmax(-1) == y))
            assert abs(measured - expected) <= TOLERANCE, (k, measured, expected)
    else:
        full = model.predict(x, batch_size=256, verbose=0)
        np.testing.assert_array_equal(full[:512], logits)
    accuracy = float(np.mean(full.argmax(-1) == y))
    assert abs(accuracy - published["test_accuracy"]) <= TOLERANCE

    # The server is gone: the warm cache alone must do (the same weights give the same logits; 512
    # examples show that as well as 10,000 and keep the Fashion-MNIST presets within the suite's time).
    again = glonet_keras.create_model(name, pretrained=True, origin=server.url, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.predict(head, batch_size=256, verbose=0), logits)


# Exporting a Fashion-MNIST preset takes 6-15 s; the small presets cover every class (and
# `make_zoo.py --steps=deployment` exports the big ones), so those run in `make test-slow`.
@pytest.mark.parametrize(
    "name", harness.slow_where(PUBLISHED, lambda name: name.endswith("_fashion_mnist")))
def test_round_trip_through_save_to_preset_and_export(name, tmp_path):
    tf = pytest.importorskip("tensorflow")
    from glonet_keras.deploy.export import export_saved_model

    metadata = _metadata(name)
    model = GloNetModelBase.from_preset(ZOO / name)
    x, _ = _preprocessed_test_split(metadata)
    x = x[:16]
    expected = model.predict(x, verbose=0)

    copy = model.save_to_preset(tmp_path / "copy")
    reloaded = type(model).from_preset(copy)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), expected)

    path = export_saved_model(
        model, tmp_path / "serving",
        preprocessing=Preprocessing.from_dict(metadata["preprocessing"]),
        model_name=name,
    )
    assert Path(path) == tmp_path / "serving" / name / "1"
    served = tf.saved_model.load(str(path))
    raw, _ = _test_split(metadata["dataset"]["name"])
    outputs = served.serve(tf.constant(raw[:16]))
    np.testing.assert_allclose(outputs["logits"].numpy(), expected, rtol=1e-4, atol=1e-4)


def test_tables_and_registry_are_generated_from_the_zoo():
    from tests.harness import training_module

    zoo_docs = training_module("zoo_docs")
    entries = zoo_docs.load_zoo(ZOO)
    table = zoo_docs.zoo_table(entries)
    for name, metadata, _ in entries:
        assert f"| `{name}` |" in table
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"{100 * metadata['metrics']['test_accuracy']:.2f} %" in row
        # Every accuracy says how many seeds stand behind it (issue 21's protocol).
        protocol = metadata.get("protocol")
        if protocol:
            test = protocol["arms"]["preset"]["test"]
            assert (f"{len(protocol['seeds'])} seeds: {100 * test['mean']:.2f} ± "
                    f"{100 * test['std']:.2f} %") in row
        else:
            assert "(1 seed)" in row
        card = (ZOO / name / "README.md").read_text()
        assert ("(1 seed)" in card) == (protocol is None), name
    for document in ("README.md", "docs/zoo.md"):
        text = (ZOO.parent / document).read_text()
        assert f"{zoo_docs.README_BEGIN}\n{table}\n{zoo_docs.README_END}" in text, (
            f"{document}'s zoo table is stale: run python training/make_zoo.py --steps=docs"
        )
    fashion = zoo_docs.fashion_table(entries)
    zoo_md = (ZOO.parent / "docs" / "zoo.md").read_text()
    assert f"{zoo_docs.FASHION_BEGIN}\n{fashion}\n{zoo_docs.FASHION_END}" in zoo_md, (
        "docs/zoo.md's Fashion-MNIST table is stale: run python training/make_zoo.py --steps=docs")
    registry = zoo_docs.registry_text(zoo_docs.registry(entries, ZOO))
    assert presets.registry._REGISTRY_FILE.read_text() == registry, (
        "glonet_keras/presets/zoo_registry.json is stale: run python training/make_zoo.py --steps=docs"
    )


def test_the_published_presets_work_offline_out_of_the_box(tmp_path, monkeypatch):
    # No origin given, none in the environment: a source checkout serves its own zoo/ directory.
    monkeypatch.delenv(presets.ORIGIN_ENV, raising=False)
    monkeypatch.setenv(presets.CACHE_ENV, str(tmp_path))
    assert presets.resolve_origin() == ZOO.as_uri()
    model = glonet_keras.create_model("glonet_mlp_digits", pretrained=True)
    x, y = _preprocessed_test_split(_metadata("glonet_mlp_digits"))
    accuracy = float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))
    assert abs(accuracy - _metadata("glonet_mlp_digits")["metrics"]["test_accuracy"]) <= TOLERANCE
    assert (tmp_path / "glonet_mlp_digits" / "model.weights.h5").is_file()


def test_every_preset_model_is_named_after_its_preset():
    # Six configs once carried Keras' automatic names (`glo_net_cnn_1`), so a default export of a
    # loaded preset landed in serving/glo_net_cnn_1/1. make_zoo packages with name=<preset>, and
    # save_to_preset names a model after its folder, so it cannot recur.
    for name in PUBLISHED:
        assert _config(name)["config"]["name"] == name
    model = glonet_keras.create_model("glonet_mlp_digits", pretrained=True, origin=ZOO)
    assert model.name == "glonet_mlp_digits"


# Zoo v2 (issue 21): presets trained under the protocol of training/zoo_protocol.py.
PROTOCOL_PRESETS = [name for name in PUBLISHED if "protocol" in _metadata(name)]


def test_zoo_v2_presets_are_the_published_seed_of_their_protocol():
    assert {"glonet_mlp_fashion_mnist", "glonet_cnn_fashion_mnist"} <= set(PROTOCOL_PRESETS)
    for name in PROTOCOL_PRESETS:
        metadata = _metadata(name)
        protocol = metadata["protocol"]
        assert len(protocol["seeds"]) >= 3, name
        seed = protocol["published_seed"]
        assert metadata["training"]["config"]["seed"] == seed
        assert f"--seed={seed} " in metadata["training"]["command"]
        preset = protocol["arms"]["preset"]
        # The weights are the seed chosen on validation, and the card's test number is that seed's.
        index = protocol["seeds"].index(seed)
        assert preset["validation"]["values"][index] == max(preset["validation"]["values"])
        assert abs(preset["test"]["values"][index] - metadata["metrics"]["test_accuracy"]) < 1e-6
        values = np.asarray(preset["test"]["values"])
        assert np.isclose(preset["test"]["mean"], values.mean())
        assert np.isclose(preset["test"]["std"], values.std())
        assert len(protocol["arms"]) >= 2, f"{name}: no twin arm"
        card = (ZOO / name / "README.md").read_text()
        assert f"{100 * preset['test']['mean']:.2f} ± {100 * preset['test']['std']:.2f}" in card
        # The card judges the recipe's accuracy target on these seeds, as docs/RESULTS.md does.
        shortfall = 100 * (protocol["targets"]["accuracy"] - values)
        expected = ("inconclusive at the held threshold"
                    if abs(shortfall.mean()) <= shortfall.std() else
                    "held" if shortfall.mean() <= 0 else "did not hold")
        assert (f"- **accuracy** (test accuracy at least "
                f"{100 * protocol['targets']['accuracy']:.1f} %; the values: target minus "
                f"accuracy): **{expected}**: "
                f"{shortfall.mean():.2f} ± {shortfall.std():.2f}") in card


def test_a_shipped_anytime_threshold_is_recalibrated_on_the_validation_split():
    from glonet_keras import data, deploy

    for name in PROTOCOL_PRESETS:
        metadata = _metadata(name)
        calibrated = metadata.get("deployment", {}).get("calibrated_anytime")
        if calibrated is None:
            continue
        model = glonet_keras.create_model(name, pretrained=True, origin=ZOO)
        assert deploy.default_threshold(model) == calibrated["threshold"]
        try:
            x, y = data.load_split(metadata["dataset"]["name"], "validation",
                                   seed=metadata["protocol"]["published_seed"])
        except DatasetUnavailableError as error:
            pytest.skip(str(error))
        exits = analysis.early_exit_logits(model, np.asarray(model.preprocessing(x)),
                                           batch_size=1024)
        again = deploy.calibrate_threshold(exits, np.asarray(y, "int64"),
                                           max_cost=calibrated["max_cost"],
                                           confidence=calibrated["confidence"])
        # Float32 logits on another machine may move a confidence in its last bits; the operating
        # point (blocks and accuracy on validation) must not move.
        assert abs(again["threshold"] - calibrated["threshold"]) < 1e-4, name
        assert abs(again["mean_blocks"] - calibrated["mean_blocks"]) < 1e-3, name
        assert abs(again["accuracy"] - calibrated["accuracy"]) < 1e-3, name
