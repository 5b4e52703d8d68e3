"""The registry, preset directories, and the verified, cached, lock-protected download path.

Everything is served from the shared test server (tests/http_server.py) on 127.0.0.1; the presets
are tiny models created in a temporary directory (the real zoo is tested in test_zoo.py, hostile
presets and downloads in test_presets_hostile.py).
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

import glonet_keras
from glonet_keras import presets
from glonet_keras.models.common import GloNetModelBase
from glonet_keras.data.preprocessing import Preprocessing
from tests import http_server

TINY = "tiny_mlp_for_tests"


def _tiny_model():
    return glonet_keras.GloNetMLP(num_blocks=3, width=8, num_classes=4, input_shape=(6,))


TINY_PREPROCESSING = Preprocessing(mean=(0.5,), std=(2.0,))


@pytest.fixture
def tiny_zoo(tmp_path):
    """A zoo folder with one tiny preset, registered (for this test only) as TINY."""
    model = _tiny_model()
    model.preprocessing = TINY_PREPROCESSING
    directory = presets.save_preset(model, tmp_path / "zoo" / TINY, metadata={
        "task": "classification", "class_names": ["a", "b", "c", "d"],
        "metrics": {"test_accuracy": 0.5},
    })
    files = {name: presets.sha256_of(directory / name) for name in presets.PRESET_FILES}
    presets.register_model(TINY, files=files, description="A tiny MLP for the tests.")
    yield model, tmp_path / "zoo"
    presets.registry._REGISTRY.pop(TINY, None)


@pytest.fixture
def server(tiny_zoo):
    with http_server.FileServer(tiny_zoo[1]) as serving:
        yield serving


def _inputs():
    return np.random.default_rng(0).normal(size=(5, 6)).astype("float32")


def _cache_listing(cache):
    return sorted(str(p.relative_to(cache)) for p in Path(cache).rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------- registry


def test_list_models_filters_by_pattern_and_pretrained(tiny_zoo):
    everything = glonet_keras.list_models()
    assert "glonet_cnn20_cifar" in everything and TINY in everything
    assert everything == sorted(everything)
    assert TINY in glonet_keras.list_models(pretrained=True)
    assert "glonet_cnn20_cifar" not in glonet_keras.list_models(pretrained=True)
    assert glonet_keras.list_models("resnet_cnn*cifar") == ["resnet_cnn20_cifar", "resnet_cnn56_cifar"]
    assert glonet_keras.list_models("*_for_tests", pretrained=True) == [TINY]


def test_unknown_name_lists_the_closest_names():
    with pytest.raises(presets.PresetError) as error:
        glonet_keras.create_model("glonet_cnn20_cifr")
    assert "Closest known names" in str(error.value)
    assert "'glonet_cnn20_cifar'" in str(error.value)
    with pytest.raises(presets.PresetError, match="Unknown model 'no_such_thing'"):
        GloNetModelBase.from_preset("no_such_thing")


def test_create_model_without_weights_applies_overrides():
    model = glonet_keras.create_model("glonet_cnn20_cifar", num_classes=3, width=4)
    assert isinstance(model, glonet_keras.GloNetCNN)
    assert model.output.shape == (None, 3)
    assert model.get_config()["width"] == 4 and model.num_blocks == 9
    with pytest.raises(presets.PresetError, match="no pretrained weights"):
        glonet_keras.create_model("glonet_cnn20_cifar", pretrained=True)
    with pytest.raises(presets.PresetError, match="num_blocks"):
        glonet_keras.create_model("glonet_mlp_30x32", num_blocks=0)
    with pytest.raises(TypeError, match="Did you mean 'num_blocks'"):
        glonet_keras.create_model("glonet_mlp_30x32", num_block=3)


def test_create_model_builds_a_pretrained_variant_untrained_from_its_config_alone(
    tiny_zoo, server, tmp_path
):
    model = glonet_keras.create_model(TINY, num_classes=2, origin=server.url,
                                      cache_dir=tmp_path / "cache")
    assert isinstance(model, glonet_keras.GloNetMLP) and model.output.shape == (None, 2)
    assert model.get_config()["width"] == 8  # the architecture came from config.json
    assert server.requests == [f"/{TINY}/config.json"]


def test_unknown_overrides_raise_type_error_naming_the_closest_argument(tiny_zoo, server, tmp_path):
    where = dict(origin=server.url, cache_dir=tmp_path / "cache")
    with pytest.raises(TypeError, match="no argument 'foo'"):
        glonet_keras.create_model(TINY, pretrained=True, foo=1, **where)
    with pytest.raises(TypeError, match="Did you mean 'num_classes'"):
        glonet_keras.GloNetMLP.from_preset(TINY, num_class=3, **where)


def test_register_model_rejects_bad_entries():
    good = "0" * 64
    with pytest.raises(presets.PresetError, match="Allowed"):
        presets.register_model("bad_class", "Lambda", {})
    with pytest.raises(presets.PresetError, match="sha256"):
        presets.register_model("bad_hash", files={"config.json": "x", "model.weights.h5": good,
                                                  "metadata.json": good})
    with pytest.raises(presets.PresetError, match="lacks the sha256"):
        presets.register_model("no_weights", files={"config.json": good, "metadata.json": good})
    with pytest.raises(presets.PresetError, match="already registered"):
        presets.register_model("glonet_cnn20_cifar", "GloNetCNN", {})
    with pytest.raises(presets.PresetError, match="together"):
        presets.register_model("half", "GloNetMLP", files={
            "config.json": good, "model.weights.h5": good, "metadata.json": good})
    with pytest.raises(TypeError, match="'num_blocks'"):
        presets.register_model("typo", "GloNetMLP", {"num_block": 3})
    assert "typo" not in presets.list_models()


def test_the_pretrained_registry_is_data_filled_by_the_model_modules():
    library = Path(presets.__file__).parent.parent
    for source in [*library.glob("presets/*.py"), *library.glob("models/*.py")]:  # hashes are data
        assert not re.search(r"[0-9a-f]{64}", source.read_text()), source
    registry = json.loads(presets.registry._REGISTRY_FILE.read_text())
    assert set(registry["presets"]) == set(glonet_keras.list_models(pretrained=True))
    for name, entry in registry["presets"].items():
        variant = presets.get_variant(name)
        assert variant.files["model.weights.h5"].size == entry["files"]["model.weights.h5"]["bytes"]
        # The architecture is registered by the family module that defines its class.
        assert variant.class_name == entry["class_name"]
        assert variant.config == entry["config"]
        family = presets.get_model_class(variant.class_name).__module__
        assert family in {"glonet_keras.models.mlp", "glonet_keras.models.cnn",
                          "glonet_keras.models.vit"}


def test_the_registry_serves_the_trainer_and_the_zoo_alike():
    from glonet_keras import models
    from glonet_keras.training import trainer

    assert models.MODEL_CLASSES is presets.MODEL_CLASSES
    assert models.get_model_class is presets.get_model_class is trainer.get_model_class
    assert set(presets.MODEL_CLASSES) == {"glonet_mlp", "resnet_mlp", "plain_mlp", "glonet_cnn",
                                          "resnet_cnn", "plain_cnn", "glonet_vit", "vit"}
    # Every class a preset or variant names is one the trainer can build by name.
    for name in glonet_keras.list_models():
        variant = presets.get_variant(name)
        assert presets.get_model_class(variant.class_name).__name__ == variant.class_name


def test_create_model_builds_a_pretrained_architecture_without_fetching(tmp_path):
    # An origin and a cache with nothing in them: any fetch would fail.
    empty = tmp_path / "empty_origin"
    empty.mkdir()
    model = glonet_keras.create_model("glonet_cnn_digits", origin=str(empty),
                                      cache_dir=str(tmp_path / "cache"))
    assert not any((tmp_path / "cache").rglob("*.json"))
    shipped = json.loads((presets.shipped_zoo_dir() / "glonet_cnn_digits" / "config.json").read_text())
    assert type(model).__name__ == shipped["class_name"]
    config = json.loads(json.dumps(model.get_config()))
    assert {key: config[key] for key in shipped["config"]} == shipped["config"]
    pretrained = glonet_keras.GloNetCNN.from_preset("glonet_cnn_digits")
    assert [w.shape for w in model.weights] == [w.shape for w in pretrained.weights]


# ------------------------------------------------------------------------ preset directories


def test_save_to_preset_round_trip_and_class_check(tmp_path):
    model = _tiny_model()
    directory = model.save_to_preset(tmp_path / "p")
    assert sorted(os.listdir(directory)) == ["config.json", "metadata.json", "model.weights.h5"]
    metadata = json.loads((directory / "metadata.json").read_text())
    assert metadata["files"]["model.weights.h5"] == presets.sha256_of(directory / "model.weights.h5")
    assert metadata["versions"]["keras"] and metadata["num_parameters"] == model.count_params()
    loaded = glonet_keras.GloNetMLP.from_preset(directory)
    np.testing.assert_array_equal(model.predict(_inputs(), verbose=0), loaded.predict(_inputs(), verbose=0))
    with pytest.raises(presets.PresetError, match="not a GloNetCNN"):
        glonet_keras.GloNetCNN.from_preset(directory)


def test_a_modified_preset_directory_is_refused(tmp_path):
    directory = _tiny_model().save_to_preset(tmp_path / "p")
    with open(directory / "model.weights.h5", "r+b") as stream:
        stream.seek(-1, os.SEEK_END)
        last = stream.read(1)
        stream.seek(-1, os.SEEK_END)
        stream.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(presets.PresetError, match="model.weights.h5 does not match"):
        GloNetModelBase.from_preset(directory)


def test_config_cannot_name_a_foreign_class(tmp_path):
    directory = _tiny_model().save_to_preset(tmp_path / "p")
    config = json.loads((directory / "config.json").read_text())
    config["class_name"] = "Lambda"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(presets.PresetError, match="config.json does not match"):
        GloNetModelBase.from_preset(directory)
    with pytest.raises(presets.PresetError, match="Unknown model class 'Lambda'"):
        presets.load_preset_directory(directory, verify=False)


def test_keras_file_loads_with_safe_mode(tmp_path):
    model = _tiny_model()
    model.save(tmp_path / "tiny.keras")
    loaded = GloNetModelBase.from_preset(tmp_path / "tiny.keras")
    np.testing.assert_array_equal(model.predict(_inputs(), verbose=0), loaded.predict(_inputs(), verbose=0))


# ------------------------------------------------------------------- download, cache, verification


def test_download_verifies_caches_and_warm_cache_needs_no_server(tiny_zoo, server, tmp_path):
    model, _ = tiny_zoo
    cache = tmp_path / "cache"
    loaded = glonet_keras.create_model(TINY, pretrained=True, origin=server.url, cache_dir=cache)
    np.testing.assert_array_equal(model.predict(_inputs(), verbose=0), loaded.predict(_inputs(), verbose=0))
    assert _cache_listing(cache) == [f"{TINY}/{name}" for name in sorted(presets.PRESET_FILES)]
    assert len(server.requests) == 3
    assert loaded.preset_metadata["files"]["config.json"]

    glonet_keras.create_model(TINY, pretrained=True, origin=server.url, cache_dir=cache)
    assert len(server.requests) == 3  # A cached file with the right hash never touches the network.
    server.stop()
    again = glonet_keras.create_model(TINY, pretrained=True, origin=server.url, cache_dir=cache)
    np.testing.assert_array_equal(model.predict(_inputs(), verbose=0), again.predict(_inputs(), verbose=0))


@pytest.mark.parametrize(
    "fault, message",
    [(http_server.status(404), "HTTP 404"), (http_server.status(500), "HTTP 500"),
     (http_server.truncate, "truncated|broke off"), (http_server.corrupt, "sha256 mismatch")],
    ids=["404", "500", "truncate", "corrupt"],
)
def test_failed_download_names_file_and_url_leaves_nothing_and_retry_works(
    tiny_zoo, server, tmp_path, fault, message
):
    cache = tmp_path / "cache"
    server.faults["model.weights.h5"] = fault
    with pytest.raises(presets.PresetDownloadError, match=message) as error:
        glonet_keras.create_model(TINY, pretrained=True, origin=server.url, cache_dir=cache)
    assert "'model.weights.h5'" in str(error.value)
    assert f"{server.url}/{TINY}/model.weights.h5" in str(error.value)
    # The config was fetched and verified; of the weights, nothing: no partial or lock file.
    assert _cache_listing(cache) == [f"{TINY}/config.json"]

    del server.faults["model.weights.h5"]
    model = tiny_zoo[0]
    loaded = glonet_keras.create_model(TINY, pretrained=True, origin=server.url, cache_dir=cache)
    np.testing.assert_array_equal(model.predict(_inputs(), verbose=0), loaded.predict(_inputs(), verbose=0))
    assert _cache_listing(cache) == [f"{TINY}/{name}" for name in sorted(presets.PRESET_FILES)]


def test_a_corrupted_cached_file_is_fetched_again(tiny_zoo, server, tmp_path):
    cache = tmp_path / "cache"
    glonet_keras.create_model(TINY, pretrained=True, origin=server.url, cache_dir=cache)
    (cache / TINY / "model.weights.h5").write_bytes(b"not the weights")
    glonet_keras.create_model(TINY, pretrained=True, origin=server.url, cache_dir=cache)
    assert server.requests.count(f"/{TINY}/model.weights.h5") == 2
    assert presets.sha256_of(cache / TINY / "model.weights.h5") == presets.get_variant(TINY).files[
        "model.weights.h5"
    ].sha256


def test_unreachable_origin_is_a_clear_error(tiny_zoo, tmp_path):
    with pytest.raises(presets.PresetDownloadError, match="config.json.*127.0.0.1:9"):
        glonet_keras.create_model(TINY, pretrained=True, origin="http://127.0.0.1:9",
                                  cache_dir=tmp_path / "cache")
    assert _cache_listing(tmp_path / "cache") == []


def test_origin_and_cache_from_environment_and_local_directories(tiny_zoo, tmp_path, monkeypatch):
    model, zoo = tiny_zoo
    expected = model.predict(_inputs(), verbose=0)
    # A plain directory, and the same as a file:// URL, both through the environment variables.
    for origin in (str(zoo), zoo.as_uri()):
        cache = tmp_path / f"cache_{len(origin)}"
        monkeypatch.setenv(presets.ORIGIN_ENV, origin)
        monkeypatch.setenv(presets.CACHE_ENV, str(cache))
        assert presets.resolve_origin() == zoo.resolve().as_uri()
        loaded = glonet_keras.create_model(TINY, pretrained=True)
        np.testing.assert_array_equal(expected, loaded.predict(_inputs(), verbose=0))
        assert (cache / TINY / "model.weights.h5").is_file()
    monkeypatch.delenv(presets.ORIGIN_ENV)
    monkeypatch.delenv(presets.CACHE_ENV)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    assert presets.resolve_cache_dir() == tmp_path / "keras_home" / "glonet_keras"
    assert presets.resolve_cache_dir(tmp_path / "x") == tmp_path / "x"


def test_from_preset_url_downloads_and_checks_metadata_hashes(tiny_zoo, server, tmp_path):
    model, _ = tiny_zoo
    url = f"{server.url}/{TINY}"
    loaded = GloNetModelBase.from_preset(url, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(model.predict(_inputs(), verbose=0), loaded.predict(_inputs(), verbose=0))
    server.faults["model.weights.h5"] = http_server.corrupt
    with pytest.raises(presets.PresetDownloadError, match="sha256 mismatch"):
        GloNetModelBase.from_preset(url, cache_dir=tmp_path / "other_cache")


def test_new_head_keeps_the_pretrained_body(tiny_zoo, server, tmp_path):
    model, _ = tiny_zoo
    cache = tmp_path / "cache"
    tuned = glonet_keras.create_model(TINY, pretrained=True, num_classes=3, origin=server.url,
                                      cache_dir=cache)
    assert tuned.output.shape == (None, 3)
    assert tuned.get_layer("head").kernel.shape == (8, 3)
    for layer in model.layers:
        if layer.weights and layer.name != "head":
            for ours, theirs in zip(tuned.get_layer(layer.name).get_weights(), layer.get_weights()):
                np.testing.assert_array_equal(ours, theirs)
    # Shape-preserving overrides keep every weight, the head included.
    dropped = glonet_keras.create_model(TINY, pretrained=True, dropout=0.5, origin=server.url,
                                        cache_dir=cache)
    assert dropped.get_layer("head_dropout").rate == 0.5
    for ours, theirs in zip(dropped.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    assert not np.allclose(tuned.get_layer("head").kernel.numpy()[:, :3],
                           model.get_layer("head").kernel.numpy()[:, :3])
    with pytest.raises(presets.PresetError, match="layer 'stem'"):
        glonet_keras.create_model(TINY, pretrained=True, width=16, origin=server.url, cache_dir=cache)


def test_a_loaded_preset_carries_its_preprocessing_task_and_class_names(tiny_zoo, server, tmp_path):
    model = glonet_keras.create_model(TINY, pretrained=True, origin=server.url,
                                      cache_dir=tmp_path / "cache")
    assert model.preprocessing == TINY_PREPROCESSING
    assert model.preset_metadata["task"] == "classification"
    assert model.preset_metadata["class_names"] == ["a", "b", "c", "d"]
    assert model.preset_metadata["metrics"] == {"test_accuracy": 0.5}
    # Overrides equal to the config are no change: the preset as published, metrics included.
    same = glonet_keras.create_model(TINY, pretrained=True, num_classes=4, input_shape=[6],
                                     origin=server.url, cache_dir=tmp_path / "cache")
    assert same.preset_metadata == model.preset_metadata


def test_create_model_and_from_preset_are_one_path(tiny_zoo, server, tmp_path):
    where = dict(origin=server.url, cache_dir=tmp_path / "cache")
    keras.utils.set_random_seed(1)  # the same fresh head in both
    created = glonet_keras.create_model(TINY, pretrained=True, num_classes=3, **where)
    keras.utils.set_random_seed(1)
    loaded = glonet_keras.GloNetMLP.from_preset(TINY, num_classes=3, **where)
    for ours, theirs in zip(created.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    assert created.preset_metadata == loaded.preset_metadata


def test_a_fine_tune_records_its_origin_drops_stale_metrics_and_saves_its_preprocessing(
    tiny_zoo, server, tmp_path
):
    tuned = glonet_keras.create_model(TINY, pretrained=True, num_classes=3, origin=server.url,
                                      cache_dir=tmp_path / "cache")
    metadata = tuned.preset_metadata
    assert "metrics" not in metadata and "class_names" not in metadata  # 4 names, 3 outputs
    assert metadata["fine_tuned_from"] == {
        "preset": TINY, "overrides": {"num_classes": 3},
        "weights_sha256": presets.get_variant(TINY).files["model.weights.h5"].sha256,
    }
    assert tuned.preprocessing == TINY_PREPROCESSING and metadata["task"] == "classification"

    saved = json.loads((tuned.save_to_preset(tmp_path / "tuned") / "metadata.json").read_text())
    assert saved["preprocessing"] == TINY_PREPROCESSING.to_dict()
    assert saved["fine_tuned_from"] == metadata["fine_tuned_from"]
    assert saved["task"] == "classification" and "metrics" not in saved
    reloaded = GloNetModelBase.from_preset(tmp_path / "tuned")
    assert reloaded.preprocessing == TINY_PREPROCESSING

    # A published preset saved again (after training, say) names it as its starting point.
    plain = glonet_keras.create_model(TINY, pretrained=True, origin=server.url,
                                      cache_dir=tmp_path / "cache")
    again = json.loads((plain.save_to_preset(tmp_path / "again") / "metadata.json").read_text())
    assert again["fine_tuned_from"]["preset"] == TINY
    assert again["class_names"] == ["a", "b", "c", "d"] and "metrics" not in again


def test_a_path_that_does_not_exist_is_named_as_such(tmp_path):
    for path in ("/no/such/dir", str(tmp_path / "missing"), "./nothing_here", "gone.keras"):
        with pytest.raises(presets.PresetError, match="does not exist") as error:
            GloNetModelBase.from_preset(path)
        assert path in str(error.value) and "Unknown model" not in str(error.value)


def test_no_origin_at_all_names_the_environment_variable(monkeypatch):
    monkeypatch.delenv(presets.ORIGIN_ENV, raising=False)
    monkeypatch.setattr(presets.fetch, "shipped_zoo_dir", lambda: None)
    with pytest.raises(presets.PresetError, match=presets.ORIGIN_ENV):
        presets.resolve_origin()
    assert not hasattr(presets, "RELEASE_ORIGIN")


_CONCURRENT_LOADER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import numpy as np
    from glonet_keras import presets
    name, origin, cache, ready_dir, me, hashes = sys.argv[1:7]
    presets.register_model(name, files=dict(h.split("=") for h in hashes.split(",")))
    Path(ready_dir, me).touch()
    while len(os.listdir(ready_dir)) < 2:  # Start the download together with the other process.
        time.sleep(0.01)
    model = presets.create_model(name, pretrained=True, origin=origin, cache_dir=cache)
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    np.save(Path(ready_dir).parent / (me + ".npy"), model.predict(x, verbose=0))
    """
)


