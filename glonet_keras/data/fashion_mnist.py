"""Fashion-MNIST's four original gzip IDX files: where they are looked for, their sha256, and a strict
IDX parser. Never downloaded."""

import functools
import gzip
import hashlib
import math
import os
import zlib

import numpy as np

from glonet_keras.data.base import DatasetUnavailableError, open_regular_file

# Fashion-MNIST: the four original gzip IDX files, looked for in the order `fashion_mnist_dir` says.
FASHION_MNIST_ENV = "GLONET_KERAS_FASHION_MNIST_DIR"
# Where `apt-get install dataset-fashion-mnist` puts them.
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
# sha256 of Zalando's canonical files (the ones Debian ships and `keras.datasets` downloads).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz":
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz":
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz":
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz":
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
_FASHION_MNIST_MAX_FILE_BYTES = 32 * 2**20  # The largest file is 26.4 MB: never read more.
_FASHION_MNIST_HOW_TO = (
    "Get the four files ({files}) in one of two ways: `apt-get install dataset-fashion-mnist` "
    "(Debian/Ubuntu, as root; `make data` does it), or on a machine with internet "
    "`python -c \"import keras; keras.datasets.fashion_mnist.load_data()\"`, which fills the Keras "
    "cache $KERAS_HOME/datasets/fashion-mnist (copy that folder to this machine). Or point the "
    "environment variable {env} (or data_dir=) at a folder holding them."
).format(files=", ".join(FASHION_MNIST_SHA256), env=FASHION_MNIST_ENV)


def _keras_cache_dir():
    """Where `keras.datasets.fashion_mnist.load_data()` keeps its files (Keras' own rule)."""
    if "KERAS_HOME" in os.environ:
        keras_home = os.environ["KERAS_HOME"]
    else:
        home = os.path.expanduser("~")
        keras_home = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    return os.path.join(os.path.expanduser(keras_home), "datasets", "fashion-mnist")


def fashion_mnist_dir(data_dir=None):
    """The folder Fashion-MNIST is read from. Looks only at the local disk, never the network.

    With `data_dir`, that folder and no other. Without, the first of: the environment variable
    `GLONET_KERAS_FASHION_MNIST_DIR`, the Debian package's `/usr/share/datasets/fashion-mnist`, and
    the Keras cache `$KERAS_HOME/datasets/fashion-mnist` (`~/.keras` by default) that holds all
    four files. A folder holding only some of them is an error, never skipped.

    Raises:
        DatasetUnavailableError: no folder holds the four files. The message lists where it
            looked and how to get them.
    """
    if data_dir is not None:
        candidates = [("data_dir", os.fspath(data_dir))]
    else:
        candidates = [(f"${FASHION_MNIST_ENV}", os.environ.get(FASHION_MNIST_ENV)),
                      ("Debian package", FASHION_MNIST_DEBIAN_DIR),
                      ("Keras cache", _keras_cache_dir())]
    looked = []
    for origin, directory in candidates:
        if not directory:
            continue
        present = [f for f in FASHION_MNIST_SHA256 if os.path.isfile(os.path.join(directory, f))]
        if len(present) == len(FASHION_MNIST_SHA256):
            return directory
        if present:
            missing = [f for f in FASHION_MNIST_SHA256 if f not in present]
            raise DatasetUnavailableError(
                f"Data set 'fashion_mnist': {directory!r} ({origin}) lacks {missing}. "
                + _FASHION_MNIST_HOW_TO
            )
        looked.append(f"{directory!r} ({origin})")
    raise DatasetUnavailableError(
        f"Data set 'fashion_mnist' is not on this machine (looked in {', '.join(looked)}). "
        + _FASHION_MNIST_HOW_TO
    )


def _fashion_mnist(directory):
    """Decoded arrays of the four files in `directory`, read once per process per file version."""
    return _decode_fashion_mnist(os.path.realpath(directory), _file_stamps(directory))


@functools.lru_cache(maxsize=2)
def _decode_fashion_mnist(directory, stamps):
    del stamps  # Part of the cache key only.
    splits = []
    for prefix, count in (("train", 60_000), ("t10k", 10_000)):
        images = _read_idx(directory, f"{prefix}-images-idx3-ubyte.gz", (count, 28, 28))
        labels = _read_idx(directory, f"{prefix}-labels-idx1-ubyte.gz", (count,))
        splits.append((images[..., None], labels.astype("int32")))
    return tuple(splits)


def _read_idx(directory, file_name, shape):
    """One verified gzip IDX file of unsigned bytes -> read-only uint8 array of `shape`.

    Raises ValueError naming the file when its sha256 is not the canonical one, or (for a file
    that passed the hash but not the parser) when it is no IDX file of that shape.
    """
    path = os.path.join(directory, file_name)
    with open_regular_file(path) as handle:
        compressed = handle.read(_FASHION_MNIST_MAX_FILE_BYTES + 1)
    digest = hashlib.sha256(compressed).hexdigest()
    if digest != FASHION_MNIST_SHA256[file_name]:
        raise ValueError(
            f"{path}: sha256 {digest} is not that of the canonical Fashion-MNIST file "
            f"({FASHION_MNIST_SHA256[file_name]}): the file is corrupt, truncated or another "
            "version. Replace it (reinstall the package, or fetch it again). "
            + _FASHION_MNIST_HOW_TO
        )
    try:
        content = gzip.decompress(compressed)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: not a valid gzip file ({error}).") from error
    return parse_idx(content, shape, path)


def parse_idx(content, shape, path="<bytes>"):
    """Parses an IDX file of unsigned bytes (the MNIST format) that must hold `shape` exactly.

    The header is two zero bytes, the type byte 0x08 (unsigned byte), the number of dimensions,
    then each dimension as a big-endian uint32; the values follow, and nothing after them.

    Returns:
        A read-only uint8 array of `shape` (a view of `content`).

    Raises:
        ValueError: naming `path`, when the magic number, the dimensions or the length differ.
    """
    header_size = 4 + 4 * len(shape)
    if len(content) < header_size:
        raise ValueError(f"{path}: {len(content)} bytes is too short for an IDX header.")
    magic = bytes(content[:4])
    if magic != bytes((0, 0, 0x08, len(shape))):
        raise ValueError(
            f"{path}: IDX magic number {magic.hex()} is not {bytes((0, 0, 8, len(shape))).hex()} "
            f"(unsigned bytes, {len(shape)} dimensions)."
        )
    dims = tuple(int.from_bytes(content[4 + 4 * i:8 + 4 * i], "big") for i in range(len(shape)))
    if dims != tuple(shape):
        raise ValueError(f"{path}: IDX dimensions {dims}, expected {tuple(shape)}.")
    expected = header_size + math.prod(shape)
    if len(content) != expected:
        raise ValueError(f"{path}: {len(content)} bytes, expected {expected} for shape {dims}.")
    return np.frombuffer(content, np.uint8, offset=header_size).reshape(shape)


def _file_stamps(directory):
    """(size, mtime) of each Fashion-MNIST file: in the cache key, so a replaced file is re-read."""
    stamps = []
    for file_name in FASHION_MNIST_SHA256:
        stat = os.stat(os.path.join(directory, file_name))
        stamps.append((stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)
