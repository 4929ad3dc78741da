"""The data prep scripts in dev/data: run as a user would (subprocess) on local files."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmc.formats import read_shard, read_tokenizer_file

REPO_ROOT = Path(__file__).resolve().parent.parent
EOT = 50256


def run_script(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "dev" / "data" / name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_ok(name: str, *args: str | Path) -> str:
    proc = run_script(name, *args)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def document_tokens(enc: Any, documents: list[str]) -> np.ndarray:
    """Direct tokenization: EOT before every document."""
    out: list[int] = []
    for doc in documents:
        out.append(EOT)
        out.extend(enc.encode_ordinary(doc))
    return np.array(out, dtype=np.int64)


@pytest.mark.parametrize(
    "script", ["tinyshakespeare.py", "tinystories.py", "fineweb.py", "hellaswag.py"]
)
def test_help(script: str) -> None:
    out = run_ok(script, "--help")
    assert "--input" in out
    assert "--output-dir" in out


# ----------------------------------------------------------------------------------------------
# tiny Shakespeare


def test_tinyshakespeare(
    shakespeare_path: Path, gpt2_tokenizer_dir: Path, gpt2_encoding: Any, tmp_path: Path
) -> None:
    out = run_ok(
        "tinyshakespeare.py",
        "--input",
        shakespeare_path,
        "--output-dir",
        tmp_path,
        "--tokenizer-dir",
        gpt2_tokenizer_dir,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gpt2_tokenizer.bin",
        "tiny_shakespeare_train.bin",
        "tiny_shakespeare_val.bin",
    ]
    val = read_shard(tmp_path / "tiny_shakespeare_val.bin", vocab_size=50257)
    train = read_shard(tmp_path / "tiny_shakespeare_train.bin", vocab_size=50257)

    # the same split done here: blocks between blank lines, each keeping its separator
    text = shakespeare_path.read_text(encoding="utf-8")
    sections = text.split("\n\n")
    documents = [s + "\n\n" for s in sections[:-1]] + [sections[-1]]
    expected = document_tokens(gpt2_encoding, documents)

    assert len(val) == 32768
    assert len(train) == len(expected) - 32768
    assert f"{len(expected):,}" in out
    assert val[0] == EOT
    prefix = [EOT, *gpt2_encoding.encode_ordinary("First Citizen:\nBefore we proceed")]
    assert val[: len(prefix)].tolist() == prefix
    np.testing.assert_array_equal(np.concatenate([val, train]), expected)
    # the tokens decode back to the original text, EOTs aside
    all_tokens = np.concatenate([val, train]).tolist()
    assert all_tokens.count(EOT) == len(sections)
    assert gpt2_encoding.decode([t for t in all_tokens if t != EOT]) == text

    token_bytes, eot = read_tokenizer_file(tmp_path / "gpt2_tokenizer.bin")
    assert eot == EOT
    assert token_bytes == [gpt2_encoding.decode_single_token_bytes(i) for i in range(50257)]


def test_tinyshakespeare_missing_input(tmp_path: Path) -> None:
    proc = run_script(
        "tinyshakespeare.py", "--input", tmp_path / "absent.txt", "--output-dir", tmp_path / "out"
    )
    assert proc.returncode != 0
    assert "absent.txt" in proc.stderr


# ----------------------------------------------------------------------------------------------
# TinyStories / FineWeb on local files

STORIES = [
    f"Once upon a time, story {i} began.{' The cat sat on the mat.' * (i % 5)} The end."
    for i in range(40)
]


def read_shards(directory: Path, name: str) -> list[np.ndarray]:
    paths = sorted(directory.glob(f"{name}_*.bin"), key=lambda p: p.name.rsplit("_", 1)[1])
    return [read_shard(p, vocab_size=50257) for p in paths]


def check_shards(
    directory: Path, name: str, shard_size: int, expected: np.ndarray, n_docs: int
) -> None:
    names = sorted(p.name for p in directory.glob(f"{name}_*.bin"))
    n_shards = math.ceil(len(expected) / shard_size)
    assert n_shards >= 3, "the test data should span several shards"
    want = [f"{name}_val_000000.bin"] + [f"{name}_train_{i:06d}.bin" for i in range(1, n_shards)]
    assert names == sorted(want)
    shards = [read_shard(directory / n, vocab_size=50257) for n in want]
    assert [len(s) for s in shards[:-1]] == [shard_size] * (n_shards - 1)
    assert 0 < len(shards[-1]) <= shard_size
    tokens = np.concatenate(shards)
    np.testing.assert_array_equal(tokens, expected)
    assert tokens[0] == EOT
    assert int((tokens == EOT).sum()) == n_docs


@pytest.mark.parametrize("processes", ["1", "2"])
def test_tinystories_jsonl(
    gpt2_tokenizer_dir: Path, gpt2_encoding: Any, tmp_path: Path, processes: str
) -> None:
    src = tmp_path / "stories.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for story in STORIES:
            f.write(json.dumps({"text": story, "source": "test"}) + "\n")
    out_dir = tmp_path / "out"
    expected = document_tokens(gpt2_encoding, STORIES)
    shard_size = 97
    run_ok(
        "tinystories.py",
        "--input",
        src,
        "--output-dir",
        out_dir,
        "--shard-size",
        str(shard_size),
        "--tokenizer-dir",
        gpt2_tokenizer_dir,
        "--processes",
        processes,
    )
    check_shards(out_dir, "tinystories", shard_size, expected, len(STORIES))


def test_fineweb_txt_glob(gpt2_tokenizer_dir: Path, gpt2_encoding: Any, tmp_path: Path) -> None:
    # two .txt files, documents separated by blank lines (extra blank lines are not documents)
    (tmp_path / "a.txt").write_text("\n\n".join(STORIES[:20]) + "\n\n\n\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("\n\n" + "\n\n".join(STORIES[20:]), encoding="utf-8")
    out_dir = tmp_path / "out"
    shard_size = 150
    run_ok(
        "fineweb.py",
        "--input",
        tmp_path / "*.txt",
        "--output-dir",
        out_dir,
        "--shard-size",
        str(shard_size),
        "--tokenizer-dir",
        gpt2_tokenizer_dir,
        "--processes",
        "2",
    )
    check_shards(out_dir, "fineweb", shard_size, document_tokens(gpt2_encoding, STORIES), 40)


def test_fineweb_parquet(gpt2_tokenizer_dir: Path, gpt2_encoding: Any, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (parquet input)")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"id": list(range(len(STORIES))), "text": STORIES})
    pq.write_table(table, tmp_path / "part.parquet", row_group_size=7)
    out_dir = tmp_path / "out"
    run_ok(
        "fineweb.py",
        "--input",
        tmp_path / "part.parquet",
        "--output-dir",
        out_dir,
        "--name",
        "pq",
        "--shard-size",
        "100",
        "--tokenizer-dir",
        gpt2_tokenizer_dir,
    )
    check_shards(out_dir, "pq", 100, document_tokens(gpt2_encoding, STORIES), len(STORIES))


def test_bad_local_inputs(gpt2_tokenizer_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "no text field"}\n', encoding="utf-8")
    common: list[str | Path] = [
        "--output-dir",
        tmp_path / "out",
        "--tokenizer-dir",
        gpt2_tokenizer_dir,
    ]
    proc = run_script("tinystories.py", "--input", bad, *common, "--processes", "1")
    assert proc.returncode != 0
    assert f"{bad}:2" in proc.stderr
    proc = run_script("fineweb.py", "--input", tmp_path / "nothing*.jsonl", *common)
    assert proc.returncode != 0
    assert "nothing*.jsonl" in proc.stderr
    other = tmp_path / "data.csv"
    other.write_text("text\nhello\n", encoding="utf-8")
    proc = run_script("fineweb.py", "--input", other, *common, "--processes", "1")
    assert proc.returncode != 0
    assert "data.csv" in proc.stderr
    proc = run_script("fineweb.py", "--input", bad, "--shard-size", "0", *common)
    assert proc.returncode != 0
    assert "--shard-size" in proc.stderr


# ----------------------------------------------------------------------------------------------
# ShardWriter (in process)


def test_shard_writer(dev_data_modules: Path, tmp_path: Path) -> None:
    from data_common import ShardWriter

    docs = [np.arange(1, 8), np.arange(10, 13), np.arange(20, 30)]  # 7 + 3 + 10 = 20 tokens
    with ShardWriter(str(tmp_path), "x", shard_size=6, progress=False) as writer:
        for doc in docs:
            writer.add(doc)
    assert [Path(p).name for p in writer.paths] == [
        "x_val_000000.bin",
        "x_train_000001.bin",
        "x_train_000002.bin",
        "x_train_000003.bin",
    ]
    shards = [read_shard(p) for p in writer.paths]
    assert [len(s) for s in shards] == [6, 6, 6, 2]
    np.testing.assert_array_equal(np.concatenate(shards), np.concatenate(docs))
    assert writer.total_tokens == 20

    with pytest.raises(ValueError, match="65536"):
        ShardWriter(str(tmp_path), "y", 4, progress=False).add([1, 65536])
    with pytest.raises(ValueError, match="positive"):
        ShardWriter(str(tmp_path), "y", 0)


def test_shard_writer_error_writes_no_partial_shard(dev_data_modules: Path, tmp_path: Path) -> None:
    from data_common import ShardWriter

    with pytest.raises(RuntimeError), ShardWriter(str(tmp_path), "z", 4, progress=False) as w:
        w.add([1, 2, 3, 4, 5])
        raise RuntimeError("source failed")
    # the full shard was written; the partial one was not
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z_val_000000.bin"]