def test_two_processes_loading_at_once_share_one_verified_download(tiny_zoo, server, tmp_path):
    model, _ = tiny_zoo
    ready = tmp_path / "ready"
    ready.mkdir()
    server.delay_s = 0.5  # Long enough for both processes to be inside the fetch at once.
    hashes = ",".join(f"{k}={v.sha256}" for k, v in presets.get_variant(TINY).files.items())
    # The numpy backend: the cache logic is backend-free, and it spares each process a TF import.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="numpy")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT_LOADER, TINY, server.url, str(tmp_path / "cache"),
             str(ready), me, hashes],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for me in ("first", "second")
    ]
    for process in processes:
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output
    expected = model.predict(_inputs(), verbose=0)
    for me in ("first", "second"):
        np.testing.assert_allclose(np.load(tmp_path / f"{me}.npy"), expected, rtol=1e-5, atol=1e-6)
    # The lock made the second process wait and then reuse the first one's verified file.
    for name in presets.PRESET_FILES:
        assert server.requests.count(f"/{TINY}/{name}") == 1, server.requests
    assert _cache_listing(tmp_path / "cache") == [
        f"{TINY}/{name}" for name in sorted(presets.PRESET_FILES)
    ]


# --------------------------------------------------------------------- issue 22: a keras-hub user


