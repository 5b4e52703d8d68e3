"""Data sets: offline arrays, tfds names, image folders and the SGEMM CSV, as `tf.data` pipelines.

Names (`DATASETS`):
- `digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, 10 classes), scaled to
  [0, 1], shape (8, 8, 1); a fixed stratified 80/20 train/test split. Offline.
- `mnist1d`: the MNIST-1D benchmark (4,000 train / 1,000 test signals of length 40, 10 classes),
  generated procedurally by the `mnist1d` package (never downloaded), shape (40, 1). Offline.
- tfds names `mnist`, `fashion_mnist`, `cifar10`, `cifar100`, `imagenette/160px-v2` (any
  `imagenette/...` config) and `imagenet2012` (manual files): read from `data_dir` (tfds' default
  when None). Nothing is downloaded unless `download=True`; a data set that is not prepared fails
  at once with `DatasetUnavailableError` naming it and the directory looked in.
- `image_folder`: `data_dir/<split>/<class name>/<image file>` (jpeg, png, bmp, gif); classes are
  the sorted sub-directory names of `data_dir/train`.
- `sgemm`: the SGEMM GPU-kernel-performance CSV (UCI), `data_dir` being the CSV file or a directory
  holding `sgemm_product.csv`: 14 parameter columns, target = log(mean(Run1..Run4)) (regression).

Splits are `"train"`, `"validation"` and `"test"`. Where the source has no validation split, the
last `validation_fraction` of the (seeded) training examples form it and "train" is the rest, so
the three never overlap.

Preprocessing is one `Preprocessing` record per data set (cast, resize, scale, normalise by mean and
std). The pipeline applies it, and `glonet_keras.export` applies the same record inside the served
graph, so a trained model is always used with the normalisation it was trained with.
Augmentation (`augment=` names from `AUGMENTATIONS`) uses Keras core layers inside the pipeline of
the training split only; it never becomes part of a model.
"""

import dataclasses
import functools
import json
import math
import os

import numpy as np

from glonet_keras.preprocessing import (  # noqa: F401  (re-exported)
    Preprocessing, load_preprocessing, save_preprocessing,
)

OFFLINE_DATASETS = ("digits", "mnist1d")
TFDS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "imagenette/160px-v2",
                 "imagenet2012")
FILE_DATASETS = ("image_folder", "sgemm")
DATASETS = OFFLINE_DATASETS + TFDS_DATASETS + FILE_DATASETS
# Data sets held in memory as numpy arrays: `load_split` serves them without TensorFlow.
IN_MEMORY_DATASETS = OFFLINE_DATASETS + ("sgemm",)
SPLITS = ("train", "validation", "test")
AUGMENTATIONS = ("flip", "crop", "randaugment", "mixup", "cutmix")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SGEMM_FILE = "sgemm_product.csv"
SGEMM_NUM_PARAMETERS = 14

# Per-channel statistics of the [0, 1]-scaled training images (the usual published values).
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_TFDS_STATS = {
    # name: (mean, std, default image size or None for the native fixed size)
    "mnist": ((0.1307,), (0.3081,), None),
    "fashion_mnist": ((0.2860,), (0.3530,), None),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), None),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), None),
    "imagenette": (_IMAGENET_MEAN, _IMAGENET_STD, (160, 160)),
    "imagenet2012": (_IMAGENET_MEAN, _IMAGENET_STD, (224, 224)),
}
# tfds data sets whose test split is called "validation".
_TFDS_TEST_SPLIT = {"imagenette": "validation", "imagenet2012": "validation"}


