"""Strategies: errors in-process; mirrored, multi-worker and JAX runs in subprocesses.

Logical CPU devices and multi-process runtimes are fixed once per process, so every run that
needs them is a fresh `python -c` whose last stdout line is a JSON result.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from glonet_keras import GloNetMLP
from glonet_keras.training import distribute

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Trains the same tiny run under `strategy` and prints the weights' fingerprint as JSON.
RUN = textwrap.dedent("""
    import json, sys
    import numpy as np
    from glonet_keras.training import distribute
    {setup}
    from glonet_keras.training.trainer import TrainConfig, train
    def run(strategy, batch_size, **kwargs):
        config = dict(model="glonet_mlp", depth=3, width=16, dataset="digits", epochs=2,
                      max_examples=256, tensorboard=False, verbose=0)
        config.update(kwargs)
        result = train(TrainConfig(strategy=strategy, batch_size=batch_size, **config))
        return result.replicas, [np.asarray(w).tolist() for w in result.model.get_weights()]
    {body}
""")


def _python(code, env=None, timeout=240):
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env or ENV, timeout=timeout)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return json.loads(finished.stdout.strip().splitlines()[-1])


def _max_difference(weights_a, weights_b):
    return max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(weights_a, weights_b))


def test_unknown_strategy_and_missing_tf_config(monkeypatch):
    with pytest.raises(ValueError, match="Unknown strategy 'tpu'"):
        distribute.get_strategy("tpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        distribute.get_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
    with pytest.raises(ValueError, match="not a valid cluster spec"):
        distribute.get_strategy("multi_worker")
    with pytest.raises(ValueError, match="integer >= 1"):
        distribute.configure_logical_cpus(0)


def test_logical_cpus_cannot_change_after_initialisation():
    import tensorflow as tf

    have = len(tf.config.list_logical_devices("CPU"))  # initialises TF's devices
    assert distribute.configure_logical_cpus(have) == have  # same count: a no-op
    with pytest.raises(RuntimeError, match="start of the process"):
        distribute.configure_logical_cpus(have + 2)


def test_one_device_strategy_and_chief(monkeypatch):
    strategy = distribute.get_strategy("one_device")
    assert strategy.num_replicas_in_sync == 1
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.is_chief()
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert not distribute.is_chief()
    # Under a strategy that spans no other worker, a TF_CONFIG left in the environment is ignored
    # (issue 22: it made a local run write into worker_1 and skip its export).
    assert distribute.is_chief(strategy) and distribute.task_index(strategy) == 0
    assert distribute.task_index() == 1
    # `auto` on one device is TensorFlow's default strategy, not a OneDeviceStrategy wrapper
    # (which cost the trainer's path 1.11x per step, issue 20), and behaves the same.
    import tensorflow as tf

    auto = distribute.get_strategy("auto")
    assert auto is tf.distribute.get_strategy() and auto.num_replicas_in_sync == 1
    assert distribute.is_chief(auto) and distribute.task_index(auto) == 0


@pytest.mark.parametrize("tf_config, message", [
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
     "task.type 'chief' is not a job of the cluster"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": -1}}', "task.index -1"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": true}}', "task.index True"),
    ('{"cluster": {"worker": ["a:1", 7]}, "task": {"type": "worker"}}', "not a non-empty list"),
    ('{"cluster": {"worker": ["a:1"]}}', "no `task` object"),
    ("7", "not a JSON object"),
])
def test_tf_config_is_checked_whole(monkeypatch, tf_config, message):
    with pytest.raises(ValueError, match=message):
        distribute.check_tf_config(tf_config)
    monkeypatch.setenv("TF_CONFIG", tf_config)
    for name in ("auto", "multi_worker"):
        with pytest.raises(ValueError, match=message):
            distribute.get_strategy(name)


def test_synchronized_batch_norm_is_switched_on_only_inside():
    model = GloNetMLP(num_blocks=2, width=4, input_shape=(3,), normalization="batch")
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    with distribute.synchronized_batch_norm(model) as changed:
        assert changed == 2 and all(layer.synchronized for layer in norms)
    # Saved files keep synchronized=False so they load on every backend.
    assert not any(layer.synchronized for layer in norms)
    assert not any(layer.get_config()["synchronized"] for layer in norms)


def test_mirrored_on_two_logical_cpus_matches_one_device():
    code = RUN.format(setup="distribute.configure_logical_cpus(2)", body=textwrap.dedent("""
        replicas_1, single = run("one_device", 32)
        replicas_2, mirrored = run("mirrored", 16)  # same global batch of 32
        print(json.dumps([replicas_1, replicas_2, single, mirrored]))
    """))
    replicas_1, replicas_2, single, mirrored = _python(code)
    assert (replicas_1, replicas_2) == (1, 2)
    assert _max_difference(single, mirrored) <= 1e-5


def test_mirrored_with_synchronized_batch_norm_matches_one_device():
    # SGD: Adam would turn the float noise of the (theoretically zero) gradients of the biases
    # before a BN into full-size steps of random sign.
    code = RUN.format(setup="distribute.configure_logical_cpus(2)", body=textwrap.dedent("""
        kwargs = dict(model_kwargs={"normalization": "batch"}, optimizer="sgd", learning_rate=0.05)
        _, single = run("one_device", 32, **kwargs)
        replicas, mirrored = run("mirrored", 16, **kwargs)
        print(json.dumps([replicas, single, mirrored]))
    """))
    replicas, single, mirrored = _python(code)
    assert replicas == 2
    assert _max_difference(single, mirrored) <= 1e-5


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _run_workers(codes, envs, timeout=240):
    processes = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for code, env in zip(codes, envs)]
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=timeout)
            assert process.returncode == 0, stderr[-3000:]
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return results


@pytest.mark.slow  # Two TensorFlow processes and a third run: 35 s on 2 cores.
def test_multi_worker_mirrored_two_local_workers_match_one_device(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    envs = [dict(ENV, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
            for i in range(2)]
    body = textwrap.dedent(f"""
        replicas, weights = run("multi_worker", 16, model_dir={str(tmp_path)!r})
        print(json.dumps([replicas, weights]))
    """)
    code = RUN.format(setup="", body=body)
    (replicas_0, worker_0), (replicas_1, worker_1) = _run_workers([code, code], envs)
    assert replicas_0 == replicas_1 == 2
    assert _max_difference(worker_0, worker_1) == 0.0
    # The chief wrote the run's files; the other worker wrote its copies aside.
    assert (tmp_path / "metrics.json").exists() and (tmp_path / "worker_1" / "metrics.json").exists()
    from glonet_keras.training.trainer import TrainConfig, train

    single = train(TrainConfig(model="glonet_mlp", depth=3, width=16, dataset="digits", epochs=2,
                               max_examples=256, tensorboard=False, verbose=0,
                               strategy="one_device", batch_size=32)).model.get_weights()
    assert _max_difference(single, worker_0) <= 1e-5


@pytest.mark.slow
def test_multi_worker_from_the_command_line_on_two_local_processes(tmp_path):
    """train.py builds nothing before the strategy, so MultiWorkerMirroredStrategy can start."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    command = [sys.executable, os.path.join(ROOT, "training", "train.py"), "--strategy=multi_worker",
               "--depth=2", "--width=8", "--max_examples=64", "--batch_size=8", "--epochs=1",
               "--notensorboard", "--verbose=2", f"--model_dir={tmp_path}"]
    processes = [
        subprocess.Popen(command, env=dict(ENV, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}})),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index in range(2)
    ]
    try:
        outputs = [process.communicate(timeout=300) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    # (Keras' multi-step loop fails with several TF replicas: one step per execution there.)
    assert "2 replica(s), global batch 16, 4 steps per epoch, 1 per execution" in outputs[0][0]
    for metrics_path in (tmp_path / "metrics.json", tmp_path / "worker_1" / "metrics.json"):
        metrics = json.loads(metrics_path.read_text())
        assert metrics["replicas"] == 2 and metrics["status"] == "finished"


@pytest.mark.slow
def test_jax_data_parallel_and_two_process_initialize_match_one_device(tmp_path):
    jax_env = dict(ENV, KERAS_BACKEND="jax")
    local = _python(RUN.format(setup="distribute.configure_logical_cpus(2)", body=textwrap.dedent("""
        replicas_1, single = run("one_device", 32)
        replicas_2, parallel = run("mirrored", 16)
        print(json.dumps([replicas_1, replicas_2, single, parallel]))
    """)), env=jax_env)
    replicas_1, replicas_2, single, parallel = local
    assert (replicas_1, replicas_2) == (1, 2)
    assert _max_difference(single, parallel) <= 1e-5

    (port,) = _free_ports(1)
    envs = [dict(jax_env, KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
                 KERAS_DISTRIBUTION_NUM_PROCESSES="2", KERAS_DISTRIBUTION_PROCESS_ID=str(i))
            for i in range(2)]
    code = RUN.format(setup="", body=textwrap.dedent(f"""
        replicas, weights = run("multi_worker", 16, model_dir={str(tmp_path)!r})
        print(json.dumps([replicas, weights]))
    """))
    (replicas_0, process_0), (replicas_1, process_1) = _run_workers([code, code], envs)
    assert replicas_0 == replicas_1 == 2
    assert _max_difference(process_0, process_1) == 0.0
    assert _max_difference(single, process_0) <= 1e-5
