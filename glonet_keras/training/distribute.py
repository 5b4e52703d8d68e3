"""Distribution strategies for training: one device, all local devices, several workers.

`get_strategy(name)` returns an object with `.scope()` and `.num_replicas_in_sync`:

| name | TensorFlow backend | JAX backend |
|---|---|---|
| `auto` | `mirrored` when more than one GPU (or logical CPU) is visible, else TensorFlow's default strategy (one device, no wrapper) | `data_parallel` over all devices |
| `one_device` | `tf.distribute.OneDeviceStrategy` on the first GPU, else the CPU | one device |
| `mirrored` | `tf.distribute.MirroredStrategy` over all GPUs, else all logical CPUs | `keras.distribution.DataParallel` |
| `multi_worker` | `tf.distribute.MultiWorkerMirroredStrategy` from `TF_CONFIG` | `keras.distribution.initialize()` (from `KERAS_DISTRIBUTION_*`), then DataParallel |

Rules the trainer follows (and any caller must):
- Build AND compile the model inside `strategy.scope()` (Keras raises otherwise).
- Feed the global batch: per-replica batch x `num_replicas_in_sync`.
- With BatchNormalization and more than one replica, use `synchronized_batch_norm(model)` so the
  statistics are those of the global batch (otherwise each replica normalises by its own share).

Splitting a CPU into logical devices (how a CPU-only machine runs `mirrored`) must happen before
TensorFlow initialises its devices, once per process: call `configure_logical_cpus(n)` first thing.
"""

import contextlib
import json
import os
import sys

import keras

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
_JAX_PROCESSES_INITIALIZED = False


