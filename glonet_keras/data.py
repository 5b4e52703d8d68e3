"""Data sets: in-memory arrays, tfds names, image folders and the SGEMM CSV.

Names (`DATASETS`):
- `digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, 10 classes), scaled to
  [0, 1], shape (8, 8, 1); a fixed stratified 80/20 train/test split. Offline.
- `mnist1d`: the MNIST-1D benchmark (4,000 train / 1,000 test signals of length 40, 10 classes),
  generated procedurally by the `mnist1d` package (never downloaded), shape (40, 1). Offline.
- `fashion_mnist`: Zalando's Fashion-MNIST (60,000 train / 10,000 test 28x28 grayscale images, 10
  classes, `FASHION_MNIST_CLASSES`), read from its four original gzip IDX files on the local disk:
  `data_dir`, else `$GLONET_KERAS_FASHION_MNIST_DIR`, the Debian package's
  `/usr/share/datasets/fashion-mnist` (`apt-get install dataset-fashion-mnist`, or `make data`),
  then the Keras cache `$KERAS_HOME/datasets/fashion-mnist` (`fashion_mnist_dir`). Each file is
  checked against its sha256 and parsed strictly; the images stay uint8 (n, 28, 28, 1) in memory,
  decoded once per process. Never downloaded: missing files fail in well under a second with
  `DatasetUnavailableError` saying how to get them.
- tfds names `mnist`, `cifar10`, `cifar100`, `imagenette/160px-v2` (any `imagenette/...` config)
  and `imagenet2012` (manual files): read from `data_dir` (tfds' default when None). Nothing is
  downloaded unless `download=True`; a data set that is not prepared fails at once with
  `DatasetUnavailableError` naming it and the directory looked in, and `download=True` without a
  network fails within `DOWNLOAD_PROBE_TIMEOUT` seconds instead of retrying for minutes.
- `image_folder`: `data_dir/<split>/<class name>/<image file>` (jpeg, png, bmp, gif), or Keras'
  flat `data_dir/<class name>/<image file>` (then a seeded 20 % is the test split); classes are
  the sorted sub-directory names, at least two, and validation/ and test/ may hold no other.
  `image_size=None` takes the size the images share; `channels=1` reads them as grayscale. Every listed file is checked before anything trains: its header (format, size;
  at most `MAX_IMAGE_PIXELS` decoded pixels), then one full decode per file per process. One
  ValueError names every bad file.
- `sgemm`: the SGEMM GPU-kernel-performance CSV (UCI), `data_dir` being the CSV file or a directory
  holding `sgemm_product.csv`: 14 parameter columns, target = log(mean(Run1..Run4)) (regression).
  A cell that is not a finite float32 number, or a run time <= 0, is an error naming its line
  and column.

Splits are `"train"`, `"validation"` and `"test"`. Where the source has no validation split, the
last `validation_fraction` of the (seeded) training examples form it and "train" is the rest, so
the three never overlap; the test split is the source's own (digits and SGEMM: a seeded 20 %).
A split that would be empty is an error, not a StopIteration later.

In-memory sets (`IN_MEMORY_DATASETS`: digits, mnist1d, fashion_mnist, sgemm) need no TensorFlow:
`load_split` returns a split's raw numpy arrays and `dataset_info` its description, for the JAX
training path. `get_dataset` builds the `tf.data` pipeline of any data set.

Preprocessing is one `Preprocessing` record per data set (cast, resize, scale, normalise by mean and
std of the scaled "train" split). The pipeline applies it, and `glonet_keras.export` applies the
same record inside the served graph, so a trained model is always used with the normalisation it
was trained with. Augmentation (`augment=` names from `AUGMENTATIONS`: flip, crop, MixUp and CutMix
as exact device ops from `glonet_keras.augment`, RandAugment Keras' layer) runs inside the pipeline
of the training split only; it never becomes part of a model.

Example:
>>> info = dataset_info("digits")
>>> info.input_shape, info.num_classes, info.class_names[:3]
((8, 8, 1), 10, ('0', '1', '2'))
>>> x, y = load_split("digits", "test", max_examples=4)  # numpy, before preprocessing
>>> batches = get_dataset("digits", "train", batch_size=32)  # tf.data, preprocessed
"""

import dataclasses
import functools
import gzip
import hashlib
import math
import os
import re
import socket
import struct
import threading
import zlib

import numpy as np

from glonet_keras import files
from glonet_keras.preprocessing import (  # noqa: F401  (re-exported)
    Preprocessing, load_preprocessing, save_preprocessing,
)

OFFLINE_DATASETS = ("digits", "mnist1d", "fashion_mnist")
TFDS_DATASETS = ("mnist", "cifar10", "cifar100", "imagenette/160px-v2", "imagenet2012")
FILE_DATASETS = ("image_folder", "sgemm")
DATASETS = OFFLINE_DATASETS + TFDS_DATASETS + FILE_DATASETS
# Held in numpy arrays: `load_split` serves them without TensorFlow (the JAX training path).
IN_MEMORY_DATASETS = OFFLINE_DATASETS + ("sgemm",)
SPLITS = ("train", "validation", "test")
AUGMENTATIONS = ("flip", "crop", "randaugment", "mixup", "cutmix")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SGEMM_FILE = "sgemm_product.csv"
SGEMM_NUM_PARAMETERS = 14
# Decoded pixels (times frames, for a GIF) an image file may have: a 410 KB PNG can declare
# 12000x12000 pixels, 430 MiB once decoded. Checked from the header, before any decoding.
MAX_IMAGE_PIXELS = 50_000_000
# `download=True` first checks, within this many seconds, that the internet answers: offline, a
# tfds download retries DNS for minutes.
DOWNLOAD_PROBE_ADDRESS = ("storage.googleapis.com", 443)
DOWNLOAD_PROBE_TIMEOUT = 5.0

# Per-channel statistics of the [0, 1]-scaled training images (the usual published values).
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_TFDS_STATS = {
    # name: (mean, std, default image size or None for the native fixed size)
    "mnist": ((0.1307,), (0.3081,), None),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), None),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), None),
    "imagenette": (_IMAGENET_MEAN, _IMAGENET_STD, (160, 160)),
    "imagenet2012": (_IMAGENET_MEAN, _IMAGENET_STD, (224, 224)),
}
# tfds data sets whose test split is called "validation".
_TFDS_TEST_SPLIT = {"imagenette": "validation", "imagenet2012": "validation"}


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


class DatasetUnavailableError(FileNotFoundError):
    """A named data set is not on this machine (and no download was asked for)."""


