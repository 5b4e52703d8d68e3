"""Seconds per training epoch: GloNet MLP vs ResNet-v2 MLP (BN) of equal depth, side by side.

The paper's Table 1 (SGEMM GPU-kernel regression: 14 inputs, width 16, batch 1024) reports
GloNet / ResNet-v2 epoch-time ratios of 0.64, 0.60, 0.57, 0.59, 0.52, 0.43, 0.43 at depths 10, 24,
50, 100, 200, 600, 1000. SGEMM itself is a download, so this benchmark trains on synthetic rows of
the same shape (14 SGEMM-like integer features, standardised; a smooth regression target), cut to
a whole number of batches. Epoch time depends on the shapes, not on the values.

Both models of a depth are timed in one process through `model.fit` on the fast fit path
(`benchmarks.timing.compile_for_fit`: automatic `steps_per_execution`, device-resident data on
JAX; `--fuse` adds the experimental fused steps): one warm-up epoch (tracing / XLA compilation, reported separately),
then `--repetitions` epochs of each model, interleaved; the table gives the median and the
[min-max] spread, and the ratio is the median of the per-round ratios. Absolute times are only
comparable within one run on one machine; the ratio is the number to compare.

Depth 600 and 1,000: an unrolled graph of that depth takes minutes to build and compile (about
244 s for GloNet-1000 on the 2-core CPU), so models deeper than `--max_unrolled_depth` run only
in their scanned form (`scan=True`, a stacked block loop whose graph does not grow with depth),
where the builder offers one. `--scan` times the scanned GloNet at every depth. The ResNet-v2 runs
unrolled or scanned, whichever is faster where both are available (`--resnet_forms`); the table
says which.

Runs on any Keras backend and imports no TensorFlow of its own:
    KERAS_BACKEND=jax python benchmarks/mlp_speed.py --depths=10,50,200,1000 --scan
"""

import os
import sys

from absl import app, flags

if __package__ in (None, ""):
    # Run as a script (`python benchmarks/...py`): make the repository root importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report, timing  # noqa: E402
from benchmarks.synthetic import sgemm_like_data  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """The command line's flags (defined only when run as a program, so modules import freely)."""
    flags.DEFINE_list("depths", ["10", "24", "50", "100", "200"],
                      "Depths (blocks) to time; the paper's Table 1 adds 600 and 1000.")
    flags.DEFINE_integer("rows", 170_000, "Synthetic training rows (the paper's SGEMM train "
                         "split), cut to whole batches.")
    flags.DEFINE_integer("width", 16, "Width of every block.")
    flags.DEFINE_integer("batch_size", 1024, "Batch size.")
    timing.define_fit_path_flags()
    flags.DEFINE_bool("scan", False,
                      "Time the scanned GloNet MLP (GloNetMLP(scan=True)) at every depth.")
    flags.DEFINE_enum("resnet_forms", "auto", ["auto", "unrolled", "scanned"],
                      "ResNet-v2 form: 'auto' times every form the builder offers (within "
                      "--max_unrolled_depth for the unrolled one) and keeps the faster.")
    flags.DEFINE_integer("max_unrolled_depth", 200,
                         "Deeper unrolled models are skipped (their compile time grows with depth).")

# Paper, Table 1: seconds per epoch (ResNet-v2 with BN, GloNet) by depth.
PAPER_TABLE_1 = {
    10: (42, 27), 24: (65, 39), 50: (96, 55), 100: (147, 86), 200: (231, 121),
    600: (410, 175), 1000: (675, 289),
}


def model_forms(builder, depth, wanted, max_unrolled_depth):
    """The forms ("unrolled", "scanned") to time for `builder` at `depth`, or a skip reason."""
    forms = []
    if wanted in ("auto", "unrolled") and depth <= max_unrolled_depth:
        forms.append("unrolled")
    if wanted in ("auto", "scanned") and timing.supports_scan(builder):
        forms.append("scanned")
    if forms:
        return forms
    if wanted == "scanned":
        return f"{builder.__name__} has no scan=True"
    return (f"unrolled deeper than --max_unrolled_depth={max_unrolled_depth} and "
            f"{builder.__name__} has no scan=True")


