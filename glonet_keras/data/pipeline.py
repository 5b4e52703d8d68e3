"""One entry point over every source: `dataset_info`, `load_split` (numpy), `get_dataset` (tf.data with
preprocessing, and augmentation on the training split only), and step counting."""

import math
import os

import numpy as np

from glonet_keras.data import augment as augment_lib
from glonet_keras.data.arrays import _IN_MEMORY_IMAGE_DATASETS, _offline_source
from glonet_keras.data.base import (
    IN_MEMORY_DATASETS, OFFLINE_DATASETS, _ArraySource, _check_split, check_name,
)
from glonet_keras.data.image_folder import _ImageFolderSource
from glonet_keras.data.sgemm import _sgemm_path, _sgemm_source
from glonet_keras.data.tfds_source import _TFDSSource

AUGMENTATIONS = ("flip", "crop", "randaugment", "erase", "mixup", "cutmix")


def _source(name, *, data_dir=None, download=False, manual_dir=None, image_size=None, seed=0,
            validation_fraction=0.1, channels=None):
    name = check_name(name)
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
    return check_name(name) in IN_MEMORY_DATASETS


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


def check_augment(augment, info):
    """The augmentation names as a tuple, checked against `AUGMENTATIONS` and the data set `info`."""
    if isinstance(augment, str):
        augment = [a for a in augment.split(",") if a]
    augment = tuple(augment or ())
    for name in augment:
        if name not in AUGMENTATIONS:
            raise ValueError(f"Unknown augmentation {name!r}. Available: {list(AUGMENTATIONS)}.")
    image_only = {"flip", "crop", "randaugment", "erase", "cutmix"} & set(augment)
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
    costly inside a compiled step: see benchmarks/README.md); `erase` is `augment.RandomErasing`
    (random erasing, last, seeded with `seed + ERASING_SEED_OFFSET`). They take [0, 1]-scaled
    images (scale first, normalise after). The trainer's array path applies them on the device, in
    a training-only model; the tf.data pipeline (`_augment_batches`) runs the same
    `augment.shift_and_flip` and `augment.erase`.
    """
    import keras


    layers = []
    if "flip" in augment or "crop" in augment:
        layers.append(augment_lib.RandomShiftFlip(flip="flip" in augment, crop="crop" in augment,
                                                  seed=seed, name="shift_flip"))
    if "randaugment" in augment:
        layers.append(keras.layers.RandAugment(value_range=(0.0, 1.0), seed=seed))
    if "erase" in augment:
        layers.append(augment_lib.RandomErasing(
            seed=None if seed is None else seed + ERASING_SEED_OFFSET, name="erase"))
    return layers


#: The mixing layer's seed is the run's seed plus this, so that its draws are not those of the
#: flip/crop layer seeded with the run's seed (same-seeded generators draw the same numbers).
MIXING_SEED_OFFSET = 1
#: The same for the erasing layer.
ERASING_SEED_OFFSET = 2


def mixing_layer(augment, seed=0):
    """The `augment.RandomMix` of the `mixup`/`cutmix` named in `augment`, or None.

    MixUp (λ ~ Beta(0.2, 0.2), Keras' default) then CutMix (λ ~ Beta(1, 1), the paper's box),
    seeded with `seed + MIXING_SEED_OFFSET`. It mixes one-hot labels, so it runs where the labels
    are: the trainer's array path puts it in the training step (`augment.MixingModel`); the tf.data
    pipeline (`_mix_tf`) runs the same `augment.mix_batch`.
    """
    if not label_mixing(augment):
        return None
    return augment_lib.RandomMix(mixup="mixup" in augment, cutmix="cutmix" in augment,
                                 seed=None if seed is None else seed + MIXING_SEED_OFFSET,
                                 name="mix")


class _BatchDraws:
    """The random draws of one batch, from that batch's stateless key alone.

    The tf.data augmentations draw through this instead of a stateful `tf.random.Generator`: call
    k of a batch uses the seed `stateless_fold_in(key, k)`. The draws of a batch are then a function
    of its key, not of which batch a parallel map ran first (a shared generator's are not, so two
    runs with one seed used to augment differently), and an epoch stream keys its batches by
    (seed, epoch, step), so a run resumed at epoch e draws what the uninterrupted run drew there.
    `uniform` and `make_seeds` follow `tf.random.Generator`'s.
    """

    def __init__(self, key, stream):
        import tensorflow as tf

        self.key = tf.random.experimental.stateless_fold_in(key, stream)
        self.calls = 0

    def _seed(self):
        import tensorflow as tf

        seed = tf.random.experimental.stateless_fold_in(self.key, self.calls)
        self.calls += 1
        return seed

    def uniform(self, shape, minval=0, maxval=None, dtype="float32"):
        import tensorflow as tf

        return tf.random.stateless_uniform(shape, seed=self._seed(), minval=minval, maxval=maxval,
                                           dtype=dtype)

    def make_seeds(self, count=1):
        import tensorflow as tf

        return tf.transpose(tf.random.experimental.stateless_split(self._seed(), count))


def _mix_tf(augment):
    """MixUp/CutMix for a tf.data pipeline: `augment.mix_batch` on TensorFlow's NumPy API.

    The same images and labels as `augment.RandomMix` for the same draws, whatever Keras' backend
    is; `apply(images, labels, key)` draws them (`augment.draw_mixing`) from the batch's key
    (`_BatchDraws`, stream `MIXING_SEED_OFFSET`). Returns None when neither is asked for.
    """
    import tensorflow as tf
    import tensorflow.experimental.numpy as tnp

    mixup, cutmix = "mixup" in augment, "cutmix" in augment
    if not (mixup or cutmix):
        return None

    def apply(images, labels, key):
        batch = tf.shape(images)[0]
        draws = _BatchDraws(key, MIXING_SEED_OFFSET)

        def permutation():
            return tf.random.experimental.stateless_shuffle(
                tf.range(batch, dtype="int32"), seed=draws.make_seeds(1)[:, 0])

        def beta(alpha):  # X / (X + Y), X and Y ~ Gamma(alpha), as Keras' TensorFlow backend draws
            seeds = draws.make_seeds(2)
            x, y = (tf.random.stateless_gamma([batch], seed=seeds[:, i], alpha=alpha)
                    for i in (0, 1))
            return x / (x + y)

        def randint(low, high):
            return draws.uniform([batch], low, high, dtype="int32")

        height, width = (images.shape[1], images.shape[2]) if cutmix else (None, None)
        drawn = augment_lib.draw_mixing(permutation, beta, randint, height, width, mixup=mixup,
                                        cutmix=cutmix, xp=tnp)
        mixed = augment_lib.mix_batch(images, labels, *drawn, xp=tnp)
        return tuple(tf.ensure_shape(out, given.shape) for out, given in zip(mixed, (images, labels)))

    return apply


def _shift_flip_tf(augment):
    """`flip`/`crop` for a tf.data pipeline: `augment.shift_and_flip` on TensorFlow's NumPy API.

    The same pixels as `augment.RandomShiftFlip` for the same offsets, whatever Keras' backend is
    (keras.ops may be JAX's, which cannot run in a tf.data graph). `apply(images, key)` draws the
    offsets from the batch's key (`_BatchDraws`, stream 0). Returns None when neither is asked for.
    """
    import tensorflow as tf
    import tensorflow.experimental.numpy as tnp

    flip, crop = "flip" in augment, "crop" in augment
    if not (flip or crop):
        return None

    def apply(images, key):
        batch = tf.shape(images)[0]
        draws = _BatchDraws(key, 0)
        shift_rows, shift_cols, flipped = augment_lib.draw_offsets(
            lambda low, high: draws.uniform([batch], low, high, dtype="int32"),
            images.shape[1], images.shape[2], flip=flip, crop=crop)
        out = augment_lib.shift_and_flip(images, shift_rows, shift_cols, flipped, xp=tnp)
        return tf.ensure_shape(out, images.shape)  # tnp's gathers lose the static shape

    return apply


def _erase_tf(augment):
    """`erase` for a tf.data pipeline: `augment.erase` on TensorFlow's NumPy API; `apply(images,
    key)` draws the boxes (`augment.draw_erasing`) and the noise from the batch's key
    (`_BatchDraws`, stream `ERASING_SEED_OFFSET`). Returns None when it is not asked for."""
    import tensorflow as tf
    import tensorflow.experimental.numpy as tnp

    if "erase" not in augment:
        return None

    def apply(images, key):
        batch = tf.shape(images)[0]
        draws = _BatchDraws(key, ERASING_SEED_OFFSET)
        drawn = augment_lib.draw_erasing(
            lambda low, high: draws.uniform([batch], low, high, dtype="float32"),
            images.shape[1], images.shape[2], xp=tnp)
        noise = draws.uniform(tf.shape(images), dtype=images.dtype)
        return tf.ensure_shape(augment_lib.erase(images, *drawn, noise, xp=tnp), images.shape)

    return apply


#: A Keras augmentation layer in tf.data (RandAugment) starts each batch's draws at its seed
#: generator's counter `(epoch * LAYER_STEPS_PER_EPOCH + step) * LAYER_DRAWS_PER_BATCH`, so its
#: draws too are a function of (seed, epoch, step). It draws fewer than LAYER_DRAWS_PER_BATCH per
#: batch; an epoch of more than LAYER_STEPS_PER_EPOCH steps would reuse the next epoch's counters.
LAYER_DRAWS_PER_BATCH = 256
LAYER_STEPS_PER_EPOCH = 2**20


def _augment_batches(dataset, augment, info, seed, epochs=None):
    """Augments a batched `(images, labels)` dataset of the training split; runs on [0, 1]-scaled
    images, normalises after, and mixes last (MixUp/CutMix on one-hot labels).

    `flip`/`crop` through `_shift_flip_tf`, `erase` through `_erase_tf` and MixUp/CutMix through
    `_mix_tf` (the device path's code), in parallel maps; RandAugment with Keras' layer, in a
    sequential map between them. In an epoch stream (`epochs` = (start epoch, batches per epoch)),
    batch `step` of epoch `epoch` draws from the key `stateless_fold_in([seed, epoch], step)` alone,
    so a resumed stream repeats the uninterrupted run's draws. With `epochs=None` (a dataset
    iterated once per epoch) the key is `[seed, r]`, `r` from `tf.data.Dataset.random(seed,
    rerandomize_each_iteration=True)`: other draws on every pass, the same for the same seed.
    """
    import tensorflow as tf

    shift_flip, erase = _shift_flip_tf(augment), _erase_tf(augment)
    layers = [layer for layer in image_augmentation_layers(augment, seed)
              if not isinstance(layer, (augment_lib.RandomShiftFlip, augment_lib.RandomErasing))]
    mix = _mix_tf(augment)
    preprocessing = info.preprocessing
    if epochs is None:
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).map(
            lambda r: (tf.stack([tf.constant(seed, "int64"), r]), r % LAYER_STEPS_PER_EPOCH))
    else:
        start_epoch, steps = epochs

        def key(index):  # batch `index` of the whole run: epoch index // steps, step index % steps
            epoch, step = index // steps, index % steps
            return (tf.random.experimental.stateless_fold_in(
                tf.stack([tf.constant(seed, "int64"), epoch]), step),
                epoch * LAYER_STEPS_PER_EPOCH + step)

        keys = tf.data.Dataset.range(start_epoch * steps, 2**62).map(key)

    def first(batch, key):
        (images, labels), (key, counter) = batch, key
        images = tf.cast(images, "float32") * preprocessing.scale
        if shift_flip is not None:
            images = shift_flip(images, key)
        return images, labels, key, counter

    dataset = tf.data.Dataset.zip((dataset, keys)).map(first, num_parallel_calls=tf.data.AUTOTUNE)
    if layers:
        states = augment_lib.seed_generator_states(layers)

        def keras_layers(images, labels, key, counter):
            for state in states:  # A counter of this batch's own (see LAYER_DRAWS_PER_BATCH).
                state.assign(tf.stack([state[0], tf.cast(counter * LAYER_DRAWS_PER_BATCH,
                                                         state.dtype)]))
            for layer in layers:
                images = layer(images, training=True)
            return images, labels, key, counter

        dataset = dataset.map(keras_layers)  # sequential: the layers' generators are shared state

    def last(images, labels, key, counter):
        if erase is not None:
            images = erase(images, key)
        images = (images - tf.constant(preprocessing.mean)) / tf.constant(preprocessing.std)
        if mix is not None:
            images, labels = mix(images, tf.one_hot(labels, info.num_classes), key)
        return images, labels

    return dataset.map(last, num_parallel_calls=tf.data.AUTOTUNE)


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
        seed: seeds the validation carve-out, the shuffle and the augmentation: every batch's
            augmentation draws come from (seed, epoch, step) alone (`_augment_batches`), so
            the same seed gives the same batches, whatever the parallel maps' timing.
        augment: names from `AUGMENTATIONS` (or a comma-separated string); "train" only.
        one_hot: return one-hot float labels (forced on by MixUp / CutMix).
        drop_remainder: drop the last partial batch.
        start_epoch, num_epochs: if set (and shuffling), return the batches of epochs
            `start_epoch .. num_epochs - 1` as one stream, epoch e shuffled with its own seed
            derived from (seed, e), augmented with draws keyed by (seed, e, step). A run resumed
            at epoch e then sees exactly the batches an uninterrupted run sees; fit it with
            `steps_per_epoch = steps_per_epoch(...)`.
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
    augment = check_augment(augment, info) if split == "train" else ()
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
        dataset, steps = _epoch_stream(raw, source, split, batched, seed, shuffle_buffer,
                                       max_examples, batch_size, drop_remainder, int(start_epoch),
                                       num_epochs)
        if augment:
            dataset = _augment_batches(dataset, augment, info, seed, (int(start_epoch), steps))
    else:
        if shuffle:
            dataset = raw.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        else:
            dataset = raw
        dataset = batched(dataset)
        if augment:
            dataset = _augment_batches(dataset, augment, info, seed)

    if not augment:  # (augmented batches are normalised by `_augment_batches`)
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
    """(epochs start..num_epochs-1 back to back, each shuffled with a Python-int seed of its own;
    the batches per epoch).

    An in-memory split shuffles the example indices, not the examples, and gathers each batch's
    rows after: the same order (a shuffle's order depends on its seed and size, not on what it
    shuffles), but the arrays are held once. Shuffling the examples themselves grew the process by
    about the split's size per epoch of the stream: 100 epochs of Fashion-MNIST peaked at 5.2 GiB
    and took 25 s to the end of the first epoch, against 1.0 GiB and 3 s by index (2-core CPU).
    """
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
    in_memory = isinstance(source, _ArraySource)
    examples = tf.data.Dataset.range(count) if in_memory else raw
    # Python-int seeds: a tensor seed breaks `shuffle` once a global seed of 0 is set.
    epochs = [
        batched(examples.shuffle(shuffle_buffer, seed=seed * 1_000_003 + epoch,
                                 reshuffle_each_iteration=False))
        for epoch in range(start_epoch, num_epochs)
    ]
    choice = tf.data.Dataset.range(len(epochs)).flat_map(
        lambda index: tf.data.Dataset.from_tensors(index).repeat(steps))
    stream = tf.data.Dataset.choose_from_datasets(epochs, choice)
    if in_memory:
        x, y = (tf.constant(array[:count]) for array in source.splits[split])
        resize = source.info.preprocessing.resize

        def rows(indices):
            images = tf.gather(x, indices)
            if source.info.preprocessing.image_size is not None:  # as the per-example resize
                images = tf.cast(resize(images), x.dtype)
            return images, tf.gather(y, indices)

        stream = stream.map(rows, num_parallel_calls=tf.data.AUTOTUNE)
    return stream, steps


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