def load_arrays(name, seed=0, *, data_dir=None):
    """The official train and test arrays of an in-memory classification set, before preprocessing.

    Args:
        name: "digits", "mnist1d" or "fashion_mnist".
        seed: seeds digits' stratified split and MNIST-1D's generator (0 gives the standard data);
            Fashion-MNIST's split is the official one.
        data_dir: Fashion-MNIST only: the folder of its four gzip IDX files (see
            `fashion_mnist_dir` for where it looks without one).

    Returns:
        `(x_train, y_train), (x_test, y_test)`: x float32 (digits, mnist1d) or uint8
        (fashion_mnist, shape (n, 28, 28, 1)), y int32.

    Raises:
        DatasetUnavailableError: Fashion-MNIST's files are not on this machine.
        ValueError: an unknown name, or a corrupt Fashion-MNIST file (named).
    """
    if name == "digits":
        return _digits(seed)
    if name == "mnist1d":
        return _mnist1d(seed)
    if name == "fashion_mnist":
        (x_train, y_train), (x_test, y_test) = _fashion_mnist(fashion_mnist_dir(data_dir))
        return (x_train.copy(), y_train.copy()), (x_test.copy(), y_test.copy())
    raise ValueError(f"Unknown offline data set {name!r}. Available: {list(OFFLINE_DATASETS)}.")


def _digits(seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=seed
    )
    return (x_train, y_train), (x_test, y_test)


def _mnist1d(seed):
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as error:
        raise ImportError(
            "The 'mnist1d' data set needs the mnist1d package: pip install 'glonet-keras[mnist1d]'."
        ) from error
    args = get_dataset_args()
    args.seed = 42 + seed  # 42 is the benchmark's own seed: seed=0 gives the standard split.
    data = make_dataset(args)  # Generated locally; `get_dataset` would try the network first.
    x_train = np.asarray(data["x"], "float32")[..., None]
    x_test = np.asarray(data["x_test"], "float32")[..., None]
    return (x_train, np.asarray(data["y"], "int32")), (x_test, np.asarray(data["y_test"], "int32"))


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


# --------------------------------------------------------------------------------------------------
# Data set descriptions.


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set.

    Attributes:
        name: the data set name.
        input_shape: shape of one preprocessed example (what the model's input takes).
        num_classes: number of classes, or 1 for regression.
        task: "classification" or "regression".
        preprocessing: the `Preprocessing` the pipeline applies.
        num_examples: examples per split ({"train": n, ...}), None where unknown.
        source: where the data came from (a directory or file), for metadata.
        class_names: the name of each class index (a tuple of str), None for regression.
    """

    name: str
    input_shape: tuple
    num_classes: int
    task: str
    preprocessing: Preprocessing
    num_examples: dict
    source: str
    class_names: tuple = None

    def to_dict(self):
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "task": self.task,
            "preprocessing": self.preprocessing.to_dict(),
            "num_examples": dict(self.num_examples),
            "source": self.source,
            "class_names": None if self.class_names is None else list(self.class_names),
        }


def _check_name(name):
    if isinstance(name, str) and name.startswith("imagenette/"):
        return name
    if name not in DATASETS:
        raise ValueError(
            f"Unknown data set {name!r}. Available: {list(DATASETS)} (any 'imagenette/<config>')."
        )
    return name


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}. Available: {list(SPLITS)}.")
    return split


def _split_indices(num_examples, validation_fraction, seed):
    """Seeded permutation of the training examples -> (train indices, validation indices)."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(
            f"`validation_fraction` must be in [0, 1), received {validation_fraction!r}."
        )
    order = np.random.default_rng(seed).permutation(num_examples)
    num_validation = int(round(num_examples * validation_fraction))
    return order[: num_examples - num_validation], order[num_examples - num_validation :]


def _channel_stats(x, scale=1.0, rows_per_chunk=4096):
    """Per-channel (last axis) mean and std of `x * scale`, in float64, a chunk of rows at a time.

    Two passes over chunks keep the memory small (60,000 uint8 images would be 376 MB as float64)
    and the variance free of the cancellation of the sum-of-squares formula. A constant channel
    gets std 1 so that normalising never divides by zero.
    """
    rows = x.reshape(len(x), -1, x.shape[-1])
    chunks = [rows[i:i + rows_per_chunk] for i in range(0, len(rows), rows_per_chunk)]
    count = rows.shape[0] * rows.shape[1]
    mean = sum(chunk.sum(axis=(0, 1), dtype="float64") for chunk in chunks) * scale / count
    squares = sum(np.square(chunk.astype("float64") * scale - mean).sum(axis=(0, 1))
                  for chunk in chunks)
    std = np.sqrt(squares / count)
    return tuple(mean.tolist()), tuple(np.where(std > 0, std, 1.0).tolist())


class _ArraySource:
    """In-memory splits (offline sets and the SGEMM table), read-only and cached per process.

    The preprocessing scales the raw dtype's values (`scale`, 1/255 for uint8 images) and
    normalises with the statistics of the "train" split only: the validation carve-out and the
    test split never inform it.
    """

    def __init__(self, name, splits, task, num_classes, source, class_names=None, scale=1.0,
                 image_size=None):
        for x, y in splits.values():
            x.flags.writeable = y.flags.writeable = False  # Shared by every caller.
        self.splits = splits
        x_train = splits["train"][0]
        mean, std = _channel_stats(x_train, scale)
        input_shape = tuple(x_train.shape[1:])
        if image_size is not None:
            input_shape = tuple(image_size) + input_shape[-1:]
        self.info = DatasetInfo(
            name=name,
            input_shape=input_shape,
            num_classes=num_classes,
            task=task,
            preprocessing=Preprocessing(input_dtype=str(x_train.dtype), scale=scale, mean=mean,
                                        std=std, image_size=image_size),
            num_examples={split: len(arrays[1]) for split, arrays in splits.items()},
            source=source,
            class_names=class_names,
        )

    def raw_dataset(self, split):
        import tensorflow as tf

        x, y = self.splits[split]
        return tf.data.Dataset.from_tensor_slices((x, y))


_IN_MEMORY_IMAGE_DATASETS = ("digits", "fashion_mnist")  # The in-memory sets image_size resizes.


def _offline_source(name, seed, validation_fraction, data_dir, image_size):
    if image_size is not None:
        image_size = tuple(int(s) for s in image_size)
    if name == "fashion_mnist":
        directory = fashion_mnist_dir(data_dir)
        return _cached_offline_source(name, seed, validation_fraction, image_size,
                                      os.path.realpath(directory), _file_stamps(directory))
    return _cached_offline_source(name, seed, validation_fraction, image_size, None, None)


