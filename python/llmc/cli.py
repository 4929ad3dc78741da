"""The ``llmc`` command: inspect and convert the on-disk files.

    llmc info FILE...                  what a file is (by its magic) and its sizes
    llmc convert IN OUT --dtype bf16   rewrite a model file as fp32 (v3) or bf16 (v5)

Training runs through the C programs (``train_gpt2``, and ``train_gpt2cu`` on a GPU), data
preparation through ``dev/data/*.py``, parity fixtures through ``python -m llmc.reference``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from llmc import formats

_DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}


def describe(path: str) -> str:
    """One line saying what the file at ``path`` is, read from its header."""
    header = np.fromfile(path, dtype="<i4", count=256)
    if header.size < 256:
        raise ValueError(f"{path}: shorter than a 1024-byte llmc/llm.c header")
    magic = int(header[0])
    size = os.path.getsize(path)
    if magic == formats.MODEL_MAGIC:
        config, version = formats.read_model_header(path)
        dtype = "fp32" if version == formats.MODEL_VERSION_FP32 else "bf16"
        return (
            f"{path}: GPT-2 model ({dtype}, v{version}): L={config.num_layers} "
            f"H={config.num_heads} C={config.channels} V={config.vocab_size} "
            f"Vp={config.padded_vocab_size} maxT={config.max_seq_len}, "
            f"{config.num_parameters():,} parameters, {size:,} bytes"
        )
    if magic == formats.SHARD_MAGIC:
        return f"{path}: token shard, {formats.read_shard_header(path):,} tokens"
    if magic == formats.TOKENIZER_MAGIC:
        tokens, eot = formats.read_tokenizer_file(path)
        return f"{path}: tokenizer, {len(tokens):,} tokens, EOT id {eot}"
    if magic == formats.DEBUG_STATE_MAGIC:
        return f"{path}: debug state, B={int(header[2])} T={int(header[3])}, {size:,} bytes"
    if magic == formats.EVAL_MAGIC:
        return f"{path}: eval file, {int(header[2]):,} examples"
    if magic == formats.OPTIMIZER_MAGIC:
        return f"{path}: optimizer state, step {int(header[10])}, {size:,} bytes"
    raise ValueError(f"{path}: unknown magic {magic}: not an llmc/llm.c file")


def _info(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            print(describe(path))
        except (OSError, ValueError) as error:
            print(f"llmc info: {error}", file=sys.stderr)
            status = 1
    return status


def _convert(args: argparse.Namespace) -> int:
    config, params = formats.read_model(args.input)
    formats.write_model(args.output, config, params, dtype=_DTYPES[args.dtype])
    print(describe(args.output))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``llmc`` console script."""
    parser = argparse.ArgumentParser(prog="llmc", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="describe llmc/llm.c files")
    info.add_argument("files", nargs="+")
    info.set_defaults(run=_info)
    convert = commands.add_parser("convert", help="rewrite a model file in another precision")
    convert.add_argument("input")
    convert.add_argument("output")
    convert.add_argument("--dtype", choices=sorted(_DTYPES), required=True)
    convert.set_defaults(run=_convert)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except (OSError, ValueError) as error:
        print(f"llmc {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
