"""Bad data is refused up front, naming what is wrong: image folders, SGEMM CSVs, tfds offline.

Each case here was a crash mid-training, a silent wrong result or a hang before (issue 10, "Data",
and "--download offline hangs for minutes").
"""

import socket
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import tensorflow as tf

from glonet_keras import data
from tests import harness
from tests.test_data import _write_sgemm

# ------------------------------------------------------------------------------------------------
# Image files, built byte by byte where TensorFlow cannot write them.


def _png(height, width, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return tf.io.encode_png(pixels).numpy()


def _jpeg(height, width, progressive=False):
    pixels = np.random.default_rng(1).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return tf.io.encode_jpeg(pixels, progressive=progressive).numpy()


def _huge_png(height, width):
    """A valid grayscale PNG of zeros: a small file that would decode to height*width*3 bytes."""
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    compressor, row = zlib.compressobj(9), bytes(width + 1)  # filter byte + one zero per pixel
    stream = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream)
            + chunk(b"IEND", b""))


def _gif(width, height, frames):
    """A GIF of `frames` 1x1 images on a width x height screen (two-colour global table)."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\xff\xff\xff\0\0\0"
    control = b"!\xf9\x04\x00\x00\x00\x00\x00"  # graphic control extension
    image = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02D\x01\x00"
    return header + (control + image) * frames + b";"


def _bmp(width, height):
    """An uncompressed 24-bit BMP, rows padded to 4 bytes."""
    row = bytes(range(3 * width)) + bytes(-3 * width % 4)
    pixels = row * height
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + len(pixels), 0, 0, 54) + info + pixels


def _write(root, files):
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def _good_folder(root):
    _write(root, {
        "train/cat/a.png": _png(10, 14), "train/cat/b.jpg": _jpeg(12, 9),
        "train/cat/c.gif": _gif(1, 1, 2), "train/cat/d.bmp": _bmp(5, 3),
        "train/dog/a.png": _png(9, 9, seed=1), "train/dog/b.jpeg": _jpeg(8, 8, progressive=True),
        "test/cat/a.png": _png(8, 8, seed=2), "test/dog/a.png": _png(8, 8, seed=3),
    })


def test_headers_give_the_size_without_decoding(tmp_path):
    cases = {
        "a.png": (_png(10, 14), (14, 10, 1)),
        "b.jpg": (_jpeg(12, 9), (9, 12, 1)),
        "c.jpg": (_jpeg(7, 11, progressive=True), (11, 7, 1)),
        "d.gif": (_gif(5, 3, 4), (5, 3, 4)),
        "e.bmp": (_bmp(6, 2), (6, 2, 1)),
        "f.png": (_jpeg(4, 6), (6, 4, 1)),  # told by content, as TensorFlow does, not by name
    }
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_bytes(content)
        assert data.image_folder._image_dimensions(str(tmp_path / name)) == expected, name


def test_bad_image_files_are_all_named_before_training(tmp_path, monkeypatch):
    _good_folder(tmp_path)
    png, jpeg = _png(16, 16), _jpeg(16, 16)
    bad = {
        "train/dog/empty.png": (b"", "empty file"),
        "train/dog/text.jpg": (b"hello, not an image", "not a PNG, JPEG, GIF or BMP image"),
        "train/dog/half.png": (png[: len(png) // 2],
                               "corrupt or truncated, cannot be decoded (Invalid PNG data"),
        "train/cat/header_only.png": (png[:20], "truncated PNG"),
        "train/cat/frames.gif": (_gif(4000, 4000, 4), "4000x4000 x 4 frames pixels (64.0 megapix"),
        "train/cat/no_trailer.gif": (_gif(1, 1, 1)[:-1], "truncated GIF (no trailer)"),
        # A corrupt file in test/ used to crash the final evaluation, after training.
        "test/cat/half.jpg": (jpeg[: len(jpeg) // 2],
                              "corrupt or truncated, cannot be decoded (jpeg::Uncompress"),
        "test/dog/huge.png": (_huge_png(12_000, 12_000),
                              "12000x12000 pixels (144.0 megapixels) is over the 50-megapixel cap"),
    }
    _write(tmp_path, {name: content for name, (content, _) in bad.items()})
    decoded = []
    decode_problems = data.image_folder._decode_problems
    monkeypatch.setattr(data.image_folder, "_decode_problems",
                        lambda keys: decoded.extend(k[0] for k in keys) or decode_problems(keys))
    with pytest.raises(ValueError) as error:
        data.dataset_info("image_folder", data_dir=str(tmp_path), image_size=(8, 8))
    message = str(error.value)
    assert f"{len(bad)} image file(s) under {str(tmp_path)!r} cannot be used" in message
    for name, (_, reason) in bad.items():
        assert f"{tmp_path / name}: {reason}" in message
    assert "a.png" not in message and "b.jpg" not in message  # the good files are not named
    assert not any(path.endswith(("huge.png", "frames.gif")) for path in decoded)  # header only
    for name in bad:
        (tmp_path / name).unlink()
    info = data.dataset_info("image_folder", data_dir=str(tmp_path), image_size=(8, 8),
                             validation_fraction=0.0)
    assert info.num_examples == {"train": 6, "validation": 0, "test": 2}
    x, y = next(iter(data.get_dataset("image_folder", "train", 6, data_dir=str(tmp_path),
                                      image_size=(8, 8), validation_fraction=0.0)))
    assert x.shape == (6, 8, 8, 3) and sorted(y.numpy().tolist()) == [0, 0, 0, 0, 1, 1]


def test_each_file_version_is_checked_once(tmp_path, monkeypatch):
    _good_folder(tmp_path)
    decoded = []
    decode_problems = data.image_folder._decode_problems
    monkeypatch.setattr(data.image_folder, "_decode_problems",
                        lambda keys: decoded.append(len(keys)) or decode_problems(keys))
    for _ in range(3):
        data.dataset_info("image_folder", data_dir=str(tmp_path), image_size=(8, 8))
    assert decoded == [8, 0, 0]
    (tmp_path / "train/cat/a.png").write_bytes(b"")  # replaced: checked again
    with pytest.raises(ValueError, match="a.png: empty file"):
        data.dataset_info("image_folder", data_dir=str(tmp_path), image_size=(8, 8))


@pytest.mark.parametrize("extra, message", [
    ("test/bird/a.png", "class folders \\['bird'\\] in .*test' have no folder in .*train'"),
    ("validation/bird/a.png", "class folders \\['bird'\\] in .*validation' have no folder in"),
    ("train/fish/", "class folders \\['fish'\\] in .*train' hold no images"),
])
def test_class_folders_must_agree(tmp_path, extra, message):
    _good_folder(tmp_path)
    if extra.endswith("/"):
        (tmp_path / extra).mkdir(parents=True)
    else:
        _write(tmp_path, {extra: _png(8, 8)})
    with pytest.raises(ValueError, match=message):
        data.dataset_info("image_folder", data_dir=str(tmp_path), image_size=(8, 8))


def test_a_single_class_is_refused(tmp_path):
    _write(tmp_path, {"train/cat/a.png": _png(8, 8), "train/cat/b.png": _png(8, 8, seed=1)})
    with pytest.raises(ValueError, match="single class folder \\('cat'\\); a classifier needs"):
        data.dataset_info("image_folder", data_dir=str(tmp_path), image_size=(8, 8))


# ------------------------------------------------------------------------------------------------
# The SGEMM CSV.


def _sgemm_with(tmp_path, line, column, value, rows=20):
    """A valid CSV whose cell at file line `line` (the header is line 1), `column`, is `value`."""
    path = tmp_path / data.SGEMM_FILE
    _write_sgemm(path, rows=rows)
    lines = path.read_text().splitlines()
    cells = lines[line - 1].split(",")
    cells[column] = value
    lines[line - 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e400", "1e39"])
@pytest.mark.parametrize("column, name", [(0, "MWG"), (15, "Run2 (ms)")])
def test_non_finite_cells_are_named(tmp_path, value, column, name):
    path = _sgemm_with(tmp_path, 4, column, value)
    with pytest.raises(ValueError) as error:
        data.dataset_info("sgemm", data_dir=path)  # before anything reaches Preprocessing
    message = str(error.value)
    assert path in message and "not finite in float32" in message
    assert f"line 4, column {name!r}: {value}" in message


@pytest.mark.parametrize("line, column, value, message", [
    (3, 16, "-2.5", "line 3, column 'Run3 \\(ms\\)': -2.5.*run times must be positive|"
                    "run times must be positive.*line 3, column 'Run3 \\(ms\\)': -2.5"),
    (5, 2, "abc", "line 5, column 'KWG': 'abc' is not a number"),
    (6, 2, "1,2", "line 6 has 19 values, the header 18"),
])
def test_bad_rows_are_named(tmp_path, line, column, value, message):
    path = _sgemm_with(tmp_path, line, column, value)
    with pytest.raises(ValueError, match=message):
        data.read_sgemm_csv(path)


@pytest.mark.parametrize("rows", [1, 3])
def test_too_few_rows_is_a_clear_error(tmp_path, rows):
    _write_sgemm(tmp_path / data.SGEMM_FILE, rows=rows)
    with pytest.raises(ValueError, match=f"{rows} rows\\): too few examples to split"):
        data.dataset_info("sgemm", data_dir=str(tmp_path))


@pytest.mark.parametrize("content, message", [
    (None, "a header and no data rows"),
    (b"", "the file is empty"),
    (b"\n\n  \n", "the file is empty"),
    (b"\x89PNG\r\n\x1a\n\xff\xfe\x00garbage", "not a text CSV file"),
])
def test_empty_header_only_and_binary_files(tmp_path, content, message):
    path = tmp_path / data.SGEMM_FILE
    _write_sgemm(path, rows=0)
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        data.dataset_info("sgemm", data_dir=str(path))


# ------------------------------------------------------------------------------------------------
# tfds offline: fail in seconds, never hang.


def _closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_download_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(data.tfds_source, "DOWNLOAD_PROBE_ADDRESS", ("127.0.0.1", _closed_port()))
    start = time.perf_counter()
    with pytest.raises(data.DatasetUnavailableError, match="download=True cannot reach the "
                                                           "internet \\(127.0.0.1:"):
        data.get_dataset("mnist", "train", 8, data_dir=str(tmp_path), download=True)
    assert time.perf_counter() - start < 5


def test_download_never_hangs_on_a_silent_network(tmp_path, monkeypatch):
    release = threading.Event()

    def silent(*args, **kwargs):  # an offline DNS lookup: no answer, no timeout of its own
        release.wait(30)
        raise OSError("released")

    monkeypatch.setattr(socket, "create_connection", silent)
    monkeypatch.setattr(data.tfds_source, "DOWNLOAD_PROBE_TIMEOUT", 0.5)
    start = time.perf_counter()
    try:
        with pytest.raises(data.DatasetUnavailableError, match="no answer within 0.5 s"):
            data.dataset_info("cifar10", data_dir=str(tmp_path), download=True)
        assert time.perf_counter() - start < 5
    finally:
        release.set()


# ------------------------------------------------------------------------------------------------
# Special files where a user's file should be (issue 22): never opened blocking, each named.


def test_special_files_named_like_images_are_refused_without_hanging(tmp_path):
    import os
    import socket as socket_lib

    _good_folder(tmp_path)
    cat, dog = tmp_path / "train" / "cat", tmp_path / "train" / "dog"
    os.mkfifo(cat / "zz.png")
    os.mkfifo(tmp_path / "elsewhere_fifo")
    (dog / "link_to_fifo.jpg").symlink_to(tmp_path / "elsewhere_fifo")
    (dog / "folder.png").mkdir()
    (dog / "loop.png").symlink_to(dog / "loop.png")
    (dog / "device.png").symlink_to("/dev/zero")
    server = socket_lib.socket(socket_lib.AF_UNIX)
    server.bind(str(cat / "sock.bmp"))
    try:
        with pytest.raises(ValueError) as error:
            harness.within_seconds(30, data.dataset_info, "image_folder", data_dir=str(tmp_path), image_size=(8, 8))
    finally:
        server.close()
    message = str(error.value)
    for name, kind in (("train/cat/zz.png", "a FIFO"), ("train/dog/link_to_fifo.jpg", "a FIFO"),
                       ("train/dog/folder.png", "a directory"),
                       ("train/dog/device.png", "a character device"),
                       ("train/cat/sock.bmp", "a socket")):
        assert f"{tmp_path / name}: {tmp_path / name} is {kind}, not a regular file" in message
    assert f"{dog / 'loop.png'}: cannot be read (Too many levels of symbolic links)" in message


def test_a_link_to_a_regular_image_is_fine(tmp_path):
    _good_folder(tmp_path)
    (tmp_path / "outside.png").write_bytes(_png(8, 8, seed=5))
    (tmp_path / "train" / "dog" / "linked.png").symlink_to(tmp_path / "outside.png")
    info = data.dataset_info("image_folder", data_dir=str(tmp_path), image_size=(8, 8),
                             validation_fraction=0.0)
    assert info.num_examples["train"] == 7


def test_fifos_as_csv_and_idx_files_are_refused_without_hanging(tmp_path):
    import os

    os.mkfifo(tmp_path / "table.csv")
    with pytest.raises(ValueError, match=r"table.csv is a FIFO, not a regular file"):
        harness.within_seconds(30, data.read_sgemm_csv, str(tmp_path / "table.csv"))
    with pytest.raises(data.DatasetUnavailableError, match="no CSV file"):
        data.dataset_info("sgemm", data_dir=str(tmp_path / "table.csv"))
    fashion = tmp_path / "fashion"
    fashion.mkdir()
    for name in data.FASHION_MNIST_SHA256:
        os.mkfifo(fashion / name)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz is a FIFO"):
        harness.within_seconds(30, data.fashion_mnist._read_idx, str(fashion), "train-images-idx3-ubyte.gz", (60_000, 28, 28))
    with pytest.raises(data.DatasetUnavailableError, match="not on this machine"):
        data.dataset_info("fashion_mnist", data_dir=str(fashion))