def configure_logical_cpus(count):
    """Splits the host CPU into `count` logical devices (TF) or XLA host devices (JAX).

    Must run before the backend initialises its devices (before any tensor is created). Calling it
    again with the same count is a no-op; a different count after initialisation raises
    RuntimeError, because TensorFlow fixes its devices once per process.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"`count` must be an integer >= 1, received {count!r}.")
    if keras.backend.backend() == "jax":
        return _configure_jax_host_devices(count)
    import tensorflow as tf

    (cpu,) = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == count:
        return count
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as error:
        have = len(tf.config.list_logical_devices("CPU"))
        if have == count:
            return count
        raise RuntimeError(
            f"Cannot split the CPU into {count} logical devices: TensorFlow already initialised "
            f"{have}. Call configure_logical_cpus() at the start of the process, before any "
            "TensorFlow op runs."
        ) from error
    return count


def _configure_jax_host_devices(count):
    import sys

    flag = f"--xla_force_host_platform_device_count={count}"
    if "jax" in sys.modules and getattr(sys.modules["jax"], "_src", None) is not None:
        import jax

        try:
            initialised = bool(jax._src.xla_bridge._backends)  # Set once a device was touched.
        except AttributeError:
            initialised = True
        if initialised:
            have = len(jax.devices("cpu"))
            if have != count:
                raise RuntimeError(
                    f"JAX already initialised {have} CPU devices; set XLA_FLAGS={flag} before "
                    "the first JAX computation."
                )
            return count
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(flags + [flag])
    return count


class JaxDataParallel:
    """`keras.distribution.DataParallel` with the tf.distribute-style interface the trainer uses."""

    def __init__(self, devices=None):
        if devices is None:
            devices = keras.distribution.list_devices()
        self.devices = list(devices)
        self.distribution = keras.distribution.DataParallel(devices=self.devices)

    @property
    def num_replicas_in_sync(self):
        return len(self.devices)

    def scope(self):
        return self.distribution.scope()

    def __repr__(self):
        return f"JaxDataParallel(devices={self.devices})"


def _local_gpus():
    import tensorflow as tf

    return tf.config.list_logical_devices("GPU")


def check_tf_config(raw=None):
    """The (workers, task) of a `TF_CONFIG` value (the environment's when None).

    Raises:
        ValueError: one line naming what is wrong: no TF_CONFIG, not JSON (or nested too deeply),
            no `cluster.worker` list of "host:port" strings, no `task.type` naming a job of the
            cluster, or a `task.index` that is not an index into that job.
    """
    raw = os.environ.get("TF_CONFIG") if raw is None else raw
    if not raw:
        raise ValueError(
            "Strategy 'multi_worker' needs TF_CONFIG, e.g. "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", '
            '"index": 0}}.'
        )
    shown = raw if len(raw) <= 200 else raw[:200] + "..."
    try:
        config = json.loads(raw)
    except RecursionError:
        raise ValueError(f"TF_CONFIG is nested too deeply to be a cluster spec: {shown!r}.") from None
    except ValueError as error:
        raise ValueError(f"TF_CONFIG is not JSON ({error}): {shown!r}.") from None
    problem = _tf_config_problem(config)
    if problem:
        raise ValueError(
            f"TF_CONFIG is not a valid cluster spec: {problem}. It needs cluster.worker (a list of "
            f"\"host:port\") and task.type / task.index naming this process. Received {shown!r}."
        )
    return config["cluster"]["worker"], config["task"]


def _tf_config_problem(config):
    if not isinstance(config, dict):
        return "not a JSON object"
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        return "no `cluster` object"
    for job, addresses in cluster.items():
        if not (isinstance(addresses, list) and addresses
                and all(isinstance(a, str) and a for a in addresses)):
            return f"cluster.{job} is not a non-empty list of \"host:port\" strings"
    if "worker" not in cluster:
        return "no cluster.worker"
    if not isinstance(task, dict):
        return "no `task` object"
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in cluster:
        return f"task.type {kind!r} is not a job of the cluster {sorted(cluster)}"
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        return f"task.index {index!r} is not an index into cluster.{kind} ({len(cluster[kind])} tasks)"
    return None


def _tf_config_ignored(name):
    """Under a local strategy, a TF_CONFIG in the environment is ignored, and said so on stderr.

    Under `auto` it must at least be valid: a malformed one is an error (it was meant for
    something, and guessing what is worse than stopping).
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return
    if name == "auto":
        workers, _ = check_tf_config(raw)
        count = f"a cluster of {len(workers)} worker(s)"
    else:
        count = "a cluster"
    print(f"glonet_keras: TF_CONFIG describes {count}, but strategy {name!r} trains this process "
          "alone and ignores it (it writes and exports as the only worker). Pass "
          "--strategy=multi_worker to join the cluster, or unset TF_CONFIG to silence this.",
          file=sys.stderr, flush=True)


def get_strategy(name="auto", devices=None):
    """Returns a distribution strategy by name (see the module table).

    Args:
        name: one of `STRATEGIES`.
        devices: optional explicit device names for `one_device` (first is used) and `mirrored`.

    Returns:
        An object with `.scope()` and `.num_replicas_in_sync`: a `tf.distribute.Strategy` on the
        TensorFlow backend, a `JaxDataParallel` on JAX.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}. Available: {list(STRATEGIES)}.")
    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_strategy(name, devices)
    if backend != "tensorflow":
        raise ValueError(
            f"Strategies need the tensorflow or jax backend; KERAS_BACKEND is {backend!r}."
        )
    import tensorflow as tf

    if name == "multi_worker":
        check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    _tf_config_ignored(name)
    gpus = [d.name for d in _local_gpus()]
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    local = list(devices) if devices else (gpus or cpus)
    if name == "auto":
        if len(local) <= 1 and not devices:
            # TensorFlow's default strategy: the same single-device training without the
            # OneDeviceStrategy wrapper, whose per-step dataset and function plumbing cost the
            # preset CNN's trainer path 1.11x on the 2-core CPU (benchmarks/README.md, issue 20).
            return tf.distribute.get_strategy()
        name = "mirrored" if len(local) > 1 else "one_device"
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(local[0])
    return tf.distribute.MirroredStrategy(local)


def _jax_strategy(name, devices):
    if name == "multi_worker":
        # Reads KERAS_DISTRIBUTION_JOB_ADDRESSES / _NUM_PROCESSES / _PROCESS_ID.
        missing = [v for v in ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                               "KERAS_DISTRIBUTION_PROCESS_ID") if v not in os.environ]
        if missing:
            raise ValueError(
                f"Strategy 'multi_worker' on JAX needs the environment variables {missing} "
                "(see keras.distribution.initialize)."
            )
        global _JAX_PROCESSES_INITIALIZED
        if not _JAX_PROCESSES_INITIALIZED:
            # Must run before JAX touches a device. On CPU, cross-process collectives need gloo.
            import jax

            try:
                jax.config.update("jax_cpu_collectives_implementation", "gloo")
            except (AttributeError, ValueError):
                pass  # A JAX without the option (or a GPU/TPU platform that does not need it).
            keras.distribution.initialize()
            _JAX_PROCESSES_INITIALIZED = True
        return JaxDataParallel()
    local = list(devices) if devices else keras.distribution.list_devices()
    if name == "one_device":
        return JaxDataParallel(local[:1])
    return JaxDataParallel(local)


def is_chief(strategy=None):
    """True on the process that should write files (the only one outside multi-worker runs).

    With `strategy` given, a strategy that does not span several workers makes this process the
    chief whatever TF_CONFIG says (a stale TF_CONFIG must not turn a local run into worker 1).
    Under a multi-worker TF_CONFIG, the chief is the task of type "chief", or worker 0 when the
    cluster has none.
    """
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_index() == 0
    if strategy is not None and not is_multi_worker(strategy):
        return True
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    _, task = check_tf_config(raw)
    config = json.loads(raw)
    if "chief" in config["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and task.get("index", 0) == 0


def task_index(strategy=None):
    """This process's index in its multi-worker job (0 outside multi-worker runs)."""
    if strategy is not None and not is_multi_worker(strategy):
        return 0
    raw = os.environ.get("TF_CONFIG")
    return check_tf_config(raw)[1].get("index", 0) if raw else 0


def is_multi_worker(strategy):
    """True for a TF MultiWorkerMirroredStrategy spanning more than one worker."""
    if keras.backend.backend() != "tensorflow":
        return False  # And TensorFlow may not even be installed.
    import tensorflow as tf

    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._num_workers > 1)


