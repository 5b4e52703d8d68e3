"""A fast `model.fit` path: fewer host round trips per training step, on any backend.

At the sizes GloNets are usually trained at (an MLP of width 16 at batch 1024, a CIFAR CNN-20 at
batch 128) one compiled training step takes well under a millisecond on a GPU, so the time `fit`
spends around each step (calling the compiled function, the callbacks, slicing and copying the
batch) can cost more than the step itself. `benchmarks/fit_overhead.py` measures `fit` against a
raw compiled step; these helpers are what its measurements call for (the numbers are in
`benchmarks/README.md`):

1. `steps_per_execution` > 1, chosen by `auto_steps_per_execution`: the callbacks (progress bar
   included) and the Python side of the trainer then run once per group of steps. On TensorFlow
   the steps of a group already run inside one `tf.function` (a `tf.while_loop`).
2. On JAX, Keras 3 still calls the compiled step once per step, passing the whole training state
   each time, which costs time in proportion to the number of variables (so it grows with depth).
   `fuse_train_steps(model)` makes one group of steps one compiled `jax.lax.scan`.
3. In-memory data fed without a per-step copy from the host (`in_memory_inputs`). On JAX,
   `fit(x=jax_array)` does not help: Keras copies device arrays back to NumPy and uploads every
   batch again; `DeviceArrayDataset` keeps the arrays on the device and gathers each (shuffled)
   batch there. On TensorFlow, NumPy arrays given to `fit` already become a vectorised,
   prefetching `tf.data` pipeline.

Example:
>>> steps = math.ceil(len(x) / 1024)
>>> spe = auto_steps_per_execution(steps, estimate_step_seconds(model, 1024))
>>> model.compile(optimizer="adam", loss="mse", steps_per_execution=spe)
>>> fuse_train_steps(model)                       # True on JAX, False (nothing to do) elsewhere
>>> model.fit(**in_memory_inputs(x, y, batch_size=1024, seed=0), epochs=10)

No TensorFlow import here: the GPU machines have JAX only.
"""

import itertools
import math

import keras
import numpy as np

#: Host time spent once per execution of the compiled function (the call itself, the callbacks,
#: the progress bar), a deliberately high guess: on a GPU with JAX about 0.1-0.3 ms were measured,
#: on the 2-core CPU with TensorFlow about 1 ms.
DEFAULT_OVERHEAD_SECONDS = 1e-3
#: Assumed sustained training throughput (FLOP/s) by platform, for `estimate_step_seconds`. Small
#: models reach a fraction of the peak, so an estimate from these is a rough *lower* bound on the
#: step time, which errs toward more steps per execution.
DEFAULT_FLOPS_PER_SECOND = {"cpu": 5e10, "gpu": 2e13, "tpu": 5e13}


def _check_positive(name, value, integer=False):
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"`{name}` must be {kind} > 0, received {value!r}.")
    return int(value) if integer else float(value)


