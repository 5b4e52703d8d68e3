"""The preprocessing record that travels with a trained model: raw input -> model input.

One `Preprocessing` (cast, resize, scale, normalise per channel) describes how a model's inputs were
prepared in training. The data pipeline applies it, a loaded preset carries it, and the exported
serving graph applies the same record, so a model is always fed the way it was trained.

`Preprocessing.to_dict()` is the only serialized form of it anywhere (a preset's `metadata.json`, a
run's `preprocessing.json`, an export's `assets.extra/glonet.json`); `from_dict` reads it back and
refuses anything else.

TensorFlow is needed only to resize, or to apply the record to TensorFlow tensors: numpy inputs are
preprocessed in numpy, so a machine with JAX and no TensorFlow can use the record too.
"""

import dataclasses
import json
import math
import numbers
import sys

import numpy as np

# Raw input dtypes a serving graph can take. Strings (encoded images) and booleans are not numbers.
NUMERIC_DTYPES = (
    "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
    "float16", "bfloat16", "float32", "float64",
)


def _is_real_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _dtype_name(value):
    """'uint8' for "uint8", np.uint8, np.dtype("uint8") or tf.uint8; None if not a dtype."""
    if isinstance(value, str):
        return value
    if isinstance(value, type):
        return getattr(value, "__name__", None)
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else None


# The record is applied in float32 (numpy, tf.data, the serving graph): every number in it must be a
# normal float32, or a value finite in float64 (mean 1e300, std 1e-300) turns into inf or 0 there and
# the model serves NaN. Images larger than this per side are refused rather than resized to.
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32
MAX_IMAGE_SIDE = 16384
MAX_CHANNELS = 4096


def _short(value):
    """repr(value), except a huge integer, named by its number of digits (never 4,000 of them)."""
    if _is_integer(value) and abs(int(value)) > 10**15:
        return f"<an integer of about {int(abs(int(value)).bit_length() * 0.30103) + 1} digits>"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value[:8]) + (", ...]" if len(value) > 8 else "]")
    return repr(value)


def _float32_finite(field, value, *, positive):
    """`value` as a float that float32 holds finitely (a normal float32 > 0 where `positive`)."""
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float64
        number = math.inf
    if not math.isfinite(number) or abs(number) > FLOAT32_MAX:
        raise ValueError(
            f"Preprocessing `{field}` must be finite in float32 (|value| <= {FLOAT32_MAX:.4g}), "
            f"received {_short(value)}: the float32 pipeline would turn it into inf and serve NaN."
        )
    if positive and number < FLOAT32_TINY:
        raise ValueError(
            f"Preprocessing `{field}` must be >= {FLOAT32_TINY:.4g} (the smallest normal float32), "
            f"received {_short(value)}"
            + (": in float32 it would be 0 (or lose its precision)." if number > 0 else ".")
        )
    return number