def _file_stamps(directory):
    """(size, mtime) of each Fashion-MNIST file: in the cache key, so a replaced file is re-read."""
    stamps = []
    for file_name in FASHION_MNIST_SHA256:
        stat = os.stat(os.path.join(directory, file_name))
        stamps.append((stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


@functools.lru_cache(maxsize=4)
def _cached_offline_source(name, seed, validation_fraction, image_size, directory, stamps):
    if name == "fashion_mnist":
        (x_train, y_train), (x_test, y_test) = _decode_fashion_mnist(directory, stamps)
        source, scale, class_names = directory, 1.0 / 255.0, FASHION_MNIST_CLASSES
    else:
        (x_train, y_train), (x_test, y_test) = load_arrays(name, seed)
        source = "sklearn.datasets.load_digits" if name == "digits" else "mnist1d.data.make_dataset"
        scale, class_names = 1.0, tuple(str(digit) for digit in range(10))
    train, validation = _split_indices(len(y_train), validation_fraction, seed)
    splits = {
        "train": (x_train[train], y_train[train]),
        "validation": (x_train[validation], y_train[validation]),
        "test": (x_test.copy(), y_test.copy()),
    }
    _check_split_sizes(splits, validation_fraction, f"Data set {name!r}")
    return _ArraySource(name, splits, "classification", len(class_names), source,
                        class_names=class_names, scale=scale, image_size=image_size)


def read_sgemm_csv(path):
    """Reads an SGEMM-layout CSV -> (features float32 (n, 14), log mean run time float32 (n,)).

    The header must name 14 parameter columns and the four run-time columns `Run1`..`Run4`
    (UCI's names are `Run1 (ms)`, ...). Every cell must be a number that is finite in float32,
    and every run time positive, so that nothing non-finite reaches the statistics.

    Raises:
        ValueError: naming the file and, for a bad row, its line (the header is line 1) and
            column: an empty or header-only file, a missing column, a row of the wrong length,
            a cell that is not a number, NaN, infinite or beyond float32, a run time <= 0.
    """
    try:
        with open_regular_file(path, "r") as handle:
            lines = handle.read().splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text CSV file ({error}).") from error
    rows = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not rows:
        raise ValueError(f"{path}: the file is empty; expected a header and data rows.")
    (_, header_line), rows = rows[0], rows[1:]
    header = [column.strip() for column in header_line.split(",")]
    run_columns = []
    for run in ("Run1", "Run2", "Run3", "Run4"):
        matches = [i for i, column in enumerate(header) if column.split(" ")[0] == run]
        if len(matches) != 1:
            raise ValueError(f"{path}: expected one column named {run!r} in the header {header}.")
        run_columns.append(matches[0])
    parameter_columns = [i for i in range(len(header)) if i not in run_columns]
    if len(parameter_columns) != SGEMM_NUM_PARAMETERS:
        raise ValueError(
            f"{path}: expected {SGEMM_NUM_PARAMETERS} parameter columns besides Run1..Run4, found "
            f"{len(parameter_columns)}: {[header[i] for i in parameter_columns]}."
        )
    if not rows:
        raise ValueError(f"{path}: a header and no data rows.")
    table = _parse_csv_rows(path, header, rows)
    with np.errstate(over="ignore"):
        finite = np.isfinite(table.astype("float32"))
    _raise_on_bad_cells(path, header, rows, ~finite,
                        "not finite in float32 (NaN, infinite, or beyond +-3.4e38)")
    nonpositive = np.zeros_like(finite)
    nonpositive[:, run_columns] = table[:, run_columns] <= 0
    _raise_on_bad_cells(path, header, rows, nonpositive, "run times must be positive (log target)")
    x = table[:, parameter_columns].astype("float32")
    y = np.log(table[:, run_columns].mean(axis=1)).astype("float32")
    return x, y


def _parse_csv_rows(path, header, rows):
    """The numbers of `rows` ((line number, text) pairs): a float64 table, the header's width."""
    try:
        return np.loadtxt([line for _, line in rows], delimiter=",", dtype="float64", ndmin=2,
                          comments=None)
    except ValueError as error:
        # Find the culprit again to name its line (only on this error path).
        for number, line in rows:
            cells = line.split(",")
            if len(cells) != len(header):
                raise ValueError(f"{path}: line {number} has {len(cells)} values, the header "
                                 f"{len(header)}.") from error
            for column, cell in zip(header, cells):
                try:
                    float(cell)
                except ValueError:
                    raise ValueError(f"{path}: line {number}, column {column!r}: {cell.strip()!r} "
                                     "is not a number.") from error
        raise ValueError(f"{path}: {error}") from error


def _raise_on_bad_cells(path, header, rows, bad, reason, shown=5):
    """ValueError naming the first `shown` flagged cells by line and column, and the total."""
    cells = np.argwhere(bad)
    if not len(cells):
        return
    named = "; ".join(
        f"line {rows[row][0]}, column {header[column]!r}: {rows[row][1].split(',')[column].strip()}"
        for row, column in cells[:shown]
    )
    more = f" (and {len(cells) - shown} more)" if len(cells) > shown else ""
    raise ValueError(f"{path}: {len(cells)} cell(s) {reason}: {named}{more}.")


def _check_split_sizes(splits, validation_fraction, source):
    """No split may be empty (validation only when asked for): an empty one breaks training late."""
    empty = [split for split, (_, y) in splits.items()
             if len(y) == 0 and (split != "validation" or validation_fraction > 0)]
    if empty:
        sizes = ", ".join(f"{split} {len(y)}" for split, (_, y) in splits.items())
        raise ValueError(
            f"{source}: too few examples to split ({sizes}): {empty} would be empty. Use more "
            "examples, or another validation_fraction."
        )


def _sgemm_path(data_dir):
    if data_dir is None:
        raise DatasetUnavailableError(
            "Data set 'sgemm' needs data_dir: the SGEMM CSV file or a directory holding "
            f"{SGEMM_FILE!r} (download it from the UCI repository yourself)."
        )
    path = os.path.join(data_dir, SGEMM_FILE) if os.path.isdir(data_dir) else data_dir
    if not os.path.isfile(path):
        raise DatasetUnavailableError(f"Data set 'sgemm': no CSV file at {path!r}.")
    return path


def _sgemm_source(path, seed, validation_fraction):
    stat = os.stat(path)
    return _cached_sgemm_source(path, (stat.st_size, stat.st_mtime_ns), seed, validation_fraction)


@functools.lru_cache(maxsize=4)
def _cached_sgemm_source(path, stamp, seed, validation_fraction):
    del stamp  # Part of the cache key only: an edited file is read again.
    x, y = read_sgemm_csv(path)
    # No official split: a seeded 80/20 train/test split, validation carved from train.
    order = np.random.default_rng(seed).permutation(len(y))
    num_test = int(round(0.2 * len(y)))
    test, rest = order[:num_test], order[num_test:]
    train, validation = _split_indices(len(rest), validation_fraction, seed + 1)
    splits = {
        "train": (x[rest[train]], y[rest[train]]),
        "validation": (x[rest[validation]], y[rest[validation]]),
        "test": (x[test], y[test]),
    }
    _check_split_sizes(splits, validation_fraction, f"Data set 'sgemm' ({path}, {len(y)} rows)")
    return _ArraySource("sgemm", splits, "regression", 1, path)


class _TFDSSource:
    """A tfds builder read without ever downloading unless asked to."""

    def __init__(self, name, data_dir, download, manual_dir, image_size, validation_fraction):
        import tensorflow_datasets as tfds

        self.family = name.split("/")[0]
        self.builder = tfds.builder(name, data_dir=data_dir)
        if download:
            if manual_dir is None and not self.builder.is_prepared():
                _check_network(name)
            config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
            self.builder.download_and_prepare(download_config=config)
        features = self.builder.info.features
        mean, std, default_size = _TFDS_STATS[self.family]
        image_shape = tuple(features["image"].shape)
        if image_size is None:
            image_size = default_size
        if image_size is None and None in image_shape[:2]:
            raise ValueError(f"Data set {name!r} has images of varying size: pass image_size.")
        image_size = None if image_size is None else tuple(int(s) for s in image_size)
        height, width = image_size or image_shape[:2]
        self.validation_percent = int(round(100 * validation_fraction))
        self.tfds_splits = {
            "train": f"train[:{100 - self.validation_percent}%]",
            "validation": f"train[{100 - self.validation_percent}%:]",
            "test": _TFDS_TEST_SPLIT.get(self.family, "test"),
        }
        splits = self.builder.info.splits
        self.info = DatasetInfo(
            name=name,
            input_shape=(height, width, image_shape[2]),
            num_classes=features["label"].num_classes,
            class_names=tuple(features["label"].names),
            task="classification",
            preprocessing=Preprocessing(
                input_dtype="uint8", scale=1.0 / 255.0, mean=mean, std=std, image_size=image_size
            ),
            num_examples={
                split: _tfds_count(splits, tfds_split) for split, tfds_split in self.tfds_splits.items()
            },
            source=str(self.builder.data_dir),
        )
        if not download:
            self.raw_dataset("test")  # Fails now, in well under a second, if nothing is prepared.

    def raw_dataset(self, split):
        try:
            return self.builder.as_dataset(split=self.tfds_splits[split], as_supervised=True)
        except AssertionError as error:  # tfds asserts when the prepared files are missing.
            raise DatasetUnavailableError(
                f"Data set {self.info.name!r} is not prepared in {self.builder.data_dir!r} (data "
                "root {!r}). Prepare it there (tfds build, or download=True / --download on a "
                "machine with internet; imagenet2012 also needs manual_dir), or pass the data_dir "
                "that holds it.".format(os.path.dirname(os.path.dirname(str(self.builder.data_dir))))
            ) from error


def _check_network(name):
    """Raises DatasetUnavailableError unless `DOWNLOAD_PROBE_ADDRESS` answers in time.

    The connection is tried in a daemon thread, because a DNS lookup offline has no timeout of
    its own: the caller waits `DOWNLOAD_PROBE_TIMEOUT` seconds at most.
    """
    host, port = DOWNLOAD_PROBE_ADDRESS
    outcome = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=DOWNLOAD_PROBE_TIMEOUT).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(error)

    thread = threading.Thread(target=connect, name="glonet-download-probe", daemon=True)
    thread.start()
    thread.join(DOWNLOAD_PROBE_TIMEOUT)
    problem = outcome[0] if outcome else f"no answer within {DOWNLOAD_PROBE_TIMEOUT:g} s"
    if problem is not None:
        raise DatasetUnavailableError(
            f"Data set {name!r} is not prepared, and download=True cannot reach the internet "
            f"({host}:{port}: {problem}). Prepare it on a machine with internet and copy its tfds "
            "data directory here, or pass the data_dir that holds it."
        )


def _tfds_count(splits, tfds_split):
    try:
        return int(splits[tfds_split].num_examples) or None
    except (KeyError, ValueError, TypeError, AttributeError):
        return None


class _ImageFolderSource:
    """An image folder in one of two layouts, checked whole before anything trains.

    - Split layout, `root/<split>/<class>/<image>` (split: train, validation, test): a missing
      validation/ is carved out of train (`validation_fraction`); test/ may be absent (no test).
    - Flat layout, Keras' `image_dataset_from_directory`: `root/<class>/<image>`, used when there is
      no `root/train`. A seeded 20 % is the test split, and `validation_fraction` of the rest
      the validation split (as for SGEMM, which has no official split either).

    `image_size=None` takes the size all images share (read from their headers; an error naming
    two sizes when they differ). `channels` is 3 (RGB, the default) or 1 (grayscale: colour images
    are converted, as `color_mode="grayscale"` does in Keras). Every listed file is checked
    (`_check_image_files`), and the class folders of the splits must agree (`_class_folders`).
    """

    def __init__(self, root, image_size, validation_fraction, seed, channels=None):
        if root is None or not os.path.isdir(root):
            raise DatasetUnavailableError(
                f"Data set 'image_folder': data_dir={root!r} is not a directory (expected "
                "data_dir/<class name>/<image file>, or data_dir/<split>/<class name>/<image file>)."
            )
        channels = 3 if channels is None else channels
        if isinstance(channels, bool) or channels not in (1, 3):
            raise ValueError(f"Data set 'image_folder': channels must be 1 or 3, received {channels!r}.")
        self.root, self.channels = root, channels
        self.flat = not os.path.isdir(os.path.join(root, "train"))
        self.classes = _class_folders(root, flat=self.flat)
        self.files = {}
        train_dir = root if self.flat else os.path.join(root, "train")
        train_files = self._list("" if self.flat else "train")
        empty = sorted(set(self.classes) - {self.classes[label] for _, label in train_files})
        if empty:
            raise ValueError(
                f"Data set 'image_folder': class folders {empty} in {train_dir!r} hold no images "
                f"{IMAGE_EXTENSIONS}."
            )
        if self.flat:
            order = np.random.default_rng(seed).permutation(len(train_files))
            num_test = int(round(0.2 * len(train_files)))
            self.files["test"] = [train_files[i] for i in sorted(order[:num_test])]
            train_files = [train_files[i] for i in sorted(order[num_test:])]
        if not self.flat and os.path.isdir(os.path.join(root, "validation")):
            self.files["train"], self.files["validation"] = train_files, self._list("validation")
        else:
            train, validation = _split_indices(len(train_files), validation_fraction, seed)
            self.files["train"] = [train_files[i] for i in sorted(train)]
            self.files["validation"] = [train_files[i] for i in sorted(validation)]
        if not self.flat:
            self.files["test"] = (self._list("test") if os.path.isdir(os.path.join(root, "test"))
                                  else [])
        paths = [path for files in self.files.values() for path, _ in files]
        _check_image_files(root, paths)
        if image_size is None:
            image_size = _common_image_size(root, paths)
        image_size = tuple(int(s) for s in image_size)
        self.info = DatasetInfo(
            name="image_folder",
            input_shape=image_size + (channels,),
            num_classes=len(self.classes),
            class_names=tuple(self.classes),
            task="classification",
            # Unknown images: map [0, 1] to [-1, 1] rather than guess statistics.
            preprocessing=Preprocessing(
                input_dtype="uint8", scale=1.0 / 255.0, mean=(0.5,) * channels,
                std=(0.5,) * channels, image_size=image_size,
            ),
            num_examples={split: len(self.files[split]) for split in SPLITS},
            source=root,
        )

    def _list(self, split):
        files = []
        for label, class_name in enumerate(self.classes):
            directory = os.path.join(self.root, split, class_name)
            if not os.path.isdir(directory):
                continue
            for file_name in sorted(os.listdir(directory)):
                if file_name.lower().endswith(IMAGE_EXTENSIONS):
                    files.append((os.path.join(directory, file_name), label))
        return files

    def raw_dataset(self, split):
        import tensorflow as tf

        files = self.files[split]
        if not files:
            raise DatasetUnavailableError(
                f"Data set 'image_folder' has no images for split {split!r} under {self.root!r}."
            )
        paths, labels = zip(*files)
        channels = self.channels

        def decode(path, label):
            image = _decode_image(tf, path, channels)
            # Resize here so images of different sizes can be batched.
            image = tf.cast(tf.image.resize(image, self.info.preprocessing.image_size), "uint8")
            return image, label

        return tf.data.Dataset.from_tensor_slices((list(paths), list(labels))).map(
            decode, num_parallel_calls=tf.data.AUTOTUNE
        )


def _decode_image(tf, path, channels=3):
    return tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)


