#!/usr/bin/env bash
# The prepared GPU run of issues 12 and 20: fit overhead (the MLPs and CNNs, and the Fashion-MNIST
# preset CNN with and without augmentation, through the trainer's own path too), the Table 1 MLP
# speed sweep and memory against depth, on the JAX backend, in one call. Each benchmark runs under
# its own `timeout`, writes its JSON and log into "$OUT", and the short tables of all of them are
# printed last.
#
#   OUT=/path/to/results benchmarks/gpu_suite.sh            # the real sizes, on a GPU
#   OUT=/tmp/smoke benchmarks/gpu_suite.sh --smoke          # tiny sizes, any machine (the test)
#   OUT=/path/to/results benchmarks/gpu_suite.sh --quick    # fewer models and depths, ~5 min
#
# Expects Keras importable with the JAX backend (see docs/gpu.md for carrying the wheels); uses
# $PYTHON (default python3). Exit status: the number of steps that failed or timed out. The
# trainer's variants of fit_preset need the Fashion-MNIST files (GLONET_KERAS_FASHION_MNIST_DIR);
# without them that step times the other variants only, and says so.
#
# Time budget on one H200 (from the issue-12 and issue-20 runs: XLA compiles about 1.5 s for
# GloNet MLP-10, 11 s for GloNet MLP-200, 39 s for ResNet-v2 MLP-200, 3-5 s for the CNN-20s; the
# steps themselves are milliseconds). Depth 1,000 has a step of its own (mlp_deep, scanned GloNet
# only, a fresh process), so the unrolled depth-200 compiles cannot starve it:
#   fit_overhead  5 models x 5 compiled functions (~160 s) + 4 x 8 short runs      limit 210 s
#   fit_preset    the preset CNN: 11 variants, ~10 compiles of 3-5 s, data load     limit 150 s
#   mlp_speed     depths 10-200 unrolled: GloNet ~25 s + ResNet ~70 s of compiles;
#                 4 epochs of 64 steps per model (~15 s)                          limit 180 s
#   mlp_deep      depths 600 and 1,000, scanned: ~2 s compile each                 limit 90 s
#   memory        6 fresh processes (import ~8 s + one compile each, ~90 s)       limit 110 s
# Expected about 8 minutes in all, 12.3 at the very most (every limit hit): more than one 10-minute
# call, so on a 15-minute lease run --quick (limits 100+110+100+60+60 = 7.2 min at most), or the
# full suite in two calls with SUITE_STEPS (e.g. SUITE_STEPS="fit_overhead fit_preset", then
# SUITE_STEPS="mlp_speed mlp_deep memory").
set -u
cd "$(dirname "$0")/.." || exit 1

MODE=full
if [ "${1:-}" = "--smoke" ] || [ "${1:-}" = "--quick" ]; then MODE=${1#--}; elif [ $# -gt 0 ]; then
  echo "usage: OUT=<dir> $0 [--smoke|--quick]" >&2; exit 2
fi
ALL_STEPS="fit_overhead fit_preset mlp_speed mlp_deep memory"
STEPS="${SUITE_STEPS:-$ALL_STEPS}"
for name in $STEPS; do
  case " $ALL_STEPS " in *" $name "*) ;; *) echo "SUITE_STEPS: unknown step $name ($ALL_STEPS)" >&2; exit 2;; esac
done
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
  PRESET_ARGS=(--models=glonet_cnn_bn:8 --cnn_width=4 --cnn_batch=8 --image_size=28
               --image_channels=1 --cnn_steps=8 --repetitions=1)
  MLP_ARGS=(--depths=2,4 --rows=1024 --batch_size=64)
  DEEP_ARGS=(--depths=6 --rows=1024 --batch_size=64 --max_unrolled_depth=4)
  MEM_ARGS=(--depths=2,4 --steps=2 --batch_size=32)
  LIMITS=(300 300 300 300 300)
elif [ "$MODE" = quick ]; then
  # What a lease with little time left affords: the fit/raw ratio on the MLP and CNN, the preset
  # CNN with and without augmentation, Table 1 at 10, 100, 200 and 1,000 (the last scanned), and
  # memory at three depths.
  FIT_ARGS=(--models=glonet_mlp:10,resnet_mlp:10,glonet_cnn:20,resnet_cnn:20
            --mlp_steps=64 --cnn_steps=32)
  PRESET_ARGS=(--preset --cnn_steps=32 --repetitions=3)
  MLP_ARGS=(--depths=10,100,200 --rows=32768)
  DEEP_ARGS=(--depths=1000 --rows=32768)
  MEM_ARGS=(--depths=10,100,1000 --steps=3 --point_timeout=40)
  LIMITS=(100 110 100 60 60)
else
  FIT_ARGS=(--models=glonet_mlp:10,resnet_mlp:10,glonet_mlp:200,glonet_cnn:20,resnet_cnn:20
            --mlp_steps=128 --cnn_steps=64)
  PRESET_ARGS=(--preset --cnn_steps=64)
  MLP_ARGS=(--depths=10,24,50,100,200 --rows=65536)
  DEEP_ARGS=(--depths=600,1000 --rows=65536)
  MEM_ARGS=(--depths=10,50,100,1000 --steps=4 --point_timeout=60)  # 1000: scanned only
  LIMITS=(210 150 180 90 110)
fi
# The trainer's variants read Fashion-MNIST: without its files, the preset step times the rest.
if ! "$PY" -c "from glonet_keras import data; data.load_split('fashion_mnist', 'test')" \
    >/dev/null 2>&1; then
  echo "fit_preset: no Fashion-MNIST files here, so no trainer:* variants"
  PRESET_ARGS+=(--variants=fit:device:auto,fit:device:auto:aug,fused:device:auto,fused:device:auto:aug,fused:device:auto:aug:mix,raw:device:1,raw:device:auto,raw:device:auto:aug)
elif [ "$MODE" = smoke ]; then
  PRESET_ARGS+=(--variants=fit:device:auto,fit:device:auto:aug,raw:device:1,trainer:plain:auto,trainer:recipe:auto)
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
run() {  # run <name> <limit index> <script> <args...>: a step, if SUITE_STEPS names it
  local name=$1 index=$2
  shift 2
  case " $STEPS " in *" $name "*) step "$name" "${LIMITS[$index]}" "$@";; esac
}
run fit_overhead 0 benchmarks/fit_overhead.py "${FIT_ARGS[@]}"
run fit_preset 1 benchmarks/fit_overhead.py "${PRESET_ARGS[@]}"
run mlp_speed 2 benchmarks/mlp_speed.py "${MLP_ARGS[@]}" $SCAN
run mlp_deep 3 benchmarks/mlp_speed.py "${DEEP_ARGS[@]}" $SCAN
run memory 4 benchmarks/memory.py "${MEM_ARGS[@]}" $SCAN

echo
echo "== summary (full results: $OUT/*.json, logs: $OUT/*.log)"
RESULTS=()
for name in $STEPS; do RESULTS+=("$OUT/$name.json"); done
"$PY" benchmarks/report.py "${RESULTS[@]}" || FAILED=$((FAILED + 1))
cat "$OUT/status.txt"
exit "$FAILED"
