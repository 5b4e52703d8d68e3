"""How far `model.fit` is from a raw compiled training step, and what closes the gap.

For each model (GloNet MLP-10 and MLP-200 and the ResNet-v2 MLP-10 at the SGEMM shape: 14 inputs,
width 16, batch 1024; GloNet CNN-20 and ResNet-v2 CNN-20 at the CIFAR shape: 32x32x3, batch 128)
this times, in one process, on the same data, several *variants* of one training step:

    fit:<form>:<spe>[:options]    model.fit as the library runs it: data form `numpy` (the arrays
                                   given to fit), `device` (fastfit.DeviceArrayDataset, JAX) or
                                   `tfdata` (a per-example tf.data pipeline like the trainer's),
                                   with steps_per_execution <spe> (an integer or `auto`:
                                   fastfit.auto_steps_per_execution)
    fused:<form>:<spe>[:options]  the same with fastfit.fuse_train_steps (JAX: one lax.scan per
                                   group of steps)
    trainer:<recipe|mix|plain>:<spe>  `glonet_keras.training.trainer`'s own fit path: the model,
                                   training-only model, data pipeline, compile and fused steps that
                                   `trainer.train` sets up (its `_start`), on Fashion-MNIST
                                   (28x28x1; the CNN families only, with --image_size=28
                                   --image_channels=1), with the preset recipe (AdamW, cosine,
                                   label smoothing) and its augmentation `flip,crop` (`recipe`),
                                   the recipe plus MixUp and CutMix (`mix`: `flip,crop,mixup,
                                   cutmix`, mixed in the training step by augment.MixingModel on
                                   the array path) or none (`plain`); <spe> is
                                   TrainConfig.steps_per_execution (`auto`: the trainer's choice).
                                   Timed per fit epoch like the others (no checkpoint writes, no
                                   validation)
    raw:device:<spe>[:options]    the same loss and optimizer update, compiled outside Keras' fit
                                   loop, on batches already on the device, <spe> steps per call:
                                   JAX: jax.jit of model.stateless_call + stateless_compute_loss,
                                   jax.grad and optimizer.stateless_apply (<spe> > 1: a lax.scan);
                                   TensorFlow: a tf.function (jit_compile as fit resolves it) of
                                   GradientTape + optimizer.apply (<spe> > 1: a tf.range loop)
    options: `v1` fit with verbose=1 (the progress bar; its output goes to /dev/null, so this is
             its Python cost, not the terminal's), `xla` jit_compile=True (TensorFlow),
             `aug` the trainer's `flip,crop` augmentation (`glonet_keras.data.augment.RandomShiftFlip`,
             gathers) in a training-only model in front, as the trainer's array path has it,
             `kaug` the same with Keras' RandomFlip + RandomTranslation(0.125) (what the trainer
             used before issue 20; costly, so never a default), `mix` MixUp then CutMix of images
             and one-hot labels in the training step (`glonet_keras.data.augment.MixingModel`, after
             the `aug` layers when both are given, as the trainer's array path has it; the loss
             becomes one-hot categorical cross-entropy; not for raw steps, which skip fit's
             train_step).

`--preset` times the Fashion-MNIST preset CNN (GloNet CNN-20, width 24, batch norm, 28x28x1,
batch 128) with PRESET_VARIANTS: with and without augmentation, the fused and the raw loops, and
the trainer's own path; the summary then says what augmentation adds and how far the trainer's
default is from the best fit variant.

Every variant runs `--steps` training steps per repetition (one fit epoch); after a warm-up
repetition that includes tracing and compilation (reported as compile seconds), `--repetitions`
rounds are interleaved across variants. Reported: ms per step, median [min-max], and the ratio to
the raw step (`raw:device:1`, the issue's "raw jitted step"), paired per round. Variants with the
same kind, steps_per_execution and options share one compiled model.

    python benchmarks/fit_overhead.py --output=/tmp/fit_overhead.json                   # TF, CPU
    KERAS_BACKEND=jax python benchmarks/fit_overhead.py --models=glonet_mlp:10          # JAX
    KERAS_BACKEND=jax python benchmarks/fit_overhead.py --preset --cnn_steps=8 --repetitions=3
"""

