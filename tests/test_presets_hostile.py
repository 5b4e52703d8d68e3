"""Hostile presets and downloads (issue 10, "Presets and download"): each case reproduces an attack
or a fault that the loader once let through (a hang, a file read outside the preset, a write through
a link, an unbounded download, a poisoned cache, a raw traceback) and checks the clear refusal that
replaced it. Every download is served by the shared test server on 127.0.0.1.

Each test names the preset and the file in the error it expects, and leaves the cache clean.
"""

import configparser
import contextlib
import hashlib
import json
import os
import shutil
import signal
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

import glonet_keras
from glonet_keras import presets
from glonet_keras.models.common import GloNetModelBase
from tests import http_server

TINY = "tiny_hostile_mlp"
HASH = "0" * 64


@contextlib.contextmanager
def _within(seconds):
    """Fails the test with TimeoutError instead of hanging (a FIFO open, an endless read)."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: the loader hangs")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _tiny_model(width=8):
    return glonet_keras.GloNetMLP(num_blocks=2, width=width, num_classes=3, input_shape=(6,))


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One tiny preset, saved once; each test works on a copy."""
    return presets.save_preset(_tiny_model(), tmp_path_factory.mktemp("template") / TINY)


@pytest.fixture
def preset(template, tmp_path):
    return Path(shutil.copytree(template, tmp_path / "zoo" / TINY))


def _metadata(directory):
    return json.loads((directory / "metadata.json").read_text())


def _write_metadata(directory, metadata):
    (directory / "metadata.json").write_text(json.dumps(metadata))


def _rehash(directory):
    """Records the current sha256 of the preset's files, as a forger would."""
    metadata = _metadata(directory)
    metadata.pop("files")
    presets.write_metadata(directory, metadata)


def _refused(directory, match, *, seconds=20):
    """Loads `directory`; it must raise a PresetError naming the preset and matching `match`."""
    with _within(seconds), pytest.raises(presets.PresetError, match=match) as error:
        GloNetModelBase.from_preset(directory)
    assert str(directory) in str(error.value)
    return str(error.value)


def _listing(directory):
    return sorted(str(p.relative_to(directory)) for p in Path(directory).rglob("*"))


# ------------------------------------------------------------ metadata.json "files" keys (10 cases)


@pytest.mark.parametrize("key", [
    "/dev/zero", "../../../../etc/passwd", "/etc/passwd", "sub/config.json", "..", "",
    "notes.txt", "CONFIG.JSON", "metadata.json",
])
def test_a_files_key_that_is_not_an_allowed_file_name_is_refused_unopened(preset, key):
    metadata = _metadata(preset)
    metadata["files"][key] = HASH
    _write_metadata(preset, metadata)
    message = _refused(preset, "may only hold|its own sha256", seconds=10)
    assert repr(key) in message or key == "metadata.json"
    assert "metadata.json" in message


def test_a_files_key_outside_the_preset_is_never_hashed(preset, tmp_path):
    # A correct hash of a file outside the preset: once accepted silently, which told an attacker
    # the file exists and what it holds. Now the same refusal whether or not it exists.
    secret = tmp_path / "secret.txt"
    secret.write_text("the secret")
    original, messages = _metadata(preset), []
    for key, digest in (("../../secret.txt", hashlib.sha256(b"the secret").hexdigest()),
                        ("../../no_such_file", HASH)):
        _write_metadata(preset, {**original, "files": {**original["files"], key: digest}})
        messages.append(_refused(preset, "may only hold").replace(key, "KEY"))
    assert messages[0] == messages[1]


# --------------------------------------------- special files where a preset file should be (12)


def _make_special(path, kind):
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    else:  # a link to a regular file elsewhere
        other = path.parent.parent / f"elsewhere_{path.name}"
        other.write_bytes(b"{}")
        path.symlink_to(other)


@pytest.mark.parametrize("kind, expected", [
    ("fifo", "a FIFO"), ("directory", "a directory"), ("link to /dev/zero", "symbolic link"),
    ("link to a file", "symbolic link"),
])
@pytest.mark.parametrize("file_name", ["config.json", "model.weights.h5", "metadata.json"])
def test_a_special_file_in_a_preset_is_refused_without_blocking(preset, file_name, kind, expected):
    _make_special(preset / file_name, kind)
    message = _refused(preset, expected, seconds=10)
    assert file_name in message


