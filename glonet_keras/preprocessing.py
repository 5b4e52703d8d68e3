"""The preprocessing record that travels with a trained model: raw input -> model input.

One `Preprocessing` (cast, resize, scale, normalise per channel) describes how a model's inputs were
prepared in training. The data pipeline applies it, a loaded preset carries it, and the exported
serving graph applies the same record, so a model is always fed the way it was trained.
"""

import dataclasses
import json


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Raw input -> model input: `((resize(x) * scale) - mean) / std`, per channel.

    Attributes:
        input_dtype: dtype of raw inputs ("uint8" for image files, "float32" for arrays).
        scale: multiplies the raw values first (1/255 for uint8 images).
        mean, std: per-channel (last axis) statistics of the scaled training inputs.
        image_size: `(height, width)` raw images are resized to, or None (fixed-size inputs).
    """

    input_dtype: str = "float32"
    scale: float = 1.0
    mean: tuple = (0.0,)
    std: tuple = (1.0,)
    image_size: tuple = None

    def to_dict(self):
        return {
            "input_dtype": self.input_dtype,
            "scale": float(self.scale),
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
            "image_size": None if self.image_size is None else [int(s) for s in self.image_size],
        }

    @classmethod
    def from_dict(cls, config):
        config = dict(config)
        unknown = set(config) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown preprocessing keys {sorted(unknown)}.")
        for key in ("mean", "std", "image_size"):
            if config.get(key) is not None:
                config[key] = tuple(config[key])
        return cls(**config)

    def resize(self, x):
        """Resizes image batches (rank 4) or single images (rank 3) when `image_size` is set."""
        import tensorflow as tf

        x = tf.cast(x, "float32")
        if self.image_size is not None:
            x = tf.image.resize(x, self.image_size)
        return x

    def normalize(self, x):
        """Scales and normalises already resized float inputs."""
        import tensorflow as tf

        mean = tf.constant(self.mean, "float32")
        std = tf.constant(self.std, "float32")
        return (tf.cast(x, "float32") * self.scale - mean) / std

    def __call__(self, x):
        return self.normalize(self.resize(x))


def save_preprocessing(preprocessing, path):
    """Writes a `Preprocessing` record as JSON (read it back with `load_preprocessing`)."""
    with open(path, "w") as handle:
        json.dump(preprocessing.to_dict(), handle, indent=2)


def load_preprocessing(path):
    with open(path) as handle:
        return Preprocessing.from_dict(json.load(handle))
