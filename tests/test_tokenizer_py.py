"""llmc.tokenizer: GPT-2 through tiktoken offline from local files, and the C decoder's file."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from llmc.formats import read_tokenizer_file
from llmc.tokenizer import (
    TOKENIZER_DIR_ENV,
    TokenDecoder,
    decode,
    encode_document,
    get_encoding,
    write_tokenizer,
)


def test_offline_encoding(gpt2_encoding: Any) -> None:
    enc = gpt2_encoding
    assert enc.name == "gpt2"
    assert enc.n_vocab == 50257
    assert enc.eot_token == 50256
    # values published with GPT-2 / tiktoken
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode_ordinary(" the") == [262]
    assert enc.decode([15496, 995]) == "Hello world"


def test_environment_variable(
    gpt2_tokenizer_dir: Path, gpt2_encoding: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKENIZER_DIR_ENV, str(gpt2_tokenizer_dir))
    enc = get_encoding()
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    assert enc.encode_ordinary(text) == gpt2_encoding.encode_ordinary(text)


def test_corrupted_file(gpt2_tokenizer_dir: Path, tmp_path: Path) -> None:
    shutil.copy(gpt2_tokenizer_dir / "encoder.json", tmp_path / "encoder.json")
    data = bytearray((gpt2_tokenizer_dir / "vocab.bpe").read_bytes())
    data[-2] ^= 0x01
    (tmp_path / "vocab.bpe").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256") as info:
        get_encoding(tmp_path)
    assert str(tmp_path / "vocab.bpe") in str(info.value)


def test_missing_file(gpt2_tokenizer_dir: Path, tmp_path: Path) -> None:
    shutil.copy(gpt2_tokenizer_dir / "vocab.bpe", tmp_path / "vocab.bpe")
    with pytest.raises(ValueError, match="missing") as info:
        get_encoding(tmp_path)
    assert str(tmp_path / "encoder.json") in str(info.value)


def test_encode_document(gpt2_encoding: Any) -> None:
    enc = gpt2_encoding
    text = "Hello world <|endoftext|> again"
    tokens = encode_document(enc, text)
    assert tokens[0] == 50256
    assert tokens[1:] == enc.encode_ordinary(text)
    assert 50256 not in tokens[1:]  # special-token text inside a document is plain text
    assert decode(enc, tokens[1:]) == text


def test_tokenizer_file_decodes_like_tiktoken(
    gpt2_encoding: Any, shakespeare_path: Path, tmp_path: Path
) -> None:
    enc = gpt2_encoding
    path = tmp_path / "gpt2_tokenizer.bin"
    write_tokenizer(enc, path)
    token_bytes, eot = read_tokenizer_file(path)
    assert eot == 50256
    assert len(token_bytes) == 50257
    for i, tok in enumerate(token_bytes):
        assert tok == enc.decode_single_token_bytes(i), i
    decoder = TokenDecoder(path)
    text = shakespeare_path.read_text(encoding="utf-8")[:20000]
    ids = enc.encode_ordinary(text)
    assert decoder.decode(ids) == text
    assert decoder.decode([eot]) == "<|endoftext|>"
    with pytest.raises(ValueError, match="50257") as info:
        decoder.decode([50257])
    assert str(path) in str(info.value)
