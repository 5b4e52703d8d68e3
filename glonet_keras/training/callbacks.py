"""Keras callbacks shared by the trainer and the benchmarks (backend-generic, no TensorFlow import)."""

import math
import time

import keras
import numpy as np

from glonet_keras.data.augment import seed_generator_states
from glonet_keras.training import rundir


class EpochTimer(keras.callbacks.Callback):
    """Records the wall time of every epoch in `seconds`."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


#: Epoch e's draws of a `keras.random.SeedGenerator` start at counter e * SEED_DRAWS_PER_EPOCH
#: (modulo 2**32); a generator advances its counter by one per draw, a few per step.
SEED_DRAWS_PER_EPOCH = 2**20


class ReseedEachEpoch(keras.callbacks.Callback):
    """Starts every epoch's random draws on the model's device (dropout, augmentation layers) at a
    point that depends on the epoch alone.

    At the start of epoch e, each `keras.random.SeedGenerator` of the model keeps its seed and sets
    its counter to e * `SEED_DRAWS_PER_EPOCH`. Its draws in epoch e are then the same whether the
    run got there uninterrupted or resumed at e from a checkpoint (which holds the weights, not the
    generators' states). Epoch 0 starts where a fresh generator does.
    """

    def on_epoch_begin(self, epoch, logs=None):
        counter = (int(epoch) * SEED_DRAWS_PER_EPOCH) % 2**32
        for state in seed_generator_states([self.model]):
            seed = keras.ops.convert_to_numpy(state.value)[0]
            state.assign(np.array([seed, counter], dtype=state.dtype))


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or non-finite weights."""


class StopOnNonFinite(keras.callbacks.Callback):
    """Ends training with `NonFiniteError` when the loss (or a validation loss) stops being finite.

    Unlike `keras.callbacks.TerminateOnNaN`, which ends `fit` normally (so a caller goes on to save
    and export the broken model), this raises. It looks at the loss once per execution (every
    `steps_per_execution` steps) and stops the epoch at once; the error itself is raised at the end
    of the epoch, before any callback after it in the list (the state saver) writes anything.
    """

    async_safe = True  # Only reads the logs and sets flags: keeps JAX's asynchronous dispatch.

    def __init__(self):
        super().__init__()
        self.bad = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and self.bad is None and not math.isfinite(float(loss)):
            self.bad = f"the training loss became {float(loss)} at step {batch + 1}"
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        for key in ("loss", "val_loss"):
            value = (logs or {}).get(key)
            if self.bad is None and value is not None and not math.isfinite(float(value)):
                self.bad = f"`{key}` of the epoch is {float(value)}"
        if self.bad:
            raise NonFiniteError(
                f"Training stopped in epoch {epoch + 1}: {self.bad}. Nothing of this epoch was saved "
                "and no model was exported. Lower the learning rate (or check the data for NaN/inf)."
            )


def check_finite(model, when):
    """Raises NonFiniteError when any of the model's variables holds NaN or inf."""
    for variable in model.weights:
        value = keras.ops.convert_to_numpy(variable)
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise NonFiniteError(
                f"{when}: variable {variable.path!r} holds non-finite values. Nothing was saved; lower "
                "the learning rate (or check the data for NaN/inf)."
            )


class RunStateCheckpoint(keras.callbacks.Callback):
    """Saves the run's state after every epoch into a `rundir.RunDirectory`.

    After each epoch, and only when its weights are finite: `model` with its optimizer state in
    `backup/`, with the whole run's history, epoch times and the best epoch so far (by `monitor`,
    lower is better), so a resumed run knows everything an uninterrupted one would. Then, for
    people, `checkpoints/last.keras` and (when the epoch is the best so far) `checkpoints/best.keras`
    link to it.

    Args:
        run: the `rundir.RunDirectory`.
        model: the model to save. The model being fit may wrap it (with augmentation layers that
            have no weights) and share its optimizer.
        timer: the `EpochTimer` placed before this callback (epoch wall times).
        state: the `rundir.TrainingState` resumed from, or None.
        monitor: the log to track for the best epoch ("val_loss"; "loss" when there is none).
    """

    def __init__(self, run, model, timer, state=None, monitor="val_loss"):
        super().__init__()
        self.run = run
        self.saved_model = model
        self.timer = timer
        self.monitor = monitor
        self.history = {key: list(values) for key, values in (state.history if state else {}).items()}
        self.seconds = list(state.seconds_per_epoch) if state else []
        self.best = state.best if state else None

    def on_epoch_end(self, epoch, logs=None):
        logs = {key: float(value) for key, value in (logs or {}).items()}
        check_finite(self.saved_model, f"After epoch {epoch + 1}")
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)
        self.seconds.append(self.timer.seconds[-1])
        monitor = self.monitor if self.monitor in logs else "loss"
        improved = self.best is None or logs[monitor] < self.best["value"]
        if improved:
            self.best = {"epoch": epoch + 1, "monitor": monitor, "value": logs[monitor]}
        state = rundir.TrainingState(epoch=epoch + 1, model_path=None, history=self.history,
                                     seconds_per_epoch=self.seconds, best=self.best)
        with rundir.interrupts_deferred():  # A Ctrl-C now stops after the epoch is saved.
            self.run.save_state(state, self.saved_model.save)
            for name in ["last.keras"] + (["best.keras"] if improved else []):
                self.run.publish_checkpoint(name, state.model_path)
