"""Round trips and bad-input checks of every on-disk format in llmc.formats."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from llmc.config import PARAMETER_NAMES, GPT2Config
from llmc.formats import (
    HEADER_BYTES,
    DebugState,
    EvalExample,
    OptimizerState,
    OptimizerStateHeader,
    ReferenceLosses,
    atomic_write,
    bfloat16_bits_to_float32,
    float32_to_bfloat16_bits,
    losses_sidecar_path,
    read_debug_state,
    read_eval_file,
    read_losses_sidecar,
    read_model,
    read_model_header,
    read_optimizer_state,
    read_optimizer_state_header,
    read_shard,
    read_shard_header,
    read_tokenizer_file,
    write_debug_state,
    write_eval_file,
    write_losses_sidecar,
    write_model,
    write_optimizer_state,
    write_shard,
    write_tokenizer_file,
)

TINY = GPT2Config(
    max_seq_len=8, vocab_size=60, num_layers=2, num_heads=2, channels=8, padded_vocab_size=64
)


def random_params(config: GPT2Config, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        name: rng.standard_normal(shape).astype(np.float32)
        for name, shape in config.parameter_shapes().items()
    }


def header_of(path: Path) -> np.ndarray:
    return np.frombuffer(path.read_bytes()[:HEADER_BYTES], dtype="<i4")


def set_header_word(path: Path, index: int, value: int) -> None:
    data = bytearray(path.read_bytes())
    data[4 * index : 4 * index + 4] = struct.pack("<i", value)
    path.write_bytes(bytes(data))


def truncate(path: Path, n_bytes: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - n_bytes])


def append(path: Path, extra: bytes) -> None:
    with open(path, "ab") as f:
        f.write(extra)


def assert_value_error_naming(
    path: Path, fn: Callable[..., Any], *args: Any, match: str = ""
) -> None:
    """fn(*args) raises ValueError matching `match`, and its message names the file."""
    with pytest.raises(ValueError, match=match) as info:
        fn(*args)
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------------------------
# atomic writes


def test_atomic_write_replaces_file(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    with atomic_write(path) as f:
        f.write(b"hello")
    assert path.read_bytes() == b"hello"
    assert os.listdir(tmp_path) == ["out.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it


def test_atomic_write_leaves_nothing_on_error(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write(b"partial")
        raise RuntimeError("writer failed midway")
    assert os.listdir(tmp_path) == []
    # an existing file is left as it was
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write(b"new and partial")
        raise RuntimeError("writer failed midway")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_model_writer_failing_midway_leaves_no_file(tmp_path: Path) -> None:
    params: dict[str, np.ndarray] = dict(random_params(TINY))
    # right shape, but it cannot be converted to float32: fails after the earlier tensors
    params["lnfb"] = np.array(["not a number"] * TINY.channels)
    path = tmp_path / "model.bin"
    with pytest.raises(ValueError):
        write_model(path, TINY, params)
    assert os.listdir(tmp_path) == []


def test_atomic_write_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "x.bin"
    with pytest.raises(FileNotFoundError, match="nope"), atomic_write(path) as f:
        f.write(b"x")


# ----------------------------------------------------------------------------------------------
# model


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_model_round_trip(tmp_path: Path, dtype: str) -> None:
    params = random_params(TINY)
    path = tmp_path / "model.bin"
    write_model(path, TINY, params, dtype=dtype)
    header = header_of(path)
    version = 3 if dtype == "float32" else 5
    assert list(header[:8]) == [20240326, version, 8, 60, 2, 2, 8, 64]
    assert not header[8:].any()
    itemsize = 4 if dtype == "float32" else 2
    assert path.stat().st_size == HEADER_BYTES + TINY.num_parameters() * itemsize
    config, loaded = read_model(path)
    assert config == TINY
    assert read_model_header(path) == (TINY, version)
    assert list(loaded) == list(PARAMETER_NAMES)
    for name, arr in params.items():
        assert loaded[name].dtype == np.float32
        assert loaded[name].shape == arr.shape
        if dtype == "float32":
            np.testing.assert_array_equal(loaded[name], arr)
        else:
            expected = torch.from_numpy(arr).to(torch.bfloat16).float().numpy()
            np.testing.assert_array_equal(loaded[name], expected)


def test_model_body_is_parameters_in_order(tmp_path: Path) -> None:
    params = random_params(TINY, seed=3)
    path = tmp_path / "model.bin"
    write_model(path, TINY, params)
    body = np.frombuffer(path.read_bytes()[HEADER_BYTES:], dtype="<f4")
    expected = np.concatenate([params[name].ravel() for name in PARAMETER_NAMES])
    np.testing.assert_array_equal(body, expected)


def test_bfloat16_rounding_matches_torch() -> None:
    rng = np.random.default_rng(1)
    random_bits = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    special = np.array(
        [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, -np.nan, 3.4e38, -3.4e38, 1e-40, 1e-45],
        dtype=np.float32,
    )
    # exact ties between two bf16 values, with even and odd lower neighbours
    ties = (np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x7F7F8000], dtype=np.uint32)).view(
        np.float32
    )
    values = np.concatenate([random_bits.view(np.float32), special, ties])
    ours = float32_to_bfloat16_bits(values)
    theirs = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    # every non-NaN value rounds to the same bits; NaN payloads differ between torch's scalar
    # (0x7FC0) and vectorized (0xFFFF) paths, so for NaN only NaN-ness is compared
    nan = np.isnan(values)
    assert nan.sum() > 2
    np.testing.assert_array_equal(ours[~nan], theirs[~nan])
    back = bfloat16_bits_to_float32(ours)
    assert np.isnan(back[nan]).all()
    expected_back = torch.from_numpy(values).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(back[~nan].view(np.uint32), expected_back[~nan].view(np.uint32))


def test_write_model_rejects_bad_params(tmp_path: Path) -> None:
    params = random_params(TINY)
    path = tmp_path / "m.bin"
    missing = {k: v for k, v in params.items() if k != "fcw"}
    assert_value_error_naming(path, write_model, path, TINY, missing, match="missing")
    wrong = dict(params, fcw=np.zeros((2, 3), dtype=np.float32))
    assert_value_error_naming(path, write_model, path, TINY, wrong, match="fcw")
    assert_value_error_naming(path, write_model, path, TINY, params, "float16", match="dtype")
    assert not path.exists()


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.bin"
    write_model(path, TINY, random_params(TINY))
    return path


def test_read_model_bad_magic(model_file: Path) -> None:
    set_header_word(model_file, 0, 20240520)
    assert_value_error_naming(model_file, read_model, model_file, match="magic")


def test_read_model_bad_version(model_file: Path) -> None:
    set_header_word(model_file, 1, 4)
    assert_value_error_naming(model_file, read_model, model_file, match="version 4")


def test_read_model_truncated_header(model_file: Path) -> None:
    model_file.write_bytes(model_file.read_bytes()[:100])
    assert_value_error_naming(model_file, read_model, model_file, match="header")


def test_read_model_truncated_body(model_file: Path) -> None:
    truncate(model_file, 4)
    assert_value_error_naming(model_file, read_model, model_file, match="truncated")


def test_read_model_extra_bytes(model_file: Path) -> None:
    append(model_file, b"\0\0\0\0")
    assert_value_error_naming(model_file, read_model, model_file, match="too long")


def test_read_model_channels_not_divisible_by_heads(model_file: Path) -> None:
    set_header_word(model_file, 5, 3)  # C=8, H=3
    assert_value_error_naming(model_file, read_model, model_file, match="divisible")


def test_read_model_padded_vocab_too_small(model_file: Path) -> None:
    set_header_word(model_file, 7, 50)  # Vp < V
    assert_value_error_naming(model_file, read_model, model_file, match="padded")


def test_read_model_bf16_size_checked(tmp_path: Path) -> None:
    path = tmp_path / "m16.bin"
    write_model(path, TINY, random_params(TINY), dtype="bfloat16")
    set_header_word(path, 1, 3)  # claims fp32: the body is half the needed size
    assert_value_error_naming(path, read_model, path, match="truncated")


def test_read_model_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.bin"
    with pytest.raises(FileNotFoundError, match=r"absent\.bin"):
        read_model(path)


# ----------------------------------------------------------------------------------------------
# debug state


def make_debug_state(config: GPT2Config, B: int = 2, T: int = 4) -> DebugState:
    rng = np.random.default_rng(7)
    return DebugState(
        x=rng.integers(0, config.vocab_size, (B, T)).astype(np.int32),
        y=rng.integers(0, config.vocab_size, (B, T)).astype(np.int32),
        logits=rng.standard_normal((B, T, config.padded_vocab_size)).astype(np.float32),
        loss=4.125,
        grads=random_params(config, seed=8),
    )


def test_debug_state_round_trip(tmp_path: Path) -> None:
    state = make_debug_state(TINY)
    path = tmp_path / "state.bin"
    write_debug_state(path, state, TINY)
    header = header_of(path)
    assert list(header[:4]) == [20240327, 2, 2, 4]
    B, T, Vp = 2, 4, 64
    assert path.stat().st_size == HEADER_BYTES + 4 * (2 * B * T + B * T * Vp + 1) + 4 * (
        TINY.num_parameters()
    )
    body = np.frombuffer(path.read_bytes()[HEADER_BYTES:], dtype="<i4")
    np.testing.assert_array_equal(body[: B * T], state.x.ravel())
    loaded = read_debug_state(path, TINY)
    np.testing.assert_array_equal(loaded.x, state.x)
    np.testing.assert_array_equal(loaded.y, state.y)
    np.testing.assert_array_equal(loaded.logits, state.logits)
    assert loaded.loss == state.loss
    assert list(loaded.grads) == list(PARAMETER_NAMES)
    for name in PARAMETER_NAMES:
        np.testing.assert_array_equal(loaded.grads[name], state.grads[name])


def test_debug_state_unpadded_logits(tmp_path: Path) -> None:
    """llm.c's train_gpt2.py writes logits V wide (and padded gradients)."""
    state = make_debug_state(TINY)
    state.logits = state.logits[:, :, : TINY.vocab_size].copy()
    path = tmp_path / "state.bin"
    write_debug_state(path, state, TINY)
    B, T = state.x.shape
    assert path.stat().st_size == HEADER_BYTES + 4 * (
        2 * B * T + B * T * TINY.vocab_size + 1 + TINY.num_parameters()
    )
    loaded = read_debug_state(path, TINY)
    assert loaded.logits.shape == (B, T, TINY.vocab_size)
    np.testing.assert_array_equal(loaded.logits, state.logits)
    np.testing.assert_array_equal(loaded.grads["lnfb"], state.grads["lnfb"])


