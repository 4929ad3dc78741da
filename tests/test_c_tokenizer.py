"""The C tokenizer decoder (llmc/tokenizer.h) through llmc._llmc.Tokenizer, against tiktoken.

The GPT-2 encoding is loaded offline from $LLMC_TOKENIZER_DIR or ../shared/tokenizer/gpt2 next to
the repository when one of them exists, else through tiktoken's own download/cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tiktoken

from llmc._llmc import Tokenizer, safe_text
from llmc.tokenizer import TOKENIZER_DIR_ENV, get_encoding, write_tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_TOKENIZER_DIR = REPO_ROOT.parent / "shared" / "tokenizer" / "gpt2"
TOKENIZER_MAGIC = 20240328

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.",
    "naïve café déjà vu — “quotes” and ‘apostrophes’ … ½ ¾ €100",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "emoji 🙂🚀🎉 and flags 🇫🇷 and zero width joiner 👩‍💻",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝑥² + 𝑦² = 𝑧²",
    "tabs\tand\r\nwindows line endings and a NUL \x00 byte and \x7f DEL",
    "<|endoftext|> as plain text",
    "   leading spaces and trailing   ",
]


@pytest.fixture(scope="module")
def encoding() -> tiktoken.Encoding:
    if os.environ.get(TOKENIZER_DIR_ENV):
        return get_encoding()
    if SHARED_TOKENIZER_DIR.is_dir():
        return get_encoding(SHARED_TOKENIZER_DIR)
    return get_encoding()


@pytest.fixture(scope="module")
def tokenizer_file(encoding: tiktoken.Encoding, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer") / "gpt2_tokenizer.bin"
    write_tokenizer(encoding, path)
    return path


def test_every_token_decodes_like_tiktoken(
    encoding: tiktoken.Encoding, tokenizer_file: Path
) -> None:
    tok = Tokenizer(str(tokenizer_file))
    assert tok.size == len(tok) == encoding.n_vocab == 50257
    assert tok.eot == encoding.eot_token == 50256
    assert tok.decode(tok.eot) == b"<|endoftext|>"
    for i in range(encoding.n_vocab):
        assert tok.decode(i) == encoding.decode_single_token_bytes(i), f"token {i}"


def test_texts_decode_like_tiktoken(encoding: tiktoken.Encoding, tokenizer_file: Path) -> None:
    tok = Tokenizer(str(tokenizer_file))
    split_characters = 0
    for text in TEXTS:
        ids = encoding.encode_ordinary(text)
        decoded = tok.decode_all(ids)
        assert decoded == encoding.decode_bytes(ids)
        assert decoded.decode("utf-8") == text
        assert tok.decode_all(np.array(ids, dtype=np.uint16)) == decoded
        # count tokens that are only part of a UTF-8 character: their bytes alone do not decode
        for i in ids:
            try:
                tok.decode(i).decode("utf-8")
            except UnicodeDecodeError:
                split_characters += 1
    assert split_characters > 0, "the texts must include characters split across tokens"


def test_random_sequences_decode_like_tiktoken(
    encoding: tiktoken.Encoding, tokenizer_file: Path
) -> None:
    tok = Tokenizer(str(tokenizer_file))
    rng = np.random.default_rng(1)
    for _ in range(200):
        ids = rng.integers(0, encoding.n_vocab, size=int(rng.integers(1, 64))).tolist()
        assert tok.decode_all(ids) == encoding.decode_bytes(ids)
    assert tok.decode_all([]) == b""


def test_out_of_range_ids(tokenizer_file: Path) -> None:
    tok = Tokenizer(str(tokenizer_file))
    for bad in (50257, 1 << 40, -1):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tok.decode(bad)
    with pytest.raises(ValueError, match="50300"):
        tok.decode_all([1, 2, 50300])


def test_safe_text_escapes_what_a_terminal_should_not_see() -> None:
    assert safe_text(b"plain text\n\twith tabs") == "plain text\n\twith tabs"
    assert safe_text("déjà 日本 🙂".encode()) == "déjà 日本 🙂"
    assert safe_text(b"a\x00b\x1b[31mc\x7f\r") == "a\\x00b\\x1B[31mc\\x7F\\x0D"
    assert safe_text(b"\xff\xfe") == "\\xFF\\xFE"  # not UTF-8
    assert safe_text("🙂".encode()[:3] + b"x") == "\\xF0\\x9F\\x99x"  # truncated sequence
    assert safe_text(b"\xc0\xaf") == "\\xC0\\xAF"  # overlong '/'
    assert safe_text(b"\xed\xa0\x80") == "\\xED\\xA0\\x80"  # surrogate
    assert safe_text("\u0085".encode()) == "\\xC2\\x85"  # C1 control character


# ---------------------------------------------------------------------------------------------
# file versions and bad files


def tokenizer_bytes(tokens: list[bytes], header: list[int]) -> bytes:
    words = np.zeros(256, dtype="<i4")
    words[: len(header)] = header
    body = b"".join(bytes([len(t)]) + t for t in tokens)
    return words.tobytes() + body


def test_version_1_has_no_eot_field(tmp_path: Path) -> None:
    tokens = [bytes([i % 256]) * (1 + i % 3) for i in range(50257)]
    path = tmp_path / "v1.bin"
    path.write_bytes(tokenizer_bytes(tokens, [TOKENIZER_MAGIC, 1, len(tokens)]))
    tok = Tokenizer(str(path))
    assert tok.eot == 50256
    assert tok.decode(0) == b"\x00"  # a NUL byte is a token like any other
    assert tok.decode(50256) == tokens[50256]
    small = tmp_path / "v1_small.bin"
    small.write_bytes(tokenizer_bytes(tokens[:100], [TOKENIZER_MAGIC, 1, 100]))
    with pytest.raises(ValueError, match=r"v1_small\.bin: EOT token 50256"):
        Tokenizer(str(small))


def test_small_version_2_file(tmp_path: Path) -> None:
    tokens = [b"a", b"bc", b"\x00", b"<eot>"]
    path = tmp_path / "small.bin"
    path.write_bytes(tokenizer_bytes(tokens, [TOKENIZER_MAGIC, 2, 4, 3]))
    tok = Tokenizer(str(path))
    assert (tok.size, tok.eot) == (4, 3)
    assert tok.decode_all([0, 1, 2, 3, 0]) == b"abc\x00<eot>a"


BAD_FILES = {
    "wrong magic": (tokenizer_bytes([b"a", b"b"], [1234, 2, 2, 1]), "bad magic 1234"),
    "wrong version": (tokenizer_bytes([b"a", b"b"], [TOKENIZER_MAGIC, 3, 2, 1]), "version 3"),
    "no tokens": (tokenizer_bytes([], [TOKENIZER_MAGIC, 2, 0, 0]), "number of tokens 0"),
    "eot out of range": (tokenizer_bytes([b"a", b"b"], [TOKENIZER_MAGIC, 2, 2, 2]), "EOT token 2"),
    "negative eot": (tokenizer_bytes([b"a", b"b"], [TOKENIZER_MAGIC, 2, 2, -1]), "EOT token -1"),
    "truncated header": (tokenizer_bytes([], [TOKENIZER_MAGIC, 2, 2, 1])[:64], "truncated header"),
    "empty file": (b"", "truncated header"),
    "missing tokens": (tokenizer_bytes([b"a"], [TOKENIZER_MAGIC, 2, 2, 1]), "before token 1"),
    "truncated token": (
        tokenizer_bytes([b"a", b"bcd"], [TOKENIZER_MAGIC, 2, 2, 1])[:-1],
        "token 1 needs 3 bytes",
    ),
    "zero-length token": (tokenizer_bytes([b"a", b""], [TOKENIZER_MAGIC, 2, 2, 0]), "length 0"),
    "extra bytes": (tokenizer_bytes([b"a", b"b"], [TOKENIZER_MAGIC, 2, 2, 1]) + b"zz", "extra"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_tokenizer_file_is_named(tmp_path: Path, case: str) -> None:
    contents, message = BAD_FILES[case]
    path = tmp_path / "bad_tokenizer.bin"
    path.write_bytes(contents)
    with pytest.raises(ValueError, match=r"bad_tokenizer\.bin") as info:
        Tokenizer(str(path))
    assert message in str(info.value)


def test_missing_tokenizer_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.bin: cannot open"):
        Tokenizer(str(tmp_path / "nope.bin"))
    with pytest.raises(ValueError, match="cannot read"):
        Tokenizer(str(tmp_path))
