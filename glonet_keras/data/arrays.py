"""The in-memory classification sets: scikit-learn's digits, MNIST-1D (generated, never downloaded)
and Fashion-MNIST (from `fashion_mnist`), as numpy arrays and as cached sources."""

import functools
import os

import numpy as np

from glonet_keras.data.base import (
    OFFLINE_DATASETS, _ArraySource, _check_split_sizes, _split_indices,
)
from glonet_keras.data.fashion_mnist import (
    FASHION_MNIST_CLASSES, _decode_fashion_mnist, _fashion_mnist, _file_stamps, fashion_mnist_dir,
)


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


_IN_MEMORY_IMAGE_DATASETS = ("digits", "fashion_mnist")  # The in-memory sets image_size resizes.


def _offline_source(name, seed, validation_fraction, data_dir, image_size):
    if image_size is not None:
        image_size = tuple(int(s) for s in image_size)
    if name == "fashion_mnist":
        directory = fashion_mnist_dir(data_dir)
        return _cached_offline_source(name, seed, validation_fraction, image_size,
                                      os.path.realpath(directory), _file_stamps(directory))
    return _cached_offline_source(name, seed, validation_fraction, image_size, None, None)


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
