#!/bin/bash
# Device check of the CUDA engine, for a machine with an NVIDIA GPU (the `run` device or any box):
# build with CMake -DLLMC_CUDA=ON, the parity fixtures from the PyTorch reference, test_gpt2cu and
# test_gpt2cu_fp32 on them, pytest -m gpu, a determinism run (two identical d6 runs), a resume run
# (10 steps vs 5 + resume 5), the recompute levels (-r 0/1/2: losses, speed, peak memory) and optional
# d12 throughput. Logs go under $OUT (default ./device_check_out).
#
#   STAGES="build tests pytest det resume recompute d12" scripts/device_check.sh   (the default
#   leaves out d12; "build" is implied by every other stage)
#   BUILD_DIR=build-dev  D12_STEPS=6  D12_B=64  RECOMPUTE_B=16  RECOMPUTE_D=<B*1024>
#
# Exit status: 0 when every stage that checks something passed, else 1 (the failing stages are
# listed at the end).
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/python
OUT=${OUT:-$PWD/device_check_out}
BUILD_DIR=${BUILD_DIR:-build-dev}
STAGES=${STAGES:-"build tests pytest det resume recompute"}
mkdir -p "$OUT"
FAILED=""
log() { echo "=== $*"; }
fail() { echo "FAILED: $1"; FAILED="$FAILED $1"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

log "build ($BUILD_DIR)"
cmake -S . -B "$BUILD_DIR" -G Ninja -DLLMC_CUDA=ON -DLLMC_BUILD_PYTHON=ON -DLLMC_NATIVE=OFF > "$OUT/build.log" 2>&1 &&
  cmake --build "$BUILD_DIR" -j "$(nproc)" --target test_gpt2cu test_gpt2cu_fp32 train_gpt2cu train_gpt2cu_fp32 _llmc _llmc_cuda \
    >> "$OUT/build.log" 2>&1
if [ $? -ne 0 ]; then
  grep -m5 -A10 error "$OUT/build.log"; tail -20 "$OUT/build.log"
  echo "FAILED: build"; exit 1
fi
B=$BUILD_DIR

# random tokens, 8 x 524288 + 1 of them: enough for d12 at a total batch of 524288
make_random_shard() {
  [ -f /tmp/rand.bin ] && return
  python3 - <<'PY'
import numpy as np
rng = np.random.default_rng(0)
n = 8 * 524288 + 1
h = np.zeros(256, dtype=np.int32); h[0] = 20240520; h[1] = 1; h[2] = n
with open("/tmp/rand.bin", "wb") as f:
    f.write(h.tobytes()); f.write(rng.integers(0, 50257, n, dtype=np.uint16).tobytes())
PY
}
steps_of() { grep "^step" "$1" | cut -d'|' -f1-3; }

for stage in $STAGES; do case $stage in
build) ;;
tests)
  log "fixtures + test_gpt2cu / test_gpt2cu_fp32"
  F=/tmp/fix; mkdir -p $F
  python3 -m llmc.reference fixture --out $F/a --layers 2 --heads 4 --channels 256 -B 4 -T 64 --steps 10 \
    --compute-dtype float64 --name a > "$OUT/fixture_a.log" 2>&1 || fail "fixture-a"
  python3 -m llmc.reference fixture --out $F/b --layers 3 --heads 4 --channels 128 --vocab 1000 -B 3 -T 50 \
    --max-seq-len 64 --steps 10 --compute-dtype float64 --name b > "$OUT/fixture_b.log" 2>&1 || fail "fixture-b"
  for fx in a b; do for prog in test_gpt2cu_fp32 test_gpt2cu; do
    timeout 120 $B/$prog $F/$fx/$fx.bin $F/$fx/${fx}_debug_state.bin > "$OUT/${prog}_$fx.log" 2>&1
    rc=$?
    echo "$prog fixture $fx: exit $rc, $(grep -c FAIL "$OUT/${prog}_$fx.log") FAIL lines, $(grep overall "$OUT/${prog}_$fx.log")"
    [ $rc -eq 0 ] || fail "$prog-$fx"
  done; done ;;
