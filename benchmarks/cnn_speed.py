"""Training throughput: GloNet CNN (no BN) vs ResNet-v2 CNN (BN) of equal depth, side by side.

CIFAR-10 shapes (32x32x3 images, 10 classes, stages of 16/32/64 channels, batch 128) on random
images: step time depends on the shapes, not on the values. Depths 20, 56 and 110 are the ResNet
paper's CIFAR layouts. Both models are timed in one process, alternating per depth, through
`model.fit` (warm-up epoch with tracing / XLA compilation reported separately, then the median of
the timed epochs), as in `mlp_speed.py`. The ratio is the number to compare.

Runs on any Keras backend and imports no TensorFlow of its own:
    KERAS_BACKEND=jax python benchmarks/cnn_speed.py --depths=20,56,110
"""

import json
import os
import sys

from absl import app, flags

if __package__ in (None, ""):
    # Run as a script (`python benchmarks/...py`): make the repository root importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.timing import describe_machine, time_model  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("depths", ["20", "56", "110"], "CIFAR depths (6n + 2) to time.")
flags.DEFINE_integer("images", 10_240, "Random training images per epoch.")
flags.DEFINE_integer("width", 16, "Channels of the first stage (stages double it).")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("epochs", 3, "Timed epochs per model after one warm-up epoch.")
flags.DEFINE_string("output", None, "Optional JSON file for the results.")


def run_benchmark(depths=(20, 56, 110), images=10_240, width=16, batch_size=128, epochs=3,
                  image_size=32, log=print):
    """Times GloNetCNN and ResNetCNN (BN) at each depth; returns one dict per depth."""
    import keras
    import numpy as np

    from glonet_keras.models.cnn import GloNetCNN, ResNetCNN

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(images, image_size, image_size, 3)).astype("float32")
    y = rng.integers(0, 10, size=(images,)).astype("int32")
    results = []
    for depth in depths:
        row = {"depth": int(depth)}
        for key, builder in (("glonet", GloNetCNN), ("resnet_bn", ResNetCNN)):
            keras.backend.clear_session()
            keras.utils.set_random_seed(0)
            model = builder(depth=int(depth), width=width, input_shape=(image_size, image_size, 3))
            warmup, seconds = time_model(
                model, x, y, batch_size=batch_size, epochs=epochs,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            row[f"{key}_s_per_epoch"] = seconds
            row[f"{key}_images_per_s"] = images / seconds
            row[f"{key}_warmup_s"] = warmup
        row["ratio"] = row["glonet_s_per_epoch"] / row["resnet_bn_s_per_epoch"]
        results.append(row)
        log(
            f"depth {row['depth']:4d}  GloNet {row['glonet_images_per_s']:9.0f} img/s  "
            f"ResNet-v2(BN) {row['resnet_bn_images_per_s']:9.0f} img/s  time ratio {row['ratio']:.2f}  "
            f"warm-up {row['glonet_warmup_s']:.1f} / {row['resnet_bn_warmup_s']:.1f} s"
        )
    return results


def main(argv):
    del argv
    print(f"Machine: {describe_machine()}", flush=True)
    print(f"images={FLAGS.images} width={FLAGS.width} batch={FLAGS.batch_size} timed epochs={FLAGS.epochs}")
    results = run_benchmark([int(d) for d in FLAGS.depths], FLAGS.images, FLAGS.width,
                            FLAGS.batch_size, FLAGS.epochs)
    if FLAGS.output:
        with open(FLAGS.output, "w") as handle:
            json.dump({"machine": describe_machine(), "images": FLAGS.images, "results": results},
                      handle, indent=2)
    print("\ndepth  glonet_img_s  resnet_bn_img_s  time_ratio")
    for row in results:
        print(f"{row['depth']:5d}  {row['glonet_images_per_s']:12.0f}  "
              f"{row['resnet_bn_images_per_s']:15.0f}  {row['ratio']:10.2f}")


if __name__ == "__main__":
    app.run(main)
