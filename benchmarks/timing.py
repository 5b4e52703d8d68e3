"""Timing helpers shared by the benchmarks (no flags here: each benchmark script defines its own)."""

import os
import statistics
import time


def time_model(model, x, y, *, batch_size, epochs, loss="mse"):
    """(warm-up epoch seconds incl. compilation, median seconds of `epochs` timed epochs)."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=True)
    warmup = time.perf_counter() - start
    from glonet_keras.callbacks import EpochTimer

    timer = EpochTimer()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True,
              callbacks=[timer])
    return warmup, statistics.median(timer.seconds)


def describe_machine():
    import platform

    import keras

    text = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Keras {keras.__version__} on {keras.backend.backend()}"
    if keras.backend.backend() == "jax":
        import jax

        text += f", JAX {jax.__version__}, devices {[d.device_kind for d in jax.devices()]}"
    return text
