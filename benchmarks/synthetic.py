"""Synthetic data of the benchmarks' shapes (step time depends on shapes, not values)."""

import numpy as np


def sgemm_like_data(rows, seed=0):
    """`rows` x 14 float32 features shaped like SGEMM's (tile sizes, flags), and a float32 target."""
    rng = np.random.default_rng(seed)
    powers = np.array([16, 32, 64, 128], dtype="float32")
    small = np.array([1, 2, 4, 8], dtype="float32")
    columns = [rng.choice(powers, rows) for _ in range(4)]          # MWG, NWG, KWG, MDIMC-like
    columns += [rng.choice(small, rows) for _ in range(6)]          # vector widths, strides...
    columns += [rng.integers(0, 2, rows).astype("float32") for _ in range(4)]  # binary flags
    x = np.stack(columns, axis=1)
    log_runtime = (np.log(x[:, :4]).sum(1) * 0.3 - np.log(x[:, 4:10]).sum(1) * 0.2
                   + x[:, 10:].sum(1) * 0.1 + rng.normal(0.0, 0.1, rows))
    x = (x - x.mean(0)) / x.std(0)
    return x.astype("float32"), log_runtime.astype("float32")[:, None]


def random_images(count, image_size=32, channels=3, num_classes=10, seed=0):
    """`count` uniform random float32 images (CIFAR's shape by default) and int32 labels."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(count, image_size, image_size, channels)).astype("float32")
    y = rng.integers(0, num_classes, size=(count,)).astype("int32")
    return x, y