@pytest.mark.parametrize("keyword, value, hint", [
    ("weights", "imagenet", "weights= is keras.applications'; from_preset loads the preset's "
                            "weights, load_weights=False skips them"),
    ("pretrained", True, "pretrained= is timm's; from_preset(name) always loads"),
])
def test_foreign_keywords_on_from_preset_get_the_right_hint(tiny_zoo, server, tmp_path, keyword,
                                                            value, hint):
    where = dict(origin=server.url, cache_dir=tmp_path / "cache")
    loaders = [glonet_keras.GloNetMLP.from_preset]
    if keyword != "pretrained":  # create_model's own argument
        loaders.append(lambda name, **kw: glonet_keras.create_model(name, True, **kw))
    for load in loaders:
        with pytest.raises(TypeError, match=f"no argument '{keyword}'") as error:
            load(TINY, **{keyword: value}, **where)
        assert hint in str(error.value) and "Did you mean" not in str(error.value)


def test_load_weights_false_builds_the_architecture_without_fetching_the_weights(
        tiny_zoo, server, tmp_path):
    model, _ = tiny_zoo
    fresh = glonet_keras.GloNetModelBase.from_preset(
        TINY, load_weights=False, origin=server.url, cache_dir=tmp_path / "cache")
    assert fresh.get_config() == {**model.get_config(), "name": TINY}
    assert f"/{TINY}/model.weights.h5" not in server.requests
    assert not np.allclose(fresh.predict(_inputs(), verbose=0), model.predict(_inputs(), verbose=0))
    assert fresh.preprocessing == TINY_PREPROCESSING  # the metadata still comes with it
    model.save(tmp_path / "m.keras")
    with pytest.raises(presets.PresetError, match="always loads with its weights"):
        GloNetModelBase.from_preset(tmp_path / "m.keras", load_weights=False)