# ------------------------------------------------------------- malformed files (20 cases)


@pytest.mark.parametrize("content, expected", [
    (b"[1, 2]", "must hold a JSON object, not a list"),
    (b'{"files": ["config.json"]}', "'files' must map file names to sha256, not a list"),
    (b'{"files": {"config.json": 12}}', "sha256 of config.json is malformed"),
    (b"\xff\xfe not text", "not valid JSON"),
    (b"<html><body>502 Bad Gateway</body></html>", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    (b'{"preprocessing": {"mean": [0], "shift": 1}}', "invalid 'preprocessing'"),
    (b'{"preprocessing": [1, 2]}', "invalid 'preprocessing'"),
    (b'{"class_names": "0123456789"}', "'class_names' must be a list of strings"),
], ids=["list", "files-list", "digest-int", "not-utf8", "html", "deep-nesting", "pre-key",
        "pre-list", "class-names"])
def test_a_malformed_metadata_json_is_a_preset_error_naming_it(preset, content, expected):
    (preset / "metadata.json").write_bytes(content)
    assert "metadata.json" in _refused(preset, expected)


@pytest.mark.parametrize("config, expected", [
    ([1, 2], "must hold"),
    ({"class_name": "GloNetMLP"}, "must hold"),
    ({"class_name": "Lambda", "config": {}}, "Unknown model class 'Lambda'"),
    ({"class_name": "GloNetMLP", "config": {"num_block": 2}}, "Did you mean 'num_blocks'"),
    ({"class_name": "GloNetMLP", "config": {"name": ".."}}, "never a path"),
    ({"class_name": "GloNetMLP", "config": {"name": "../../elsewhere"}}, "never a path"),
    ({"class_name": "GloNetMLP", "config": {"name": "/tmp/x"}}, "never a path"),
], ids=["list", "no-config", "foreign-class", "unknown-argument", "name-dotdot", "name-relative",
        "name-absolute"])
def test_a_malformed_config_json_is_a_preset_error_naming_it(preset, config, expected):
    (preset / "config.json").write_text(json.dumps(config))
    _rehash(preset)
    assert "config.json" in _refused(preset, expected)


@pytest.mark.parametrize("weights", ["garbage", "empty", "another model"])
def test_weights_that_do_not_load_are_a_preset_error_naming_the_file(preset, tmp_path, weights):
    path = preset / "model.weights.h5"
    if weights == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif weights == "empty":
        path.write_bytes(b"")
    else:
        _tiny_model(width=16).save_weights(tmp_path / "other.weights.h5")
        shutil.copy(tmp_path / "other.weights.h5", path)
    _rehash(preset)  # The hashes match: only the content is wrong.
    assert "model.weights.h5" in _refused(preset, "cannot be loaded as the weights")


def test_a_garbage_keras_file_is_a_preset_error_naming_it(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(presets.PresetError, match="cannot be loaded safely") as error:
        GloNetModelBase.from_preset(path)
    assert str(path) in str(error.value)


# -------------------------------------------------------------- names and paths (13 cases)


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "/tmp/x", "..\\x", "UPPER", "-x",
                                  "x" * 200, None, 3])
def test_a_variant_name_must_be_one_plain_path_component(name):
    with pytest.raises(presets.PresetError, match="one plain path component"):
        presets.register_model(name, files={f: HASH for f in presets.PRESET_FILES})
    assert name not in presets.registry._REGISTRY


def test_the_cache_path_of_a_forged_registry_entry_stays_inside_the_cache(tmp_path):
    # Defence in depth: even a registry entry that bypassed register_model cannot leave the cache.
    files = {f: presets.PresetFile(HASH) for f in presets.PRESET_FILES}
    presets.registry._REGISTRY[".."] = presets.ModelVariant("..", files=files)
    try:
        with pytest.raises(presets.PresetError, match="one plain path component"):
            presets.fetch_preset("..", cache_dir=tmp_path / "cache", origin=str(tmp_path))
    finally:
        presets.registry._REGISTRY.pop("..")
    assert _listing(tmp_path) == ["cache"]


