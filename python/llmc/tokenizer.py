"""GPT-2 BPE through tiktoken, online or offline from local files, and the C decoder's file.

`get_encoding()` returns tiktoken's GPT-2 encoding. With a directory (argument or the
LLMC_TOKENIZER_DIR environment variable) it is built offline from OpenAI's original `vocab.bpe`
and `encoder.json` there, after checking their sha256; without one, tiktoken downloads them
(or uses its cache). Both give the same encoding: 50,257 tokens, `<|endoftext|>` = 50256.

Documents are encoded as [EOT] + tokens, so EOT separates (and opens) every document, as in llm.c.
"""

from __future__ import annotations

import hashlib
import os
from typing import Union

import tiktoken

from llmc.formats import read_tokenizer_file, write_tokenizer_file

PathLike = Union[str, "os.PathLike[str]"]

TOKENIZER_DIR_ENV = "LLMC_TOKENIZER_DIR"
# sha256 of OpenAI's files, the same values tiktoken's gpt2() uses as expected_hash
GPT2_FILE_SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
GPT2_N_VOCAB = 50257
GPT2_EOT_TEXT = "<|endoftext|>"


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _encoding_from_dir(tokenizer_dir: str) -> tiktoken.Encoding:
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    paths = {}
    for name, expected in GPT2_FILE_SHA256.items():
        path = os.path.join(tokenizer_dir, name)
        if not os.path.isfile(path):
            raise ValueError(
                f"{path}: missing GPT-2 tokenizer file (the tokenizer directory "
                f"{tokenizer_dir} must hold vocab.bpe and encoder.json)"
            )
        actual = _sha256(path)
        if actual != expected:
            raise ValueError(
                f"{path}: sha256 {actual} does not match OpenAI's GPT-2 file ({expected}); "
                "the file is corrupted or not the original"
            )
        paths[name] = path
    # the hashes were checked above; tiktoken checks them again when it reads the files
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=paths["vocab.bpe"],
        encoder_json_file=paths["encoder.json"],
        vocab_bpe_hash=GPT2_FILE_SHA256["vocab.bpe"],
        encoder_json_hash=GPT2_FILE_SHA256["encoder.json"],
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={GPT2_EOT_TEXT: GPT2_N_VOCAB - 1},
        explicit_n_vocab=GPT2_N_VOCAB,
    )


def get_encoding(tokenizer_dir: PathLike | None = None) -> tiktoken.Encoding:
    """GPT-2's tiktoken encoding: offline from `tokenizer_dir` (or $LLMC_TOKENIZER_DIR) if set,
    else tiktoken's own download/cache."""
    if tokenizer_dir is None:
        env = os.environ.get(TOKENIZER_DIR_ENV)
        tokenizer_dir = env if env else None
    if tokenizer_dir is not None:
        return _encoding_from_dir(os.fspath(tokenizer_dir))
    return tiktoken.get_encoding("gpt2")


def encode_document(enc: tiktoken.Encoding, text: str) -> list[int]:
    """Tokens of one document: EOT, then the text (special-token strings are plain text)."""
    return [enc.eot_token, *enc.encode_ordinary(text)]


def decode(enc: tiktoken.Encoding, tokens: list[int]) -> str:
    """Text of a token list (invalid UTF-8 from partial tokens becomes U+FFFD)."""
    return enc.decode(tokens, errors="replace")


def token_bytes(enc: tiktoken.Encoding) -> list[bytes]:
    """Bytes of every token id 0..n_vocab-1, in id order."""
    return [enc.decode_single_token_bytes(i) for i in range(enc.n_vocab)]


def write_tokenizer(enc: tiktoken.Encoding, path: PathLike) -> None:
    """Write the tokenizer file the C decoder reads (every token's bytes and the EOT id)."""
    write_tokenizer_file(path, token_bytes(enc), enc.eot_token)


class TokenDecoder:
    """Decoder backed by a tokenizer .bin file only (no tiktoken), like the C side's."""

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self.tokens, self.eot_token = read_tokenizer_file(path)

    def decode_bytes(self, ids: list[int]) -> bytes:
        """Concatenated bytes of the tokens; ValueError for an id outside the vocabulary."""
        out = bytearray()
        for t in ids:
            if not 0 <= t < len(self.tokens):
                raise ValueError(f"{self.path}: token id {t} outside [0, {len(self.tokens)})")
            out += self.tokens[t]
        return bytes(out)

    def decode(self, ids: list[int]) -> str:
        """Text of the tokens (invalid UTF-8 becomes U+FFFD)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
