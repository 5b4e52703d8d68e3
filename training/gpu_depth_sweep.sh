#!/usr/bin/env bash
# Section 11's depth sweeps on a lent GPU, in one call (docs/RESULTS.md section 11, issue 21):
# trains the runs not yet finished, several train.py processes at once on the JAX backend with XLA,
# stops training at a deadline, evaluates every run that finished (on the same backend, so the
# initial shares are exact), and leaves what comes back in $OUT:
#   evaluations.tgz   one evaluation JSON per finished run, laid out as docs/evaluations/depth_sweep
#   logs.tgz          each run's log, run.json, metrics.json and command.json (no weights)
# and prints a table of the evaluations last. Back on the development machine:
#   tar -xzf <files_at>/evaluations.tgz -C docs/evaluations/depth_sweep
#   python training/depth_sweep.py --steps=report   # refuses evaluations not of the sweep's flags
#   python training/reproduce.py --report_only --output_dir=docs
#
#   OUT=<dir> training/gpu_depth_sweep.sh --sweeps=vit                   # the ViT sweep
#   OUT=<dir> training/gpu_depth_sweep.sh --sweeps=cnn --depths=56,110   # the deep CNNs
#   OUT=<dir> SMOKE=1 training/gpu_depth_sweep.sh --sweeps=cnn --depths=20 --seeds=0 --families=glonet
#
# Arguments go to training/depth_sweep.py (which sweeps, depths, families, seeds). Environment:
# PARALLEL (runs trained, then evaluated, at once; default 6), TRAIN_SECONDS (the training
# deadline, default 420; runs still training then are stopped and not evaluated), WORK (run
# directories, default /tmp/gpu_depth_sweep), PYTHON (default python3),
# GLONET_KERAS_FASHION_MNIST_DIR (the data: carry it, the GPU machine has none). SMOKE=1 trains 2
# epochs of 256 images (a check of this script on any machine; the report refuses those
# evaluations). Expects Keras importable with the JAX backend (see ../shared/docs/gpu.md). Exit
# status: 0 when every selected run was trained and evaluated.
#
# Through the `device` tool (../shared/docs/gpu.md): once, here, the Keras wheels into .whl/ and
# the data into .data/ (both in .git/info/exclude: `cp -r /usr/share/datasets/fashion-mnist
# .data/`), then a run carrying [".whl", ".data"] with the command
#   python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl &&
#   PYTHONPATH=$PWD/.site GLONET_KERAS_FASHION_MNIST_DIR=$PWD/.data/fashion-mnist \
#   TRAIN_SECONDS=400 training/gpu_depth_sweep.sh --sweeps=vit
# (the device sets OUT), and timeout_s 560.
#
# Planning a lease (an estimate, not measured: from docs/gpu.md's H200 figure of 4.1 ms per step
# for a width-24 CNN-20): a CNN-110 run is ~1,570 steps of some 20 ms plus a compile of the
# unrolled net (~40 s), about a minute alone; runs at once share the GPU, which these small models
# leave mostly idle. Give the deeper CNNs and the ViTs separate calls, each well inside 10 minutes.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT" || exit 1
PY="${PYTHON:-python3}"
WORK="${WORK:-/tmp/gpu_depth_sweep}"
export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
EXTRA=--jit_compile=auto
OVERRIDE=()
if [ "${SMOKE:-0}" = 1 ]; then EXTRA="$EXTRA,--epochs=2,--max_examples=256"; OVERRIDE=(--allow_overrides); fi

status=0
# timeout signals depth_sweep.py's whole process group: the train.py processes stop with it.
timeout --kill-after=20 "${TRAIN_SECONDS:-420}" "$PY" training/depth_sweep.py --steps=train \
  --runs_dir="$WORK/runs" --parallel="${PARALLEL:-6}" --extra_train_flags="$EXTRA" \
  "${OVERRIDE[@]}" "$@" || { status=$?; echo "training stopped (exit $status): evaluating what finished"; }
"$PY" training/depth_sweep.py --steps=evaluate --runs_dir="$WORK/runs" \
  --evaluations_dir="$WORK/evaluations" --parallel="${PARALLEL:-6}" "$@" || status=$?
mkdir -p "$WORK/evaluations"
tar -czf "$OUT/evaluations.tgz" -C "$WORK/evaluations" . || status=$?
(cd "$WORK/runs" 2>/dev/null && find . \( -name '*.log' -o -name run.json -o -name metrics.json \
  -o -name command.json \) -print0 | tar -czf "$OUT/logs.tgz" --null -T -) || status=$?
"$PY" - "$WORK/evaluations" <<'EOF'
import json, pathlib, sys
rows = [json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("*/*.json"))]
print(f"{'sweep':5} {'family':12} {'depth':>5} {'seed':>4} {'test %':>7} {'recal. %':>8} {'s/epoch':>8}")
for e in rows:
    recalibrated = e.get("recalibrated", {}).get("test", {}).get("accuracy")
    print(f"{e['sweep']:5} {e['family']:12} {e['depth']:5d} {e['seed']:4d} "
          f"{100 * e['test']['accuracy']:7.2f} "
          f"{'' if recalibrated is None else f'{100 * recalibrated:.2f}':>8} {e['seconds_per_epoch']:8.1f}")
print(f"{len(rows)} evaluations in evaluations.tgz")
EOF
exit $status