def _common_image_size(root, paths):
    """(height, width) shared by every image in `paths` (from the headers already read)."""
    sizes = {}
    for path in paths:
        size = _IMAGE_SIZES.get(_file_key(path))
        if size is not None:
            sizes.setdefault(size, path)
    if len(sizes) == 1:
        return next(iter(sizes))
    shown = "; ".join(f"{h}x{w} ({path})" for (h, w), path in list(sizes.items())[:2])
    raise ValueError(
        f"Data set 'image_folder': the images under {root!r} have {len(sizes)} different sizes "
        f"(height x width: {shown}, ...): pass image_size=(height, width) (--image_size) to resize "
        "them all to one."
    )


def _class_folders(root, flat=False):
    """The sorted class folders of `root/train` (or of `root`, `flat`); validation/ and test/ may
    hold no other class.

    Raises:
        DatasetUnavailableError: train/ holds no class folder.
        ValueError: train/ holds a single class (a one-output classifier learns nothing), or a
            class folder of validation/ or test/ is missing from train/ (never trained on, it
            could only be scored wrong).
    """
    def folders(split):
        directory = os.path.join(root, split)
        if not os.path.isdir(directory):
            return []
        return sorted(e for e in os.listdir(directory) if os.path.isdir(os.path.join(directory, e)))

    train_dir = root if flat else os.path.join(root, "train")
    classes = folders("" if flat else "train")
    if not classes:
        raise DatasetUnavailableError(
            f"Data set 'image_folder': no class directories in {train_dir!r} (expected "
            "data_dir/<class name>/<image file>, or data_dir/<split>/<class name>/<image file>)."
        )
    if len(classes) == 1:
        raise ValueError(
            f"Data set 'image_folder': {train_dir!r} holds a single class folder ({classes[0]!r}); "
            "a classifier needs at least two."
        )
    for split in () if flat else ("validation", "test"):
        unknown = sorted(set(folders(split)) - set(classes))
        if unknown:
            raise ValueError(
                f"Data set 'image_folder': class folders {unknown} in "
                f"{os.path.join(root, split)!r} have no folder in {train_dir!r}: a class the model "
                "never trains on can only be scored wrong. Add its training images or remove it."
            )
    return classes


