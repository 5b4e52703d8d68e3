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
std of the scaled "train" split). The pipeline applies it, and `glonet_keras.deploy.export` applies the
same record inside the served graph, so a trained model is always used with the normalisation it
was trained with. Augmentation (`augment=` names from `AUGMENTATIONS`: flip, crop, random erasing,
MixUp and CutMix as exact device ops from `glonet_keras.data.augment`, RandAugment Keras' layer) runs inside the
pipeline of the training split only; it never becomes part of a model.

Example:
>>> info = dataset_info("digits")
>>> info.input_shape, info.num_classes, info.class_names[:3]
((8, 8, 1), 10, ('0', '1', '2'))
>>> x, y = load_split("digits", "test", max_examples=4)  # numpy, before preprocessing
>>> batches = get_dataset("digits", "train", batch_size=32)  # tf.data, preprocessed

Modules: `base` (names, splits, `DatasetInfo`), one per source (`arrays`: digits, MNIST-1D and
Fashion-MNIST in memory; `fashion_mnist`: its IDX files; `sgemm`; `tfds_source`; `image_folder`),
`preprocessing` (the record that travels with the weights), `augment` (exact on-device
augmentation) and `pipeline` (`load_split`, `get_dataset`: one entry point over every source).
"""

from glonet_keras.data.arrays import load_arrays
from glonet_keras.data.base import (
    DATASETS, FILE_DATASETS, IN_MEMORY_DATASETS, OFFLINE_DATASETS, SPLITS, TFDS_DATASETS,
    DatasetInfo, DatasetUnavailableError, check_name, open_regular_file,
)
from glonet_keras.data.fashion_mnist import (
    FASHION_MNIST_CLASSES, FASHION_MNIST_DEBIAN_DIR, FASHION_MNIST_ENV, FASHION_MNIST_SHA256,
    fashion_mnist_dir, parse_idx,
)
from glonet_keras.data.image_folder import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS
from glonet_keras.data.pipeline import (
    AUGMENTATIONS, check_augment, count_examples, dataset_info, get_dataset,
    image_augmentation_layers, in_memory, label_mixing, load_split, mixing_layer, open_source,
    steps_per_epoch,
)
from glonet_keras.data.preprocessing import Preprocessing, load_preprocessing, save_preprocessing
from glonet_keras.data.sgemm import SGEMM_FILE, SGEMM_NUM_PARAMETERS, read_sgemm_csv
from glonet_keras.data.tfds_source import DOWNLOAD_PROBE_ADDRESS, DOWNLOAD_PROBE_TIMEOUT

__all__ = [
    "AUGMENTATIONS", "DATASETS", "DOWNLOAD_PROBE_ADDRESS", "DOWNLOAD_PROBE_TIMEOUT",
    "FASHION_MNIST_CLASSES", "FASHION_MNIST_DEBIAN_DIR", "FASHION_MNIST_ENV",
    "FASHION_MNIST_SHA256", "FILE_DATASETS", "IMAGE_EXTENSIONS", "IN_MEMORY_DATASETS",
    "MAX_IMAGE_PIXELS", "OFFLINE_DATASETS", "SGEMM_FILE", "SGEMM_NUM_PARAMETERS", "SPLITS",
    "TFDS_DATASETS", "DatasetInfo", "DatasetUnavailableError", "Preprocessing", "check_augment",
    "check_name", "count_examples", "dataset_info", "fashion_mnist_dir", "get_dataset",
    "image_augmentation_layers", "in_memory", "label_mixing", "load_arrays",
    "load_preprocessing", "load_split", "mixing_layer", "open_regular_file", "open_source",
    "parse_idx", "read_sgemm_csv", "save_preprocessing", "steps_per_epoch",
]