def test_debug_state_bad_inputs(tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    state = make_debug_state(TINY)
    write_debug_state(path, state, TINY)
    other = GPT2Config(
        max_seq_len=8, vocab_size=60, num_layers=3, num_heads=2, channels=8, padded_vocab_size=64
    )
    assert_value_error_naming(path, read_debug_state, path, other, match="truncated")
    data = path.read_bytes()
    path.write_bytes(data + b"\0" * 4)
    assert_value_error_naming(path, read_debug_state, path, TINY, match="too long")
    path.write_bytes(data[:-4])
    assert_value_error_naming(path, read_debug_state, path, TINY, match="truncated")
    path.write_bytes(data[:10])
    assert_value_error_naming(path, read_debug_state, path, TINY, match="header")
    path.write_bytes(data)
    set_header_word(path, 0, 20240326)
    assert_value_error_naming(path, read_debug_state, path, TINY, match="magic")
    path.write_bytes(data)
    set_header_word(path, 1, 1)
    assert_value_error_naming(path, read_debug_state, path, TINY, match="version")
    path.write_bytes(data)
    set_header_word(path, 2, 0)
    assert_value_error_naming(path, read_debug_state, path, TINY, match="B=0")


def test_debug_state_token_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    state = make_debug_state(TINY)
    state.y[1, 2] = TINY.vocab_size  # a padded-vocabulary id is never a valid target
    assert_value_error_naming(path, write_debug_state, path, state, TINY, match="60")
    write_debug_state(path, state)  # without a config the writer cannot check ids
    assert_value_error_naming(path, read_debug_state, path, TINY, match="token id 60")


def test_debug_state_writer_checks_shapes(tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    state = make_debug_state(TINY)
    state.logits = state.logits[:, :, :59]
    assert_value_error_naming(path, write_debug_state, path, state, TINY, match="59 wide")
    state = make_debug_state(TINY)
    state.y = state.y[:, :3]
    assert_value_error_naming(path, write_debug_state, path, state, match="y")
    assert not path.exists()


# ----------------------------------------------------------------------------------------------
# loss sidecar


def test_losses_sidecar_round_trip(tmp_path: Path) -> None:
    state_path = tmp_path / "state.bin"
    assert read_losses_sidecar(state_path) is None
    ref = ReferenceLosses(
        learning_rate=1e-4,
        beta1=0.9,
        beta2=0.95,
        eps=1e-8,
        weight_decay=0.0,
        losses=[5.270007133483887, 4.059706687927246, 0.1 + 0.2],
    )
    write_losses_sidecar(state_path, ref)
    path = Path(losses_sidecar_path(state_path))
    assert path.name == "state.bin.losses"
    lines = path.read_text().splitlines()
    assert lines[0] == "# llmc reference losses v1"
    assert "learning_rate 0.0001" in lines
    assert lines[-1] == "loss 0.30000000000000004"
    assert read_losses_sidecar(state_path) == ref


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("# something else\n", "first line"),
        ("", "first line"),
        ("# llmc reference losses v1\nlearning_rate x\n", "not a number"),
        ("# llmc reference losses v1\nmomentum 0.9\n", "unknown key"),
        ("# llmc reference losses v1\nloss 1.0 2.0\n", "key value"),
        ("# llmc reference losses v1\nloss nan\n", "finite"),
        ("# llmc reference losses v1\nbeta1 0.9\nbeta1 0.8\n", "twice"),
        ("# llmc reference losses v1\nbeta1 0.9\nloss 1.0\n", "missing settings"),
    ],
)
def test_losses_sidecar_malformed(tmp_path: Path, text: str, match: str) -> None:
    state_path = tmp_path / "state.bin"
    Path(losses_sidecar_path(state_path)).write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        read_losses_sidecar(state_path)
    assert "state.bin.losses" in str(info.value)