import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
import time

from absl import app, flags

if __package__ in (None, ""):
    # Run as a script (`python benchmarks/...py`): make the repository root importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report, timing  # noqa: E402
from benchmarks.synthetic import random_images, sgemm_like_data  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """The command line's flags (defined only when run as a program, so modules import freely)."""
    flags.DEFINE_list("models", ["glonet_mlp:10", "resnet_mlp:10", "glonet_mlp:200", "glonet_cnn:20",
                                 "resnet_cnn:20"], "Models as <family>:<depth>; families: "
                      "glonet_mlp, resnet_mlp (blocks), glonet_cnn, resnet_cnn (CIFAR depth 6n+2).")
    flags.DEFINE_list("variants", None, "Variants to time (see the module docstring); default: all "
                      "that apply to the backend (DEFAULT_VARIANTS).")
    flags.DEFINE_integer("mlp_steps", 128, "Training steps per repetition for the MLPs.")
    flags.DEFINE_integer("cnn_steps", 32, "Training steps per repetition for the CNNs.")
    flags.DEFINE_integer("repetitions", timing.REPETITIONS, "Timed rounds after the warm-up.")
    flags.DEFINE_string("steps_per_execution", "auto", "What `auto` in a variant means: 'auto' "
                        "(fastfit.auto_steps_per_execution) or a positive integer.")
    flags.DEFINE_integer("mlp_width", 16, "Width of the MLPs.")
    flags.DEFINE_integer("mlp_batch", 1024, "Batch size of the MLPs.")
    flags.DEFINE_integer("cnn_width", 16, "Channels of the CNNs' first stage.")
    flags.DEFINE_integer("cnn_batch", 128, "Batch size of the CNNs.")
    flags.DEFINE_integer("image_size", 32, "Image height and width of the CNNs.")
    flags.DEFINE_integer("image_channels", 3, "Image channels of the CNNs.")
    flags.DEFINE_bool("preset", False, "Time the Fashion-MNIST preset CNN (PRESET_MODEL, 28x28x1, "
                      "width 24, batch 128) with PRESET_VARIANTS (or --variants); overrides --models, "
                      "--cnn_width, --cnn_batch, --image_size and --image_channels.")
    flags.DEFINE_string("output", None, "Optional JSON file for the results.")

DEFAULT_VARIANTS = {
    "tensorflow": ["fit:numpy:1", "fit:numpy:auto", "fit:tfdata:auto", "fit:numpy:auto:v1",
                   "fit:numpy:auto:xla", "raw:device:1", "raw:device:auto", "raw:device:1:xla"],
    "jax": ["fit:numpy:1", "fit:numpy:auto", "fit:device:auto", "fused:numpy:auto",
            "fused:device:auto", "fused:device:auto:v1", "raw:device:1", "raw:device:auto"],
}
#: The Fashion-MNIST preset CNN of training/make_zoo.py (glonet_cnn_bn_fashion_mnist) and its sizes.
PRESET_MODEL = "glonet_cnn_bn:20"
PRESET_SIZES = dict(cnn_width=24, cnn_batch=128, image_size=28, image_channels=1)
PRESET_VARIANTS = {
    "tensorflow": ["fit:numpy:auto", "fit:numpy:auto:aug", "raw:device:1", "raw:device:auto",
                   "raw:device:auto:aug", "trainer:plain:auto", "trainer:recipe:auto"],
    "jax": ["fit:device:auto", "fit:device:auto:aug", "fused:device:auto", "fused:device:auto:aug",
            "fused:device:auto:aug:mix", "raw:device:1", "raw:device:auto", "raw:device:auto:aug",
            "trainer:plain:auto", "trainer:recipe:auto", "trainer:mix:auto"],
}
FAMILIES = ("glonet_mlp", "resnet_mlp", "glonet_cnn", "glonet_cnn_bn", "resnet_cnn")
#: The augmentation of each trainer form (`trainer:<form>:<spe>`).
TRAINER_AUGMENTATIONS = {"recipe": ("flip", "crop"), "mix": ("flip", "crop", "mixup", "cutmix"),
                         "plain": ()}
