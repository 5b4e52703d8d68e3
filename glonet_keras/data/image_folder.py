"""Image folders (`root/<split>/<class>/` or Keras' flat `root/<class>/`): every file's header and
decode checked before anything trains."""

import os
import re
import struct

import numpy as np

from glonet_keras.data.base import (
    SPLITS, DatasetInfo, DatasetUnavailableError, _split_indices, open_regular_file,
)
from glonet_keras.data.preprocessing import Preprocessing

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Decoded pixels (times frames, for a GIF) an image file may have: a 410 KB PNG can declare
# 12000x12000 pixels, 430 MiB once decoded. Checked from the header, before any decoding.
MAX_IMAGE_PIXELS = 50_000_000


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