def test_a_missing_path_is_reported_as_missing_not_as_an_unknown_name(tmp_path):
    with pytest.raises(presets.PresetError, match="does not exist"):
        GloNetModelBase.from_preset(tmp_path / "no" / "such" / "dir")


# ------------------------------------------------------ links in the cache (4 cases)


@pytest.fixture
def registered(preset):
    files = {f: {"sha256": presets.sha256_of(preset / f), "bytes": (preset / f).stat().st_size}
             for f in presets.PRESET_FILES}
    presets.register_model(TINY, files=files, description="hostile tests")
    yield preset
    presets.registry._REGISTRY.pop(TINY, None)


@pytest.fixture
def server(registered):
    with http_server.FileServer(registered.parent) as serving:
        yield serving


def test_a_symlinked_preset_folder_in_the_cache_is_never_written_through(server, tmp_path):
    cache, victim = tmp_path / "cache", tmp_path / "victim"
    cache.mkdir()
    victim.mkdir()
    (cache / TINY).symlink_to(victim)
    with pytest.raises(presets.PresetDownloadError, match="symbolic link") as error:
        glonet_keras.create_model(TINY, pretrained=True, origin=server.url, cache_dir=cache)
    assert str(cache / TINY) in str(error.value)
    assert _listing(victim) == [] and server.requests == []


def test_a_symlinked_cached_file_is_refused_and_its_target_untouched(server, tmp_path):
    cache, victim = tmp_path / "cache", tmp_path / "victim.h5"
    (cache / TINY).mkdir(parents=True)
    victim.write_bytes(b"precious")
    (cache / TINY / "config.json").symlink_to(victim)
    with pytest.raises(presets.PresetDownloadError, match="symbolic link") as error:
        glonet_keras.create_model(TINY, pretrained=True, origin=server.url, cache_dir=cache)
    assert str(cache / TINY / "config.json") in str(error.value)
    assert victim.read_bytes() == b"precious" and (cache / TINY / "config.json").is_symlink()


def test_a_symlinked_lock_file_is_not_followed(server, tmp_path):
    cache, victim = tmp_path / "cache", tmp_path / "created_through_the_link"
    (cache / TINY).mkdir(parents=True)
    (cache / TINY / "config.json.lock").symlink_to(victim)  # dangling: O_CREAT would create it
    with pytest.raises(presets.PresetDownloadError, match="lock file .* symbolic link"):
        glonet_keras.create_model(TINY, pretrained=True, origin=server.url, cache_dir=cache)
    assert not os.path.lexists(victim)


def test_a_symlinked_url_cache_folder_is_refused(server, tmp_path):
    cache, victim = tmp_path / "cache", tmp_path / "victim"
    victim.mkdir()
    url = f"{server.url}/{TINY}"
    (cache / "url").mkdir(parents=True)
    (cache / "url" / hashlib.sha256(url.encode()).hexdigest()[:16]).symlink_to(victim)
    with pytest.raises(presets.PresetDownloadError, match="symbolic link"):
        GloNetModelBase.from_preset(url, cache_dir=cache)
    assert _listing(victim) == []


# ------------------------------------------------------- downloads: size, time, schemes (15 cases)


def _fetch(server, tmp_path, **limits):
    destination = tmp_path / "cache" / "file.bin"
    destination.parent.mkdir(parents=True, exist_ok=True)
    presets.fetch_file(f"{server.url}/{TINY}/model.weights.h5", destination, **limits)
    return destination


def _no_leftovers(tmp_path):
    assert _listing(tmp_path / "cache") == []  # no partial file, no lock file


def test_a_huge_content_length_is_refused_before_anything_is_written(server, tmp_path):
    server.faults["model.weights.h5"] = http_server.respond(b"tiny", {"Content-Length": str(10**13)})
    with pytest.raises(presets.PresetDownloadError, match="Content-Length .* exceeds the limit"):
        _fetch(server, tmp_path)
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("value", ["abc", "-1", "12, 12", "1e3", "0x10"])
def test_a_malformed_content_length_is_a_clear_download_error(server, tmp_path, value):
    server.faults["model.weights.h5"] = http_server.respond(b"0123456789ab",
                                                            {"Content-Length": value})
    with pytest.raises(presets.PresetDownloadError, match="malformed Content-Length") as error:
        _fetch(server, tmp_path)
    assert "file.bin" in str(error.value)
    _no_leftovers(tmp_path)


