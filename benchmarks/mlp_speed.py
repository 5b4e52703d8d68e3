"""Seconds per training epoch: GloNet MLP vs ResNet-v2 MLP (BN) of equal depth, side by side.

The paper's Table 1 (SGEMM GPU-kernel regression: 14 inputs, width 16, batch 1024) reports
GloNet / ResNet-v2 epoch-time ratios of 0.64, 0.60, 0.57, 0.59, 0.52 at depths 10, 24, 50, 100, 200.
SGEMM itself is a download, so this benchmark trains on synthetic rows of the same shape (14
SGEMM-like integer features, standardised; a smooth regression target). Epoch time depends on the
shapes, not on the values.

Both models are timed in one process, alternating per depth, through `model.fit` (the library's
training path): one warm-up epoch (tracing / XLA compilation, reported separately), then the median
of the timed epochs. Absolute times are only comparable within one run on one machine; the ratio is
the number to compare.

Runs on any Keras backend and imports no TensorFlow of its own:
    KERAS_BACKEND=jax python benchmarks/mlp_speed.py --depths=10,50,200
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
flags.DEFINE_list("depths", ["10", "24", "50", "100", "200"], "Depths (blocks) to time.")
flags.DEFINE_integer("rows", 170_000, "Synthetic training rows (the paper's SGEMM train split size).")
flags.DEFINE_integer("width", 16, "Width of every block.")
flags.DEFINE_integer("batch_size", 1024, "Batch size.")
flags.DEFINE_integer("epochs", 3, "Timed epochs per model after one warm-up epoch.")
flags.DEFINE_string("output", None, "Optional JSON file for the results.")

# Paper, Table 1: seconds per epoch (ResNet-v2 with BN, GloNet) by depth.
PAPER_TABLE_1 = {
    10: (42, 27), 24: (65, 39), 50: (96, 55), 100: (147, 86), 200: (231, 121),
    600: (410, 175), 1000: (675, 289),
}


def sgemm_like_data(rows, seed=0):
    """`rows` x 14 float32 features shaped like SGEMM's (tile sizes, flags), and a float32 target."""
    import numpy as np

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


def run_benchmark(depths=(10, 24, 50, 100, 200), rows=170_000, width=16, batch_size=1024,
                  epochs=3, log=print):
    """Times GloNetMLP and ResNetMLP(BN) at each depth; returns one dict per depth."""
    import keras

    from glonet_keras.models.mlp import GloNetMLP, ResNetMLP

    x, y = sgemm_like_data(rows)
    results = []
    for depth in depths:
        row = {"depth": int(depth)}
        for key, builder in (("glonet", GloNetMLP), ("resnet_bn", ResNetMLP)):
            keras.backend.clear_session()
            keras.utils.set_random_seed(0)
            model = builder(num_blocks=int(depth), width=width, num_classes=1, input_shape=(14,))
            warmup, seconds = time_model(model, x, y, batch_size=batch_size, epochs=epochs)
            row[f"{key}_s_per_epoch"] = seconds
            row[f"{key}_warmup_s"] = warmup
        row["ratio"] = row["glonet_s_per_epoch"] / row["resnet_bn_s_per_epoch"]
        paper = PAPER_TABLE_1.get(int(depth))
        row["paper_ratio"] = paper[1] / paper[0] if paper else None
        results.append(row)
        log(format_row(row))
    return results


def format_row(row):
    paper = f"{row['paper_ratio']:.2f}" if row["paper_ratio"] else "-"
    return (f"depth {row['depth']:4d}  GloNet {row['glonet_s_per_epoch']:8.3f} s/epoch  "
            f"ResNet-v2(BN) {row['resnet_bn_s_per_epoch']:8.3f} s/epoch  ratio {row['ratio']:.2f}  "
            f"(paper {paper})  warm-up {row['glonet_warmup_s']:.1f} / {row['resnet_bn_warmup_s']:.1f} s")


def main(argv):
    del argv
    depths = [int(d) for d in FLAGS.depths]
    print(f"Machine: {describe_machine()}", flush=True)
    print(f"rows={FLAGS.rows} width={FLAGS.width} batch={FLAGS.batch_size} timed epochs={FLAGS.epochs}")
    results = run_benchmark(depths, FLAGS.rows, FLAGS.width, FLAGS.batch_size, FLAGS.epochs)
    if FLAGS.output:
        with open(FLAGS.output, "w") as handle:
            json.dump({"machine": describe_machine(), "rows": FLAGS.rows, "results": results},
                      handle, indent=2)
    print("\ndepth  glonet_s  resnet_bn_s  ratio  paper_ratio")
    for row in results:
        paper = f"{row['paper_ratio']:.2f}" if row["paper_ratio"] else "-"
        print(f"{row['depth']:5d}  {row['glonet_s_per_epoch']:8.3f}  {row['resnet_bn_s_per_epoch']:11.3f}"
              f"  {row['ratio']:5.2f}  {paper}")


if __name__ == "__main__":
    app.run(main)
