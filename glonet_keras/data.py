"""Data sets as arrays. The offline ones need no download.

- `digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, 10 classes), scaled to
  [0, 1], shape (8, 8, 1); a fixed stratified 80/20 train/test split.
- `mnist1d`: the MNIST-1D benchmark (4,000 train / 1,000 test signals of length 40, 10 classes),
  generated procedurally by the `mnist1d` package (never downloaded), shape (40, 1).
"""

import numpy as np

OFFLINE_DATASETS = ("digits", "mnist1d")


def load_arrays(name, seed=0):
    """Returns `(x_train, y_train), (x_test, y_test)` as float32 / int32 numpy arrays."""
    if name == "digits":
        return _digits(seed)
    if name == "mnist1d":
        return _mnist1d(seed)
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