#: The trainer's model name and extra constructor arguments of each CNN family.
TRAINER_MODELS = {"glonet_cnn": ("glonet_cnn", {}),
                  "glonet_cnn_bn": ("glonet_cnn", {"normalization": "batch"}),
                  "resnet_cnn": ("resnet_cnn", {})}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of running the training steps (parsed from 'kind:form:spe[:options]')."""

    name: str
    kind: str           # "fit", "fused", "raw" or "trainer"
    form: str           # "numpy", "device" or "tfdata" (TRAINER_AUGMENTATIONS for the trainer)
    spe: object         # int or "auto"
    verbose: int = 0
    xla: bool = False
    augment: str = ""   # "" (none), "aug" (glonet_keras.data.augment) or "kaug" (Keras' layers)
    mix: bool = False   # MixUp + CutMix in the training step (augment.MixingModel)

    @classmethod
    def parse(cls, text, backend):
        parts = text.split(":")
        if len(parts) < 3:
            raise ValueError(f"Variant {text!r} is not kind:form:spe[:options].")
        kind, form, spe, options = parts[0], parts[1], parts[2], parts[3:]
        if kind not in ("fit", "fused", "raw", "trainer"):
            raise ValueError(f"Variant {text!r}: kind must be fit, fused, raw or trainer.")
        if kind == "trainer":
            if form not in TRAINER_AUGMENTATIONS or options:
                raise ValueError(f"Variant {text!r}: the trainer's form is recipe, mix or plain, "
                                 "with no options.")
            try:
                spe = timing.parse_steps_per_execution(spe)
            except ValueError as error:
                raise ValueError(f"Variant {text!r}: {error}") from error
            return cls(text, kind, form, spe)
        if form not in ("numpy", "device", "tfdata") or (kind == "raw" and form != "device"):
            raise ValueError(f"Variant {text!r}: form must be numpy, device or tfdata (raw: device).")
        try:
            spe = timing.parse_steps_per_execution(spe)
        except ValueError as error:
            raise ValueError(f"Variant {text!r}: {error}") from error
        unknown = set(options) - {"v1", "xla", "aug", "kaug", "mix"}
        if unknown:
            raise ValueError(f"Variant {text!r}: unknown options {sorted(unknown)} "
                             "(v1, xla, aug, kaug, mix).")
        if {"aug", "kaug"} <= set(options):
            raise ValueError(f"Variant {text!r}: aug or kaug, not both.")
        if "mix" in options and (kind == "raw" or "kaug" in options):
            raise ValueError(f"Variant {text!r}: mix runs in fit's train step (not in raw steps), "
                             "with aug or alone (not kaug).")
        if kind == "fused" and backend != "jax":
            raise ValueError(f"Variant {text!r}: fused steps are for JAX (TensorFlow already runs "
                             "a group of steps in one tf.function).")
        if form == "device" and kind != "raw" and backend != "jax":
            raise ValueError(f"Variant {text!r}: the device form is for JAX.")
        if "xla" in options and backend != "tensorflow":
            raise ValueError(f"Variant {text!r}: the xla option is for TensorFlow (JAX always "
                             "compiles with XLA).")
        augment = "aug" if "aug" in options else "kaug" if "kaug" in options else ""
        return cls(text, kind, form, spe, verbose=1 if "v1" in options else 0, xla="xla" in options,
                   augment=augment, mix="mix" in options)

    def group(self, spe):
        """Variants of one group share one compiled model (raw steps compile their own function)."""
        return (self.kind, None if self.kind == "raw" else spe, self.xla, self.augment, self.mix)


def model_and_data(family, depth, *, steps, mlp_width=16, mlp_batch=1024, cnn_width=16,
                   cnn_batch=128, image_size=32, image_channels=3):
    """(builder() -> model, x, y, batch size, loss) for a family at a depth, `steps` batches of data."""
    import keras

    from glonet_keras.models import GloNetCNN, GloNetMLP, ResNetCNN, ResNetMLP

    if family not in FAMILIES:
        raise ValueError(f"Unknown model family {family!r}. Available: {list(FAMILIES)}.")
    if family.endswith("_mlp"):
        cls = GloNetMLP if family == "glonet_mlp" else ResNetMLP
        x, y = sgemm_like_data(steps * mlp_batch)

        def build():
            return cls(num_blocks=depth, width=mlp_width, num_classes=1, input_shape=(14,))

        return build, x, y, mlp_batch, "mse"
    cls = ResNetCNN if family == "resnet_cnn" else GloNetCNN
    extra = TRAINER_MODELS[family][1]
    x, y = random_images(steps * cnn_batch, image_size, channels=image_channels)

    def build():
        return cls(depth=depth, width=cnn_width, input_shape=(image_size, image_size, image_channels),
                   **extra)

    return build, x, y, cnn_batch, keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def resolve_spe(spe, default, steps, model, batch_size, batch_bytes):
    """A variant's steps per execution as an int ('auto' means `default`, itself maybe 'auto')."""
    from glonet_keras.training import fastfit

    spe = default if spe == "auto" else spe
    if spe == "auto":
        spe = fastfit.auto_steps_per_execution(
            steps, fastfit.estimate_step_seconds(model, batch_size), batch_bytes=batch_bytes)
    return min(int(spe), steps)


