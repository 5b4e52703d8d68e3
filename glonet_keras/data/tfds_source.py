"""TensorFlow Datasets names (`mnist`, `cifar10`, `cifar100`, `imagenette/...`, `imagenet2012`): a source
that never downloads unless asked, and fails fast without a network when asked."""

import os
import socket
import threading

from glonet_keras.data.base import DatasetInfo, DatasetUnavailableError
from glonet_keras.data.preprocessing import Preprocessing

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