def test_an_endless_body_is_cut_off_at_the_size_cap(server, tmp_path):
    server.faults["model.weights.h5"] = http_server.endless()
    with _within(20), pytest.raises(presets.PresetDownloadError, match="exceeds the limit of 1048576"):
        _fetch(server, tmp_path, max_bytes=2**20)
    _no_leftovers(tmp_path)


def test_a_registered_preset_is_capped_at_its_recorded_size(server, registered, tmp_path):
    # No limit to configure: the registry records each file's size.
    server.faults["model.weights.h5"] = http_server.endless()
    size = (registered / "model.weights.h5").stat().st_size
    with _within(20), pytest.raises(presets.PresetDownloadError, match=f"limit of {size} bytes"):
        glonet_keras.create_model(TINY, pretrained=True, origin=server.url,
                                  cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("fault", [http_server.drip(0.2), http_server.drip_headers(0.2)],
                         ids=["slow-body", "slow-headers"])
def test_a_slow_server_is_cut_off_at_the_deadline_and_the_lock_released(server, tmp_path, fault):
    # Each byte comes well within the per-read timeout: only an overall deadline stops this.
    server.faults["model.weights.h5"] = fault
    start = time.monotonic()
    with _within(30), pytest.raises(presets.PresetDownloadError, match="deadline"):
        _fetch(server, tmp_path, deadline_s=1.0, timeout=5.0)
    assert time.monotonic() - start < 5.0
    _no_leftovers(tmp_path)
    del server.faults["model.weights.h5"]
    _fetch(server, tmp_path, deadline_s=30.0, lock_timeout=0.0)  # The lock is free at once.


def test_a_silent_server_hits_the_per_read_timeout(server, tmp_path):
    server.delay_s = 3.0
    with pytest.raises(presets.PresetDownloadError, match="timed out|deadline"):
        _fetch(server, tmp_path, timeout=0.5)
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "gopher://127.0.0.1/x"])
def test_only_http_https_and_file_urls_are_fetched(tmp_path, url):
    with pytest.raises(presets.PresetDownloadError, match="only .*'http'"):
        presets.fetch_file(url, tmp_path / "x")
    with pytest.raises(presets.PresetError, match="only .*'http'"):
        GloNetModelBase.from_preset(url, cache_dir=tmp_path / "cache")


def test_a_redirect_to_a_local_file_is_not_followed(server, tmp_path):
    server.faults["model.weights.h5"] = http_server.respond(
        b"", {"Location": "file:///etc/passwd", "Content-Length": "0"}, status_code=302)
    with pytest.raises(presets.PresetDownloadError, match="HTTP 302"):
        _fetch(server, tmp_path)
    _no_leftovers(tmp_path)


def test_a_fifo_in_a_local_origin_does_not_block(registered, tmp_path):
    (registered / "config.json").unlink()
    os.mkfifo(registered / "config.json")
    with _within(10), pytest.raises(presets.PresetDownloadError, match="a FIFO"):
        glonet_keras.create_model(TINY, pretrained=True, origin=str(registered.parent),
                                  cache_dir=tmp_path / "cache")


# ---------------------------------------------------- URL presets: metadata.json (4 cases)


def test_an_html_page_served_once_does_not_poison_a_url_preset(server, tmp_path):
    url, cache = f"{server.url}/{TINY}", tmp_path / "cache"
    server.faults["metadata.json"] = http_server.respond(b"<html>503 try later</html>")
    with pytest.raises(presets.PresetDownloadError, match="not valid JSON"):
        GloNetModelBase.from_preset(url, cache_dir=cache)
    assert not [p for p in _listing(cache) if p.endswith("metadata.json")]
    del server.faults["metadata.json"]
    assert GloNetModelBase.from_preset(url, cache_dir=cache).preset_metadata["files"]