# (path, size, mtime) -> None for a usable image file, else why it is not. Each file version is
# checked once per process, however often the folder is listed.
_IMAGE_VERDICTS = {}
# The same key -> (height, width) of the files whose header was read.
_IMAGE_SIZES = {}


def _check_image_files(root, paths):
    """Names, in one error, every listed image file that training could not use.

    Each file's header is read first (format, size, frames) and its pixels capped at
    `MAX_IMAGE_PIXELS` without decoding it; the files that pass are then decoded once, in
    parallel, as the pipeline will decode them, so that no bad file can stop a training run
    (or its final evaluation) halfway.

    Raises:
        ValueError: listing each bad file (empty, unreadable, not an image, corrupt or
            truncated, too many pixels) with the reason.
    """
    keys = [_file_key(path) for path in paths]
    unchecked = [key for key in dict.fromkeys(keys) if key not in _IMAGE_VERDICTS]
    for key in unchecked:
        _IMAGE_VERDICTS[key] = _image_header_problem(key[0])
    _IMAGE_VERDICTS.update(
        _decode_problems([key for key in unchecked if _IMAGE_VERDICTS[key] is None]))
    problems = [f"  {key[0]}: {_IMAGE_VERDICTS[key]}" for key in keys if _IMAGE_VERDICTS[key]]
    if problems:
        raise ValueError(
            f"Data set 'image_folder': {len(problems)} image file(s) under {root!r} cannot be "
            "used; fix or remove them before training:\n" + "\n".join(problems)
        )


def _file_key(path):
    try:
        stat = os.stat(path)
    except OSError:
        return (path, None, None)  # The header check names the error.
    return (path, stat.st_size, stat.st_mtime_ns)


def _decode_problems(keys):
    """{key: reason} for the files TensorFlow fails to decode, decoding them all in parallel."""
    if not keys:
        return {}
    import tensorflow as tf

    paths = [key[0] for key in keys]
    decoded = (tf.data.Dataset.from_tensor_slices(paths).enumerate()
               .map(lambda index, path: (index, tf.shape(_decode_image(tf, path))),
                    num_parallel_calls=tf.data.AUTOTUNE)
               .ignore_errors())
    failed = set(range(len(paths))) - {int(index) for index, _ in decoded.as_numpy_iterator()}
    problems = {}
    for index in sorted(failed):  # Decoded again one by one, for TensorFlow's reason.
        try:
            _decode_image(tf, paths[index])
        except tf.errors.OpError as error:
            reason = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:\w+\].*", "", error.message, flags=re.S)
            problems[keys[index]] = f"corrupt or truncated, cannot be decoded ({reason.strip()})"
    return problems


def open_regular_file(path, mode="rb"):
    """Opens a user's file only if it is a regular file (a link to one is fine); never blocks.

    A FIFO, a device, a socket or a directory is refused with a ValueError naming the file and
    what it is (`files.open_regular`). A link loop or a missing file is the OSError `open` gives.
    """
    return files.open_regular(path, mode, refuse=_not_regular)


def _not_regular(path, kind):
    return ValueError(f"{path} is {kind}, not a regular file")


def _image_header_problem(path):
    """Why an image file cannot be used, judged from its header alone; None if it looks usable."""
    try:
        width, height, frames = _image_dimensions(path)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    except ValueError as error:
        return str(error)
    if width < 1 or height < 1:
        return f"no pixels ({width}x{height})"
    pixels = width * height * frames
    if pixels > MAX_IMAGE_PIXELS:
        frames_text = f" x {frames} frames" if frames > 1 else ""
        return (f"{width}x{height}{frames_text} pixels ({pixels / 1e6:.1f} megapixels) is over "
                f"the {MAX_IMAGE_PIXELS / 1e6:g}-megapixel cap (data.MAX_IMAGE_PIXELS)")
    _IMAGE_SIZES[_file_key(path)] = (height, width)
    return None


def _image_dimensions(path):
    """(width, height, frames) from a PNG, JPEG, GIF or BMP header, without decoding the pixels.

    The format is told by the content, as TensorFlow's decoder does, not by the file name.
    Raises ValueError saying why the file is no usable image (a FIFO, device, socket or directory
    named like an image is refused without reading from it).
    """
    with open_regular_file(path) as handle:
        head = handle.read(32)
        if not head:
            raise ValueError("empty file")
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            if len(head) < 24 or head[12:16] != b"IHDR":
                raise ValueError("truncated PNG (no IHDR header)")
            width, height = struct.unpack(">II", head[16:24])
            return width, height, 1
        if head.startswith(b"\xff\xd8"):
            return _jpeg_dimensions(handle) + (1,)
        if head.startswith((b"GIF87a", b"GIF89a")):
            handle.seek(0)
            return _gif_dimensions(handle.read())
        if head.startswith(b"BM"):
            if len(head) < 26:
                raise ValueError("truncated BMP header")
            if int.from_bytes(head[14:18], "little") == 12:  # OS/2 BITMAPCOREHEADER
                width, height = struct.unpack("<HH", head[18:22])
            else:
                width, height = struct.unpack("<ii", head[18:26])
            return width, abs(height), 1  # A negative height stores the rows top-down.
    raise ValueError("not a PNG, JPEG, GIF or BMP image")