def apply_multi_worker_workarounds(model, strategy):
    """Lets `model.fit` run under MultiWorkerMirroredStrategy with Keras 3 (keras#20585).

    Keras 3.15's TF trainer fails there twice, measured with two workers on 127.0.0.1:
    1. `fit` builds the model symbolically from a sample batch that it first reduces with
       `strategy.reduce("MEAN", PerReplica)` eagerly, which MWMS cannot do ("Attempt to convert a
       value (PerReplica...) to a Tensor"). The sample only gives shapes, so this model's build
       reads the local replica's batch instead.
    2. The per-step logs are reduced with `strategy.reduce("MEAN", v, axis=0)`, which fails on
       scalar losses ("Invalid reduction dimension 0 for input with 0 dimensions"). The patched
       reduction averages scalars across workers with `axis=None` (the loss is a mean already).
    Both are no-ops unless `strategy` spans several workers. Remove once Keras fixes them.
    """
    if not is_multi_worker(strategy):
        return False
    import types

    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    def local_batch(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, step_iterator in iterator:
                data_batch = tf.nest.map_structure(local_batch, next(step_iterator))
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = types.MethodType(maybe_symbolic_build, model)
    if not getattr(tf_trainer.reduce_per_replica, "_glonet_patched", False):
        original = tf_trainer.reduce_per_replica

        def reduce_per_replica(values, strategy_, reduction):
            if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(
                strategy_
            ):
                def mean(value):
                    if isinstance(value, tf.distribute.DistributedValues):
                        return strategy_.reduce("MEAN", value, axis=None)
                    return value

                return tf.nest.map_structure(mean, values)
            return original(values, strategy_, reduction)

        reduce_per_replica._glonet_patched = True
        tf_trainer.reduce_per_replica = reduce_per_replica
    return True


@contextlib.contextmanager
def synchronized_batch_norm(model, enabled=True):
    """Makes the model's BatchNormalization layers use global-batch statistics while inside.

    On TensorFlow, `BatchNormalization(synchronized=True)` all-reduces the moments across replicas.
    The flag is read when the training step is traced, so enter this before `fit`. It is switched
    back on exit, so a saved `.keras` file keeps `synchronized=False` and loads on every backend
    (Keras rejects `synchronized=True` outside TensorFlow). Yields the number of layers changed.
    """
    layers = []
    if enabled and keras.backend.backend() == "tensorflow":
        layers = [
            layer for layer in _all_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized
        ]
    for layer in layers:
        layer.synchronized = True
    try:
        yield len(layers)
    finally:
        for layer in layers:
            layer.synchronized = False


def _all_layers(model):
    stack, seen = list(model.layers), []
    while stack:
        layer = stack.pop()
        seen.append(layer)
        stack.extend(getattr(layer, "layers", []) or [])
    return seen
