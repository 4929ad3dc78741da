"""Shared pieces of the data prep scripts: reading documents, tokenizing them, writing shards.

Token shards and eval files are written by llmc.formats (256-int32 header, uint16 body, atomic
rename). A dataset is split into shards of exactly `shard_size` tokens (the last one may be
shorter): shard 0 is the validation split, the rest are training data, named
`<name>_val_000000.bin`, `<name>_train_000001.bin`, ... as in llm.c. Every document starts with
the EOT token (50256), so EOT separates documents in the concatenated stream.
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing as mp
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

# the scripts run as `python dev/data/X.py`: make the in-tree package importable without install
_REPO_PYTHON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python")
if os.path.isdir(os.path.join(_REPO_PYTHON, "llmc")) and _REPO_PYTHON not in sys.path:
    sys.path.append(_REPO_PYTHON)

from llmc.formats import EvalExample, write_eval_file, write_shard  # noqa: E402
from llmc.tokenizer import encode_document, get_encoding  # noqa: E402

# ----------------------------------------------------------------------------------------------
# writing


def write_datafile(path: str, tokens: Sequence[int] | np.ndarray, quiet: bool = False) -> None:
    """Write one token shard (uint16) and say so."""
    write_shard(path, tokens)
    if not quiet:
        print(f"wrote {len(tokens):,} tokens to {path}")


def write_evalfile(path: str, examples: Sequence[EvalExample], quiet: bool = False) -> None:
    """Write a multiple-choice eval file (HellaSwag, MMLU) and say so."""
    write_eval_file(path, examples)
    if not quiet:
        print(f"wrote {len(examples):,} examples to {path}")


def shard_path(output_dir: str, name: str, index: int) -> str:
    """Path of shard `index`: shard 0 is the validation split, the others training."""
    split = "val" if index == 0 else "train"
    return os.path.join(output_dir, f"{name}_{split}_{index:06d}.bin")


class ShardWriter:
    """Accumulates documents' tokens and writes shards of exactly `shard_size` tokens.

    A document that does not fit the current shard continues in the next one. `close()` writes
    the last, partial shard. Use as a context manager; on an exception nothing more is written.
    """

    def __init__(
        self, output_dir: str, name: str, shard_size: int, progress: bool | None = None
    ) -> None:
        if shard_size <= 0:
            raise ValueError(f"shard size must be positive, got {shard_size}")
        self.output_dir = output_dir
        self.name = name
        self.shard_size = shard_size
        self.paths: list[str] = []
        self.total_tokens = 0
        self._buffer = np.empty(shard_size, dtype=np.uint16)
        self._fill = 0
        self._progress = progress  # None: tqdm shows a bar only on a terminal
        self._bar: Any = None

    def _new_bar(self) -> None:
        index = len(self.paths)
        self._bar = tqdm(
            total=self.shard_size,
            unit="tokens",
            unit_scale=True,
            desc=f"shard {index}",
            disable=None if self._progress is None else not self._progress,
        )

    def add(self, tokens: Sequence[int] | np.ndarray) -> None:
        """Append one document's tokens (ids must fit uint16)."""
        arr = np.asarray(tokens)
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= 2**16):
            raise ValueError(f"token ids must be in [0, 65536), got {arr.min()}..{arr.max()}")
        pos = 0
        while pos < arr.size:
            if self._bar is None:
                self._new_bar()
            take = min(self.shard_size - self._fill, arr.size - pos)
            self._buffer[self._fill : self._fill + take] = arr[pos : pos + take]
            self._fill += take
            pos += take
            self._bar.update(take)
            if self._fill == self.shard_size:
                self._flush()

    def _flush(self) -> None:
        if self._fill == 0:
            return
        path = shard_path(self.output_dir, self.name, len(self.paths))
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        write_datafile(path, self._buffer[: self._fill])
        self.paths.append(path)
        self.total_tokens += self._fill
        self._fill = 0

    def close(self) -> list[str]:
        """Write the last partial shard; returns the paths of every shard written."""
        self._flush()
        return self.paths

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        elif self._bar is not None:
            self._bar.close()


# ----------------------------------------------------------------------------------------------
# tokenizing (one tiktoken encoding per worker process)

_worker_encoding: Any = None


def _init_worker(tokenizer_dir: str | None) -> None:
    global _worker_encoding
    _worker_encoding = get_encoding(tokenizer_dir)


def _tokenize(text: str) -> np.ndarray:
    return np.array(encode_document(_worker_encoding, text), dtype=np.uint16)


def tokenize_documents(
    documents: Iterable[str],
    tokenizer_dir: str | None = None,
    processes: int = 1,
    chunksize: int = 16,
) -> Iterator[np.ndarray]:
    """Tokens of each document ([EOT] + text), in order, as uint16 arrays.

    With processes > 1 the work goes to a multiprocessing.Pool (imap keeps the order).
    """
    if processes <= 1:
        _init_worker(tokenizer_dir)
        for doc in documents:
            yield _tokenize(doc)
        return
    with mp.Pool(processes, initializer=_init_worker, initargs=(tokenizer_dir,)) as pool:
        yield from pool.imap(_tokenize, documents, chunksize=chunksize)