def _channel_values(field, value):
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise ValueError(
            f"Preprocessing `{field}` must be a list of numbers, one per channel, received {value!r}."
        )
    values = tuple(value)
    if not values:
        raise ValueError(f"Preprocessing `{field}` must hold at least one value (one per channel).")
    if len(values) > MAX_CHANNELS:
        raise ValueError(
            f"Preprocessing `{field}` holds {len(values)} values; at most {MAX_CHANNELS} channels."
        )
    for item in values:
        if not _is_real_number(item):
            raise ValueError(
                f"Preprocessing `{field}` must hold finite numbers, received {_short(item)} in "
                f"{_short(values)}."
            )
    return tuple(_float32_finite(field, item, positive=field == "std") for item in values)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Raw input -> model input: `((resize(x) * scale) - mean) / std`, per channel (last axis).

    The record is checked when it is made, so a bad one fails here, not in a served request.

    Attributes:
        input_dtype: dtype of raw inputs, one of `NUMERIC_DTYPES` ("uint8" for image files,
            "float32" for arrays).
        scale: number > 0 that multiplies the raw values first (1/255 for uint8 images).
        mean, std: per-channel statistics of the scaled training inputs, both of the same length
            (one value per channel, or one for all channels).
        image_size: `(height, width)` raw images are resized to (each side at most
            `MAX_IMAGE_SIDE`), or None (fixed-size inputs).

    Every number must be a normal float32 (std and scale >= 1.18e-38, |value| <= 3.4e38), and so
    must scale / std and mean / std: the record is applied in float32, where a value finite only
    in float64 would serve inf or NaN.

    Raises:
        ValueError: naming the field that is invalid.

    Example:

    >>> p = Preprocessing(input_dtype="uint8", scale=1 / 255, mean=(0.5,), std=(0.25,))
    >>> p(np.full((1, 2, 2, 1), 255, "uint8"))[0, 0, 0]
    array([2.], dtype=float32)
    >>> Preprocessing.from_dict(p.to_dict()) == p
    True
    """

    input_dtype: str = "float32"
    scale: float = 1.0
    mean: tuple = (0.0,)
    std: tuple = (1.0,)
    image_size: tuple = None

    def __post_init__(self):
        # The dataclass is frozen: store the checked, normalised values (plain str, float, tuples)
        # so that equal records compare and hash equal, whatever types they were given as.
        dtype = _dtype_name(self.input_dtype)
        if dtype not in NUMERIC_DTYPES:
            raise ValueError(
                f"Preprocessing `input_dtype` must be a numeric dtype, one of {list(NUMERIC_DTYPES)}, "
                f"received {self.input_dtype!r}."
            )
        if not _is_real_number(self.scale) or not self.scale > 0:
            raise ValueError(
                f"Preprocessing `scale` must be a finite number > 0, received {_short(self.scale)}."
            )
        scale = _float32_finite("scale", self.scale, positive=True)
        mean = _channel_values("mean", self.mean)
        std = _channel_values("std", self.std)
        if len(mean) != len(std):
            raise ValueError(
                f"Preprocessing `mean` and `std` must have the same length, received {len(mean)} "
                f"and {len(std)} values."
            )
        # The record is the affine map x -> x * (scale / std) - mean / std: both coefficients must
        # be finite in float32 too (mean 1e30 over std 1e-30 is each finite, but not their ratio).
        for s, m in zip(std if len(std) > 1 else std * len(mean), mean):
            for what, ratio in (("scale / std", scale / s), ("mean / std", abs(m) / s)):
                if not ratio <= FLOAT32_MAX:
                    raise ValueError(
                        f"Preprocessing {what} overflows float32 (scale={scale!r}, mean={m!r}, "
                        f"std={s!r}): the model would be served inf and NaN."
                    )
        image_size = self.image_size
        if image_size is not None:
            if (isinstance(image_size, (str, bytes, dict)) or not hasattr(image_size, "__iter__")
                    or len(tuple(image_size)) != 2
                    or not all(_is_integer(s) and 1 <= s <= MAX_IMAGE_SIDE for s in image_size)):
                raise ValueError(
                    f"Preprocessing `image_size` must be None or two integers in [1, "
                    f"{MAX_IMAGE_SIDE}] (height, width), received {_short(image_size)}."
                )
            image_size = tuple(int(s) for s in image_size)
        object.__setattr__(self, "input_dtype", dtype)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "image_size", image_size)

    @property
    def num_channels(self):
        """How many channels `mean` and `std` describe (1: the same for every channel)."""
        return len(self.mean)

    def check_fits(self, input_shape, what="the model"):
        """Raises ValueError unless the record can feed inputs of `input_shape` (batch axis first).

        One mean/std per channel (or one for all), and `image_size` only for image inputs
        `(batch, height, width, channels)` whose known sides it equals.
        """
        input_shape = tuple(input_shape)
        channels = input_shape[-1]
        if self.num_channels != 1 and channels is not None and self.num_channels != channels:
            raise ValueError(
                f"The preprocessing has {self.num_channels} channel statistics (mean and std), but "
                f"{what} takes inputs of shape {input_shape[1:]}: {channels} channels."
            )
        if self.image_size is not None:
            if len(input_shape) != 4:
                raise ValueError(
                    f"The preprocessing resizes images to {self.image_size}, but {what} takes "
                    f"inputs of shape {input_shape[1:]}, not (height, width, channels)."
                )
            if any(want is not None and want != got
                   for want, got in zip(input_shape[1:3], self.image_size)):
                raise ValueError(
                    f"The preprocessing resizes images to {self.image_size}, but {what} takes "
                    f"{input_shape[1:3]} images."
                )
        return self

    def to_dict(self):
        """The JSON form of the record: keys input_dtype, scale, mean, std, image_size."""
        return {
            "input_dtype": self.input_dtype,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "image_size": None if self.image_size is None else list(self.image_size),
        }

    @classmethod
    def from_dict(cls, config):
        """Reads back exactly what `to_dict` writes.

        Raises:
            ValueError: if `config` is not a dict, has unknown or missing keys, or a value of the
                wrong type (the message names the key).
        """
        if not isinstance(config, dict):
            raise ValueError(
                f"A preprocessing record must be a dict, received {type(config).__name__}."
            )
        keys = {field.name for field in dataclasses.fields(cls)}
        unknown = set(config) - keys
        if unknown:
            raise ValueError(
                f"Unknown preprocessing keys {sorted(map(str, unknown))}; expected {sorted(keys)}."
            )
        missing = keys - set(config)
        if missing:
            raise ValueError(f"The preprocessing record has no {sorted(missing)}.")
        return cls(**config)

    def resize(self, x):
        """Casts to float32 and resizes images (rank 4, or one image of rank 3) to `image_size`.

        A TensorFlow tensor stays a TensorFlow op (for tf.data and the export graph); anything
        else is returned as a float32 numpy array.

        Raises:
            ImportError: when `image_size` is set and TensorFlow is not installed.
        """
        if _is_tf_tensor(x):
            import tensorflow as tf

            x = tf.cast(x, "float32")
            return x if self.image_size is None else tf.image.resize(x, self.image_size)
        x = np.asarray(x, dtype="float32")
        if self.image_size is None:
            return x
        try:
            import tensorflow as tf
        except ImportError:
            raise ImportError(
                f"Resizing to image_size={self.image_size} uses tf.image.resize (the exported "
                "graph's resize), but TensorFlow is not installed: install tensorflow, or resize "
                "the images yourself and use a record with image_size=None."
            ) from None
        return tf.image.resize(x, self.image_size).numpy()

    def normalize(self, x):
        """`(x * scale - mean) / std` in float32, on already resized inputs (same type out)."""
        if _is_tf_tensor(x):
            import tensorflow as tf

            mean = tf.constant(self.mean, "float32")
            std = tf.constant(self.std, "float32")
            return (tf.cast(x, "float32") * self.scale - mean) / std
        mean = np.asarray(self.mean, "float32")
        std = np.asarray(self.std, "float32")
        return (np.asarray(x, "float32") * np.float32(self.scale) - mean) / std

    def __call__(self, x):
        """Raw inputs -> model inputs (float32): numpy in, numpy out; a TF tensor in, a TF op."""
        return self.normalize(self.resize(x))


def _is_tf_tensor(x):
    # TensorFlow is never imported here just to ask: if it is not loaded, x is no TF tensor.
    tf = sys.modules.get("tensorflow")
    return tf is not None and tf.is_tensor(x)


def save_preprocessing(preprocessing, path):
    """Writes a `Preprocessing` record as JSON (read it back with `load_preprocessing`)."""
    with open(path, "w") as handle:
        json.dump(preprocessing.to_dict(), handle, indent=2)


def load_preprocessing(path):
    """Reads a record written by `save_preprocessing`; a bad file raises naming its path."""
    try:
        with open(path) as handle:
            config = json.load(handle)
        return Preprocessing.from_dict(config)
    except (json.JSONDecodeError, ValueError) as error:
        raise ValueError(f"{path} is not a valid preprocessing record: {error}") from None