def with_augmentation(model, augment, seed=0, mix=False):
    """`model` behind the trainer's `flip,crop` augmentation ("aug": glonet_keras.data.augment's
    gathers; "kaug": Keras' RandomFlip + RandomTranslation), in a training-only Sequential that
    shares its layers, as trainer._training_model builds it; `model` itself for "". With `mix`,
    an `augment.MixingModel` that runs the "aug" layers, then MixUp and CutMix, in its train step."""
    import keras

    from glonet_keras.data import augment as augment_lib
    from glonet_keras import data

    if mix:
        layers = data.image_augmentation_layers(("flip", "crop"), seed) if augment == "aug" else []
        return augment_lib.MixingModel(model, data.mixing_layer(("mixup", "cutmix"), seed),
                                       augment=layers, name=f"{model.name}_mixing")
    if not augment:
        return model
    if augment == "aug":
        layers = data.image_augmentation_layers(("flip", "crop"), seed)
    else:
        layers = [keras.layers.RandomFlip("horizontal", seed=seed),
                  keras.layers.RandomTranslation(0.125, 0.125, fill_mode="constant", seed=seed)]
    return keras.Sequential([keras.Input(model.input_shape[1:]), *layers, model],
                            name=f"{model.name}_training")


def trainer_task(family, depth, variant, *, steps, cnn_width=16, cnn_batch=128, image_size=32,
                 image_channels=3, seed=0):
    """(task, info) timing one fit epoch of `trainer.train`'s own model, data and compile.

    Sets the run up with the trainer itself (`trainer._start`: the model, the training-only model
    with the augmentation, the data pipeline of this backend, the optimizer, steps per execution
    and fused steps, as `train` has them) on the first `steps` batches of Fashion-MNIST, in a
    temporary run directory, then times `fit` epochs of it. Raises ValueError for a model or
    image shape the trainer cannot train on Fashion-MNIST.
    """
    from glonet_keras.training import fastfit, trainer
    from glonet_keras.training.callbacks import EpochTimer

    if family not in TRAINER_MODELS or (image_size, image_channels) != (28, 1):
        raise ValueError(f"trainer variants train Fashion-MNIST (28x28x1): they need a CNN family "
                         f"({sorted(TRAINER_MODELS)}) with --image_size=28 --image_channels=1, "
                         f"received {family} at {image_size}x{image_size}x{image_channels}.")
    name, extra = TRAINER_MODELS[family]
    run_dir = tempfile.mkdtemp(prefix="fit_overhead_trainer_")
    config = trainer.TrainConfig(
        model=name, depth=depth, width=cnn_width, model_kwargs=extra, dataset="fashion_mnist",
        max_examples=steps * cnn_batch, drop_remainder=True, epochs=100, batch_size=cnn_batch,
        optimizer="adamw", learning_rate=0.002, weight_decay=0.05, schedule="cosine",
        warmup_epochs=1, label_smoothing=0.1,
        augment=TRAINER_AUGMENTATIONS[variant.form], seed=seed,
        steps_per_execution=variant.spe, model_dir=run_dir, overwrite=True, tensorboard=False,
        verbose=0)
    try:
        session = trainer._start(config)
        session.run.release()  # Nothing is saved: the directory goes now, its lock with it.
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    model, data = session.fit_model, session.data

    def run_epoch():
        timer = EpochTimer()
        model.fit(data.train, epochs=1, steps_per_epoch=data.fit_steps, shuffle=False, verbose=0,
                  callbacks=[timer])
        return timer.seconds[-1]

    info = {"steps_per_execution": session.steps_per_execution, "steps": session.steps,
            "jit_compile": bool(model.jit_compile),
            "fused": isinstance(model.train_function, fastfit._FusedTrainFunction),
            "input_pipeline": "numpy arrays" if session.uses_arrays else "tf.data"}
    return run_epoch, info