def test_a_url_preset_sees_a_new_version_at_the_next_load(server, registered, tmp_path):
    url, cache = f"{server.url}/{TINY}", tmp_path / "cache"
    first = GloNetModelBase.from_preset(url, cache_dir=cache)
    replacement = _tiny_model()
    presets.save_preset(replacement, registered)  # The server now publishes other weights.
    second = GloNetModelBase.from_preset(url, cache_dir=cache)
    for ours, theirs in zip(second.get_weights(), replacement.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    assert not all(np.array_equal(a, b) for a, b in zip(first.get_weights(), second.get_weights()))


@pytest.mark.parametrize("files, expected", [
    ({"config.json": None}, "does not record the sha256 of model.weights.h5"),
    ({"../../../../etc/passwd": HASH}, "may only hold"),
], ids=["unverifiable-weights", "path-key"])
def test_a_url_preset_whose_metadata_cannot_verify_its_files_is_refused(
    server, registered, tmp_path, files, expected
):
    metadata = _metadata(registered)
    metadata["files"] = {k: metadata["files"][k] if v is None else v for k, v in files.items()}
    _write_metadata(registered, metadata)
    with pytest.raises((presets.PresetError, presets.PresetDownloadError), match=expected):
        GloNetModelBase.from_preset(f"{server.url}/{TINY}", cache_dir=tmp_path / "cache")
    assert not [p for p in _listing(tmp_path / "cache") if p.endswith(".h5")]


# ---------------------------------------------- the Keras floor: safe mode reading local files (11)


def _secret(tmp_path, nbytes):
    values = np.arange(1, nbytes // 4 + 1, dtype="float32")
    path = tmp_path / "secret.bin"
    path.write_bytes(values.tobytes())
    return path, values


def test_an_hdf5_external_dataset_in_the_weights_is_refused(preset, tmp_path):
    import h5py

    path = preset / "model.weights.h5"
    with h5py.File(path, "r+") as weights:
        names = []
        weights.visititems(lambda name, item: names.append(name)
                           if isinstance(item, h5py.Dataset) and item.ndim == 2 else None)
        shape = weights[names[0]].shape
        secret, values = _secret(tmp_path, 4 * int(np.prod(shape)))
        del weights[names[0]]
        weights.create_dataset(names[0], shape=shape, dtype="float32",
                               external=[(str(secret), 0, secret.stat().st_size)])
    _rehash(preset)  # A consistent, hostile preset.
    message = _refused(preset, "model.weights.h5 cannot be loaded")
    assert "external" in message


def test_a_file_backed_string_lookup_in_a_keras_file_is_refused(tmp_path):
    pytest.importorskip("tensorflow")
    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("SECRET_TOKEN\n")
    inputs = keras.Input(shape=(1,), dtype="string")
    model = keras.Model(inputs, keras.layers.StringLookup(vocabulary=["a"], name="lookup")(inputs))
    path = tmp_path / "hostile.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        entries = {n: archive.read(n) for n in archive.namelist() if not n.startswith("assets")}
    config = json.loads(entries["config.json"])
    (layer,) = [x for x in config["config"]["layers"] if x["class_name"] == "StringLookup"]
    layer["config"]["vocabulary"] = str(vocabulary)
    entries["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    with pytest.raises(presets.PresetError, match="cannot be loaded safely") as error:
        GloNetModelBase.from_preset(path)
    assert str(path) in str(error.value) and "vocabulary" in str(error.value).lower()


@pytest.mark.parametrize("version, safe", [
    ("3.10.0", False), ("3.12.0", False), ("3.13.0", False), ("3.13.1", False),
    ("3.12.1", True), ("3.12.4", True), ("3.13.2", True), ("3.15.1", True),
])
def test_presets_load_only_under_a_keras_whose_safe_mode_holds(preset, monkeypatch, version, safe):
    monkeypatch.setattr(keras, "__version__", version)
    if safe:
        GloNetModelBase.from_preset(preset)
        return
    with pytest.raises(presets.PresetError, match=f"Keras {version} .*local files"):
        GloNetModelBase.from_preset(preset)


def test_the_installed_keras_and_setup_cfg_require_the_safe_releases():
    from packaging.requirements import Requirement
    from packaging.version import Version

    presets.require_safe_keras()  # the installed Keras (the two tests above used it)
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    lines = [line.strip() for line in setup["options"]["install_requires"].splitlines()]
    (keras_line,) = [line for line in lines if line.startswith("keras")]
    assert Requirement(keras_line).specifier == Requirement(f"keras{presets.SAFE_KERAS}").specifier
    assert Version("3.13.1") not in Requirement(keras_line).specifier


# ------------------------------------ issue 22: huge numbers and architectures, leftovers, bombs


def _set_config(directory, **changes):
    """Edits config.json's constructor arguments and re-records every sha256, as a forger would."""
    saved = json.loads((directory / "config.json").read_text())
    saved["config"].update(changes)
    (directory / "config.json").write_text(json.dumps(saved))
    _rehash(directory)


@pytest.mark.parametrize("changes, named", [
    ({"width": 200000}, "width=200000"),                    # 4e10 parameters
    ({"num_blocks": 1500}, "num_blocks=1500"),              # 1,500 unrolled blocks: a long build
    ({"num_classes": 10**400}, "num_classes=<an integer of about 401 digits>"),
    ({"width": 10**40, "num_blocks": 10**40}, "width=<an integer of about 41 digits>"),
    ({"input_shape": [10**6, 10**6]}, "input_shape=[1000000, 1000000]"),
])
def test_a_config_too_large_to_build_is_refused_before_anything_is_built(
        preset, monkeypatch, changes, named):
    _set_config(preset, **changes)
    built = []
    monkeypatch.setattr(glonet_keras.GloNetMLP, "from_config", classmethod(
        lambda cls, config: built.append(config)))
    message = _refused(preset, "over the limit", seconds=5)
    assert named in message and "config.json" in message and built == []


def test_a_scanned_mlp_is_not_counted_in_blocks_but_in_parameters(preset):
    _set_config(preset, num_blocks=1500, scan=True, normalization="layer")
    # Past the block check (a scanned stack builds at any depth); the weights then do not fit.
    _refused(preset, "cannot be loaded as the weights", seconds=60)


@pytest.mark.parametrize("field, value", [
    ("dropout", 10**400), ("num_classes", -10**400), ("width", 2**31), ("input_shape", [2**40]),
    ("num_blocks", 1.5e300), ("num_classes", float("nan")),
])
def test_a_huge_or_non_finite_number_in_any_config_field_is_a_preset_error(preset, field, value):
    _set_config(preset, **{field: value})
    message = _refused(preset, "Cannot build|over the limit", seconds=10)
    assert field in message and len(message) < 2000


def test_an_integer_longer_than_pythons_digit_limit_is_invalid_json(preset):
    text = (preset / "config.json").read_text().replace('"width": 8', '"width": ' + "9" * 5000)
    assert "9" * 5000 in text
    (preset / "config.json").write_text(text)
    _rehash(preset)
    _refused(preset, "not valid JSON.*digits", seconds=10)


@pytest.mark.parametrize("preprocessing, expected", [
    ({"mean": [1e300]}, "`mean` must be finite in float32"),
    ({"std": [1e-300]}, "`std` must be >= 1.175e-38"),
    ({"scale": 1e300}, "`scale` must be finite in float32"),
    ({"scale": 10**400}, "`scale` must be finite in float32"),
    ({"mean": [10**400]}, "`mean` must be finite in float32"),
    ({"mean": [1e30], "std": [1e-30]}, "mean / std overflows float32"),
    ({"std": [0.0]}, "`std` must be >= "),
    ({"std": [-1.0]}, "`std` must be >= "),
    ({"image_size": [10**400, 1]}, "`image_size` must be None or two integers in"),
    ({"image_size": [4, 4]}, "resizes images to \\(4, 4\\)"),
    ({"mean": [0.0, 0.0], "std": [1.0, 1.0]}, "2 channel statistics"),
])
def test_a_preprocessing_record_that_would_serve_nan_or_misfit_is_refused(
        preset, preprocessing, expected):
    metadata = _metadata(preset)
    metadata["preprocessing"] = {"input_dtype": "float32", "scale": 1.0, "mean": [0.0],
                                 "std": [1.0], "image_size": None, **preprocessing}
    _write_metadata(preset, metadata)
    assert "'preprocessing'" in _refused(preset, expected, seconds=10)


def test_class_names_of_the_wrong_length_are_refused(preset):
    metadata = _metadata(preset)
    metadata["class_names"] = ["only", "two"]
    _write_metadata(preset, metadata)
    _refused(preset, "'class_names' names 2 classes, but the model has 3 outputs")


def _keras_file(path):
    model = _tiny_model()
    model.save(path)
    return path


def _rewrite_member(path, name, content):
    """Replaces one member of a .keras zip (deflated, so a repetitive one stays small on disk)."""
    with zipfile.ZipFile(path) as archive:
        members = {m.filename: archive.read(m.filename) for m in archive.infolist()}
    members[name] = content
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in members.items():
            archive.writestr(member, data)


@pytest.mark.parametrize("member", ["config.json", "metadata.json"])
def test_a_keras_json_member_that_inflates_past_the_cap_is_refused_unread(tmp_path, monkeypatch,
                                                                          member):
    path = _keras_file(tmp_path / "model.keras")
    _rewrite_member(path, member, b" " * (presets.MAX_KERAS_JSON_BYTES + 1))
    assert path.stat().st_size < 200_000  # the bomb: small on disk, 8 MiB once inflated
    monkeypatch.setattr(keras.saving, "load_model", lambda *a, **k: pytest.fail("Keras read it"))
    message = _refused(path, "inflates to")
    assert member in message


def test_a_keras_file_describing_a_huge_model_is_refused_before_keras_builds_it(tmp_path,
                                                                                monkeypatch):
    path = _keras_file(tmp_path / "model.keras")
    with zipfile.ZipFile(path) as archive:
        saved = json.loads(archive.read("config.json"))
    saved["config"]["width"] = 200000
    _rewrite_member(path, "config.json", json.dumps(saved).encode())
    monkeypatch.setattr(keras.saving, "load_model", lambda *a, **k: pytest.fail("Keras built it"))
    assert "width=200000" in _refused(path, "over the limit")


def test_a_stale_partial_download_is_removed_at_the_next_fetch_and_nothing_else(server, tmp_path):
    cache = tmp_path / "cache"
    folder = cache / TINY
    folder.mkdir(parents=True)
    # What a SIGKILLed download leaves (named as tempfile.mkstemp names it), and look-alikes that
    # are not its own: another file's partial, a user's file, and a link to a file outside.
    stale = folder / ".model.weights.h5.k3j_x9q2.part"
    stale.write_bytes(b"half a download")
    other = folder / ".notes.txt.abcdefgh.part"
    other.write_bytes(b"keep")
    outside = tmp_path / "outside.part"
    outside.write_bytes(b"keep")
    link = folder / ".model.weights.h5.linkxxxx.part"
    link.symlink_to(outside)
    glonet_keras.create_model(TINY, pretrained=True, origin=server.url, cache_dir=cache)
    assert not stale.exists()
    assert other.read_bytes() == b"keep" and outside.read_bytes() == b"keep" and link.is_symlink()
    assert not [p for p in folder.iterdir() if p.name.endswith(".part") and p not in (other, link)]


def test_the_preprocessing_json_beside_a_run_model_keras_is_checked_like_a_preset(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    path = _keras_file(run / "model.keras")
    (run / "preprocessing.json").write_text(json.dumps(
        {"input_dtype": "float32", "scale": 1.0, "mean": [1e300], "std": [1.0],
         "image_size": None}))
    assert "preprocessing.json" in _refused(path, "finite in float32")
    (run / "preprocessing.json").unlink()
    (run / "preprocessing.json").symlink_to(tmp_path / "elsewhere.json")
    _refused(path, "symbolic link")


def test_no_extra_installs_keras_hub_which_cannot_load_these_presets():
    # The `hub` extra installed keras-hub, whose tensorflow-text pulls the full tensorflow over
    # tensorflow-cpu, while nothing imported it and keras-hub cannot load these presets.
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    extras = setup["options.extras_require"]
    assert "hub" not in extras
    assert not [name for name, value in extras.items() if "keras-hub" in value or "keras_hub" in value]
