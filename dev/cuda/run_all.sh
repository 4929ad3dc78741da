#!/usr/bin/env bash
# Builds every dev/cuda program, runs each one (full default run: check, then timing), keeps each
# log and prints one markdown results table last (dev/cuda/results_table.py).
#
# Usage (on a machine with an sm_90 GPU), from anywhere:
#   dev/cuda/run_all.sh
# Environment:
#   BUILD_DIR   CMake build folder (default build-dev, relative to the repository root)
#   OUT         where <kernel>.log, <kernel>.rc and results.md go (default dev/cuda/results)
#   TIMEOUT     seconds allowed per program (default 300)
#   SKIP_BUILD  1: use the programs already in $BUILD_DIR/dev_cuda
# Exit status: 0 when every program exited 0 and passed its checks, 1 otherwise (the table says
# FAIL on that program's rows), 2 when the build failed. About 6 minutes on one H200 after the
# build (attention.cu takes longest, ~2 min: its scalar version 1 and its CPU reference; then
# encoder.cu, ~2 min).
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD_DIR=${BUILD_DIR:-build-dev}
OUT=${OUT:-dev/cuda/results}
TIMEOUT=${TIMEOUT:-300}
[[ $BUILD_DIR = /* ]] || BUILD_DIR="$REPO/$BUILD_DIR"
[[ $OUT = /* ]] || OUT="$REPO/$OUT"
BIN="$BUILD_DIR/dev_cuda"
PYTHON=${PYTHON:-python3}

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    echo "== build: $BUILD_DIR (target dev_cuda)"
    if ! cmake -S "$REPO" -B "$BUILD_DIR" -G Ninja -DLLMC_CUDA=ON -DLLMC_NATIVE=OFF >/dev/null ||
        ! cmake --build "$BUILD_DIR" --target dev_cuda; then
        echo "run_all.sh: build failed (cmake --build $BUILD_DIR --target dev_cuda)" >&2
        exit 2
    fi
fi

mkdir -p "$OUT"
rm -f "$OUT"/*.log "$OUT"/*.rc "$OUT"/results.md

# known programs first (the order of the table), then any other dev/cuda/*.cu
programs=(encoder layernorm gelu matmul attention softmax crossentropy fused_classifier adamw global_norm
    nccl_all_reduce)
for source in "$REPO"/dev/cuda/*.cu; do
    name=$(basename "$source" .cu)
    [[ " ${programs[*]} " == *" $name "* ]] || programs+=("$name")
done

failed=0
for name in "${programs[@]}"; do
    log="$OUT/$name.log"
    echo "== $name (log: $log)"
    start=$SECONDS
    if [[ ! -x "$BIN/$name" ]]; then
        echo "run_all.sh: $BIN/$name was not built" >"$log"
        rc=127
    else
        timeout "$TIMEOUT" "$BIN/$name" >"$log" 2>&1
        rc=$?
    fi
    echo "$rc" >"$OUT/$name.rc"
    tail -n 1 "$log"
    echo "   exit status $rc, $((SECONDS - start)) s"
    [[ $rc == 0 ]] || failed=1
done

# PyTorch's cuDNN and FlashAttention-2 attention at the same shapes: the attention rows' reference
log="$OUT/attention_sdpa.log"
echo "== attention_sdpa.py (log: $log)"
if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    timeout "$TIMEOUT" "$PYTHON" "$REPO/dev/cuda/attention_sdpa.py" >"$log" 2>&1
    rc=$?
    [[ $rc == 0 ]] || failed=1
else
    echo "SKIPPED: no PyTorch with CUDA for $PYTHON (attention rows get no % of cuDNN)" >"$log"
    rc=0
fi
echo "$rc" >"$OUT/attention_sdpa.rc"
echo "   exit status $rc"

device=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
device=${device:-unknown (nvidia-smi failed)}
device=${device/, /, driver }
echo
"$PYTHON" "$REPO/dev/cuda/results_table.py" "$OUT" --date "$(date +%F)" --device "$device" \
    >"$OUT/results.md"
table_rc=$?
cat "$OUT/results.md"
[[ $table_rc == 0 ]] || failed=1
exit "$failed"
