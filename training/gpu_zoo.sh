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
#   PYTHON=<interpreter>               default python3
#   GPU_ZOO_PARALLEL=<N>               train N runs of a multi-seed recipe (its arms x seeds) at
#                                      once (make_zoo.py --parallel; default 1)
# Through the `device` tool (../shared/docs/gpu.md), zoo v2's BN-free CNN (docs/RESULTS.md section
# 12: 3 arms x 3 seeds at once; an estimate from gpu.md's 4.1 ms per step of a width-24 CNN-20 on an
# H200: ~50 s per run alone, a few minutes for the nine side by side): prepare .whl/ and .data/ as
# training/gpu_depth_sweep.sh's header says, then a run carrying [".whl", ".data"] with
#   python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl &&
#   PYTHONPATH=$PWD/.site GLONET_KERAS_FASHION_MNIST_DIR=$PWD/.data/fashion-mnist \
#   GPU_ZOO_PARALLEL=9 GPU_ZOO_COLLECT=$OUT PYTHON=python3 training/gpu_zoo.sh /tmp/zoo 520 \
#   glonet_cnn_fashion_mnist
# and timeout_s 580; back here, unpack runs_small.tgz and glonet_cnn_fashion_mnist.models.tgz into
# one directory and run `python training/make_zoo.py --names=glonet_cnn_fashion_mnist
# --steps=protocol,package,docs --runs_dir=<it>`.
# Needs: Keras 3, JAX with a GPU, numpy, h5py, absl-py; the Fashion-MNIST files where
# glonet_keras.data finds them (GLONET_KERAS_FASHION_MNIST_DIR). TensorFlow is not needed.
#
# Every run compiles with XLA (--jit_compile=auto, appended after the recipe's flags, so it wins):
# the CNN recipes say `jit_compile=false` because oneDNN without XLA was faster on the CPU they were
# trained on, but on JAX that flag means eager, uncompiled steps. jit_compile does not change what a
# run computes, so a resume and the recorded recipe still match.
#
# For each preset it prints, from the run's metrics.json (each run's, for a multi-seed recipe): epochs,
# the median seconds per epoch (the first epoch, which compiles, apart) and the wall time; a table of
# all of them comes last (also in RUNS_DIR/gpu_zoo_times.tsv).
set -u
runs_dir=$1
limit=$2
shift 2
PY="${PYTHON:-python3}"
export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.." || exit 1
mkdir -p "$runs_dir"
# GPU_ZOO_SMOKE=1: a tiny run of every code path (2 epochs of 2,048 images: 16 steps of 128, fused
# in groups of 4), to test this script.
extra=(--jit_compile=auto)
[ "${GPU_ZOO_SMOKE:-0}" = 1 ] && extra+=(--epochs=2 --max_examples=2048)
train_flags=$(IFS=,; echo "${extra[*]}")
times="$runs_dir/gpu_zoo_times.tsv"
printf 'preset\texit\tepochs\tfirst_epoch_s\tmedian_s_per_epoch\twall_s\n' >"$times"

report() {  # report <name> <exit status> <wall s>: one line per run, from its metrics.json
    # (a multi-seed recipe's runs are <name>/<arm>/seed_<s>; each line is named so)
    "$PY" - "$runs_dir" "$1" "$2" "$3" <<'EOF'
import json, pathlib, statistics, sys
runs_dir, name, status, wall = sys.argv[1:]
root = pathlib.Path(runs_dir) / name
paths = [root / "metrics.json"] if (root / "metrics.json").exists() else \
    sorted(root.glob("*/seed_*/metrics.json")) or [root / "metrics.json"]
for path in paths:
    try:
        seconds = json.loads(path.read_text())["seconds_per_epoch"]
    except (OSError, ValueError, KeyError):
        seconds = []
    later = seconds[1:] or seconds
    first = f"{seconds[0]:.1f}" if seconds else "-"
    median = f"{statistics.median(later):.1f}" if later else "-"
    label = path.parent.relative_to(pathlib.Path(runs_dir)).as_posix() if path.parent != root else name
    print(f"{label}\t{status}\t{len(seconds)}\t{first}\t{median}\t{wall}")
EOF
}

for name in "$@"; do
    start=$(date +%s)
    this_limit=$limit
    if [ -n "${GPU_ZOO_DEADLINE:-}" ]; then
        left=$(( GPU_ZOO_DEADLINE - start ))
        [ "$left" -lt "$this_limit" ] && this_limit=$left
        if [ "$this_limit" -lt 60 ]; then
            echo "[$name] skipped: ${left} s left"
            printf '%s\tskipped\t0\t-\t-\t0\n' "$name" >>"$times"
            continue
        fi
    fi
    timeout "$this_limit" "$PY" training/make_zoo.py --steps=train --names="$name" \
        --runs_dir="$runs_dir" --extra_train_flags="$train_flags" \
        --parallel="${GPU_ZOO_PARALLEL:-1}"
    status=$?
    wall=$(( $(date +%s) - start ))
    echo "[$name] exit $status after $wall s (limit $this_limit s)"
    tail -n 4 "$runs_dir/$name.log" 2>/dev/null
    lines=$(report "$name" "$status" "$wall")
    echo "$lines" >>"$times"
    echo "$lines" | awk -F'\t' '{printf "[%s] %s epochs, %s s per epoch (first, compiling: %s s), wall %s s\n", $1, $3, $5, $4, $6}'
    if [ -n "${GPU_ZOO_COLLECT:-}" ]; then
        [ -f "$runs_dir/$name/model.keras" ] && cp "$runs_dir/$name/model.keras" "$GPU_ZOO_COLLECT/$name.keras"
        # A multi-seed recipe: every arm and seed's model, at its run's path.
        models=$(cd "$runs_dir" && find "$name" -path '*/seed_*/model.keras' 2>/dev/null | sort)
        [ -n "$models" ] && (cd "$runs_dir" && tar czf "$GPU_ZOO_COLLECT/$name.models.tgz" $models)
        tar czf "$GPU_ZOO_COLLECT/runs_small.tgz" -C "$runs_dir" --exclude='*.keras' \
            --exclude=backup --exclude=checkpoints . 2>/dev/null
    fi
done
echo
echo "== seconds per epoch and wall time per preset ($times)"
column -t -s $'\t' "$times" 2>/dev/null || cat "$times"