def test_losses_sidecar_rejects_non_finite(tmp_path: Path) -> None:
    ref = ReferenceLosses(1e-4, 0.9, 0.95, 1e-8, 0.0, losses=[1.0, float("inf")])
    with pytest.raises(ValueError, match="finite"):
        write_losses_sidecar(tmp_path / "s.bin", ref)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# token shards


def test_shard_round_trip(tmp_path: Path) -> None:
    tokens = np.array([50256, 0, 1, 65535, 42], dtype=np.int64)
    path = tmp_path / "shard.bin"
    write_shard(path, tokens)
    assert list(header_of(path)[:3]) == [20240520, 1, 5]
    assert path.stat().st_size == HEADER_BYTES + 2 * 5
    loaded = read_shard(path)
    assert loaded.dtype == np.uint16
    np.testing.assert_array_equal(loaded, tokens)
    assert read_shard_header(path) == 5
    write_shard(path, [3, 2, 1])  # plain lists work too
    np.testing.assert_array_equal(read_shard(path), [3, 2, 1])


def test_shard_writer_rejects_bad_tokens(tmp_path: Path) -> None:
    path = tmp_path / "shard.bin"
    assert_value_error_naming(path, write_shard, path, [1, 65536], match="65536")
    assert_value_error_naming(path, write_shard, path, [1, -1], match="-1")
    assert_value_error_naming(path, write_shard, path, [], match="empty")
    assert_value_error_naming(path, write_shard, path, [1.5], match="integers")
    assert_value_error_naming(path, write_shard, path, [[1, 2]], match="one-dimensional")
    assert not path.exists()