# --------------------------------------------------------------------------------------------
# Raw compiled steps (outside Keras' fit loop), one implementation per backend.


def raw_step_task(model, x, y, batch_size, steps_per_call):
    """A task running len(x) // batch_size steps (rounded down to whole calls); returns seconds.

    Returns (task, steps per task call).
    """
    import keras

    batches = len(x) // batch_size
    calls = batches // steps_per_call
    if calls < 1:
        raise ValueError(f"{batches} batches make no call of {steps_per_call} steps.")
    shape = (calls, steps_per_call, batch_size)
    xs = x[:calls * steps_per_call * batch_size].reshape(shape + x.shape[1:])
    ys = y[:calls * steps_per_call * batch_size].reshape(shape + y.shape[1:])
    if steps_per_call == 1:
        xs, ys = xs[:, 0], ys[:, 0]
    make = _jax_raw_step if keras.backend.backend() == "jax" else _tf_raw_step
    return make(model, xs, ys, steps_per_call), calls * steps_per_call


def _jax_raw_step(model, xs, ys, steps_per_call):
    import jax

    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)

    def loss_and_updates(trainable, non_trainable, metrics, x, y):
        y_pred, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        loss, (_, non_trainable, metrics) = model.stateless_compute_loss(
            trainable, non_trainable, metrics, x=x, y=y, y_pred=y_pred, training=True)
        return loss, (non_trainable, metrics)

    def one_step(state, batch):
        trainable, non_trainable, optimizer_state, metrics = state
        (loss, (non_trainable, metrics)), grads = jax.value_and_grad(
            loss_and_updates, has_aux=True)(trainable, non_trainable, metrics, *batch)
        trainable, optimizer_state = optimizer.stateless_apply(optimizer_state, grads, trainable)
        return (trainable, non_trainable, optimizer_state, metrics), loss

    if steps_per_call == 1:
        step = jax.jit(one_step, donate_argnums=0)
    else:
        step = jax.jit(lambda state, batches: jax.lax.scan(one_step, state, batches),
                       donate_argnums=0)
    batches = [jax.device_put((x, y)) for x, y in zip(xs, ys)]
    # Lists, as stateless_call / stateless_apply return them (a scan's carry keeps its structure);
    # copies, because donating the state deletes its buffers, which must not be the model's.
    holder = {"state": tuple([jax.numpy.copy(v.value) for v in variables] for variables in (
        model.trainable_variables, model.non_trainable_variables, optimizer.variables,
        model.metrics_variables))}

    def task():
        start = time.perf_counter()
        state = holder["state"]
        for batch in batches:
            state, loss = step(state, batch)
        jax.block_until_ready(loss)
        holder["state"] = state
        return time.perf_counter() - start

    return task