def default_processes() -> int:
    """Half the CPU cores (at least one), leaving room for the main process and the disk."""
    return max(1, (os.cpu_count() or 2) // 2)


# ----------------------------------------------------------------------------------------------
# reading local documents


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Files named by `patterns` (paths or globs), each pattern's matches sorted."""
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise ValueError(f"--input {pattern}: no such file")
        files.extend(m for m in matches if os.path.isfile(m))
    if not files:
        raise ValueError(f"--input {' '.join(patterns)}: no files")
    return files


def add_tokenizer_argument(parser: argparse.ArgumentParser) -> None:
    """--tokenizer-dir: where GPT-2's BPE files are for offline use."""
    parser.add_argument(
        "--tokenizer-dir",
        default=None,
        help="directory with GPT-2's vocab.bpe and encoder.json for offline use "
        "(default: $LLMC_TOKENIZER_DIR, else tiktoken's download)",
    )


def add_sharding_arguments(
    parser: argparse.ArgumentParser, default_shard_size: int, *shard_size_flags: str
) -> None:
    """--shard-size (under the given flag names), --tokenizer-dir and --processes."""
    parser.add_argument(
        *shard_size_flags,
        dest="shard_size",
        type=int,
        default=default_shard_size,
        help="tokens per shard",
    )
    add_tokenizer_argument(parser)
    parser.add_argument(
        "--processes", type=int, default=default_processes(), help="tokenizer processes"
    )


def check_sharding_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Rejects non-positive --shard-size and --processes through the parser's error path."""
    if args.shard_size <= 0:
        parser.error(f"--shard-size must be positive, got {args.shard_size}")
    if args.processes <= 0:
        parser.error(f"--processes must be positive, got {args.processes}")


def read_jsonl_objects(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a jsonl file; ValueError names the line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {e}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, record


def split_text_documents(text: str) -> list[str]:
    """Documents of a .txt file: blocks separated by blank lines, stripped, empty ones dropped."""
    return [block.strip() for block in text.split("\n\n") if block.strip()]


def _iter_txt(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        yield from split_text_documents(f.read())


def _iter_jsonl(path: str, field: str) -> Iterator[str]:
    for lineno, record in read_jsonl_objects(path):
        text = record.get(field)
        if not isinstance(text, str):
            raise ValueError(f"{path}:{lineno}: expected an object with a string {field!r}")
        yield text


def _iter_parquet(path: str, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise RuntimeError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    pf = pq.ParquetFile(path)
    if field not in pf.schema_arrow.names:
        raise ValueError(f"{path}: no column {field!r} (columns: {pf.schema_arrow.names})")
    for batch in pf.iter_batches(columns=[field]):
        for text in batch.column(0).to_pylist():
            if not isinstance(text, str):
                raise ValueError(f"{path}: column {field!r} holds a non-string value")
            yield text


def iter_local_documents(files: Sequence[str], field: str = "text") -> Iterator[str]:
    """Documents of local files, by extension: .txt (blank-line separated blocks),
    .jsonl (one JSON object per line, its `field`), .parquet (column `field`)."""
    for path in files:
        if path.endswith(".txt"):
            yield from _iter_txt(path)
        elif path.endswith(".jsonl"):
            yield from _iter_jsonl(path, field)
        elif path.endswith(".parquet"):
            yield from _iter_parquet(path, field)
        else:
            raise ValueError(f"{path}: unknown input type (expected .txt, .jsonl or .parquet)")


LOCAL_INPUT_HELP = (
    "local input files or globs instead of downloading: .txt (documents are blocks separated by "
    "a blank line, i.e. by '\\n\\n'; each is stripped and empty blocks are dropped), .jsonl "
    "(one JSON object per line with a string field 'text'), .parquet (column 'text'; needs "
    "pyarrow). Files are read in the order given, each glob's matches sorted."
)


def write_document_shards(
    documents: Iterable[str],
    output_dir: str,
    name: str,
    shard_size: int,
    tokenizer_dir: str | None,
    processes: int,
    chunksize: int = 16,
) -> list[str]:
    """Tokenize documents (in parallel) and write them as shards; returns the shard paths."""
    os.makedirs(output_dir, exist_ok=True)
    with ShardWriter(output_dir, name, shard_size) as writer:
        for tokens in tokenize_documents(documents, tokenizer_dir, processes, chunksize):
            writer.add(tokens)
    if not writer.paths:
        raise ValueError("no documents: nothing was written")
    if len(writer.paths) == 1:
        print(f"warning: only {writer.total_tokens:,} tokens, all in the validation shard")
    print(f"{writer.total_tokens:,} tokens in {len(writer.paths)} shards in {output_dir}")
    return writer.paths