def test_shard_reader_bad_inputs(tmp_path: Path) -> None:
    path = tmp_path / "shard.bin"
    write_shard(path, np.arange(100))
    data = path.read_bytes()
    path.write_bytes(data[:-2])
    assert_value_error_naming(path, read_shard, path, match="truncated")
    path.write_bytes(data + b"\0\0")
    assert_value_error_naming(path, read_shard, path, match="too long")
    path.write_bytes(data[: HEADER_BYTES - 1])
    assert_value_error_naming(path, read_shard, path, match="header")
    path.write_bytes(data)
    set_header_word(path, 0, 20240326)
    assert_value_error_naming(path, read_shard, path, match="magic")
    path.write_bytes(data)
    set_header_word(path, 1, 2)
    assert_value_error_naming(path, read_shard, path, match="version")
    path.write_bytes(data)
    assert_value_error_naming(path, read_shard, path, 50, match="token id 99")
    empty = np.zeros(256, dtype="<i4")
    empty[0], empty[1] = 20240520, 1
    path.write_bytes(empty.tobytes())
    assert_value_error_naming(path, read_shard, path, match="empty")
    assert_value_error_naming(path, read_shard_header, path, match="empty")
    with pytest.raises(FileNotFoundError, match="absent"):
        read_shard(tmp_path / "absent.bin")


# ----------------------------------------------------------------------------------------------
# tokenizer file