def _tf_raw_step(model, xs, ys, steps_per_call):
    import tensorflow as tf  # The TensorFlow backend's own raw step.

    model.optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=bool(model.jit_compile), reduce_retracing=True)
    def one_step(x, y):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
        grads = tape.gradient(loss, model.trainable_weights)
        model.optimizer.apply(grads, model.trainable_weights)
        return loss

    if steps_per_call == 1:
        step = one_step
    else:
        @tf.function
        def step(x_group, y_group):
            loss = tf.constant(0.0)
            for i in tf.range(steps_per_call):
                loss = one_step(x_group[i], y_group[i])
            return loss

    batches = [(tf.constant(x), tf.constant(y)) for x, y in zip(xs, ys)]

    def task():
        start = time.perf_counter()
        for batch in batches:
            loss = step(*batch)
        float(loss)  # Waits for the last step.
        return time.perf_counter() - start

    return task


# --------------------------------------------------------------------------------------------


def run_model(spec, variants, *, steps, repetitions, steps_per_execution="auto", log=print,
              **sizes):
    """Times every variant on one model spec ('family:depth'); returns one result dict."""
    import keras
    import numpy as np

    family, _, depth = spec.partition(":")
    if not depth.isdigit():
        raise ValueError(f"Model {spec!r} is not <family>:<depth>.")
    build, x, y, batch_size, loss = model_and_data(family, int(depth), steps=steps, **sizes)
    # `mix` variants train on one-hot labels (what MixUp and CutMix mix).
    mixed_loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    if any(variant.mix for variant in variants) and "_cnn" not in family:
        raise ValueError(f"The mix option mixes images: {spec} is not a CNN.")
    batch_bytes = timing.batch_nbytes(x, y, batch_size)
    models, tasks, info = {}, {}, {}
    log(f"{spec}: batch {batch_size}, {steps} steps per repetition")
    keras.backend.clear_session()
    for variant in variants:
        if variant.kind == "trainer":
            cnn_sizes = {k: v for k, v in sizes.items()
                         if k in ("cnn_width", "cnn_batch", "image_size", "image_channels")}
            tasks[variant.name], info[variant.name] = trainer_task(
                family, int(depth), variant, steps=steps, **cnn_sizes)
            tasks[variant.name] = _quiet(tasks[variant.name])
            continue
        keras.utils.set_random_seed(0)
        probe = models.get("probe") or build()
        models["probe"] = probe
        spe = resolve_spe(variant.spe, steps_per_execution, steps, probe, batch_size, batch_bytes)
        key = variant.group(spe)
        if key not in models:
            keras.utils.set_random_seed(0)
            model = with_augmentation(build(), variant.augment, mix=variant.mix)
            jit = True if variant.xla else "auto"
            timing.compile_for_fit(model, loss=mixed_loss if variant.mix else loss,
                                   batch_size=batch_size, steps_per_epoch=steps,
                                   steps_per_execution=1 if variant.kind == "raw" else spe,
                                   fuse=variant.kind == "fused", jit_compile=jit)
            models[key] = model
        model = models[key]
        labels = np.eye(probe.output.shape[-1], dtype="float32")[y] if variant.mix else y
        if variant.kind == "raw":
            tasks[variant.name], timed_steps = raw_step_task(model, x, y, batch_size, spe)
        else:
            data, fit_kwargs = timing.fit_inputs(x, labels, batch_size=batch_size,
                                                 form=variant.form)
            tasks[variant.name] = _quiet(timing.fit_epoch_task(model, data, fit_kwargs,
                                                               verbose=variant.verbose))
            timed_steps = steps
        info[variant.name] = {"steps_per_execution": spe, "steps": timed_steps,
                              "jit_compile": bool(model.jit_compile)}
        if variant.kind != "raw":
            from glonet_keras.training import fastfit

            info[variant.name]["fused"] = isinstance(model.train_function,
                                                     fastfit._FusedTrainFunction)
    timed = timing.time_interleaved(tasks, repetitions, log=log)
    result = {"model": spec, "batch_size": batch_size, "steps": steps, "variants": {}}
    for name, measured in timed.items():
        per_step = [s / info[name]["steps"] for s in measured["samples_s"]]
        entry = dict(info[name], ms_per_step=timing.summarize([1e3 * s for s in per_step]),
                     warmup_s=measured["warmup_s"],
                     compile_s=max(0.0, measured["warmup_s"] - timing.summarize(
                         measured["samples_s"])["median"]),
                     samples_ms_per_step=[1e3 * s for s in per_step])
        result["variants"][name] = entry
    references = ((report.RAW_STEP, "ratio_to_raw"), ("raw:device:auto", "ratio_to_raw_loop"))
    for reference, field in references:
        if reference in result["variants"]:
            base = result["variants"][reference]["samples_ms_per_step"]
            for entry in result["variants"].values():
                entry[field] = timing.paired_ratios(entry["samples_ms_per_step"], base)
    return result