def test_a_run_model_keras_gets_the_preprocessing_json_beside_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    model = _tiny_model()
    model.save(run / "model.keras")
    assert GloNetModelBase.from_preset(run / "model.keras").preprocessing is None
    (run / "preprocessing.json").write_text(json.dumps(TINY_PREPROCESSING.to_dict()))
    loaded = GloNetModelBase.from_preset(run / "model.keras")
    assert loaded.preprocessing == TINY_PREPROCESSING
    # It then travels on: a preset saved from the run carries it.
    assert glonet_keras.GloNetMLP.from_preset(
        loaded.save_to_preset(tmp_path / "p")).preprocessing == TINY_PREPROCESSING


def test_a_saved_preset_is_named_after_its_folder_unless_named(tmp_path):
    model = _tiny_model()
    assert model.name == "glonet_mlp"
    model.save_to_preset(tmp_path / "my_digits_mlp")
    assert GloNetModelBase.from_preset(tmp_path / "my_digits_mlp").name == "my_digits_mlp"
    config = json.loads((tmp_path / "my_digits_mlp" / "config.json").read_text())
    assert config["config"]["name"] == "my_digits_mlp"
    model.save_to_preset(tmp_path / "other", name="kept")
    assert GloNetModelBase.from_preset(tmp_path / "other").name == "kept"
    model.save_to_preset(tmp_path / "not a model name!")  # a folder name that is no model name
    assert GloNetModelBase.from_preset(tmp_path / "not a model name!").name == "glonet_mlp"
    with pytest.raises(presets.PresetError, match="model name"):
        model.save_to_preset(tmp_path / "x", name="../escape")
