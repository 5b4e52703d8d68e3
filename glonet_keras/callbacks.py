"""Keras callbacks shared by the trainer and the benchmarks (backend-generic, no TensorFlow import)."""

import time

import keras


class EpochTimer(keras.callbacks.Callback):
    """Records the wall time of every epoch in `seconds`."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