def test_tokenizer_file_round_trip(tmp_path: Path) -> None:
    tokens = [b"a", b"hello", bytes(range(256))[:255], b"\xff\xfe", b"<|endoftext|>"]
    path = tmp_path / "tok.bin"
    write_tokenizer_file(path, tokens, eot_token=4)
    assert list(header_of(path)[:4]) == [20240328, 2, 5, 4]
    body = path.read_bytes()[HEADER_BYTES:]
    assert body[:8] == b"\x01a\x05hello"
    assert len(body) == sum(1 + len(t) for t in tokens)
    assert read_tokenizer_file(path) == (tokens, 4)


def test_tokenizer_file_bad_inputs(tmp_path: Path) -> None:
    path = tmp_path / "tok.bin"
    w = write_tokenizer_file
    assert_value_error_naming(path, w, path, [b"a", b""], 0, match="token 1 has 0 bytes")
    assert_value_error_naming(path, w, path, [b"a", b"x" * 256], 0, match="256 bytes")
    assert_value_error_naming(path, w, path, [b"a"], 1, match="EOT")
    write_tokenizer_file(path, [b"ab", b"c"], 1)
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    assert_value_error_naming(path, read_tokenizer_file, path, match="truncated")
    path.write_bytes(data[:-2])
    assert_value_error_naming(path, read_tokenizer_file, path, match="truncated")
    path.write_bytes(data + b"\x01z")
    assert_value_error_naming(path, read_tokenizer_file, path, match="too long")
    path.write_bytes(data[:HEADER_BYTES] + b"\x00" + data[HEADER_BYTES:])
    assert_value_error_naming(path, read_tokenizer_file, path, match="length 0")
    path.write_bytes(data)
    set_header_word(path, 3, 2)
    assert_value_error_naming(path, read_tokenizer_file, path, match="EOT")
    path.write_bytes(data)
    set_header_word(path, 0, 1)
    assert_value_error_naming(path, read_tokenizer_file, path, match="magic")
    path.write_bytes(data)
    set_header_word(path, 1, 1)
    assert_value_error_naming(path, read_tokenizer_file, path, match="version")


# ----------------------------------------------------------------------------------------------
# eval files


EXAMPLES = [
    EvalExample(index=0, label=2, context=[10, 11, 12], completions=[[1], [2, 3], [4], [5, 6, 7]]),
    EvalExample(index=1, label=0, context=[50256], completions=[[9, 9], [8], [7], [6]]),
]


def llmc_eval_stream(ex: EvalExample) -> list[int]:
    """The documented llm.c layout, built independently of formats.EvalExample.stream."""
    body = [len(ex.context), *ex.context]
    for completion in ex.completions:
        body += [len(completion), *completion]
    n_bytes = 2 * (5 + len(body))
    return [65535, n_bytes, ex.index, ex.label, len(ex.completions), *body]


def test_eval_file_round_trip_and_layout(tmp_path: Path) -> None:
    path = tmp_path / "eval.bin"
    write_eval_file(path, EXAMPLES)
    streams = [llmc_eval_stream(ex) for ex in EXAMPLES]
    header = header_of(path)
    assert list(header[:4]) == [20240522, 1, 2, max(s[1] for s in streams)]
    expected_body = np.array(streams[0] + streams[1], dtype="<u2").tobytes()
    assert path.read_bytes()[HEADER_BYTES:] == expected_body
    assert read_eval_file(path) == EXAMPLES
    assert read_eval_file(path, vocab_size=50257) == EXAMPLES


def test_eval_file_writer_rejects(tmp_path: Path) -> None:
    path = tmp_path / "eval.bin"
    bad_label = [EvalExample(0, 4, [1], [[1], [2], [3], [4]])]
    assert_value_error_naming(path, write_eval_file, path, bad_label, match="label 4")
    bad_token = [EvalExample(0, 0, [65535], [[1]])]
    assert_value_error_naming(path, write_eval_file, path, bad_token, match="65535")
    empty_completion = [EvalExample(0, 0, [1], [[1], []])]
    assert_value_error_naming(path, write_eval_file, path, empty_completion, match="empty")
    assert_value_error_naming(path, write_eval_file, path, [], match="without examples")
    assert not path.exists()


