"""Deploying a GloNet at the depth you can afford: pick k from data, know its cost, or stop early.

Every k-prefix of a GloNet (the first k blocks with the trained head, `analysis.truncate`) is a
model, so one trained network offers L operating points. This module measures them and runs them:

- `choose_depth(model, validation_data, tolerance=0.01)`: the smallest k whose accuracy is within
  `tolerance` (absolute, 0.01 = one percentage point) of the full model's, plus the whole curve.
- `depth_table(model, data)`: per k, the accuracy, the parameters and FLOPs the truncated model
  actually uses, and its measured latency at batch 1 and 64; `depth_within_budget` picks the most
  accurate k that fits a latency budget; `plot_accuracy_latency` draws the trade-off as a PNG.
- `count_parameters(model)`, `count_flops(model)`: what a (truncated) model's graph holds.
- Anytime (confidence-based) inference: run the blocks in order and stop as soon as every example
  of the batch has an exit whose top probability reaches a threshold. `anytime_stages(model)` cuts
  the model into one Keras model per block (what the exported `anytime` signature chains with
  `tf.cond`), `anytime_predict` runs it eagerly on any backend, `first_confident_exits` states the
  rule on precomputed exit logits, and `anytime_report` measures accuracy against blocks computed.
  `calibrate_threshold` picks the threshold from validation exit logits: the fewest mean blocks
  whose accuracy loss (or its upper confidence bound) stays within a budget. A preset ships the
  one calibrated on its validation split, and `default_threshold(model)` (used wherever no
  threshold is given) reads it, else 0.9.

Conventions (decided here, where the issue is silent):
- FLOPs are counted analytically from the graph, per example: 2 x the multiply-accumulates of Dense,
  EinsumDense, Conv (1-3D, depthwise, separable), MultiHeadAttention (projections, scores and the
  weighted sum) and the scanned DenseStack (only the steps it runs); nested models are counted
  through. Biases, activations, normalisation, pooling and the aggregation sum are element-wise,
  a few per cent at most, and not counted (the usual convention of fvcore and ptflops, x 2 for
  multiply + add). A layer with weights of another type is warned about and counted as 0.
- "Parameters used" are the weights of the layers in the truncated graph; a scanned stack run for k
  of its L steps counts k / L of its weights.
- Latency is the median of `repeats` warm calls of the compiled forward pass (a `tf.function` on
  TensorFlow, `jax.jit` on JAX, `predict_on_batch` elsewhere) at each batch size, with the
  interquartile range as its spread. Preprocessing is not included (it is the same for every k).
- Confidence is the top softmax probability; for a single-logit (binary) classifier it is
  max(sigmoid, 1 - sigmoid). A threshold of 1.0 is never reached (a float32 probability of exactly 1
  is a rounding artefact), so it runs every block: the full model. Regression has no confidence.

Modules: `depth` (choose a depth, its cost, latency), `anytime` (confidence-based early exit),
`plan` (the serving plan: what an export serves, resolved and checked once), `export` (the plan as
a TF SavedModel), `onnx_export` (the same plan as ONNX) and `serving` (REST over an exported
SavedModel, reading the plan's record from its glonet.json).
"""

from glonet_keras.deploy.anytime import (
    DEFAULT_ANYTIME_THRESHOLD, AnytimeStages, anytime_predict, anytime_report, anytime_stages,
    calibrate_threshold, calibrated_anytime, check_anytime_exits, default_threshold,
    first_confident_exits, top_probability,
)
from glonet_keras.deploy.depth import (
    DEFAULT_BATCH_SIZES, DEFAULT_THRESHOLDS, DepthChoice, DepthRow, check_probability,
    choose_depth, count_flops, count_parameters, default_depths, depth_table,
    depth_within_budget, inference_latency, interleaved_latency, plot_accuracy_latency,
)
from glonet_keras.deploy.export import export_saved_model, prepare_saved_model
from glonet_keras.deploy.onnx_export import export_onnx, prepare_onnx
from glonet_keras.deploy.plan import ServingPlan, serving_plan

__all__ = [
    "DEFAULT_ANYTIME_THRESHOLD", "DEFAULT_BATCH_SIZES", "DEFAULT_THRESHOLDS", "AnytimeStages",
    "DepthChoice", "DepthRow",
    "ServingPlan", "export_onnx", "export_saved_model", "prepare_onnx", "prepare_saved_model",
    "serving_plan",
    "anytime_predict", "anytime_report", "anytime_stages", "calibrate_threshold",
    "calibrated_anytime", "check_anytime_exits", "default_threshold",
    "check_probability", "choose_depth", "count_flops", "count_parameters", "default_depths",
    "depth_table", "depth_within_budget", "first_confident_exits", "inference_latency",
    "interleaved_latency", "plot_accuracy_latency", "top_probability",
]