def run_benchmark(depths=(10, 24, 50, 100, 200), rows=170_000, width=16, batch_size=1024,
                  repetitions=timing.REPETITIONS, *, scan=False, resnet_forms="auto",
                  max_unrolled_depth=200, steps_per_execution="auto", data_form="auto", fuse=False,
                  log=print, on_result=None):
    """Times GloNetMLP and ResNetMLP(BN) at each depth on the fast fit path; one dict per depth.

    Row keys: depth, repetitions; glonet_s_per_epoch (median) with _min/_max, glonet_warmup_s,
    glonet_compile_s, glonet_form, glonet_steps_per_execution, glonet_fused, glonet_data_form;
    the same for resnet_bn (the faster form when several were timed; every timed form is in
    "resnet_bn_forms"); ratio (median of per-epoch ratios GloNet / ResNet) with ratio_min/max;
    paper_ratio. A model that could not run at a depth has "<key>_skipped" and a ratio of None.
    `on_result(rows so far)` is called after every depth (to save partial results).

    Raises:
        ValueError: `scan=True` while GloNetMLP has no `scan` argument yet.
    """
    from glonet_keras.models.mlp import GloNetMLP, ResNetMLP

    if scan:
        timing.check_scan_available(GloNetMLP)
    x, y = timing.whole_batches(*sgemm_like_data(rows), batch_size)
    steps_per_epoch = len(x) // batch_size
    data, fit_kwargs = timing.fit_inputs(x, y, batch_size=batch_size, form=data_form)

    def builder(cls, form):
        def build(depth):
            kwargs = {"scan": True} if form == "scanned" else {}
            return cls(num_blocks=depth, width=width, num_classes=1, input_shape=(14,), **kwargs)
        return build

    def make_task(key, model):
        spe, fused = timing.compile_for_fit(
            model, loss="mse", batch_size=batch_size, steps_per_epoch=steps_per_epoch,
            batch_bytes=timing.batch_nbytes(x, y, batch_size),
            steps_per_execution=steps_per_execution, fuse=fuse)
        form = key.rsplit("_", 1)[-1] if key.startswith("resnet_bn_") else glonet_form
        extra = {"form": form, "steps_per_execution": spe, "fused": fused,
                 "data_form": timing.resolve_form(data_form)}
        return timing.fit_epoch_task(model, data, fit_kwargs), extra

    glonet_form = "scanned" if scan else "unrolled"
    results = []
    for depth in depths:
        depth = int(depth)
        if scan or depth <= max_unrolled_depth:
            builders = {"glonet": builder(GloNetMLP, glonet_form)}
        else:
            reason = f"unrolled deeper than --max_unrolled_depth={max_unrolled_depth}; use --scan"
            builders = {"glonet": lambda d, reason=reason: reason}
        forms = model_forms(ResNetMLP, depth, resnet_forms, max_unrolled_depth)
        if isinstance(forms, str):
            builders["resnet_bn_unrolled"] = lambda d, reason=forms: reason
        else:
            builders.update({f"resnet_bn_{form}": builder(ResNetMLP, form) for form in forms})
        (raw,) = timing.compare_at_depths([depth], builders, make_task, metric="s_per_epoch",
                                          repetitions=repetitions, log=log)
        row = _pick_faster_resnet(raw)
        paper = PAPER_TABLE_1.get(depth)
        row["paper_ratio"] = paper[1] / paper[0] if paper else None
        results.append(row)
        log(format_row(row))
        if on_result:
            on_result(results)
    return results


def _pick_faster_resnet(raw):
    """Renames the faster timed ResNet form to "resnet_bn_*" and recomputes the paired ratio."""
    forms = [key[len("resnet_bn_"):-len("_s_per_epoch")] for key in raw
             if key.startswith("resnet_bn_") and key.endswith("_s_per_epoch")]
    row = {key: value for key, value in raw.items() if not key.startswith("resnet_bn_")}
    row["resnet_bn_forms"] = {form: raw[f"resnet_bn_{form}_s_per_epoch"] for form in forms}
    if not forms:
        row["resnet_bn_skipped"] = next(v for k, v in raw.items() if k.endswith("_skipped")
                                        and k.startswith("resnet_bn_"))
        return row
    best = min(forms, key=lambda form: raw[f"resnet_bn_{form}_s_per_epoch"])
    prefix = f"resnet_bn_{best}_"
    row.update({"resnet_bn_" + key[len(prefix):]: value for key, value in raw.items()
                if key.startswith(prefix)})
    if "glonet_s_per_epoch_samples" in raw:
        ratio = timing.paired_ratios(raw["glonet_s_per_epoch_samples"],
                                     raw[f"{prefix}s_per_epoch_samples"])
        row.update(ratio=ratio["median"], ratio_min=ratio["min"], ratio_max=ratio["max"])
    return row


def format_row(row):
    paper = f"{row['paper_ratio']:.2f}" if row.get("paper_ratio") else "-"
    ratio = timing.spread(row, "ratio", digits=2)
    glonet = row.get("glonet_skipped") or f"{timing.spread(row, 'glonet_s_per_epoch')} s/epoch"
    resnet = row.get("resnet_bn_skipped") or (
        f"{timing.spread(row, 'resnet_bn_s_per_epoch')} s/epoch ({row['resnet_bn_form']})")
    return (f"depth {row['depth']:4d}  GloNet {glonet}  ResNet-v2(BN) {resnet}  ratio {ratio}  "
            f"(paper {paper})")


def main(argv):
    del argv
    spe = timing.steps_per_execution_flag(FLAGS.steps_per_execution)
    from glonet_keras.models.mlp import GloNetMLP

    if FLAGS.scan:
        try:
            timing.check_scan_available(GloNetMLP)
        except ValueError as error:
            raise app.UsageError(str(error)) from error
    machine = timing.describe_machine()
    print(f"Machine: {machine}", flush=True)
    print(f"rows={FLAGS.rows} width={FLAGS.width} batch={FLAGS.batch_size} "
          f"repetitions={FLAGS.repetitions} (median [min-max] of timed epochs)")
    save = timing.json_saver(FLAGS.output, {
        "benchmark": "mlp_speed", "machine": machine, "rows": FLAGS.rows,
        "batch_size": FLAGS.batch_size, "repetitions": FLAGS.repetitions}, "results")
    results = run_benchmark(
        [int(d) for d in FLAGS.depths], FLAGS.rows, FLAGS.width, FLAGS.batch_size,
        FLAGS.repetitions, scan=FLAGS.scan, resnet_forms=FLAGS.resnet_forms,
        max_unrolled_depth=FLAGS.max_unrolled_depth, steps_per_execution=spe,
        data_form=FLAGS.data_form, fuse=FLAGS.fuse, on_result=save)
    save(results, complete=True)
    print()
    report.mlp_speed_table(results)


if __name__ == "__main__":
    define_flags()
    app.run(main)
