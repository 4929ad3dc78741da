"""Shared pytest fixtures: where the shared GPT-2 tokenizer files and the sample text live.

The shared data sits next to the repository (`<repo>/../shared/`, as in CI); the tokenizer
directory can also be given with LLMC_TOKENIZER_DIR. Tests that need a file that is absent skip
with the reason, so a checkout without the shared data still runs everything else.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"
DEV_DATA_DIR = REPO_ROOT / "dev" / "data"
TOKENIZER_FILES = ("vocab.bpe", "encoder.json")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's top directory."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir() -> Path:
    """Directory with GPT-2's vocab.bpe and encoder.json ($LLMC_TOKENIZER_DIR or shared/)."""
    candidates = []
    env = os.environ.get("LLMC_TOKENIZER_DIR")
    if env:
        candidates.append(Path(env))
    candidates.append(SHARED_DIR / "tokenizer" / "gpt2")
    for directory in candidates:
        if all((directory / name).is_file() for name in TOKENIZER_FILES):
            return directory
    looked = ", ".join(str(c) for c in candidates)
    pytest.skip(f"GPT-2 tokenizer files (vocab.bpe, encoder.json) not found in: {looked}")


@pytest.fixture(scope="session")
def gpt2_encoding(gpt2_tokenizer_dir: Path) -> Any:
    """tiktoken's GPT-2 encoding, built offline from the shared files."""
    from llmc.tokenizer import get_encoding

    return get_encoding(gpt2_tokenizer_dir)


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """The tiny Shakespeare text (about 1 MB)."""
    path = SHARED_DIR / "data" / "tinyshakespeare.txt"
    if not path.is_file():
        pytest.skip(f"tiny Shakespeare text not found at {path}")
    return path


@pytest.fixture(scope="session")
def dev_data_modules() -> Path:
    """Makes the dev/data scripts importable as modules (data_common, hellaswag, ...)."""
    if str(DEV_DATA_DIR) not in sys.path:
        sys.path.insert(0, str(DEV_DATA_DIR))
    return DEV_DATA_DIR
