#!/usr/bin/env bash
# Trains the Fashion-MNIST presets on one GPU with the JAX backend: exactly the train.py commands of
# training/make_zoo.py's recipes (`make_zoo.py --steps=train`), one preset at a time, each under its
# own time limit, most important first. Package them afterwards on any machine (TensorFlow CPU is
# fine: the weights are backend-portable) with
#     python training/make_zoo.py --steps=package,docs --names=... --runs_dir=<where the runs are>
#
# Usage: training/gpu_zoo.sh RUNS_DIR SECONDS_PER_PRESET NAME...
# Optional environment:
#   GPU_ZOO_DEADLINE=<epoch seconds>  no preset runs past it (its limit is cut; under 60 s: skipped)
#   GPU_ZOO_COLLECT=<dir>              after each preset, copy its model.keras to <dir>/<name>.keras
#                                      and refresh <dir>/runs_small.tgz (every run's small files)
# Needs: Keras 3, JAX with a GPU, numpy, h5py, absl-py; the Fashion-MNIST files where
# glonet_keras.data finds them (GLONET_KERAS_FASHION_MNIST_DIR). TensorFlow is not needed.
set -u
runs_dir=$1
limit=$2
shift 2
export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
mkdir -p "$runs_dir"
# GPU_ZOO_SMOKE=1: a tiny run of every code path (4 epochs of 4,096 images: 8 steps of 512, fused in pairs), to test this script.
extra=()
[ "${GPU_ZOO_SMOKE:-0}" = 1 ] && extra=(--extra_train_flags=--epochs=4,--max_examples=4096)
for name in "$@"; do
    start=$(date +%s)
    this_limit=$limit
    if [ -n "${GPU_ZOO_DEADLINE:-}" ]; then
        left=$(( GPU_ZOO_DEADLINE - start ))
        [ "$left" -lt "$this_limit" ] && this_limit=$left
        if [ "$this_limit" -lt 60 ]; then echo "[$name] skipped: ${left} s left"; continue; fi
    fi
    timeout "$this_limit" python3 training/make_zoo.py --steps=train --names="$name" \
        --runs_dir="$runs_dir" "${extra[@]}"
    status=$?
    echo "[$name] exit $status after $(( $(date +%s) - start )) s (limit $this_limit s)"
    tail -n 4 "$runs_dir/$name.log" 2>/dev/null
    if [ -n "${GPU_ZOO_COLLECT:-}" ]; then
        [ -f "$runs_dir/$name/model.keras" ] && cp "$runs_dir/$name/model.keras" "$GPU_ZOO_COLLECT/$name.keras"
        tar czf "$GPU_ZOO_COLLECT/runs_small.tgz" -C "$runs_dir" --exclude='*.keras' \
            --exclude=backup --exclude=checkpoints . 2>/dev/null
    fi
done
