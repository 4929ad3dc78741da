"""TinyStories (short stories for small language models) as GPT-2 token shards.

Online, the dataset roneneldan/TinyStories is streamed from the Hugging Face Hub (needs the
`datasets` package); with --input, local .txt/.jsonl/.parquet files are read instead. Documents
are tokenized in parallel, each starting with EOT, and written in shards of --shard-size tokens:
shard 0 (tinystories_val_000000.bin) is the validation split, the rest are training shards.

    python dev/data/tinystories.py --input stories.jsonl --shard-size 1000000
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

from data_common import (
    LOCAL_INPUT_HELP,
    add_sharding_arguments,
    check_sharding_arguments,
    expand_inputs,
    iter_local_documents,
    write_document_shards,
)

DATASET = "roneneldan/TinyStories"
NAME = "tinystories"
DEFAULT_OUTPUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tinystories")
DEFAULT_SHARD_SIZE = 10**8


def stream_hub_documents() -> Iterator[str]:
    """Stories of the Hub dataset's train split, streamed."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise SystemExit(
            "downloading TinyStories needs the `datasets` package (pip install datasets), "
            "or pass local files with --input"
        ) from None
    for record in load_dataset(DATASET, split="train", streaming=True):
        yield record["text"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", help=LOCAL_INPUT_HELP)
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="where to write")
    add_sharding_arguments(parser, DEFAULT_SHARD_SIZE, "--shard-size")
    args = parser.parse_args(argv)
    check_sharding_arguments(parser, args)

    if args.input:
        try:
            documents = iter_local_documents(expand_inputs(args.input))
        except ValueError as e:
            parser.error(str(e))
    else:
        documents = stream_hub_documents()
    try:
        write_document_shards(
            documents, args.output_dir, NAME, args.shard_size, args.tokenizer_dir, args.processes
        )
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
