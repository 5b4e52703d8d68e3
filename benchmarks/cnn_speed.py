"""Training throughput: GloNet CNN (no BN) vs ResNet-v2 CNN (BN) of equal depth, side by side.

CIFAR-10 shapes (32x32x3 images, 10 classes, stages of 16/32/64 channels, batch 128) on random
images, cut to a whole number of batches: step time depends on the shapes, not on the values.
Depths 20, 56 and 110 are the ResNet paper's CIFAR layouts. Both models of a depth are timed in
one process through `model.fit` on the fast fit path (`benchmarks.timing.compile_for_fit`), as in
`mlp_speed.py`: a warm-up epoch (tracing / XLA compilation, reported separately), then
`--repetitions` epochs of each model, interleaved; median [min-max] of the epochs, and the ratio
as the median of the per-round ratios. The ratio is the number to compare.

Runs on any Keras backend and imports no TensorFlow of its own:
    KERAS_BACKEND=jax python benchmarks/cnn_speed.py --depths=20,56,110
"""

import os
import sys

from absl import app, flags

if __package__ in (None, ""):
    # Run as a script (`python benchmarks/...py`): make the repository root importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report, timing  # noqa: E402
from benchmarks.synthetic import random_images  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """The command line's flags (defined only when run as a program, so modules import freely)."""
    flags.DEFINE_list("depths", ["20", "56", "110"], "CIFAR depths (6n + 2) to time.")
    flags.DEFINE_integer("images", 10_240, "Random training images per epoch (cut to whole batches).")
    flags.DEFINE_integer("width", 16, "Channels of the first stage (stages double it).")
    flags.DEFINE_integer("batch_size", 128, "Batch size.")
    timing.define_fit_path_flags()


def run_benchmark(depths=(20, 56, 110), images=10_240, width=16, batch_size=128,
                  repetitions=timing.REPETITIONS, image_size=32, *, steps_per_execution="auto",
                  data_form="auto", fuse=False, log=print, on_result=None):
    """Times GloNetCNN and ResNetCNN (BN) at each depth; returns one dict per depth.

    Row keys: depth, repetitions; glonet_s_per_epoch (median) with _min/_max/_samples,
    glonet_images_per_s, glonet_warmup_s, glonet_compile_s, glonet_steps_per_execution,
    glonet_fused, glonet_data_form; the same for resnet_bn; ratio (median of per-epoch time
    ratios GloNet / ResNet) with ratio_min/ratio_max. `on_result(rows so far)` is called after
    every depth (to save partial results).
    """
    import keras

    from glonet_keras.models.cnn import GloNetCNN, ResNetCNN

    x, y = timing.whole_batches(*random_images(images, image_size), batch_size)
    data, fit_kwargs = timing.fit_inputs(x, y, batch_size=batch_size, form=data_form)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def builder(cls):
        return lambda depth: cls(depth=depth, width=width, input_shape=(image_size, image_size, 3))

    def make_task(key, model):
        spe, fused = timing.compile_for_fit(
            model, loss=loss, batch_size=batch_size, steps_per_epoch=len(x) // batch_size,
            batch_bytes=timing.batch_nbytes(x, y, batch_size),
            steps_per_execution=steps_per_execution, fuse=fuse)
        return timing.fit_epoch_task(model, data, fit_kwargs), {
            "steps_per_execution": spe, "fused": fused, "data_form": timing.resolve_form(data_form)}

    builders = {"glonet": builder(GloNetCNN), "resnet_bn": builder(ResNetCNN)}
    rows = []
    for depth in depths:
        (row,) = timing.compare_at_depths([depth], builders, make_task, metric="s_per_epoch",
                                          repetitions=repetitions, log=log)
        for key in ("glonet", "resnet_bn"):
            row[f"{key}_images_per_s"] = len(x) / row[f"{key}_s_per_epoch"]
        log(f"depth {row['depth']:4d}  GloNet {row['glonet_images_per_s']:9.0f} img/s  "
            f"ResNet-v2(BN) {row['resnet_bn_images_per_s']:9.0f} img/s  "
            f"time ratio {timing.spread(row, 'ratio', digits=2)}")
        rows.append(row)
        if on_result:
            on_result(rows)
    return rows


def main(argv):
    del argv
    spe = timing.steps_per_execution_flag(FLAGS.steps_per_execution)
    machine = timing.describe_machine()
    print(f"Machine: {machine}", flush=True)
    print(f"images={FLAGS.images} width={FLAGS.width} batch={FLAGS.batch_size} "
          f"repetitions={FLAGS.repetitions} (median [min-max] of timed epochs)")
    save = timing.json_saver(FLAGS.output, {"benchmark": "cnn_speed", "machine": machine,
                                            "images": FLAGS.images,
                                            "repetitions": FLAGS.repetitions}, "results")
    rows = run_benchmark([int(d) for d in FLAGS.depths], FLAGS.images, FLAGS.width,
                         FLAGS.batch_size, FLAGS.repetitions, steps_per_execution=spe,
                         data_form=FLAGS.data_form, fuse=FLAGS.fuse, on_result=save)
    save(rows, complete=True)
    print()
    report.cnn_speed_table(rows)


if __name__ == "__main__":
    define_flags()
    app.run(main)
