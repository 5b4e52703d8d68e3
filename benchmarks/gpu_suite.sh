#!/usr/bin/env bash
# The prepared GPU run of issue 12: fit overhead, the Table 1 MLP speed sweep and memory against
# depth, on the JAX backend, in one call. Each benchmark runs under its own `timeout`, writes its
# JSON and log into "$OUT", and the short tables of all of them are printed last.
#
#   OUT=/path/to/results benchmarks/gpu_suite.sh            # the real sizes, on a GPU
#   OUT=/tmp/smoke benchmarks/gpu_suite.sh --smoke          # tiny sizes, any machine (the test)
#   OUT=/path/to/results benchmarks/gpu_suite.sh --quick    # fewer models and depths, ~3-4 min
#
# Expects Keras importable with the JAX backend (see docs/gpu.md for carrying the wheels); uses
# $PYTHON (default python3). Exit status: the number of steps that failed or timed out.
#
# Time budget on one H200 (estimates from the issue-12 numbers: XLA compiles about 1.5 s for
# GloNet MLP-10, 11 s for GloNet MLP-200, 35 s for ResNet-v2 MLP-200, 3-5 s for the CNN-20s; the
# steps themselves are milliseconds):
#   fit_overhead  5 models x 5 compiled functions (~160 s) + 4 x 8 short runs      limit 210 s
#   mlp_speed     depths 10-200: GloNet ~25 s + ResNet ~70 s of compiles; scanned
#                 600/1000 ~2 s each; 4 epochs of 64 steps per model (~15 s)       limit 180 s
#   memory        6 fresh processes (import ~8 s + one compile each, ~90 s)       limit 110 s
# Expected about 6 minutes in all, 8.4 at the very most (every limit hit).
set -u
cd "$(dirname "$0")/.." || exit 1

MODE=full
if [ "${1:-}" = "--smoke" ] || [ "${1:-}" = "--quick" ]; then MODE=${1#--}; elif [ $# -gt 0 ]; then
  echo "usage: OUT=<dir> $0 [--smoke|--quick]" >&2; exit 2
fi
OUT="${OUT:-$PWD/gpu_suite_out}"
mkdir -p "$OUT" || exit 1
PY="${PYTHON:-python3}"
export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# The scanned GloNet MLP, where the builder offers it (benchmarks refuse --scan otherwise).
SCAN=$("$PY" -c "from benchmarks.timing import supports_scan
from glonet_keras.models import GloNetMLP
print('--scan' if supports_scan(GloNetMLP) else '')") || exit 1

if [ "$MODE" = smoke ]; then
  FIT_ARGS=(--models=glonet_mlp:2,resnet_mlp:2,glonet_cnn:8 --mlp_steps=8 --cnn_steps=2
            --mlp_batch=32 --cnn_batch=4 --image_size=8)
  MLP_ARGS=(--depths=2,4 --rows=1024 --batch_size=64)
  MEM_ARGS=(--depths=2,4 --steps=2 --batch_size=32)
  LIMITS=(300 300 300)
elif [ "$MODE" = quick ]; then
  # What a lease with little time left affords: the fit/raw ratio on the MLP and CNN, Table 1 at
  # 10, 100, 200 and 1,000 (the last scanned), and memory at three depths.
  FIT_ARGS=(--models=glonet_mlp:10,resnet_mlp:10,glonet_cnn:20,resnet_cnn:20
            --mlp_steps=64 --cnn_steps=32)
  MLP_ARGS=(--depths=10,100,200,1000 --rows=32768)
  MEM_ARGS=(--depths=10,100,1000 --steps=3 --point_timeout=40)
  LIMITS=(100 90 60)
else
  FIT_ARGS=(--models=glonet_mlp:10,resnet_mlp:10,glonet_mlp:200,glonet_cnn:20,resnet_cnn:20
            --mlp_steps=128 --cnn_steps=64)
  MLP_ARGS=(--depths=10,24,50,100,200,600,1000 --rows=65536)
  MEM_ARGS=(--depths=10,50,100,1000 --steps=4 --point_timeout=60)  # 1000: scanned only
  LIMITS=(210 180 110)
fi

FAILED=0
: >"$OUT/status.txt"
step() {  # step <name> <limit s> <script> <args...>
  local name=$1 limit=$2 start rc
  shift 2
  echo "== $name (limit ${limit} s): $*"
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$PY" "$@" --output="$OUT/$name.json" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$OUT/status.txt"
  if [ "$rc" != 0 ]; then
    FAILED=$((FAILED + 1))
    tail -n 15 "$OUT/$name.log"
  fi
}

{ command -v nvidia-smi >/dev/null && nvidia-smi -L; } | tee "$OUT/machine.txt"
step fit_overhead "${LIMITS[0]}" benchmarks/fit_overhead.py "${FIT_ARGS[@]}"
step mlp_speed "${LIMITS[1]}" benchmarks/mlp_speed.py "${MLP_ARGS[@]}" $SCAN
step memory "${LIMITS[2]}" benchmarks/memory.py "${MEM_ARGS[@]}" $SCAN

echo
echo "== summary (full results: $OUT/*.json, logs: $OUT/*.log)"
RESULTS=("$OUT"/fit_overhead.json "$OUT"/mlp_speed.json "$OUT"/memory.json)
"$PY" benchmarks/report.py "${RESULTS[@]}" || FAILED=$((FAILED + 1))
cat "$OUT/status.txt"
exit "$FAILED"
