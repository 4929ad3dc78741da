"""Tiny Shakespeare (about 1 MB of text) as GPT-2 token files, the smallest dataset to train on.

The text is split into documents at blank lines ("\\n\\n"); each document starts with EOT and
keeps its trailing "\\n\\n" (except the last), so the tokens decode back to the original text
with EOTs in between. The first 32,768 tokens are the validation split, the rest the training
split, as in llm.c. Writes tiny_shakespeare_val.bin, tiny_shakespeare_train.bin and
gpt2_tokenizer.bin (for the C decoder) to --output-dir.

    python dev/data/tinyshakespeare.py                     # download
    python dev/data/tinyshakespeare.py --input input.txt   # local copy
"""

from __future__ import annotations

import argparse
import os
import urllib.request

import numpy as np
from data_common import add_tokenizer_argument, write_datafile

from llmc.formats import atomic_write
from llmc.tokenizer import encode_document, get_encoding, write_tokenizer

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
DEFAULT_OUTPUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tinyshakespeare")
VAL_TOKENS = 32768


def split_documents(text: str) -> list[str]:
    """Blocks between blank lines, each but the last keeping its "\\n\\n" separator."""
    sections = text.split("\n\n")
    return [s + "\n\n" if i < len(sections) - 1 else s for i, s in enumerate(sections)]


def download(output_dir: str) -> str:
    """Download the text into output_dir (once); returns its path."""
    path = os.path.join(output_dir, "tiny_shakespeare.txt")
    if not os.path.exists(path):
        print(f"downloading {URL} to {path}")
        with urllib.request.urlopen(URL, timeout=60) as response, atomic_write(path) as f:
            f.write(response.read())
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", help="local text file instead of downloading")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="where to write")
    add_tokenizer_argument(parser)
    args = parser.parse_args(argv)
    if args.input and not os.path.isfile(args.input):
        parser.error(f"--input {args.input}: no such file")

    os.makedirs(args.output_dir, exist_ok=True)
    input_path = args.input if args.input else download(args.output_dir)
    with open(input_path, encoding="utf-8") as f:
        text = f.read()
    enc = get_encoding(args.tokenizer_dir)
    tokens: list[int] = []
    for doc in split_documents(text):
        tokens.extend(encode_document(enc, doc))
    if len(tokens) <= VAL_TOKENS:
        raise SystemExit(
            f"{input_path}: only {len(tokens):,} tokens, need more than {VAL_TOKENS:,} "
            "(the validation split)"
        )
    print(f"{len(tokens):,} tokens: {VAL_TOKENS:,} val, {len(tokens) - VAL_TOKENS:,} train")
    all_tokens = np.array(tokens, dtype=np.uint16)
    write_datafile(
        os.path.join(args.output_dir, "tiny_shakespeare_val.bin"), all_tokens[:VAL_TOKENS]
    )
    write_datafile(
        os.path.join(args.output_dir, "tiny_shakespeare_train.bin"), all_tokens[VAL_TOKENS:]
    )
    tokenizer_path = os.path.join(args.output_dir, "gpt2_tokenizer.bin")
    write_tokenizer(enc, tokenizer_path)
    print(f"wrote the tokenizer ({enc.n_vocab:,} tokens) to {tokenizer_path}")


if __name__ == "__main__":
    main()
