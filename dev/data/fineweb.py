"""FineWeb (or FineWeb-Edu) as GPT-2 token shards, for GPT-2 pretraining runs.

Online, HuggingFaceFW/fineweb or HuggingFaceFW/fineweb-edu (sample-10BT or sample-100BT) is
streamed from the Hugging Face Hub (needs the `datasets` package); with --input, local
.txt/.jsonl/.parquet files are read instead. Documents are tokenized in parallel, each starting
with EOT, and written in shards of --shard-size tokens (10^8 by default, like llm.c): shard 0
(<name>_val_000000.bin) is the validation split, the rest are training shards.

    python dev/data/fineweb.py --type edu --version 10B
    python dev/data/fineweb.py --input 'pages/*.parquet' --output-dir data/mine
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

HERE = os.path.dirname(os.path.abspath(__file__))
DATASETS = {"classic": "HuggingFaceFW/fineweb", "edu": "HuggingFaceFW/fineweb-edu"}
SHARD_NAMES = {"classic": "fineweb", "edu": "edu_fineweb"}
DEFAULT_SHARD_SIZE = 10**8


def stream_hub_documents(dataset_type: str, version: str) -> Iterator[str]:
    """Documents of the Hub dataset's sample-<version>T subset, streamed."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise SystemExit(
            "downloading FineWeb needs the `datasets` package (pip install datasets), "
            "or pass local files with --input"
        ) from None
    remote = load_dataset(
        DATASETS[dataset_type], name=f"sample-{version}T", split="train", streaming=True
    )
    for record in remote:
        yield record["text"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", help=LOCAL_INPUT_HELP)
    parser.add_argument(
        "-t", "--type", choices=sorted(DATASETS), default="classic", help="FineWeb or FineWeb-Edu"
    )
    parser.add_argument(
        "-v", "--version", choices=["10B", "100B"], default="10B", help="sample size (tokens)"
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="where to write (default: dev/data/fineweb10B or dev/data/edu_fineweb10B)",
    )
    parser.add_argument(
        "--name", default=None, help="shard name prefix (default: fineweb or edu_fineweb)"
    )
    add_sharding_arguments(parser, DEFAULT_SHARD_SIZE, "-s", "--shard-size")
    args = parser.parse_args(argv)
    check_sharding_arguments(parser, args)
    name = args.name or SHARD_NAMES[args.type]
    output_dir = args.output_dir or os.path.join(HERE, f"{name}{args.version}")

    if args.input:
        try:
            documents = iter_local_documents(expand_inputs(args.input))
        except ValueError as e:
            parser.error(str(e))
    else:
        documents = stream_hub_documents(args.type, args.version)
    try:
        write_document_shards(
            documents, output_dir, name, args.shard_size, args.tokenizer_dir, args.processes
        )
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
