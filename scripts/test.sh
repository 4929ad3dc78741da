#!/usr/bin/env bash
# Installs llmc with its test tools and runs every check CI runs: lint, format, types, the C tests
# and pytest. Usage: ./scripts/test.sh [extra pytest arguments]
# On a GPU machine, `./scripts/test.sh -m gpu` runs the GPU suite instead of the CPU one.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BUILD_DIR=${LLMC_BUILD_DIR:-build/cmake}

echo "== install (torch CPU build for the reference model, the package and its test tools)"
# pin torch: a bare 'torch' would pull the newest CUDA build (several GB) on a CPU-only machine
"$PYTHON" -c "import torch" 2>/dev/null || "$PYTHON" -m pip install -q "torch==2.13.0"
"$PYTHON" -m pip install -q ".[test]"

echo "== ruff, ruff format, mypy"
"$PYTHON" -m ruff check .
"$PYTHON" -m ruff format --check .
"$PYTHON" -m mypy

echo "== C/CUDA build and C tests (${BUILD_DIR})"
cuda=OFF
if command -v nvcc >/dev/null; then
    # CUDA sources must always compile: with nvcc present a failure here fails the run. cuBLAS comes
    # from NVIDIA's wheel when the toolkit lacks it; NCCL's wheel lets dev/cuda/nccl_all_reduce.cu
    # compile; cuDNN and the header-only cudnn-frontend (--no-deps: its Python API's needs are not
    # used) are for the optional cuDNN attention build below.
    cuda=ON
    "$PYTHON" -m pip install -q "nvidia-cublas>=13,<14" "nvidia-nccl-cu13>=2,<3" "nvidia-cudnn-cu13>=9,<10"
    "$PYTHON" -m pip install -q --no-deps "nvidia-cudnn-frontend>=1.32,<2"
fi
cmake -S . -B "$BUILD_DIR" -G Ninja -DLLMC_BUILD_PYTHON=ON -DLLMC_CUDA=$cuda >/dev/null
cmake --build "$BUILD_DIR"
"$BUILD_DIR/test_matmul"
if [[ $cuda == ON ]]; then
    # the default build above has our own attention; this one compiles and links the programs and
    # the Python engine with -DLLMC_CUDNN=ON (the module itself is not linked: its output would
    # replace the default build's python/llmc/_llmc_cuda)
    cmake -S . -B "$BUILD_DIR-cudnn" -G Ninja -DLLMC_BUILD_PYTHON=ON -DLLMC_CUDA=ON -DLLMC_CUDNN=ON >/dev/null
    cmake --build "$BUILD_DIR-cudnn" --target train_gpt2cu test_gpt2cu profile_gpt2cu dev_cuda_attention \
        llmc_cuda_engine
fi

echo "== pytest"
export LLMC_BUILD_DIR="$PWD/$BUILD_DIR"
"$PYTHON" -m pytest -q "$@"