class DatasetUnavailableError(FileNotFoundError):
    """A named data set is not on this machine (and no download was asked for)."""


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
    """

    name: str
    input_shape: tuple
    num_classes: int
    task: str
    preprocessing: Preprocessing
    num_examples: dict
    source: str

    def to_dict(self):
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "task": self.task,
            "preprocessing": self.preprocessing.to_dict(),
            "num_examples": dict(self.num_examples),
            "source": self.source,
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


def _channel_stats(x):
    axes = tuple(range(x.ndim - 1))
    std = x.std(axis=axes)
    return tuple(x.mean(axis=axes).tolist()), tuple(np.where(std > 0, std, 1.0).tolist())


class _ArraySource:
    """In-memory splits (offline sets and the SGEMM table)."""

    def __init__(self, name, splits, task, num_classes, source, preprocessing_kwargs=None):
        self.splits = splits
        x_train = splits["train"][0]
        mean, std = _channel_stats(x_train.astype("float64"))
        self.info = DatasetInfo(
            name=name,
            input_shape=tuple(x_train.shape[1:]),
            num_classes=num_classes,
            task=task,
            preprocessing=Preprocessing(
                input_dtype="float32", scale=1.0, mean=mean, std=std, **(preprocessing_kwargs or {})
            ),
            num_examples={split: len(arrays[1]) for split, arrays in splits.items()},
            source=source,
        )

    def raw_dataset(self, split):
        import tensorflow as tf

        x, y = self.splits[split]
        return tf.data.Dataset.from_tensor_slices((x, y))


@functools.lru_cache(maxsize=8)
def _offline_source(name, seed, validation_fraction):
    (x_train, y_train), (x_test, y_test) = load_arrays(name, seed)
    train, validation = _split_indices(len(y_train), validation_fraction, seed)
    splits = {
        "train": (x_train[train], y_train[train]),
        "validation": (x_train[validation], y_train[validation]),
        "test": (x_test, y_test),
    }
    source = "sklearn.datasets.load_digits" if name == "digits" else "mnist1d.data.make_dataset"
    return _ArraySource(name, splits, "classification", int(y_train.max()) + 1, source)


def read_sgemm_csv(path):
    """Reads an SGEMM-layout CSV -> (features float32 (n, 14), log mean run time float32 (n,)).

    The header must name 14 parameter columns and the four run-time columns `Run1`..`Run4`
    (UCI's names are `Run1 (ms)`, ...). Raises ValueError naming what is missing.
    """
    with open(path, newline="") as handle:
        header = [column.strip() for column in handle.readline().strip().split(",")]
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
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype="float64", ndmin=2)
    if table.shape[1] != len(header):
        raise ValueError(f"{path}: rows have {table.shape[1]} values, the header {len(header)}.")
    runs = table[:, run_columns]
    if not np.all(runs > 0):
        raise ValueError(f"{path}: run times must be positive to take their log.")
    x = table[:, parameter_columns].astype("float32")
    y = np.log(runs.mean(axis=1)).astype("float32")
    return x, y


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


@functools.lru_cache(maxsize=4)
def _sgemm_source(path, seed, validation_fraction):
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
    return _ArraySource("sgemm", splits, "regression", 1, path)


class _TFDSSource:
    """A tfds builder read without ever downloading unless asked to."""

    def __init__(self, name, data_dir, download, manual_dir, image_size, validation_fraction):
        import tensorflow_datasets as tfds

        self.family = name.split("/")[0]
        self.builder = tfds.builder(name, data_dir=data_dir)
        if download:
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


def _tfds_count(splits, tfds_split):
    try:
        return int(splits[tfds_split].num_examples) or None
    except (KeyError, ValueError, TypeError, AttributeError):
        return None


class _ImageFolderSource:
    """`root/<split>/<class>/<image>`; a missing validation folder is carved out of train."""

    def __init__(self, root, image_size, validation_fraction, seed):
        if root is None or not os.path.isdir(os.path.join(root, "train")):
            raise DatasetUnavailableError(
                f"Data set 'image_folder': no 'train' directory under data_dir={root!r} (expected "
                "data_dir/<split>/<class name>/<image file>)."
            )
        if image_size is None:
            raise ValueError("Data set 'image_folder' needs image_size=(height, width).")
        self.root = root
        self.classes = sorted(
            entry for entry in os.listdir(os.path.join(root, "train"))
            if os.path.isdir(os.path.join(root, "train", entry))
        )
        if not self.classes:
            raise DatasetUnavailableError(f"No class directories in {os.path.join(root, 'train')!r}.")
        self.files = {}
        train_files = self._list("train")
        if os.path.isdir(os.path.join(root, "validation")):
            self.files["train"], self.files["validation"] = train_files, self._list("validation")
        else:
            train, validation = _split_indices(len(train_files), validation_fraction, seed)
            self.files["train"] = [train_files[i] for i in sorted(train)]
            self.files["validation"] = [train_files[i] for i in sorted(validation)]
        self.files["test"] = self._list("test") if os.path.isdir(os.path.join(root, "test")) else []
        image_size = tuple(int(s) for s in image_size)
        self.info = DatasetInfo(
            name="image_folder",
            input_shape=image_size + (3,),
            num_classes=len(self.classes),
            task="classification",
            # Unknown images: map [0, 1] to [-1, 1] rather than guess statistics.
            preprocessing=Preprocessing(
                input_dtype="uint8", scale=1.0 / 255.0, mean=(0.5,) * 3, std=(0.5,) * 3,
                image_size=image_size,
            ),
            num_examples={split: len(files) for split, files in self.files.items()},
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

        def decode(path, label):
            image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            # Resize here so images of different sizes can be batched.
            image = tf.cast(tf.image.resize(image, self.info.preprocessing.image_size), "uint8")
            return image, label

        return tf.data.Dataset.from_tensor_slices((list(paths), list(labels))).map(
            decode, num_parallel_calls=tf.data.AUTOTUNE
        )


def _source(name, *, data_dir=None, download=False, manual_dir=None, image_size=None, seed=0,
            validation_fraction=0.1):
    name = _check_name(name)
    if name in OFFLINE_DATASETS:
        return _offline_source(name, seed, validation_fraction)
    if name == "sgemm":
        return _sgemm_source(os.path.abspath(_sgemm_path(data_dir)), seed, validation_fraction)
    if name == "image_folder":
        return _ImageFolderSource(data_dir, image_size, validation_fraction, seed)
    return _TFDSSource(name, data_dir, download, manual_dir, image_size, validation_fraction)


def open_source(name, **source_kwargs):
    """Opens a data set once, for a caller that needs its description and several splits.

    `get_dataset`, `count_examples` and `load_split` take the result as `source=`, so the data set
    (a tfds builder, an image folder listing, a CSV) is read one time per run. Accepts the source
    keyword arguments of `get_dataset`; `.info` is the `DatasetInfo`.
    """
    return _source(name, **source_kwargs)


def load_split(name, split, *, source=None, **source_kwargs):
    """The raw `(x, y)` numpy arrays of one split of an in-memory data set, without TensorFlow.

    The arrays are as the source holds them (apply `info.preprocessing` to feed a model).

    Raises:
        ValueError: `name` is not one of `IN_MEMORY_DATASETS` (the others stream through tf.data).
    """
    if name not in IN_MEMORY_DATASETS:
        raise ValueError(
            f"Data set {name!r} is read through tf.data; load_split serves {list(IN_MEMORY_DATASETS)}."
        )
    source = source or _source(name, **source_kwargs)
    return source.splits[_check_split(split)]


def dataset_info(name, **source_kwargs):
    """The `DatasetInfo` of a data set (shape, classes, preprocessing), without reading it all.

    Accepts the source keyword arguments of `get_dataset` (data_dir, download, manual_dir,
    image_size, seed, validation_fraction).
    """
    return _source(name, **source_kwargs).info


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
    """The Keras core layers of the image augmentations named in `augment` (not MixUp/CutMix).

    They take [0, 1]-scaled images (scale first, normalise after). The tf.data pipeline applies
    them per batch; the trainer's array path applies them on the device, in a training-only model.
    """
    import keras

    layers = []
    if "flip" in augment:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if "crop" in augment:
        # Pad-and-crop (4 px on 32 px in the usual CIFAR recipe) = a random translation by 1/8.
        layers.append(keras.layers.RandomTranslation(0.125, 0.125, fill_mode="constant", seed=seed))
    if "randaugment" in augment:
        layers.append(keras.layers.RandAugment(value_range=(0.0, 1.0), seed=seed))
    return layers


def _augmenter(augment, info, seed):
    """Batch-level augmentation with Keras core layers; runs on [0, 1]-scaled images."""
    import keras
    import tensorflow as tf

    layers = image_augmentation_layers(augment, seed)
    mixers = []
    if "mixup" in augment:
        mixers.append(keras.layers.MixUp(seed=seed))
    if "cutmix" in augment:
        mixers.append(keras.layers.CutMix(seed=seed))
    preprocessing = info.preprocessing

    def apply(images, labels):
        images = tf.cast(images, "float32") * preprocessing.scale
        for layer in layers:
            images = layer(images, training=True)
        images = (images - tf.constant(preprocessing.mean)) / tf.constant(preprocessing.std)
        if mixers:
            batch = {"images": images, "labels": tf.one_hot(labels, info.num_classes)}
            for mixer in mixers:
                batch = mixer(batch, training=True)
            images, labels = batch["images"], batch["labels"]
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

    Raises:
        DatasetUnavailableError: the data is not on this machine (names the data set and path).
        ValueError: an unknown name, split or augmentation.
    """
    import tensorflow as tf

    split = _check_split(split)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1, received {batch_size!r}.")
    source = source or _source(name, data_dir=data_dir, download=download, manual_dir=manual_dir,
                               image_size=image_size, seed=seed,
                               validation_fraction=validation_fraction)
    info = source.info
    augment = _check_augment(augment, info) if split == "train" else ()
    shuffle = (split == "train") if shuffle is None else bool(shuffle)
    raw = source.raw_dataset(split)
    if max_examples is not None:
        raw = raw.take(int(max_examples))
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
