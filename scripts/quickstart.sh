#!/usr/bin/env bash
# The main job, on a fresh machine: install llmc, turn tinyshakespeare into token shards, train a
# GPT-2 from scratch and print samples. On the GPU (train_gpt2cu) when one is present and the CUDA
# engine was built, else on the CPU (train_gpt2).
#
# Offline it reads the text and the GPT-2 tokenizer files from ../shared (or $LLMC_TEXT and
# $LLMC_TOKENIZER_DIR); online it downloads them. Extra arguments go to the trainer, e.g.
#   ./scripts/quickstart.sh -x 200 -e d12
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DATA_DIR=dev/data/tinyshakespeare
OUT_DIR=${LLMC_OUT_DIR:-out/quickstart}

echo "== install llmc (C engine, Python package, train_gpt2 / test_gpt2 on PATH)"
# with the build tools already installed, build without an isolated environment (works offline)
if "$PYTHON" -c "import scikit_build_core, pybind11" 2>/dev/null; then
    "$PYTHON" -m pip install -q --no-build-isolation .
else
    "$PYTHON" -m pip install -q .
fi
BIN_DIR=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$BIN_DIR:$PATH"

text=${LLMC_TEXT:-../shared/data/tinyshakespeare.txt}
if [ -z "${LLMC_TOKENIZER_DIR:-}" ] && [ -d ../shared/tokenizer/gpt2 ]; then
    export LLMC_TOKENIZER_DIR=../shared/tokenizer/gpt2
fi
echo "== tokenize tinyshakespeare into $DATA_DIR"
if [ -f "$text" ]; then
    "$PYTHON" dev/data/tinyshakespeare.py --input "$text" --output-dir "$DATA_DIR"
else
    "$PYTHON" dev/data/tinyshakespeare.py --output-dir "$DATA_DIR"  # downloads
fi

mkdir -p "$OUT_DIR"
if command -v train_gpt2cu >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    echo "== train GPT-2 d12 from scratch on the GPU"
    train_gpt2cu -i "$DATA_DIR/tiny_shakespeare_train.bin" -j "$DATA_DIR/tiny_shakespeare_val.bin" \
        -e d12 -b 16 -t 256 -x 300 -l 6e-4 -u 30 -v 50 -s 100 -g 128 -o "$OUT_DIR" "$@"
else
    # small enough for a laptop-class CPU: d6 (6 layers, C=384), batch 8 x 64 tokens
    echo "== train GPT-2 d6 from scratch on the CPU (no GPU found)"
    train_gpt2 -i "$DATA_DIR/tiny_shakespeare_train.bin" -j "$DATA_DIR/tiny_shakespeare_val.bin" \
        -tk "$DATA_DIR/gpt2_tokenizer.bin" -e d6 -b 8 -t 64 -x 200 -l 1e-3 -u 20 -q 0.1 -v 50 -m 4 \
        -s 100 -g 48 -o "$OUT_DIR" "$@"
fi