_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0..SOF15
_JPEG_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])  # No length field.


def _jpeg_dimensions(handle):
    """(width, height) from the first frame header, walking the segments after SOI."""
    handle.seek(2)
    for _ in range(10_000):  # Real files have a few dozen segments before the frame header.
        marker = handle.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            raise ValueError("corrupt or truncated JPEG (no frame header)")
        kind = marker[1]
        if kind == 0xFF:  # A fill byte before the marker.
            handle.seek(-1, os.SEEK_CUR)
            continue
        if kind in _JPEG_STANDALONE_MARKERS:
            continue
        if kind in (0xD9, 0xDA):
            raise ValueError("corrupt JPEG (no frame header before its image data)")
        length = handle.read(2)
        frame = handle.read(5) if kind in _JPEG_FRAME_MARKERS else b""
        if len(length) < 2 or (kind in _JPEG_FRAME_MARKERS and len(frame) < 5):
            raise ValueError("truncated JPEG header")
        if frame:
            height, width = struct.unpack(">HH", frame[1:5])
            return width, height
        handle.seek(int.from_bytes(length, "big") - 2, os.SEEK_CUR)
    raise ValueError("corrupt JPEG (no frame header in its first 10,000 segments)")


def _gif_dimensions(content):
    """(width, height, frames): TensorFlow decodes every frame at the logical screen's size."""
    if len(content) < 13:
        raise ValueError("truncated GIF header")
    width, height, flags = struct.unpack("<HHB", content[6:11])
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # global colour table
    frames = 0
    while position < len(content) and content[position] != 0x3B:  # 0x3B: the trailer
        block = content[position]
        if block == 0x21:  # extension: a label byte, then data sub-blocks
            position = _skip_gif_sub_blocks(content, position + 2)
        elif block == 0x2C:  # image: 9-byte descriptor, local colour table, LZW size, data
            if position + 10 > len(content):
                raise ValueError("truncated GIF")
            local = content[position + 9]
            position += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
            position = _skip_gif_sub_blocks(content, position + 1)
            frames += 1
        else:
            raise ValueError(f"corrupt GIF (unknown block 0x{block:02x} at byte {position})")
    if position >= len(content):
        raise ValueError("truncated GIF (no trailer)")
    if not frames:
        raise ValueError("GIF without an image")
    return width, height, frames


def _skip_gif_sub_blocks(content, position):
    """The position after a chain of length-prefixed sub-blocks ending in an empty one."""
    while position < len(content):
        size = content[position]
        position += 1 + size
        if size == 0:
            return position
    raise ValueError("truncated GIF")


def _source(name, *, data_dir=None, download=False, manual_dir=None, image_size=None, seed=0,
            validation_fraction=0.1, channels=None):
    name = _check_name(name)
    if channels is not None and name != "image_folder":
        raise ValueError(f"channels applies to the image_folder data set only, not {name!r}.")
    if image_size is not None and name in IN_MEMORY_DATASETS \
            and name not in _IN_MEMORY_IMAGE_DATASETS:
        raise ValueError(f"Data set {name!r} has no images: image_size does not apply to it.")
    if name in OFFLINE_DATASETS:
        return _offline_source(name, seed, validation_fraction, data_dir, image_size)
    if name == "sgemm":
        return _sgemm_source(os.path.abspath(_sgemm_path(data_dir)), seed, validation_fraction)
    if name == "image_folder":
        return _ImageFolderSource(data_dir, image_size, validation_fraction, seed, channels)
    return _TFDSSource(name, data_dir, download, manual_dir, image_size, validation_fraction)


def open_source(name, **source_kwargs):
    """Opens a data set once, for a caller that needs its description and several splits.

    `get_dataset`, `count_examples` and `load_split` take the result as `source=`, so the data set
    (a tfds builder, an image folder listing, a CSV) is read one time per run. Accepts the source
    keyword arguments of `get_dataset`; `.info` is the `DatasetInfo`.
    """
    return _source(name, **source_kwargs)


def dataset_info(name, **source_kwargs):
    """The `DatasetInfo` of a data set (shape, classes, preprocessing), without reading it all.

    Accepts the source keyword arguments of `get_dataset` (data_dir, download, manual_dir,
    image_size, seed, validation_fraction). Needs no TensorFlow for `IN_MEMORY_DATASETS`.
    """
    return _source(name, **source_kwargs).info


def in_memory(name):
    """True when `load_split` serves the data set as numpy arrays (no TensorFlow needed)."""
    return _check_name(name) in IN_MEMORY_DATASETS


def load_split(name, split, *, seed=0, validation_fraction=0.1, max_examples=None, data_dir=None,
               source=None):
    """One split of an in-memory data set as raw numpy arrays, without TensorFlow.

    The arrays are exactly the examples `get_dataset` reads for the same arguments, in the same
    (unshuffled) order, before `Preprocessing`: apply `dataset_info(...).preprocessing` to feed a
    model (with `image_size=` it also resizes: the raw arrays are the same either way).

    Args:
        name: a name from `IN_MEMORY_DATASETS` (digits, mnist1d, fashion_mnist, sgemm).
        split: "train", "validation" or "test".
        seed, validation_fraction, data_dir: as for `get_dataset`.
        max_examples: only the first N examples of the split.
        source: a data set already opened by `open_source` (then the other source arguments are
            not used): a run reads its data set once.

    Returns:
        `(x, y)`: x in the raw dtype (uint8 for fashion_mnist, float32 otherwise), y int32 class
        indices (float32 targets for sgemm). Read-only views of a per-process cache: copy them to
        modify them.

    Raises:
        ValueError: a name that is not in memory (use `get_dataset`), an unknown split, or a bad
            `max_examples`.
        DatasetUnavailableError: the data is not on this machine.

    Example:
    >>> x, y = load_split("digits", "validation")
    >>> x.shape[1:], x.dtype.name, y.dtype.name
    ((8, 8, 1), 'float32', 'int32')
    """
    if not in_memory(name):
        raise ValueError(
            f"Data set {name!r} is not held in memory: `load_split` serves "
            f"{list(IN_MEMORY_DATASETS)}; read it with `get_dataset` (TensorFlow)."
        )
    split = _check_split(split)
    max_examples = _check_max_examples(max_examples)
    if source is None:
        source = _source(name, data_dir=data_dir, seed=seed,
                         validation_fraction=validation_fraction)
    x, y = source.splits[split]
    return x[:max_examples], y[:max_examples]


