"""What every data source shares: the data set names, the splits, `DatasetInfo`, `DatasetUnavailableError`,
the in-memory `_ArraySource`, the seeded train/validation split and the checked file opener."""

import dataclasses

import numpy as np

from glonet_keras import files
from glonet_keras.data.preprocessing import Preprocessing

OFFLINE_DATASETS = ("digits", "mnist1d", "fashion_mnist")
TFDS_DATASETS = ("mnist", "cifar10", "cifar100", "imagenette/160px-v2", "imagenet2012")
FILE_DATASETS = ("image_folder", "sgemm")
DATASETS = OFFLINE_DATASETS + TFDS_DATASETS + FILE_DATASETS
# Held in numpy arrays: `load_split` serves them without TensorFlow (the JAX training path).
IN_MEMORY_DATASETS = OFFLINE_DATASETS + ("sgemm",)
SPLITS = ("train", "validation", "test")


class DatasetUnavailableError(FileNotFoundError):
    """A named data set is not on this machine (and no download was asked for)."""


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


def check_name(name):
    """Returns `name` if it is a data set this module serves; a ValueError lists them otherwise."""
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


def open_regular_file(path, mode="rb"):
    """Opens a user's file only if it is a regular file (a link to one is fine); never blocks.

    A FIFO, a device, a socket or a directory is refused with a ValueError naming the file and
    what it is (`files.open_regular`). A link loop or a missing file is the OSError `open` gives.
    """
    return files.open_regular(path, mode, refuse=_not_regular)


def _not_regular(path, kind):
    return ValueError(f"{path} is {kind}, not a regular file")