pytest)
  log "pytest -m gpu"
  LLMC_BUILD_DIR=$PWD/$B timeout 400 python3 -m pytest -q -m gpu tests/test_gpu.py tests/test_gpu_python.py > "$OUT/pytest.log" 2>&1 ||
    fail "pytest"
  tail -15 "$OUT/pytest.log" ;;
det)
  log "determinism: two d6 bf16 runs"
  make_random_shard
  for r in 1 2; do
    timeout 120 $B/train_gpt2cu -i /tmp/rand.bin -e d6 -b 8 -t 256 -x 4 -v 0 -s 0 > "$OUT/det$r.log" 2>&1
  done
  steps_of "$OUT/det1.log"
  if [ -n "$(steps_of "$OUT/det1.log")" ] && [ "$(steps_of "$OUT/det1.log")" = "$(steps_of "$OUT/det2.log")" ]; then
    echo "determinism: identical losses and norms"
  else
    fail "determinism"
  fi ;;
resume)
  log "resume: d6 bf16, 10 steps straight vs 5 + resume 5 (B=8 T=256, grad accum 2)"
  make_random_shard
  R=/tmp/resume; rm -rf $R; mkdir -p $R/b
  args="-i /tmp/rand.bin -e d6 -b 8 -t 256 -d 4096 -x 10 -v 0 -s 0 -l 1e-3 -u 2 -q 0.1 -n 5"
  timeout 200 $B/train_gpt2cu $args -o $R/a > "$OUT/resume_a.log" 2>&1 || fail "resume-straight"
  cp $R/a/model_00000005.bin $R/a/state_00000005_00000.bin $R/a/DONE_00000005 $R/b/
  timeout 200 $B/train_gpt2cu $args -o $R/b -y 1 > "$OUT/resume_b.log" 2>&1 || fail "resume-resumed"
  steps_of "$OUT/resume_b.log"
  if [ "$(steps_of "$OUT/resume_a.log" | tail -5)" = "$(steps_of "$OUT/resume_b.log")" ] &&
     cmp $R/a/state_00000010_00000.bin $R/b/state_00000010_00000.bin &&
     cmp $R/a/model_00000010.bin $R/b/model_00000010.bin; then
    echo "resume: steps 6..10 and the final checkpoint are identical"
  else
    fail "resume"
  fi ;;
recompute)
  RB=${RECOMPUTE_B:-16}; RD=${RECOMPUTE_D:-$((RB * 1024))}
  log "recompute: d12 bf16 B=$RB T=1024 total $RD, -r 0 / 1 / 2"
  make_random_shard
  for r in 0 1 2; do
    timeout 200 $B/train_gpt2cu -i /tmp/rand.bin -e d12 -b $RB -t 1024 -d $RD -x 4 -v 0 -s 0 -r $r \
      > "$OUT/recompute$r.log" 2>&1 ||
      fail "recompute-$r"
    echo "-r $r: $(grep -E "^steady|^peak" "$OUT/recompute$r.log" | tr '\n' ' ')"
  done
  steps_of "$OUT/recompute0.log"
  # -r 1 and -r 2 run the same GELU / layernorm kernels again: identical to each other; -r 0 fuses
  # the GELU into the matmul epilogue, so it agrees only within rounding
  if [ -n "$(steps_of "$OUT/recompute1.log")" ] &&
     [ "$(steps_of "$OUT/recompute1.log")" = "$(steps_of "$OUT/recompute2.log")" ]; then
    echo "-r 1 and -r 2: identical losses and norms; -r 1:"; steps_of "$OUT/recompute1.log"
  else
    fail "recompute-1-vs-2"
  fi ;;
d12)
  log "d12 B=${D12_B:-64} T=1024 total 524288 (bf16)"
  make_random_shard
  timeout 400 $B/train_gpt2cu -i /tmp/rand.bin -e d12 -b ${D12_B:-64} -t 1024 -d 524288 -x ${D12_STEPS:-6} -v 0 -s 0 \
    > "$OUT/d12.log" 2>&1 || fail "d12"
  grep -E "^step|^steady|^peak" "$OUT/d12.log" ;;
*) echo "unknown stage $stage (build tests pytest det resume recompute d12)"; exit 2 ;;
esac; done

if [ -n "$FAILED" ]; then
  log "FAILED stages:$FAILED"
  exit 1
fi
log "all stages passed ($STAGES)"