def _check_max_examples(max_examples):
    if max_examples is None:
        return None
    if isinstance(max_examples, bool) or not isinstance(max_examples, (int, np.integer)) \
            or max_examples < 1:
        raise ValueError(f"`max_examples` must be an integer >= 1, received {max_examples!r}.")
    return int(max_examples)


# --------------------------------------------------------------------------------------------------
# Pipelines.


def _check_augment(augment, info):
    if isinstance(augment, str):
        augment = [a for a in augment.split(",") if a]
    augment = tuple(augment or ())
    for name in augment:
        if name not in AUGMENTATIONS:
            raise ValueError(f"Unknown augmentation {name!r}. Available: {list(AUGMENTATIONS)}.")
    image_only = {"flip", "crop", "randaugment", "cutmix"} & set(augment)
    if image_only and len(info.input_shape) != 3:
        raise ValueError(
            f"Augmentations {sorted(image_only)} need images; data set {info.name!r} has inputs of "
            f"shape {info.input_shape}."
        )
    if {"mixup", "cutmix"} & set(augment) and info.task != "classification":
        raise ValueError("MixUp and CutMix need a classification data set.")
    return augment


def label_mixing(augment):
    """True when the augmentations turn labels into one-hot mixtures (MixUp, CutMix)."""
    if isinstance(augment, str):
        augment = augment.split(",")
    return bool({"mixup", "cutmix"} & set(augment or ()))


def image_augmentation_layers(augment, seed=0):
    """The layers of the image augmentations named in `augment` (MixUp/CutMix: `mixing_layer`).

    `flip` and `crop` are one `augment.RandomShiftFlip` (a horizontal flip with probability 1/2,
    then a random integer shift of up to side // 8 pixels per axis with zero fill, as gathers:
    exact and nearly free on a device); `randaugment` is Keras' `RandAugment` (interpolating, and
    costly inside a compiled step: see benchmarks/README.md). They take [0, 1]-scaled images (scale
    first, normalise after). The trainer's array path applies them on the device, in a
    training-only model; the tf.data pipeline (`_augmenter`) runs the same `augment.shift_and_flip`.
    """
    import keras

    from glonet_keras import augment as augment_lib

    layers = []
    if "flip" in augment or "crop" in augment:
        layers.append(augment_lib.RandomShiftFlip(flip="flip" in augment, crop="crop" in augment,
                                                  seed=seed, name="shift_flip"))
    if "randaugment" in augment:
        layers.append(keras.layers.RandAugment(value_range=(0.0, 1.0), seed=seed))
    return layers


#: The mixing layer's seed is the run's seed plus this, so that its draws are not those of the
#: flip/crop layer seeded with the run's seed (same-seeded generators draw the same numbers).
MIXING_SEED_OFFSET = 1


def mixing_layer(augment, seed=0):
    """The `augment.RandomMix` of the `mixup`/`cutmix` named in `augment`, or None.

    MixUp (λ ~ Beta(0.2, 0.2), Keras' default) then CutMix (λ ~ Beta(1, 1), the paper's box),
    seeded with `seed + MIXING_SEED_OFFSET`. It mixes one-hot labels, so it runs where the labels
    are: the trainer's array path puts it in the training step (`augment.MixingModel`); the tf.data
    pipeline (`_mix_tf`) runs the same `augment.mix_batch`.
    """
    from glonet_keras import augment as augment_lib

    if not label_mixing(augment):
        return None
    return augment_lib.RandomMix(mixup="mixup" in augment, cutmix="cutmix" in augment,
                                 seed=None if seed is None else seed + MIXING_SEED_OFFSET,
                                 name="mix")


def _mix_tf(augment, seed):
    """MixUp/CutMix for a tf.data pipeline: `augment.mix_batch` on TensorFlow's NumPy API.

    The same images and labels as `augment.RandomMix` for the same draws, whatever Keras' backend
    is; the draws (`augment.draw_mixing`) come from a `tf.random.Generator` seeded with
    `seed + MIXING_SEED_OFFSET`. Returns None when neither is asked for.
    """
    import tensorflow as tf
    import tensorflow.experimental.numpy as tnp

    from glonet_keras import augment as augment_lib

    mixup, cutmix = "mixup" in augment, "cutmix" in augment
    if not (mixup or cutmix):
        return None
    generator = tf.random.Generator.from_seed(seed + MIXING_SEED_OFFSET)

    def apply(images, labels):
        batch = tf.shape(images)[0]

        def permutation():
            return tf.random.experimental.stateless_shuffle(
                tf.range(batch, dtype="int32"), seed=generator.make_seeds(1)[:, 0])

        def beta(alpha):  # X / (X + Y), X and Y ~ Gamma(alpha), as Keras' TensorFlow backend draws
            seeds = generator.make_seeds(2)
            x, y = (tf.random.stateless_gamma([batch], seed=seeds[:, i], alpha=alpha)
                    for i in (0, 1))
            return x / (x + y)

        def randint(low, high):
            return generator.uniform([batch], low, high, dtype="int32")

        height, width = (images.shape[1], images.shape[2]) if cutmix else (None, None)
        draws = augment_lib.draw_mixing(permutation, beta, randint, height, width, mixup=mixup,
                                        cutmix=cutmix, xp=tnp)
        mixed = augment_lib.mix_batch(images, labels, *draws, xp=tnp)
        return tuple(tf.ensure_shape(out, given.shape) for out, given in zip(mixed, (images, labels)))

    return apply


def _shift_flip_tf(augment, seed):
    """`flip`/`crop` for a tf.data pipeline: `augment.shift_and_flip` on TensorFlow's NumPy API.

    The same pixels as `augment.RandomShiftFlip` for the same offsets, whatever Keras' backend is
    (keras.ops may be JAX's, which cannot run in a tf.data graph). The offsets come from a
    `tf.random.Generator` seeded with `seed`. Returns None when neither is asked for.
    """
    import tensorflow as tf
    import tensorflow.experimental.numpy as tnp

    from glonet_keras import augment as augment_lib

    flip, crop = "flip" in augment, "crop" in augment
    if not (flip or crop):
        return None
    generator = tf.random.Generator.from_seed(seed)

    def apply(images):
        batch = tf.shape(images)[0]
        shift_rows, shift_cols, flipped = augment_lib.draw_offsets(
            lambda low, high: generator.uniform([batch], low, high, dtype="int32"),
            images.shape[1], images.shape[2], flip=flip, crop=crop)
        out = augment_lib.shift_and_flip(images, shift_rows, shift_cols, flipped, xp=tnp)
        return tf.ensure_shape(out, images.shape)  # tnp's gathers lose the static shape

    return apply


def _augmenter(augment, info, seed):
    """Batch-level augmentation for tf.data; runs on [0, 1]-scaled images.

    `flip`/`crop` through `_shift_flip_tf` and MixUp/CutMix through `_mix_tf` (the device path's
    code), RandAugment with Keras' layer. Mixing comes last, after the normalisation, on one-hot
    labels.
    """
    import tensorflow as tf

    from glonet_keras import augment as augment_lib

    shift_flip = _shift_flip_tf(augment, seed)
    layers = [layer for layer in image_augmentation_layers(augment, seed)
              if not isinstance(layer, augment_lib.RandomShiftFlip)]
    mix = _mix_tf(augment, seed)
    preprocessing = info.preprocessing

    def apply(images, labels):
        images = tf.cast(images, "float32") * preprocessing.scale
        if shift_flip is not None:
            images = shift_flip(images)
        for layer in layers:
            images = layer(images, training=True)
        images = (images - tf.constant(preprocessing.mean)) / tf.constant(preprocessing.std)
        if mix is not None:
            images, labels = mix(images, tf.one_hot(labels, info.num_classes))
        return images, labels

    return apply