def test_eval_file_reader_bad_inputs(tmp_path: Path) -> None:
    path = tmp_path / "eval.bin"
    write_eval_file(path, EXAMPLES)
    data = path.read_bytes()
    path.write_bytes(data[:-2])
    assert_value_error_naming(path, read_eval_file, path, match="example 1")
    path.write_bytes(data + b"\0\0")
    assert_value_error_naming(path, read_eval_file, path, match="too long")
    path.write_bytes(data + b"\0")
    assert_value_error_naming(path, read_eval_file, path, match="odd")
    body = bytearray(data)
    body[HEADER_BYTES : HEADER_BYTES + 2] = b"\0\0"  # start marker
    path.write_bytes(bytes(body))
    assert_value_error_naming(path, read_eval_file, path, match="start marker")
    body = bytearray(data)
    body[HEADER_BYTES + 2 : HEADER_BYTES + 4] = struct.pack("<H", 20)  # size field
    path.write_bytes(bytes(body))
    assert_value_error_naming(path, read_eval_file, path, match="example 0")
    body = bytearray(data)
    body[HEADER_BYTES + 6 : HEADER_BYTES + 8] = struct.pack("<H", 9)  # label
    path.write_bytes(bytes(body))
    assert_value_error_naming(path, read_eval_file, path, match="label 9")
    path.write_bytes(data)
    set_header_word(path, 3, 1000)
    assert_value_error_naming(path, read_eval_file, path, match="longest")
    path.write_bytes(data)
    set_header_word(path, 2, 3)
    assert_value_error_naming(path, read_eval_file, path, match="example 2")
    path.write_bytes(data)
    assert_value_error_naming(path, read_eval_file, path, 50000, match="token id 50256")
    path.write_bytes(data)
    set_header_word(path, 0, 20240520)
    assert_value_error_naming(path, read_eval_file, path, match="magic")


# ----------------------------------------------------------------------------------------------
# optimizer state


def test_optimizer_state_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    n = 1000
    header = OptimizerStateHeader(
        processes=4,
        rank=3,
        master_weights=True,
        shuffle=True,
        step=123,
        rng=(1, 2**32 - 1, 0x9E3779B9, 7),
        shard_index=5,
        sample_index=2**40 + 17,
    )
    state = OptimizerState(
        header=header,
        m=rng.standard_normal(n).astype(np.float32),
        v=rng.random(n).astype(np.float32),
        master=rng.standard_normal(n).astype(np.float32),
        dataloader_state=b"\x01\x02\x03\x04",
    )
    path = tmp_path / "state.bin"
    write_optimizer_state(path, state)
    words = np.frombuffer(path.read_bytes()[:HEADER_BYTES], dtype="<u4")
    assert list(words[:6]) == [20240527, 1, 4, 3, 1, 1]
    assert words[10] == 123
    assert list(words[20:24]) == [1, 2**32 - 1, 0x9E3779B9, 7]
    assert list(words[30:34]) == [5, 0, 17, 2**8]
    assert path.stat().st_size == HEADER_BYTES + 3 * 4 * n + 4
    assert read_optimizer_state_header(path) == header
    loaded = read_optimizer_state(path, n)
    assert loaded.header == header
    np.testing.assert_array_equal(loaded.m, state.m)
    np.testing.assert_array_equal(loaded.v, state.v)
    assert loaded.master is not None
    np.testing.assert_array_equal(loaded.master, state.master)
    assert loaded.dataloader_state == b"\x01\x02\x03\x04"


def test_optimizer_state_bad_inputs(tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    header = OptimizerStateHeader(processes=1, rank=0, master_weights=False, shuffle=False, step=1)
    state = OptimizerState(header=header, m=np.zeros(10, np.float32), v=np.zeros(10, np.float32))
    write_optimizer_state(path, state)
    assert read_optimizer_state(path, 10).master is None
    assert_value_error_naming(path, read_optimizer_state, path, 11, match="truncated")
    assert_value_error_naming(path, read_optimizer_state, path, 9, match="too long")
    data = path.read_bytes()
    set_header_word(path, 3, 1)  # rank 1 of 1 process
    assert_value_error_naming(path, read_optimizer_state_header, path, match="rank 1")
    path.write_bytes(data)
    set_header_word(path, 0, 20240326)
    assert_value_error_naming(path, read_optimizer_state_header, path, match="magic")
    path.write_bytes(data[:500])
    assert_value_error_naming(path, read_optimizer_state_header, path, match="header")
    bad = OptimizerState(header=header, m=np.zeros(10, np.float32), v=np.zeros(9, np.float32))
    assert_value_error_naming(path, write_optimizer_state, path, bad, match="v has 9")
    no_master = OptimizerState(
        header=OptimizerStateHeader(1, 0, True, False, 1), m=state.m, v=state.v
    )
    assert_value_error_naming(path, write_optimizer_state, path, no_master, match="master")