def auto_steps_per_execution(
    steps_per_epoch,
    step_seconds=None,
    *,
    batch_bytes=None,
    overhead_seconds=DEFAULT_OVERHEAD_SECONDS,
    max_overhead_fraction=0.02,
    max_seconds_per_execution=1.0,
    max_steps=128,
    max_stacked_bytes=256 * 2**20,
):
    """How many training steps to run per call of the compiled function.

    Enough steps that the per-execution host overhead costs at most `max_overhead_fraction` of the
    compute, but no more than `max_seconds_per_execution` of work per call (the progress bar, a
    Ctrl-C and batch-level callbacks wait for one call), no more than the epoch, `max_steps`, and,
    when `batch_bytes` is given, no more batches than fit in `max_stacked_bytes` (JAX's fused steps
    hold one group of batches on the device at once). A value that divides `steps_per_epoch` is
    preferred when one is within a factor of two below, so every group has the same length (an
    uneven last group runs step by step, which compiles one more function).

    Args:
        steps_per_epoch: training steps (batches) per epoch.
        step_seconds: measured or estimated seconds of one compiled step; None when unknown
            (then the largest value the other limits allow is chosen).
        batch_bytes: bytes of one batch (inputs, targets and weights), or None.
        overhead_seconds: host seconds spent once per execution.
        max_overhead_fraction: the share of the compute that overhead may cost.
        max_seconds_per_execution: the most work one call may hold.
        max_steps: the most steps per execution in any case.
        max_stacked_bytes: the most memory one group of batches may hold.

    Returns:
        An int in [1, min(steps_per_epoch, max_steps)], for `model.compile(steps_per_execution=)`.

    Raises:
        ValueError: an argument is not a positive number (integer for the step counts).

    Example:
    >>> auto_steps_per_execution(166, step_seconds=2e-4)   # 0.2 ms steps: amortise over many
    83
    >>> auto_steps_per_execution(166, step_seconds=0.5)    # half-second steps: one per call
    1
    """
    steps_per_epoch = _check_positive("steps_per_epoch", steps_per_epoch, integer=True)
    max_steps = _check_positive("max_steps", max_steps, integer=True)
    overhead_seconds = _check_positive("overhead_seconds", overhead_seconds)
    max_overhead_fraction = _check_positive("max_overhead_fraction", max_overhead_fraction)
    max_seconds_per_execution = _check_positive("max_seconds_per_execution", max_seconds_per_execution)
    limit = min(steps_per_epoch, max_steps)
    if batch_bytes is not None:
        batch_bytes = _check_positive("batch_bytes", batch_bytes)
        max_stacked_bytes = _check_positive("max_stacked_bytes", max_stacked_bytes)
        limit = min(limit, max(1, int(max_stacked_bytes // batch_bytes)))
    steps = limit
    if step_seconds is not None:
        step_seconds = _check_positive("step_seconds", step_seconds)
        wanted = math.ceil(overhead_seconds / (max_overhead_fraction * step_seconds))
        affordable = max(1, int(max_seconds_per_execution // step_seconds))
        steps = max(1, min(limit, wanted, affordable))
    for candidate in range(steps, (steps - 1) // 2, -1):
        if steps_per_epoch % candidate == 0:
            return candidate
    return steps


def training_flops(model, batch_size):
    """Floating-point operations of one training step (forward and backward), roughly.

    Counts the multiply-adds of the Dense and convolution layers (2 FLOPs each) in the forward
    pass and takes the backward pass as twice the forward, the usual estimate. Everything else
    (activations, norms, the optimizer) is left out: on narrow networks it is small in FLOPs,
    though not always in time.

    Args:
        model: a built `keras.Model` (functional, so that layer output shapes are known).
        batch_size: examples per step.

    Returns:
        An int, the estimated FLOPs of one training step.

    Raises:
        ValueError: a non-positive `batch_size`, or a model whose layers have no known shapes.
    """
    batch_size = _check_positive("batch_size", batch_size, integer=True)
    forward = 0
    for layer in _leaf_layers(model):
        if isinstance(layer, keras.layers.Dense):
            kernel = layer.kernel.shape
            rows = math.prod(_known_output_shape(layer)[1:-1])
            forward += 2 * kernel[0] * kernel[1] * rows
        elif isinstance(layer, keras.layers.Conv1D | keras.layers.Conv2D | keras.layers.Conv3D):
            kernel = layer.kernel.shape
            positions = math.prod(_known_output_shape(layer)[1:-1])
            forward += 2 * math.prod(kernel) * positions
    return 3 * forward * batch_size


def _leaf_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _known_output_shape(layer):
    shape = layer.output.shape
    if any(size is None for size in shape[1:]):
        raise ValueError(
            f"Layer {layer.name!r} has an output shape with unknown sizes {tuple(shape)}: "
            "`training_flops` needs a model built for a fixed input size."
        )
    return shape


def estimate_step_seconds(model, batch_size, flops_per_second=None):
    """A cheap estimate of one training step's seconds, without compiling anything.

    `training_flops(model, batch_size) / flops_per_second`. Narrow networks reach a small share of
    a device's peak, so this is a rough lower bound, good enough for `auto_steps_per_execution`
    (which then errs toward more steps per call). A measured step time is better where one exists.

    Args:
        model: a built functional `keras.Model`.
        batch_size: examples per step.
        flops_per_second: sustained throughput to assume; default by the platform the backend
            runs on (`DEFAULT_FLOPS_PER_SECOND`).

    Returns:
        A float, seconds.
    """
    if flops_per_second is None:
        flops_per_second = DEFAULT_FLOPS_PER_SECOND[accelerator_platform()]
    flops_per_second = _check_positive("flops_per_second", flops_per_second)
    return max(training_flops(model, batch_size), 1) / flops_per_second


def accelerator_platform():
    """"gpu", "tpu" or "cpu": where the current Keras backend runs its computations by default."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        platform = jax.default_backend()
    elif backend == "tensorflow":
        import tensorflow as tf  # Only reached with the TensorFlow backend, which has it.

        devices = {device.device_type for device in tf.config.list_logical_devices()}
        platform = "tpu" if "TPU" in devices else "gpu" if "GPU" in devices else "cpu"
    elif backend == "torch":
        import torch

        platform = "gpu" if torch.cuda.is_available() else "cpu"
    else:
        platform = "cpu"
    return platform if platform in DEFAULT_FLOPS_PER_SECOND else "gpu"


def mixed_precision_policy():
    """The Keras dtype policy `--mixed_precision` means on this backend and device.

    "mixed_bfloat16" on JAX when the default device computes in bfloat16 natively: a TPU, or an
    NVIDIA GPU of compute capability 8.0 or more (A100, H100, H200...). bfloat16 has float32's
    exponent range, so it needs no loss scaling (no LossScaleOptimizer, no skipped steps), and
    JAX/XLA run its matmuls and convolutions on the tensor cores. Everywhere else (TensorFlow,
    whose GPU path is float16 with loss scaling; JAX on a CPU or an older GPU) "mixed_float16",
    the policy `--mixed_precision` always meant: on a CPU mixed precision saves memory, not time.

    Returns:
        "mixed_bfloat16" or "mixed_float16".
    """
    if keras.backend.backend() != "jax":
        return "mixed_float16"
    import jax

    device = jax.devices()[0]
    if device.platform == "tpu":
        return "mixed_bfloat16"
    if device.platform == "gpu":
        capability = getattr(device, "compute_capability", None)
        try:
            major = int(str(capability).split(".")[0])
        except ValueError:
            major = 0
        if major >= 8:
            return "mixed_bfloat16"
    return "mixed_float16"


def fuse_by_default():
    """Whether the trainer fuses its steps (`fuse_train_steps`): on JAX with a GPU or TPU.

    Measured (benchmarks/README.md): on an H200 the fused group ran GloNet MLP-10 at batch 1024 in
    0.41 ms a step against 1.04 ms for Keras' own loop, and the CNN-20 at batch 128 in 2.33 against
    2.57 ms. On the 2-core CPU it is slower: the MLP 1.2x, and the trainer's Fashion-MNIST preset
    CNN (2 steps a group) did not finish its first fused epoch of 8 steps, compile included, in
    120 s, where Keras' own loop took 31 s (15-21 s once compiled). So not on a CPU. Keras' path
    and the fused one train the same steps (tests/test_fastfit.py): this only changes the speed.
    """
    return keras.backend.backend() == "jax" and accelerator_platform() in ("gpu", "tpu")


def fuse_train_steps(model):
    """On JAX, runs each `steps_per_execution` group of `fit` steps as one compiled `lax.scan`.

    Keras 3.15's JAX trainer calls its compiled step once per batch even when
    `steps_per_execution` > 1, and every call passes the whole training state (all weights,
    optimizer slots and metric variables) between Python and XLA. This installs a train function
    that stacks the group's batches and runs `model.train_step` over them in one `jax.lax.scan`:
    the same steps in the same order, so the same results up to float reassociation. A group of
    a different length or with batches of different shapes (the end of an epoch, a partial last
    batch) runs step by step through a jitted `model.train_step`, as Keras would.

    Call it after `model.compile(...)` and before `fit`; compiling again removes it. It replaces
    `model.train_function`, which `fit`, `train_on_batch` and callbacks use as Keras does.

    The trainer fuses on JAX where `fuse_by_default()` says so: on a GPU or TPU, not on a CPU
    (measured in benchmarks/README.md). Elsewhere measure before you use it
    (`benchmarks/fit_overhead.py`, `fused:*` variants).

    Args:
        model: a compiled `keras.Model`.

    Returns:
        True if installed; False where there is nothing to fuse or it would not apply: not the
        JAX backend (TensorFlow already runs a group inside one `tf.function`), a
        `steps_per_execution` of 1, `jit_compile=False` or `run_eagerly`, or a
        `keras.distribution` set (Keras' own function shards the state; use it there).

    Raises:
        ValueError: the model has not been compiled.
    """
    if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
        raise ValueError(
            f"fuse_train_steps needs a compiled model: call {model.name}.compile(...) first."
        )
    if keras.backend.backend() != "jax" or model.steps_per_execution <= 1:
        return False
    if model.run_eagerly or not model.jit_compile or keras.distribution.distribution() is not None:
        return False
    model.train_function = _FusedTrainFunction(model)
    return True


class _FusedTrainFunction:
    """`model.train_function` for the JAX trainer: `(state, iterator) -> (logs, state)`."""

    def __init__(self, model):
        import jax

        self._steps = int(model.steps_per_execution)
        train_step = model.train_step

        def scanned(state, stacked_batches):
            def body(carry, batch):
                logs, carry = train_step(carry, batch)
                return carry, logs

            state, logs = jax.lax.scan(body, state, stacked_batches)
            return jax.tree_util.tree_map(lambda values: values[-1], logs), state

        # The state is donated, as Keras does: its buffers are reused for the new state.
        self._scanned = jax.jit(scanned, donate_argnums=0)
        self._single = jax.jit(train_step, donate_argnums=0)
        # Stacking batches already on the device: one compiled call instead of one per array.
        self._stack_on_device = jax.jit(lambda batches: _stack(batches, np_or_jnp=jax.numpy))

    def __call__(self, state, iterator):
        batches = [next(iterator)]  # StopIteration here ends the epoch, as in Keras' own function.
        batches.extend(itertools.islice(iterator, self._steps - 1))
        if len(batches) == self._steps and _same_shapes(batches):
            on_host = all(isinstance(leaf, np.ndarray) for leaf in _leaves(batches))
            stacked = _stack(batches, np_or_jnp=np) if on_host else self._stack_on_device(batches)
            return self._scanned(state, stacked)
        for batch in batches:
            logs, state = self._single(state, batch)
        return logs, state


def _same_shapes(batches):
    import jax

    first = jax.tree_util.tree_structure(batches[0]), [np.shape(a) for a in _leaves(batches[0])]
    return all(
        (jax.tree_util.tree_structure(b), [np.shape(a) for a in _leaves(b)]) == first
        for b in batches[1:]
    )


def _leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def _stack(batches, np_or_jnp):
    """One array per leaf, with a new leading axis of length len(batches)."""
    import jax

    return jax.tree_util.tree_map(lambda *leaves: np_or_jnp.stack(leaves), *batches)


def in_memory_inputs(x, y=None, *, batch_size, sample_weight=None, shuffle=True, seed=0):
    """`fit` keyword arguments that feed in-memory arrays the fastest way for this backend.

    JAX: a `DeviceArrayDataset` (the arrays copied to the device once, batches gathered there)
    with `shuffle=False` for `fit` (the data set shuffles examples itself, seeded per epoch).
    Other backends: the arrays themselves with `batch_size` and `shuffle` (on TensorFlow Keras
    turns them into a vectorised, prefetching `tf.data` pipeline).

    Args:
        x, y, sample_weight: NumPy arrays (or array-likes) with one row per example.
        batch_size: examples per batch.
        shuffle: reshuffle the examples every epoch.
        seed: the shuffle's seed on JAX (elsewhere `fit` shuffles with NumPy's global generator,
            which `keras.utils.set_random_seed` seeds).

    Returns:
        A dict for `model.fit(**inputs, epochs=...)`.

    Example:
    >>> history = model.fit(**in_memory_inputs(x, y, batch_size=1024), epochs=10)
    """
    if keras.backend.backend() == "jax":
        data = DeviceArrayDataset(x, y, batch_size=batch_size, sample_weight=sample_weight,
                                  shuffle=shuffle, seed=seed)
        return {"x": data, "shuffle": False}
    batch_size = _check_positive("batch_size", batch_size, integer=True)
    inputs = {"x": x, "y": y, "batch_size": batch_size, "shuffle": bool(shuffle)}
    if sample_weight is not None:
        inputs["sample_weight"] = sample_weight
    return inputs


class DeviceArrayDataset(keras.utils.PyDataset):
    """In-memory training arrays kept on the accelerator, batched and shuffled there (JAX).

    `model.fit(x, y)` on the JAX backend copies every batch from host memory to the device (and
    converts JAX arrays given to it back to NumPy first). This keeps `x`, `y` (and sample weights)
    on the default device once; each batch is one compiled gather there. The order is exactly
    NumPy's: epoch `e` uses `numpy.random.default_rng([seed, e]).permutation(n)` when shuffling
    (see `order`), and batch `i` holds rows `order[i * batch_size:(i + 1) * batch_size]`, the last
    one partial unless `drop_remainder`. Epochs count complete passes: the order moves on after
    an epoch that served every batch (with `fit(steps_per_epoch=)` shorter than the data set,
    it stays the same).

    Pass `shuffle=False` to `fit`: this data set shuffles examples itself, and `fit`'s shuffle of
    a `PyDataset` would only permute the batch order with Python's global random generator.

    On other backends the arrays stay NumPy arrays and the same batches come out (TensorFlow turns
    a `PyDataset` into a generator-fed `tf.data` pipeline, which is slower than passing the NumPy
    arrays to `fit`: use this data set on JAX).

    Args:
        x: array (or any object `numpy.asarray` accepts) of inputs, first axis = examples.
        y: targets with the same first axis, or None.
        batch_size: examples per batch.
        sample_weight: optional per-example weights.
        shuffle: reshuffle the examples every epoch.
        seed: the shuffle's seed.
        drop_remainder: leave out the last partial batch.
        start_epoch: the epoch the first `fit` epoch is (a resumed run passes its initial epoch,
            so it sees the batches an uninterrupted run sees).

    Raises:
        ValueError: arrays of different lengths, an empty array, or a bad `batch_size`.

    Example:
    >>> data = DeviceArrayDataset(x_train, y_train, batch_size=1024, seed=0)
    >>> model.fit(data, epochs=5, shuffle=False)
    """

    def __init__(self, x, y=None, *, batch_size, sample_weight=None, shuffle=True, seed=0,
                 drop_remainder=False, start_epoch=0):
        super().__init__(workers=1, use_multiprocessing=False)
        self.batch_size = _check_positive("batch_size", batch_size, integer=True)
        if y is None and sample_weight is not None:
            raise ValueError("DeviceArrayDataset got `sample_weight` without `y`.")
        arrays = [np.asarray(x)] + [np.asarray(a) for a in (y, sample_weight) if a is not None]
        lengths = {len(a) if a.ndim else 0 for a in arrays}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(
                "DeviceArrayDataset needs non-empty x, y and sample_weight with the same first "
                f"dimension, received shapes {[a.shape for a in arrays]}."
            )
        self.num_examples = lengths.pop()
        if drop_remainder and self.num_examples < self.batch_size:
            raise ValueError(
                f"drop_remainder=True with {self.num_examples} examples and batch_size="
                f"{self.batch_size} leaves no batch."
            )
        self.shuffle, self.seed, self.drop_remainder = bool(shuffle), int(seed), bool(drop_remainder)
        self.epoch = int(start_epoch)
        self._on_jax = keras.backend.backend() == "jax"
        if self._on_jax:
            import jax

            arrays = [jax.device_put(a) for a in arrays]
            # One compiled gather per batch: the batch's slice of the order, then every array's
            # rows (a static size, so the last partial batch compiles once more).
            self._gather = jax.jit(_gather_rows, static_argnums=3)
        self._arrays = tuple(arrays)
        self._order = self._order_of(self.epoch)
        self._served = 0  # Batches served since the last complete pass.

    @property
    def num_batches(self):
        if self.drop_remainder:
            return self.num_examples // self.batch_size
        return math.ceil(self.num_examples / self.batch_size)

    def __len__(self):
        return self.num_batches

    def order(self, epoch):
        """The example indices of `epoch` in the order they are served (a NumPy array)."""
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_examples)

    def _order_of(self, epoch):
        order = self.order(epoch).astype("int32")
        if self._on_jax:
            import jax

            order = jax.device_put(order)
        return order

    def __getitem__(self, index):
        if not 0 <= index < self.num_batches:
            raise IndexError(f"Batch {index} is out of range: the data set has {self.num_batches}.")
        start = index * self.batch_size
        size = min(self.batch_size, self.num_examples - start)
        self._served += 1
        if self._on_jax:
            return self._gather(self._arrays, self._order, start, size)
        indices = self._order[start:start + size]
        return tuple(a[indices] for a in self._arrays)

    def on_epoch_end(self):
        # Keras also calls this after peeking at one batch to build the model, so only an epoch
        # that served every batch moves the order on.
        if self._served >= self.num_batches:
            self.epoch += 1
            self._order = self._order_of(self.epoch)
        self._served = 0


def _gather_rows(arrays, order, start, size):
    import jax

    indices = jax.lax.dynamic_slice_in_dim(order, start, size)
    return tuple(a[indices] for a in arrays)
