"""Fashion-MNIST from its four local gzip IDX files: lookup order, hashes, strict parsing, splits.

Tests that need the real files skip, with the loader's own message, only where they are absent
(`make data` installs them); the others build their own files or folders.
"""

import gzip
import hashlib
import os
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest

from glonet_keras import data

FILES = tuple(data.FASHION_MNIST_SHA256)


@pytest.fixture
def installed_dir():
    """The folder holding the real files, or a skip that says how to get them."""
    try:
        return data.fashion_mnist_dir()
    except data.DatasetUnavailableError as error:
        pytest.skip(str(error))


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No location holds the files, and any attempt to reach the network fails the test."""
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path / "env"))
    monkeypatch.setattr(data.fashion_mnist, "FASHION_MNIST_DEBIAN_DIR", str(tmp_path / "debian"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))

    def no_network(*args, **kwargs):
        raise AssertionError("the Fashion-MNIST loader touched the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    return tmp_path


def _link_files(installed_dir, folder, files=FILES):
    os.makedirs(folder, exist_ok=True)
    for name in files:
        os.symlink(os.path.join(installed_dir, name), os.path.join(folder, name))
    return str(folder)


def test_missing_files_fail_fast_saying_how_to_get_them(nowhere):
    for call in (lambda: data.dataset_info("fashion_mnist"),
                 lambda: data.load_arrays("fashion_mnist"),
                 lambda: data.get_dataset("fashion_mnist", "train", 8),
                 lambda: data.count_examples("fashion_mnist", "test")):
        start = time.perf_counter()
        with pytest.raises(data.DatasetUnavailableError) as error:
            call()
        assert time.perf_counter() - start < 1.0
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "keras.datasets.fashion_mnist.load_data()" in message
    assert data.FASHION_MNIST_ENV in message
    for location in ("env", "debian", os.path.join("keras", "datasets", "fashion-mnist")):
        assert str(nowhere / location) in message  # every place it looked


def test_an_explicit_folder_is_the_only_one_looked_at(tmp_path):
    with pytest.raises(data.DatasetUnavailableError, match="looked in '.*empty' \\(data_dir\\)"):
        data.load_arrays("fashion_mnist", data_dir=str(tmp_path / "empty"))


def test_a_partial_folder_is_an_error_never_skipped(nowhere):
    partial = nowhere / "env"
    partial.mkdir()
    (partial / FILES[0]).write_bytes(b"")
    with pytest.raises(data.DatasetUnavailableError) as error:
        data.fashion_mnist_dir()
    assert str(partial) in str(error.value) and FILES[1] in str(error.value)


def test_lookup_order_env_then_debian_then_keras_cache(installed_dir, tmp_path, monkeypatch):
    env_dir = _link_files(installed_dir, tmp_path / "env")
    keras_dir = _link_files(installed_dir, tmp_path / "keras" / "datasets" / "fashion-mnist")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv(data.FASHION_MNIST_ENV, env_dir)
    assert data.fashion_mnist_dir() == env_dir
    monkeypatch.delenv(data.FASHION_MNIST_ENV)
    monkeypatch.setattr(data.fashion_mnist, "FASHION_MNIST_DEBIAN_DIR", installed_dir)
    assert data.fashion_mnist_dir() == installed_dir
    monkeypatch.setattr(data.fashion_mnist, "FASHION_MNIST_DEBIAN_DIR", str(tmp_path / "no_debian"))
    assert data.fashion_mnist_dir() == keras_dir
    assert data.dataset_info("fashion_mnist").source == os.path.realpath(keras_dir)


def test_real_files_decode_fast_to_the_official_splits(installed_dir):
    data.fashion_mnist._decode_fashion_mnist.cache_clear()
    start = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = data.load_arrays("fashion_mnist")
    seconds = time.perf_counter() - start
    assert seconds < 5.0, f"decoding took {seconds:.2f} s"  # about 0.35 s on the 2-core CI machine
    assert x_train.shape == (60_000, 28, 28, 1) and x_test.shape == (10_000, 28, 28, 1)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(y_train), [6_000] * 10)
    np.testing.assert_array_equal(np.bincount(y_test), [1_000] * 10)
    # Read once per process: a second call costs no decoding.
    start = time.perf_counter()
    data.load_arrays("fashion_mnist")
    assert time.perf_counter() - start < 0.5


def test_a_corrupt_file_is_named(installed_dir, tmp_path):
    folder = _link_files(installed_dir, tmp_path, FILES[1:])
    with open(os.path.join(installed_dir, FILES[0]), "rb") as handle:
        truncated = handle.read(100_000)
    (tmp_path / FILES[0]).write_bytes(truncated)
    with pytest.raises(ValueError, match="sha256") as error:
        data.load_arrays("fashion_mnist", data_dir=folder)
    assert str(tmp_path / FILES[0]) in str(error.value)


def _idx(shape, values=None, magic=None):
    header = magic or bytes((0, 0, 8, len(shape)))
    header += b"".join(int(d).to_bytes(4, "big") for d in shape)
    body = bytes(values) if values is not None else bytes(int(np.prod(shape)))
    return header + body


def test_idx_parsing_is_strict():
    parsed = data.parse_idx(_idx((2, 3), range(6)), (2, 3), "ok.idx")
    np.testing.assert_array_equal(parsed, [[0, 1, 2], [3, 4, 5]])
    cases = [
        ("magic number 00000d02", _idx((2, 3), magic=bytes((0, 0, 0x0D, 2)))),  # float32 values
        ("dimensions \\(3, 2\\)", _idx((3, 2))),
        ("20 bytes, expected 18", _idx((2, 3)) + b"\0\0"),  # trailing bytes
        ("17 bytes, expected 18", _idx((2, 3))[:-1]),  # truncated values
        ("too short", b"\0\0\x08"),
    ]
    for reason, content in cases:
        with pytest.raises(ValueError, match=reason) as error:
            data.parse_idx(content, (2, 3), "bad.idx")
        assert "bad.idx" in str(error.value)


def test_a_gzip_that_passes_no_parser_is_named(tmp_path, monkeypatch):
    # Files whose hash is declared canonical, so that the parser itself is reached.
    contents = {FILES[0]: b"not gzip at all", FILES[1]: gzip.compress(_idx((5,)))}
    for name, content in contents.items():
        (tmp_path / name).write_bytes(content)
    hashes = dict(data.FASHION_MNIST_SHA256)
    hashes.update({name: hashlib.sha256(c).hexdigest() for name, c in contents.items()})
    monkeypatch.setattr(data.fashion_mnist, "FASHION_MNIST_SHA256", hashes)
    with pytest.raises(ValueError, match="not a valid gzip file") as error:
        data.fashion_mnist._read_idx(str(tmp_path), FILES[0], (60_000, 28, 28))
    assert str(tmp_path / FILES[0]) in str(error.value)
    with pytest.raises(ValueError, match="IDX dimensions \\(5,\\), expected \\(60000,\\)"):
        data.fashion_mnist._read_idx(str(tmp_path), FILES[1], (60_000,))


def test_pipeline_normalises_with_training_statistics(installed_dir):
    info = data.dataset_info("fashion_mnist")
    assert info.input_shape == (28, 28, 1) and info.num_classes == 10
    assert info.num_examples == {"train": 54_000, "validation": 6_000, "test": 10_000}
    assert data.count_examples("fashion_mnist", "test") == 10_000
    preprocessing = info.preprocessing
    assert preprocessing.input_dtype == "uint8" and preprocessing.scale == pytest.approx(1 / 255)
    # The statistics of the "train" split (the validation carve-out left out), in [0, 1] units.
    (x_train, _), _ = data.load_arrays("fashion_mnist")
    def mean_and_std(images):  # exact, from the histogram of the 256 pixel values
        counts, values = np.bincount(images.ravel(), minlength=256), np.arange(256) / 255
        mean = (counts * values).sum() / counts.sum()
        return mean, np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())

    train_rows, validation_rows = data.base._split_indices(60_000, 0.1, 0)
    mean, std = mean_and_std(x_train[train_rows])
    assert preprocessing.mean[0] == pytest.approx(mean, abs=1e-9)
    assert preprocessing.std[0] == pytest.approx(std, abs=1e-9)
    assert preprocessing.mean[0] != pytest.approx(mean_and_std(x_train)[0], abs=1e-5)
    x, y = next(iter(data.get_dataset("fashion_mnist", "validation", 64, max_examples=64)))
    assert x.shape == (64, 28, 28, 1) and x.dtype == "float32" and y.dtype == "int32"
    raw = x_train[validation_rows[:64]]
    expected = (raw / 255 - preprocessing.mean[0]) / preprocessing.std[0]
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-5)


def test_image_size_resizes_in_the_pipeline(installed_dir):
    info = data.dataset_info("fashion_mnist", image_size=(32, 32))
    assert info.input_shape == (32, 32, 1) and info.preprocessing.image_size == (32, 32)
    x, _ = next(iter(data.get_dataset("fashion_mnist", "test", 8, image_size=(32, 32))))
    assert x.shape == (8, 32, 32, 1)
    for name in ("mnist1d", "sgemm"):
        with pytest.raises(ValueError, match=f"{name!r} has no images"):
            data.dataset_info(name, image_size=(32, 32))


def test_the_data_target_finds_the_installed_files(installed_dir):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, GLONET_KERAS_FASHION_MNIST_DIR=installed_dir)
    result = subprocess.run(["make", "-s", "data"], cwd=root, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and installed_dir in result.stdout