def get_dataset(
    name,
    split,
    batch_size,
    *,
    data_dir=None,
    download=False,
    manual_dir=None,
    image_size=None,
    shuffle=None,
    seed=0,
    augment=(),
    one_hot=False,
    drop_remainder=False,
    start_epoch=None,
    num_epochs=None,
    validation_fraction=0.1,
    shuffle_buffer=10_000,
    max_examples=None,
    source=None,
    channels=None,
):
    """A batched `tf.data.Dataset` of `(preprocessed inputs, labels)` for one split.

    Args:
        name: a name from `DATASETS` (or any `imagenette/<config>`).
        split: "train", "validation" or "test".
        batch_size: the *global* batch size (per-replica batch x replicas under a strategy).
        data_dir: tfds data root, image folder root, or SGEMM CSV (file or directory).
        download: let tfds download and prepare the data (default False: fail fast instead).
        manual_dir: directory of manually downloaded files (imagenet2012).
        image_size: (height, width) to resize images to; default: the data set's own size.
        shuffle: shuffle the examples; default True for "train" only.
        seed: seeds the validation carve-out, the shuffle and the augmentation layers.
        augment: names from `AUGMENTATIONS` (or a comma-separated string); "train" only.
        one_hot: return one-hot float labels (forced on by MixUp / CutMix).
        drop_remainder: drop the last partial batch.
        start_epoch, num_epochs: if set (and shuffling), return the batches of epochs
            `start_epoch .. num_epochs - 1` as one stream, epoch e shuffled with its own seed
            derived from (seed, e). A run resumed at epoch e then sees exactly the batches an
            uninterrupted run sees; fit it with `steps_per_epoch = steps_per_epoch(...)`.
        validation_fraction: share of the training examples held out as "validation" where the
            source has no validation split.
        shuffle_buffer: examples in the shuffle buffer (the whole split for in-memory data).
        max_examples: use only the first N examples of the split (quick runs, tests).
        source: the data set opened by `open_source` (then its own source arguments are used).
        channels: image_folder only: 3 (RGB, default) or 1 (grayscale).

    Raises:
        DatasetUnavailableError: the data is not on this machine (names the data set and path).
        ValueError: an unknown name, split or augmentation.
    """
    import tensorflow as tf

    split = _check_split(split)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1, received {batch_size!r}.")
    max_examples = _check_max_examples(max_examples)
    source = source or _source(name, data_dir=data_dir, download=download, manual_dir=manual_dir,
                               image_size=image_size, seed=seed,
                               validation_fraction=validation_fraction, channels=channels)
    info = source.info
    augment = _check_augment(augment, info) if split == "train" else ()
    shuffle = (split == "train") if shuffle is None else bool(shuffle)
    raw = source.raw_dataset(split)
    if max_examples is not None:
        raw = raw.take(max_examples)
    preprocessing = info.preprocessing

    # Resizing per example lets images of different sizes (tfds mock data, imagenette) batch.
    if preprocessing.image_size is not None:
        raw = raw.map(lambda x, y: (tf.cast(preprocessing.resize(x), x.dtype), y),
                      num_parallel_calls=tf.data.AUTOTUNE)
    if isinstance(source, _ArraySource):
        shuffle_buffer = max(1, min(len(source.splits[split][1]), max_examples or 2**62))
    else:
        raw = raw.cache() if split != "train" or not augment else raw

    def batched(dataset):
        return dataset.batch(batch_size, drop_remainder=drop_remainder)

    if shuffle and start_epoch is not None:
        dataset = _epoch_stream(raw, source, split, batched, seed, shuffle_buffer, max_examples,
                                batch_size, drop_remainder, int(start_epoch), num_epochs)
    else:
        if shuffle:
            dataset = raw.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        else:
            dataset = raw
        dataset = batched(dataset)

    if augment:
        dataset = dataset.map(_augmenter(augment, info, seed), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = dataset.map(lambda x, y: (preprocessing.normalize(x), y),
                              num_parallel_calls=tf.data.AUTOTUNE)
    if info.task == "classification":
        if (one_hot or label_mixing(augment)) and split == "train":
            dataset = dataset.map(
                lambda x, y: (x, y if y.dtype.is_floating else tf.one_hot(y, info.num_classes)))
        elif one_hot:
            dataset = dataset.map(lambda x, y: (x, tf.one_hot(y, info.num_classes)))
        else:
            dataset = dataset.map(lambda x, y: (x, tf.cast(y, "int32")))
    return dataset.prefetch(tf.data.AUTOTUNE)


def _epoch_stream(raw, source, split, batched, seed, shuffle_buffer, max_examples, batch_size,
                  drop_remainder, start_epoch, num_epochs):
    """Epochs start..num_epochs-1, each shuffled with a Python-int seed of its own, back to back."""
    import tensorflow as tf

    if num_epochs is None or not start_epoch < num_epochs:
        raise ValueError(
            f"`start_epoch` needs `num_epochs` > start_epoch, received {start_epoch}, {num_epochs}."
        )
    count = source.info.num_examples.get(split) or int(source.raw_dataset(split).cardinality())
    if count is None or count < 0:
        raise ValueError("`start_epoch` needs a split of known size; this one has none.")
    count = min(count, max_examples) if max_examples else count
    steps = steps_per_epoch(count, batch_size, drop_remainder)
    # Python-int seeds: a tensor seed breaks `shuffle` once a global seed of 0 is set.
    epochs = [
        batched(raw.shuffle(shuffle_buffer, seed=seed * 1_000_003 + epoch,
                            reshuffle_each_iteration=False))
        for epoch in range(start_epoch, num_epochs)
    ]
    choice = tf.data.Dataset.range(len(epochs)).flat_map(
        lambda index: tf.data.Dataset.from_tensors(index).repeat(steps))
    return tf.data.Dataset.choose_from_datasets(epochs, choice)


def steps_per_epoch(num_examples, batch_size, drop_remainder=False):
    """Batches per epoch of `num_examples` (for endless `start_epoch` streams)."""
    if drop_remainder:
        return num_examples // batch_size
    return math.ceil(num_examples / batch_size)


def count_examples(name, split, *, source=None, **source_kwargs):
    """Examples in a split: from the data set's metadata, else the raw dataset's cardinality.

    `source` is an already opened data set (`open_source`). Returns None when neither knows (a
    stream of unknown length).
    """
    source = source or _source(name, **source_kwargs)
    known = source.info.num_examples.get(_check_split(split))
    if known:
        return int(known)
    cardinality = int(source.raw_dataset(split).cardinality())
    return cardinality if cardinality >= 0 else None