def _quiet(task):
    """Runs a task with stdout sent to /dev/null (the verbose=1 progress bar's output)."""
    def run():
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            return task()
    return run


def run_benchmark(models, variants=None, *, mlp_steps=128, cnn_steps=32,
                  repetitions=timing.REPETITIONS, steps_per_execution="auto", log=print,
                  on_result=None, **sizes):
    """Runs every model spec; returns the list of per-model results (see `run_model`).

    `on_result(results so far)` is called after every model (to save partial results).
    """
    import keras

    backend = keras.backend.backend()
    if backend not in DEFAULT_VARIANTS:
        raise ValueError(f"fit_overhead runs on the TensorFlow and JAX backends, not {backend!r}.")
    parsed = [Variant.parse(text, backend) for text in (variants or DEFAULT_VARIANTS[backend])]
    results = []
    for spec in models:
        steps = cnn_steps if "_cnn" in spec else mlp_steps
        result = run_model(spec, parsed, steps=steps, repetitions=repetitions,
                           steps_per_execution=steps_per_execution, log=log, **sizes)
        report.fit_overhead_model_table(result, log=log)
        results.append(result)
        if on_result:
            on_result(results)
    return results


def main(argv):
    del argv
    spe = timing.steps_per_execution_flag(FLAGS.steps_per_execution)
    import keras

    backend = keras.backend.backend()
    try:
        for text in FLAGS.variants or []:
            Variant.parse(text, backend)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    machine = timing.describe_machine()
    print(f"Machine: {machine}", flush=True)
    models, variants, sizes = FLAGS.models, FLAGS.variants, dict(
        mlp_width=FLAGS.mlp_width, mlp_batch=FLAGS.mlp_batch, cnn_width=FLAGS.cnn_width,
        cnn_batch=FLAGS.cnn_batch, image_size=FLAGS.image_size, image_channels=FLAGS.image_channels)
    if FLAGS.preset:
        models, variants = [PRESET_MODEL], FLAGS.variants or PRESET_VARIANTS[backend]
        sizes.update(PRESET_SIZES)
    print(f"repetitions={FLAGS.repetitions} (median [min-max] over interleaved rounds)")
    save = timing.json_saver(FLAGS.output, {"benchmark": "fit_overhead", "machine": machine,
                                            "repetitions": FLAGS.repetitions}, "results")
    results = run_benchmark(
        models, variants, mlp_steps=FLAGS.mlp_steps, cnn_steps=FLAGS.cnn_steps,
        repetitions=FLAGS.repetitions, steps_per_execution=spe, on_result=save, **sizes)
    save(results, complete=True)
    print()
    report.fit_overhead_summary(results)


if __name__ == "__main__":
    define_flags()
    app.run(main)
