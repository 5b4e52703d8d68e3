"""Data pipelines: offline sets, tfds under mock data, image folders, the SGEMM CSV, failing fast."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from glonet_keras import data


def _first_batch(dataset):
    x, y = next(iter(dataset))
    return x.numpy(), y.numpy()


def test_load_arrays_still_works():
    (x_train, y_train), (x_test, y_test) = data.load_arrays("digits")
    assert x_train.shape[1:] == (8, 8, 1) and x_train.dtype == np.float32
    assert len(y_train) + len(y_test) == 1797


@pytest.mark.parametrize("name, shape", [("digits", (8, 8, 1)), ("mnist1d", (40, 1))])
def test_offline_pipelines_are_normalised_and_disjoint(name, shape):
    info = data.dataset_info(name)
    assert info.input_shape == shape and info.num_classes == 10
    counts = info.num_examples
    (x_train, _), (x_test, _) = data.load_arrays(name)
    assert counts["train"] + counts["validation"] == len(x_train)
    assert counts["test"] == len(x_test)
    x, y = _first_batch(data.get_dataset(name, "train", 10_000))
    assert x.shape == (counts["train"],) + shape and y.dtype == np.int32
    # The pipeline normalises with the training statistics it records.
    np.testing.assert_allclose(x.mean(axis=(0, 1) if len(shape) == 2 else (0, 1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(), 1, atol=1e-3)
    # Validation examples are not training examples.
    x_validation, _ = _first_batch(data.get_dataset(name, "validation", 10_000))
    train_rows = {row.tobytes() for row in x.reshape(len(x), -1)}
    assert not any(row.tobytes() in train_rows for row in x_validation.reshape(len(x_validation), -1))


def test_shuffle_and_epoch_stream_are_seeded():
    def labels(dataset, batches):
        return np.concatenate([y.numpy() for _, y in dataset.take(batches)])

    steps = data.steps_per_epoch(256, 64)
    stream = data.get_dataset("digits", "train", 64, max_examples=256, start_epoch=0, num_epochs=3)
    epochs_0_to_2 = labels(stream, 3 * steps)
    resumed = data.get_dataset("digits", "train", 64, max_examples=256, start_epoch=1, num_epochs=3)
    # A run resumed at epoch 1 sees exactly the batches of epochs 1 and 2 of the full run.
    np.testing.assert_array_equal(labels(resumed, 2 * steps), epochs_0_to_2[256:])
    assert not np.array_equal(epochs_0_to_2[:256], epochs_0_to_2[256:512])  # reshuffled per epoch
    test_a = labels(data.get_dataset("digits", "test", 64), 2)
    test_b = labels(data.get_dataset("digits", "test", 64), 2)
    np.testing.assert_array_equal(test_a, test_b)


def test_an_in_memory_epoch_stream_is_its_examples_shuffled_with_each_epochs_seed():
    # The stream shuffles indices and gathers rows (one copy of the arrays, whatever the epochs);
    # its batches must be those of shuffling the examples themselves, as every recorded run saw.
    import tensorflow as tf

    source = data.open_source("digits", image_size=(12, 10))
    x, y = data.load_split("digits", "train", source=source)
    x, y = x[:100], y[:100]
    stream = data.get_dataset("digits", "train", 16, source=source, max_examples=100, seed=4,
                              drop_remainder=True, start_epoch=1, num_epochs=3)
    got = list(stream.as_numpy_iterator())
    preprocessing = source.info.preprocessing
    expected = []
    for epoch in (1, 2):
        examples = tf.data.Dataset.from_tensor_slices((x, y)).map(
            lambda image, label: (tf.cast(preprocessing.resize(image), image.dtype), label))
        expected += list(examples.shuffle(100, seed=4 * 1_000_003 + epoch,
                                          reshuffle_each_iteration=False)
                         .batch(16, drop_remainder=True)
                         .map(lambda image, label: (preprocessing.normalize(image), label))
                         .as_numpy_iterator())
    assert len(got) == len(expected) == 12
    for (got_x, got_y), (want_x, want_y) in zip(got, expected):
        np.testing.assert_array_equal(got_y, want_y)
        np.testing.assert_array_equal(got_x, want_x)


def test_augmented_batches_depend_on_seed_epoch_and_step_only():
    def images(dataset, batches):
        return np.concatenate([x.numpy() for x, _ in dataset.take(batches)])

    augment = ("flip", "crop", "randaugment", "erase", "mixup")  # every tf.data map: all of them
    steps = data.steps_per_epoch(128, 32)
    stream = data.get_dataset("digits", "train", 32, max_examples=128, augment=augment, seed=3,
                              start_epoch=0, num_epochs=3)
    epochs_0_to_2 = images(stream, 3 * steps)
    again = images(data.get_dataset("digits", "train", 32, max_examples=128, augment=augment,
                                    seed=3, start_epoch=0, num_epochs=3), 3 * steps)
    np.testing.assert_array_equal(again, epochs_0_to_2)  # the parallel maps race on nothing
    resumed = data.get_dataset("digits", "train", 32, max_examples=128, augment=augment, seed=3,
                               start_epoch=2, num_epochs=3)
    # A run resumed at epoch 2 sees epoch 2's batches, augmented exactly as the full run's were.
    np.testing.assert_array_equal(images(resumed, steps), epochs_0_to_2[256:])
    other_seed = images(data.get_dataset("digits", "train", 32, max_examples=128, augment=augment,
                                         seed=4, start_epoch=0, num_epochs=3), steps)
    assert not np.array_equal(np.sort(other_seed, axis=None),
                              np.sort(epochs_0_to_2[:128], axis=None))
    # Without an epoch stream: the same for the same seed, other draws on every pass.
    unshuffled = dict(max_examples=128, augment=augment, seed=3, shuffle=False)
    passes = data.get_dataset("digits", "train", 32, **unshuffled)
    first, second = images(passes, steps), images(passes, steps)
    np.testing.assert_array_equal(first, images(data.get_dataset("digits", "train", 32,
                                                                 **unshuffled), steps))
    assert not np.array_equal(first, second)


@pytest.mark.parametrize(
    "name, split, image_size, shape",
    [
        ("mnist", "train", None, (28, 28, 1)),
        ("cifar10", "test", None, (32, 32, 3)),
        # Mock imagenette images have random sizes: the pipeline resizes them.
        ("imagenette/160px-v2", "train", (24, 20), (24, 20, 3)),
        ("imagenette/160px-v2", "test", None, (160, 160, 3)),
    ],
)
def test_tfds_pipelines_under_mock_data(tmp_path, name, split, image_size, shape):
    with tfds.testing.mock_data(num_examples=12):
        dataset = data.get_dataset(name, split, 5, data_dir=str(tmp_path), image_size=image_size)
        batches = list(dataset)
    assert [len(y) for _, y in batches] == [5, 5, 2] or split == "train"
    x, y = batches[0][0].numpy(), batches[0][1].numpy()
    assert x.shape == (5,) + shape and x.dtype == np.float32
    assert y.dtype == np.int32 and 0 <= y.min() and y.max() < 10
    # uint8 pixels were scaled and normalised, not passed through.
    assert np.abs(x).max() < 10


def test_augmentations_run_in_the_pipeline(tmp_path):
    with tfds.testing.mock_data(num_examples=16):
        plain = data.get_dataset("cifar10", "train", 8, data_dir=str(tmp_path), shuffle=False)
        augmented = data.get_dataset(
            "cifar10", "train", 8, data_dir=str(tmp_path), shuffle=False,
            augment="flip,crop,randaugment,mixup,cutmix",
        )
        x_plain, _ = _first_batch(plain)
        x_aug, y_aug = _first_batch(augmented)
        # Validation data is never augmented, labels stay sparse.
        _, y_validation = _first_batch(data.get_dataset(
            "cifar10", "validation", 8, data_dir=str(tmp_path), augment="mixup"))
    assert x_aug.shape == x_plain.shape and not np.allclose(x_aug, x_plain)
    assert y_aug.shape == (8, 10)
    np.testing.assert_allclose(y_aug.sum(axis=1), 1.0, atol=1e-5)  # label mixtures
    assert y_validation.shape == (8,)


def test_unknown_augmentation_and_wrong_input_kind():
    with pytest.raises(ValueError, match="Unknown augmentation 'blur'"):
        data.get_dataset("digits", "train", 8, augment=["blur"])
    with pytest.raises(ValueError, match="need images"):
        data.get_dataset("mnist1d", "train", 8, augment=["flip"])


@pytest.mark.parametrize("name", ["mnist", "cifar100", "imagenette/160px-v2", "imagenet2012"])
def test_missing_tfds_data_fails_fast_naming_it(tmp_path, name):
    tfds.builder("mnist", data_dir=str(tmp_path / "warm"))  # tfds' one-time registry loading
    start = time.perf_counter()
    with pytest.raises(data.DatasetUnavailableError) as error:
        data.get_dataset(name, "train", 8, data_dir=str(tmp_path))
    assert time.perf_counter() - start < 1.0
    message = str(error.value)
    assert repr(name.split("/")[0])[1:-1] in message and str(tmp_path) in message


def test_unknown_names_and_splits():
    with pytest.raises(ValueError, match="Unknown data set 'mnist2'"):
        data.get_dataset("mnist2", "train", 8)
    with pytest.raises(ValueError, match="Unknown split 'dev'"):
        data.get_dataset("digits", "dev", 8)
    with pytest.raises(ValueError, match="batch_size"):
        data.get_dataset("digits", "train", 0)


def _write_sgemm(path, rows, seed=0):
    rng = np.random.default_rng(seed)
    parameters = ["MWG", "NWG", "KWG", "MDIMC", "NDIMC", "MDIMA", "NDIMB", "KWI", "VWM", "VWN",
                  "STRM", "STRN", "SA", "SB"]
    header = parameters + ["Run1 (ms)", "Run2 (ms)", "Run3 (ms)", "Run4 (ms)"]
    x = rng.integers(1, 128, size=(rows, 14))
    runs = rng.uniform(10, 300, size=(rows, 4)).round(2)
    with open(path, "w") as handle:
        handle.write(",".join(header) + "\n")
        for features, times in zip(x, runs):
            handle.write(",".join(map(str, features)) + "," + ",".join(map(str, times)) + "\n")
    return x, runs


def test_sgemm_csv_reader_and_pipeline(tmp_path):
    x, runs = _write_sgemm(tmp_path / data.SGEMM_FILE, rows=50)
    features, target = data.read_sgemm_csv(str(tmp_path / data.SGEMM_FILE))
    np.testing.assert_array_equal(features, x.astype("float32"))
    np.testing.assert_allclose(target, np.log(runs.mean(axis=1)), rtol=1e-6)
    info = data.dataset_info("sgemm", data_dir=str(tmp_path))
    assert info.task == "regression" and info.num_classes == 1 and info.input_shape == (14,)
    assert info.class_names is None and info.to_dict()["class_names"] is None
    assert sum(info.num_examples.values()) == 50 and info.num_examples["test"] == 10
    batch_x, batch_y = _first_batch(data.get_dataset("sgemm", "train", 100, data_dir=str(tmp_path)))
    assert batch_x.shape == (info.num_examples["train"], 14) and batch_y.dtype == np.float32
    np.testing.assert_allclose(batch_x.mean(axis=0), 0, atol=1e-4)  # standardised features


def test_sgemm_errors(tmp_path):
    with pytest.raises(data.DatasetUnavailableError, match="no CSV file"):
        data.get_dataset("sgemm", "train", 8, data_dir=str(tmp_path))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,Run1,Run2,Run3,Run4\n1,2,3,4,5,6\n")
    with pytest.raises(ValueError, match="expected 14 parameter columns"):
        data.read_sgemm_csv(str(bad))


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 5), ("test", 2)):
        for class_name in ("cat", "dog"):
            folder = tmp_path / split / class_name
            folder.mkdir(parents=True)
            for i in range(count):
                size = rng.integers(10, 30, size=2)  # images of different sizes
                image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                tf.io.write_file(str(folder / f"{i}.png"), tf.io.encode_png(image))
    info = data.dataset_info("image_folder", data_dir=str(tmp_path), image_size=(16, 16),
                             validation_fraction=0.2)
    assert info.num_classes == 2 and info.input_shape == (16, 16, 3)
    assert info.class_names == ("cat", "dog") and info.to_dict()["class_names"] == ["cat", "dog"]
    assert info.num_examples == {"train": 8, "validation": 2, "test": 4}
    x, y = _first_batch(data.get_dataset("image_folder", "test", 4, data_dir=str(tmp_path),
                                         image_size=(16, 16)))
    assert x.shape == (4, 16, 16, 3) and sorted(y.tolist()) == [0, 0, 1, 1]
    with pytest.raises(data.DatasetUnavailableError, match="'.*nothing' is not a directory"):
        data.dataset_info("image_folder", data_dir=str(tmp_path / "nothing"), image_size=(8, 8))
    with pytest.raises(ValueError, match="4 different sizes .*pass image_size"):
        data.dataset_info("image_folder", data_dir=str(tmp_path))


def test_image_folder_flat_layout_grayscale_and_inferred_size(tmp_path):
    # Keras' image_dataset_from_directory layout: root/<class>/<image>, here colour PNGs of one size.
    rng = np.random.default_rng(0)
    for class_name, count in (("cat", 6), ("dog", 4)):
        (tmp_path / class_name).mkdir()
        for i in range(count):
            image = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
            tf.io.write_file(str(tmp_path / class_name / f"{i}.png"), tf.io.encode_png(image))
    info = data.dataset_info("image_folder", data_dir=str(tmp_path), channels=1,
                             validation_fraction=0.25)
    assert info.input_shape == (12, 10, 1) and info.class_names == ("cat", "dog")
    assert info.num_examples == {"train": 6, "validation": 2, "test": 2}  # seeded 20 % test
    assert len(info.preprocessing.mean) == 1
    batches = [data.get_dataset("image_folder", split, 10, data_dir=str(tmp_path), channels=1,
                                validation_fraction=0.25) for split in data.SPLITS]
    seen = [_first_batch(batch)[0] for batch in batches]
    assert [x.shape for x in seen] == [(6, 12, 10, 1), (2, 12, 10, 1), (2, 12, 10, 1)]
    # The splits never overlap: every image lands in exactly one.
    flat = np.concatenate([x.reshape(len(x), -1) for x in seen])
    assert len(np.unique(flat, axis=0)) == 10
    with pytest.raises(ValueError, match="channels must be 1 or 3, received 2"):
        data.dataset_info("image_folder", data_dir=str(tmp_path), channels=2)
    with pytest.raises(ValueError, match="channels applies to the image_folder data set only"):
        data.dataset_info("digits", channels=1)


def test_preprocessing_round_trips_and_matches_the_pipeline(tmp_path):
    info = data.dataset_info("digits")
    path = os.path.join(tmp_path, "preprocessing.json")
    data.save_preprocessing(info.preprocessing, path)
    restored = data.load_preprocessing(path)
    assert restored == info.preprocessing
    (x_train, _), _ = data.load_arrays("digits")
    x, _ = _first_batch(data.get_dataset("digits", "validation", 10_000))
    raw = x_train[data.base._split_indices(len(x_train), 0.1, 0)[1]]
    np.testing.assert_allclose(restored(raw), x, atol=1e-6)


def _numpy_preprocess(x, preprocessing):
    mean, std = np.float32(preprocessing.mean), np.float32(preprocessing.std)
    return (x.astype("float32") * preprocessing.scale - mean) / std


@pytest.mark.parametrize("name", ["digits", "sgemm"])
def test_load_split_is_what_get_dataset_reads(tmp_path, name):
    kwargs = {}
    if name == "sgemm":
        _write_sgemm(tmp_path / data.SGEMM_FILE, rows=60)
        kwargs["data_dir"] = str(tmp_path)
    preprocessing = data.dataset_info(name, **kwargs).preprocessing
    for split in data.SPLITS:
        x, y = data.load_split(name, split, **kwargs)
        piped = data.get_dataset(name, split, 10_000, shuffle=False, **kwargs)
        piped_x, piped_y = _first_batch(piped)
        np.testing.assert_allclose(_numpy_preprocess(x, preprocessing), piped_x, atol=1e-5)
        np.testing.assert_array_equal(y, piped_y)
        first, _ = data.load_split(name, split, max_examples=7, **kwargs)
        np.testing.assert_array_equal(first, x[:7])
    with pytest.raises(ValueError, match="read-only"):
        x[0] = 0  # the per-process cache cannot be changed through a returned array


def test_load_split_refuses_what_it_cannot_serve():
    assert data.in_memory("fashion_mnist") and data.in_memory("sgemm")
    assert not data.in_memory("mnist") and not data.in_memory("image_folder")
    with pytest.raises(ValueError, match="'mnist' is not held in memory.*get_dataset"):
        data.load_split("mnist", "train")
    with pytest.raises(ValueError, match="Unknown data set 'mnist2'"):
        data.in_memory("mnist2")
    with pytest.raises(ValueError, match="Unknown split 'dev'"):
        data.load_split("digits", "dev")
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(ValueError, match="max_examples"):
            data.load_split("digits", "train", max_examples=bad)
        with pytest.raises(ValueError, match="max_examples"):
            data.get_dataset("digits", "train", 8, max_examples=bad)


def test_class_names():
    assert data.dataset_info("digits").class_names == tuple("0123456789")
    assert data.dataset_info("digits").to_dict()["class_names"] == list("0123456789")
    with tfds.testing.mock_data(num_examples=4):
        # tfds' own ClassLabel names (cifar10 learns its real names only when prepared).
        assert data.dataset_info("mnist").class_names == tuple("0123456789")


_WITHOUT_TENSORFLOW = textwrap.dedent("""
    import hashlib, json, sys
    sys.modules["tensorflow"] = None  # `import tensorflow` now raises ImportError
    from glonet_keras import data

    report = {}
    for name, data_dir in json.loads(sys.argv[1]).items():
        info = data.dataset_info(name, data_dir=data_dir)
        x, y = data.load_split(name, "validation", max_examples=50, data_dir=data_dir)
        report[name] = {"info": info.to_dict(), "dtype": x.dtype.name, "shape": list(x.shape),
                        "digest": hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()}
    loaded = sorted(m for m, module in sys.modules.items() if m.startswith("tensorflow") and module)
    print(json.dumps({"report": report, "tensorflow_modules": loaded}))
""")


def test_in_memory_sets_need_no_tensorflow(tmp_path):
    _write_sgemm(tmp_path / data.SGEMM_FILE, rows=60)
    names = {"digits": None, "mnist1d": None, "sgemm": str(tmp_path)}
    try:
        names["fashion_mnist"] = data.fashion_mnist_dir()
    except data.DatasetUnavailableError:
        pass  # tests/test_data_fashion_mnist.py skips with the reason; the rest is still checked
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=root)
    result = subprocess.run([sys.executable, "-c", _WITHOUT_TENSORFLOW, json.dumps(names)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert output["tensorflow_modules"] == []
    for name, data_dir in names.items():
        child = output["report"][name]
        info = data.dataset_info(name, data_dir=data_dir)
        assert child["info"] == info.to_dict()  # the same description as with TensorFlow
        x, y = data.load_split(name, "validation", max_examples=50, data_dir=data_dir)
        assert child["dtype"] == x.dtype.name and child["shape"] == list(x.shape)
        assert child["digest"] == hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
