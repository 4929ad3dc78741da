"""Readers and writers for llmc's on-disk formats, byte-compatible with llm.c.

Every file starts with a header of 256 little-endian int32 (1024 bytes); [0] is a magic number
naming the kind of file and [1] its version. The body follows directly:

| file        | header                                              | body                        |
|-------------|-----------------------------------------------------|-----------------------------|
| token shard | 20240520, 1, n tokens                               | uint16 tokens               |
| model       | 20240326, 3 (fp32) / 5 (bf16), maxT, V, L, H, C, Vp | parameters, on-disk order   |
| debug state | 20240327, 2, B, T                                   | x, y (int32), logits, loss, |
|             |                                                     | grads (fp32, param. order)  |
| tokenizer   | 20240328, 2, n tokens, EOT id                       | per token: length, bytes    |
| eval        | 20240522, 1, n examples, longest example in bytes   | uint16 example streams      |
| optimizer   | 20240527, 1, processes, rank, master?, shuffle?,    | m, v (fp32), master weights,|
| state       | [10] step, [20..23] RNG, [30..33] shard/sample      | dataloader shuffle state    |

Readers check the magic, the version, the header fields and the body length against the file
size, and raise ValueError naming the file and the numbers that disagree. Writers write to a
temporary file in the destination directory and rename it into place (`atomic_write`), so a
crash or an exception never leaves a partial file under the final name.

The loss sidecar (`<debug state>.losses`) is llmc's own addition: a small text file with the
AdamW settings and the reference losses of a few optimizer steps, which llm.c's debug state has
no room for.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO, Union

import numpy as np

from llmc.config import PARAMETER_NAMES, GPT2Config

PathLike = Union[str, "os.PathLike[str]"]

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4

MODEL_MAGIC = 20240326
MODEL_VERSION_FP32 = 3
MODEL_VERSION_BF16 = 5
DEBUG_STATE_MAGIC = 20240327
DEBUG_STATE_VERSION = 2
TOKENIZER_MAGIC = 20240328
TOKENIZER_VERSION = 2
SHARD_MAGIC = 20240520
SHARD_VERSION = 1
EVAL_MAGIC = 20240522
EVAL_VERSION = 1
OPTIMIZER_MAGIC = 20240527
OPTIMIZER_VERSION = 1

SHARD_MAX_TOKEN = 2**16 - 1  # token ids are stored as uint16
EVAL_EXAMPLE_START = 2**16 - 1  # uint16 marker that opens every example of an eval file
MAX_TOKEN_BYTES = 255  # a tokenizer entry's length is stored in one byte

LOSSES_SUFFIX = ".losses"
LOSSES_HEADER = "# llmc reference losses v1"
_LOSSES_SETTINGS = ("learning_rate", "beta1", "beta2", "eps", "weight_decay")


# ----------------------------------------------------------------------------------------------
# helpers


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to `path`; on success rename it to `path`, else delete it.

    Usage: ``with atomic_write(path) as f: f.write(...)``. The directory must exist.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{path}: directory {directory} does not exist")
    fd, tmp_path = tempfile.mkstemp(
        dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            # mkstemp creates the file 0600; give it the mode a plain open() would have
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_path)
        raise


def _new_header(magic: int, version: int) -> np.ndarray:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0] = magic
    header[1] = version
    return header


def _read_header(
    f: BinaryIO, path: str, kind: str, magic: int, versions: Sequence[int]
) -> np.ndarray:
    """Read and check the 256-int32 header of an open file; returns it as int64."""
    raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise ValueError(
            f"{path}: truncated {kind} header: file has {len(raw)} bytes, "
            f"the header alone needs {HEADER_BYTES}"
        )
    header = np.frombuffer(raw, dtype="<i4").astype(np.int64)
    if header[0] != magic:
        raise ValueError(
            f"{path}: bad magic number {header[0]} (expected {magic}): not a {kind} file"
        )
    if header[1] not in versions:
        expected = " or ".join(str(v) for v in versions)
        raise ValueError(f"{path}: unsupported {kind} version {header[1]} (expected {expected})")
    return header


def _check_size(path: str, kind: str, file_size: int, body_bytes: int) -> None:
    expected = HEADER_BYTES + body_bytes
    if file_size != expected:
        what = "truncated" if file_size < expected else "too long"
        raise ValueError(
            f"{path}: {kind} file is {what}: {file_size} bytes, expected {expected} "
            f"({HEADER_BYTES} header + {body_bytes} body)"
        )


def _read_array(f: BinaryIO, path: str, dtype: str, count: int) -> np.ndarray:
    """Read exactly `count` items of `dtype` from the current position."""
    arr = np.fromfile(f, dtype=dtype, count=count)
    if arr.size != count:
        raise ValueError(f"{path}: truncated: read {arr.size} of {count} {dtype} values")
    return arr


def _write_array(f: IO[Any], arr: np.ndarray) -> None:
    f.write(np.ascontiguousarray(arr).data.cast("B"))


def _check_token_range(path: str, what: str, tokens: np.ndarray, vocab_size: int) -> None:
    if tokens.size == 0:
        return
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{path}: {what} contains token id {bad}, outside [0, {vocab_size})")


# ----------------------------------------------------------------------------------------------
# bfloat16 (numpy has no bf16 type: we keep the 16 upper bits of the fp32 pattern)


def float32_to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """Round fp32 to bf16 (nearest, ties to even, like torch); returns the uint16 bit patterns.

    NaN maps to the quiet NaN 0x7FC0 (as torch does); overflow rounds to +-inf as in IEEE.
    """
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    rounded = ((bits + np.uint32(0x7FFF) + lsb) >> np.uint32(16)).astype(np.uint16)
    return np.where(np.isnan(bits.view(np.float32)), np.uint16(0x7FC0), rounded).astype(np.uint16)


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen bf16 bit patterns (uint16) to fp32 exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


# ----------------------------------------------------------------------------------------------
# model


def _check_params(path: str, config: GPT2Config, params: dict[str, np.ndarray], what: str) -> None:
    shapes = config.parameter_shapes()
    missing = [name for name in PARAMETER_NAMES if name not in params]
    if missing:
        raise ValueError(f"{path}: {what} is missing tensors {missing}")
    extra = sorted(set(params) - set(PARAMETER_NAMES))
    if extra:
        raise ValueError(f"{path}: {what} has unknown tensors {extra}")
    for name, shape in shapes.items():
        if tuple(np.shape(params[name])) != shape:
            raise ValueError(
                f"{path}: {what} tensor {name} has shape {tuple(np.shape(params[name]))}, "
                f"expected {shape}"
            )


def _model_header(config: GPT2Config, version: int) -> np.ndarray:
    header = _new_header(MODEL_MAGIC, version)
    header[2] = config.max_seq_len
    header[3] = config.vocab_size
    header[4] = config.num_layers
    header[5] = config.num_heads
    header[6] = config.channels
    header[7] = config.padded_vocab_size
    return header


def write_model(
    path: PathLike,
    config: GPT2Config,
    params: dict[str, np.ndarray],
    dtype: str = "float32",
) -> None:
    """Write a model checkpoint: `params` maps every name of PARAMETER_NAMES to its array.

    dtype "float32" writes version 3; "bfloat16" writes version 5 (round to nearest even).
    """
    path = os.fspath(path)
    if dtype == "float32":
        version = MODEL_VERSION_FP32
    elif dtype == "bfloat16":
        version = MODEL_VERSION_BF16
    else:
        raise ValueError(f"{path}: model dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    _check_params(path, config, params, "model")
    with atomic_write(path) as f:
        _write_array(f, _model_header(config, version))
        for name in PARAMETER_NAMES:
            arr = np.asarray(params[name], dtype=np.float32)
            if version == MODEL_VERSION_BF16:
                _write_array(f, float32_to_bfloat16_bits(arr).astype("<u2"))
            else:
                _write_array(f, arr.astype("<f4", copy=False))


def read_model_header(path: PathLike) -> tuple[GPT2Config, int]:
    """Read a model file's header: (config, version) with version 3 (fp32) or 5 (bf16)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        header = _read_header(
            f, path, "model", MODEL_MAGIC, (MODEL_VERSION_FP32, MODEL_VERSION_BF16)
        )
    return _config_from_header(path, header), int(header[1])


def _config_from_header(path: str, header: np.ndarray) -> GPT2Config:
    try:
        return GPT2Config(
            max_seq_len=int(header[2]),
            vocab_size=int(header[3]),
            num_layers=int(header[4]),
            num_heads=int(header[5]),
            channels=int(header[6]),
            padded_vocab_size=int(header[7]),
        )
    except ValueError as e:
        raise ValueError(f"{path}: bad model header: {e}") from e


def read_model(path: PathLike) -> tuple[GPT2Config, dict[str, np.ndarray]]:
    """Read a model checkpoint (v3 fp32 or v5 bf16); returns the config and fp32 tensors."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        header = _read_header(
            f, path, "model", MODEL_MAGIC, (MODEL_VERSION_FP32, MODEL_VERSION_BF16)
        )
        config = _config_from_header(path, header)
        bf16 = header[1] == MODEL_VERSION_BF16
        itemsize = 2 if bf16 else 4
        _check_size(path, "model", os.fstat(f.fileno()).st_size, config.num_parameters() * itemsize)
        params: dict[str, np.ndarray] = {}
        for name, shape in config.parameter_shapes().items():
            count = math.prod(shape)
            if bf16:
                arr = bfloat16_bits_to_float32(_read_array(f, path, "<u2", count))
            else:
                arr = _read_array(f, path, "<f4", count).astype(np.float32, copy=False)
            params[name] = arr.reshape(shape)
    return config, params


# ----------------------------------------------------------------------------------------------
# debug state (parity tests)


@dataclass
class DebugState:
    """One batch and the reference results on it.

    x, y: (B, T) int32 inputs and targets; logits: (B, T, Vp) float32 (llmc) or (B, T, V) (llm.c's
    train_gpt2.py writes the unpadded width); loss: mean cross-entropy; grads: name -> float32
    array shaped like the (padded) parameter, for every name in PARAMETER_NAMES.
    """

    x: np.ndarray
    y: np.ndarray
    logits: np.ndarray
    loss: float
    grads: dict[str, np.ndarray]


def write_debug_state(path: PathLike, state: DebugState, config: GPT2Config | None = None) -> None:
    """Write a debug state; with `config`, the logits' width (Vp or V) and the gradient shapes
    are checked."""
    path = os.fspath(path)
    x = np.asarray(state.x)
    y = np.asarray(state.y)
    logits = np.asarray(state.logits, dtype=np.float32)
    if x.ndim != 2 or y.shape != x.shape:
        raise ValueError(f"{path}: debug state x {x.shape} and y {y.shape} must both be (B, T)")
    B, T = x.shape
    if logits.ndim != 3 or logits.shape[:2] != (B, T):
        raise ValueError(f"{path}: debug state logits {logits.shape} must be (B={B}, T={T}, Vp)")
    if config is not None:
        if logits.shape[2] not in (config.padded_vocab_size, config.vocab_size):
            raise ValueError(
                f"{path}: debug state logits are {logits.shape[2]} wide, expected Vp="
                f"{config.padded_vocab_size} or V={config.vocab_size}"
            )
        _check_params(path, config, state.grads, "debug state grads")
        for name, arr in (("x", x), ("y", y)):
            _check_token_range(path, name, arr, config.vocab_size)
    else:
        missing = [name for name in PARAMETER_NAMES if name not in state.grads]
        if missing:
            raise ValueError(f"{path}: debug state grads are missing tensors {missing}")
    header = _new_header(DEBUG_STATE_MAGIC, DEBUG_STATE_VERSION)
    header[2] = B
    header[3] = T
    with atomic_write(path) as f:
        _write_array(f, header)
        _write_array(f, x.astype("<i4"))
        _write_array(f, y.astype("<i4"))
        _write_array(f, logits.astype("<f4", copy=False))
        _write_array(f, np.array([state.loss], dtype="<f4"))
        for name in PARAMETER_NAMES:
            _write_array(f, np.asarray(state.grads[name], dtype="<f4"))


def _debug_state_body(B: int, T: int, logits_width: int, config: GPT2Config) -> int:
    return (2 * B * T + B * T * logits_width + 1 + config.num_parameters()) * 4


def read_debug_state(path: PathLike, config: GPT2Config) -> DebugState:
    """Read a debug state written for a model of `config` (the file does not store it).

    The logits are Vp wide (llmc) or V wide (llm.c); the file length tells which.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        header = _read_header(f, path, "debug state", DEBUG_STATE_MAGIC, (DEBUG_STATE_VERSION,))
        B, T = int(header[2]), int(header[3])
        if B <= 0 or T <= 0:
            raise ValueError(f"{path}: bad debug state header: B={B}, T={T} must be positive")
        if config.max_seq_len < T:
            raise ValueError(f"{path}: debug state T={T} exceeds maxT={config.max_seq_len}")
        size = os.fstat(f.fileno()).st_size
        Vp = config.padded_vocab_size
        if size == HEADER_BYTES + _debug_state_body(B, T, config.vocab_size, config):
            Vp = config.vocab_size  # llm.c's unpadded logits
        _check_size(path, "debug state", size, _debug_state_body(B, T, Vp, config))
        x = _read_array(f, path, "<i4", B * T).astype(np.int32).reshape(B, T)
        y = _read_array(f, path, "<i4", B * T).astype(np.int32).reshape(B, T)
        _check_token_range(path, "x", x, config.vocab_size)
        _check_token_range(path, "y", y, config.vocab_size)
        logits = _read_array(f, path, "<f4", B * T * Vp).astype(np.float32).reshape(B, T, Vp)
        loss = float(_read_array(f, path, "<f4", 1)[0])
        grads = {
            name: _read_array(f, path, "<f4", math.prod(shape)).astype(np.float32).reshape(shape)
            for name, shape in config.parameter_shapes().items()
        }
    return DebugState(x=x, y=y, logits=logits, loss=loss, grads=grads)


# ----------------------------------------------------------------------------------------------
# loss sidecar: reference losses of a few AdamW steps, next to a debug state


@dataclass
class ReferenceLosses:
    """AdamW settings and the loss before each of the reference optimizer steps, in order."""

    learning_rate: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    losses: list[float] = field(default_factory=list)


def losses_sidecar_path(debug_state_path: PathLike) -> str:
    """Path of the loss sidecar of a debug state: the same path plus ".losses"."""
    return os.fspath(debug_state_path) + LOSSES_SUFFIX


def write_losses_sidecar(debug_state_path: PathLike, ref: ReferenceLosses) -> None:
    """Write `<debug_state_path>.losses`: a header line, `key value` settings, `loss x` lines."""
    path = losses_sidecar_path(debug_state_path)
    values = [(key, float(getattr(ref, key))) for key in _LOSSES_SETTINGS]
    values += [("loss", float(loss)) for loss in ref.losses]
    lines = [LOSSES_HEADER]
    for key, value in values:
        if not math.isfinite(value):
            raise ValueError(f"{path}: {key} must be finite, got {value!r}")
        lines.append(f"{key} {value!r}")
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def read_losses_sidecar(debug_state_path: PathLike) -> ReferenceLosses | None:
    """Read `<debug_state_path>.losses`; None when there is no such file."""
    path = losses_sidecar_path(debug_state_path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    lines = text.splitlines()
    if not lines or lines[0].strip() != LOSSES_HEADER:
        raise ValueError(f"{path}: first line must be {LOSSES_HEADER!r}")
    settings: dict[str, float] = {}
    losses: list[float] = []
    for lineno, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected 'key value', got {line!r}")
        key, text_value = parts
        try:
            value = float(text_value)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: {key}: not a number: {text_value!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{path}:{lineno}: {key} must be finite, got {text_value!r}")
        if key == "loss":
            losses.append(value)
        elif key in _LOSSES_SETTINGS:
            if key in settings:
                raise ValueError(f"{path}:{lineno}: {key} given twice")
            settings[key] = value
        else:
            raise ValueError(f"{path}:{lineno}: unknown key {key!r}")
    missing = [key for key in _LOSSES_SETTINGS if key not in settings]
    if missing:
        raise ValueError(f"{path}: missing settings {missing}")
    return ReferenceLosses(losses=losses, **settings)


# ----------------------------------------------------------------------------------------------
# token shards


def write_shard(path: PathLike, tokens: Sequence[int] | np.ndarray) -> None:
    """Write a token shard (uint16 ids). Rejects empty shards and ids outside [0, 65535]."""
    path = os.fspath(path)
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"{path}: tokens must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{path}: refusing to write an empty token shard")
    if arr.dtype != np.uint16:
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{path}: tokens must be integers, got dtype {arr.dtype}")
        _check_token_range(path, "tokens", arr, SHARD_MAX_TOKEN + 1)
    if arr.size >= 2**31:
        raise ValueError(f"{path}: {arr.size} tokens do not fit the int32 header count")
    header = _new_header(SHARD_MAGIC, SHARD_VERSION)
    header[2] = arr.size
    with atomic_write(path) as f:
        _write_array(f, header)
        _write_array(f, arr.astype("<u2", copy=False))


def _open_shard(f: BinaryIO, path: str) -> int:
    """Validates the header and size of the shard open in `f`; returns its token count."""
    header = _read_header(f, path, "token shard", SHARD_MAGIC, (SHARD_VERSION,))
    n = int(header[2])
    if n <= 0:
        raise ValueError(f"{path}: token shard is empty (header says {n} tokens)")
    _check_size(path, "token shard", os.fstat(f.fileno()).st_size, 2 * n)
    return n


def read_shard_header(path: PathLike) -> int:
    """Number of tokens of a shard, from its header (the file size is checked too)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        return _open_shard(f, path)


def read_shard(path: PathLike, vocab_size: int | None = None) -> np.ndarray:
    """Read a token shard as uint16; with `vocab_size`, every id is checked to be below it."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        n = _open_shard(f, path)
        tokens = _read_array(f, path, "<u2", n).astype(np.uint16, copy=False)
    if vocab_size is not None:
        _check_token_range(path, "token shard", tokens, vocab_size)
    return tokens


# ----------------------------------------------------------------------------------------------
# tokenizer (for the C decoder)


def write_tokenizer_file(path: PathLike, token_bytes: Sequence[bytes], eot_token: int) -> None:
    """Write the tokenizer file: every token's bytes, in id order, and the EOT id."""
    path = os.fspath(path)
    n = len(token_bytes)
    if not 0 <= eot_token < n:
        raise ValueError(f"{path}: EOT id {eot_token} outside [0, {n})")
    body = bytearray()
    for i, tok in enumerate(token_bytes):
        if not 1 <= len(tok) <= MAX_TOKEN_BYTES:
            raise ValueError(
                f"{path}: token {i} has {len(tok)} bytes, must be 1..{MAX_TOKEN_BYTES}"
            )
        body.append(len(tok))
        body += tok
    header = _new_header(TOKENIZER_MAGIC, TOKENIZER_VERSION)
    header[2] = n
    header[3] = eot_token
    with atomic_write(path) as f:
        _write_array(f, header)
        f.write(bytes(body))


def read_tokenizer_file(path: PathLike) -> tuple[list[bytes], int]:
    """Read the tokenizer file: (bytes of every token in id order, EOT id)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        header = _read_header(f, path, "tokenizer", TOKENIZER_MAGIC, (TOKENIZER_VERSION,))
        body = f.read()
    n, eot = int(header[2]), int(header[3])
    if n <= 0:
        raise ValueError(f"{path}: tokenizer has {n} tokens")
    if not 0 <= eot < n:
        raise ValueError(f"{path}: EOT id {eot} outside [0, {n})")
    tokens: list[bytes] = []
    pos = 0
    for i in range(n):
        if pos >= len(body):
            raise ValueError(
                f"{path}: tokenizer file is truncated: body ends after {i} of {n} tokens"
            )
        length = body[pos]
        if length == 0:
            raise ValueError(f"{path}: token {i} has length 0")
        if pos + 1 + length > len(body):
            raise ValueError(
                f"{path}: tokenizer file is truncated inside token {i} of {n} "
                f"(needs {length} bytes at body offset {pos + 1}, body has {len(body)})"
            )
        tokens.append(body[pos + 1 : pos + 1 + length])
        pos += 1 + length
    if pos != len(body):
        raise ValueError(
            f"{path}: tokenizer file is too long: {len(body) - pos} bytes after the {n} tokens"
        )
    return tokens, eot


# ----------------------------------------------------------------------------------------------
# eval files (HellaSwag, MMLU)
#
# Body layout, as llm.c's dev/data/data_common.py write_evalfile: a stream of uint16, per example
#   65535 (start marker), example size in bytes (these 6 fields + all length and token fields),
#   example index, label, number of completions, context length, context tokens...,
#   then for each completion: its length, its tokens...
# header[3] holds the largest example size in bytes, so a reader can size its buffer.


@dataclass
class EvalExample:
    """One multiple-choice example: context tokens and candidate completions' tokens."""

    index: int
    label: int
    context: list[int]
    completions: list[list[int]]

    def stream(self) -> list[int]:
        """The example as the uint16 stream of the eval file (see the layout above)."""
        out = [EVAL_EXAMPLE_START, 0, self.index, self.label, len(self.completions)]
        out.append(len(self.context))
        out.extend(self.context)
        for completion in self.completions:
            out.append(len(completion))
            out.extend(completion)
        out[1] = 2 * len(out)
        return out


def _check_eval_example(path: str, i: int, ex: EvalExample, vocab_size: int) -> None:
    where = f"{path}: example {i} (index {ex.index})"
    if not ex.completions:
        raise ValueError(f"{where}: has no completions")
    if not 0 <= ex.label < len(ex.completions):
        raise ValueError(f"{where}: label {ex.label} outside [0, {len(ex.completions)})")
    if not 0 <= ex.index <= SHARD_MAX_TOKEN:
        raise ValueError(f"{where}: index does not fit uint16")
    if not ex.context:
        raise ValueError(f"{where}: empty context")
    for j, tokens in enumerate([ex.context, *ex.completions]):
        what = "context" if j == 0 else f"completion {j - 1}"
        if j > 0 and not tokens:
            raise ValueError(f"{where}: {what} is empty")
        for t in tokens:
            if not 0 <= t < vocab_size:
                raise ValueError(f"{where}: {what} has token id {t}, outside [0, {vocab_size})")


def write_eval_file(path: PathLike, examples: Sequence[EvalExample]) -> None:
    """Write a multiple-choice eval file (layout above). Token ids must be < 65535."""
    path = os.fspath(path)
    if not examples:
        raise ValueError(f"{path}: refusing to write an eval file without examples")
    streams = []
    for i, ex in enumerate(examples):
        _check_eval_example(path, i, ex, EVAL_EXAMPLE_START)
        stream = ex.stream()
        if stream[1] > SHARD_MAX_TOKEN:
            raise ValueError(f"{path}: example {i} is {stream[1]} bytes, the limit is 65535")
        streams.append(stream)
    header = _new_header(EVAL_MAGIC, EVAL_VERSION)
    header[2] = len(streams)
    header[3] = max(s[1] for s in streams)
    with atomic_write(path) as f:
        _write_array(f, header)
        for stream in streams:
            _write_array(f, np.array(stream, dtype="<u2"))


def read_eval_file(path: PathLike, vocab_size: int | None = None) -> list[EvalExample]:
    """Read a multiple-choice eval file; with `vocab_size`, token ids are checked against it."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        header = _read_header(f, path, "eval", EVAL_MAGIC, (EVAL_VERSION,))
        body = f.read()
    n_examples, longest = int(header[2]), int(header[3])
    if n_examples <= 0:
        raise ValueError(f"{path}: eval file has {n_examples} examples")
    if len(body) % 2 != 0:
        raise ValueError(f"{path}: eval body has an odd number of bytes ({len(body)})")
    data = np.frombuffer(body, dtype="<u2").astype(np.int64)
    examples: list[EvalExample] = []
    pos = 0
    max_bytes = 0
    for i in range(n_examples):
        where = f"{path}: example {i}"
        if pos + 6 > data.size:
            raise ValueError(f"{where}: eval file is truncated (ends inside the example header)")
        if data[pos] != EVAL_EXAMPLE_START:
            raise ValueError(f"{where}: expected start marker 65535, found {data[pos]}")
        nbytes, index, label, n_completions = (int(v) for v in data[pos + 1 : pos + 5])
        if nbytes % 2 != 0 or pos + nbytes // 2 > data.size:
            raise ValueError(
                f"{where}: size {nbytes} bytes overruns the file ({2 * (data.size - pos)} left)"
            )
        end = pos + nbytes // 2
        cursor = pos + 5
        parts: list[list[int]] = []
        for part in range(n_completions + 1):
            if cursor >= end:
                raise ValueError(f"{where}: size {nbytes} bytes too small for its contents")
            length = int(data[cursor])
            if cursor + 1 + length > end:
                raise ValueError(f"{where}: part {part} of length {length} overruns the example")
            parts.append([int(t) for t in data[cursor + 1 : cursor + 1 + length]])
            cursor += 1 + length
        if cursor != end:
            raise ValueError(
                f"{where}: size field says {nbytes} bytes, contents take {2 * (cursor - pos)}"
            )
        ex = EvalExample(index=index, label=label, context=parts[0], completions=parts[1:])
        _check_eval_example(
            path, i, ex, vocab_size if vocab_size is not None else EVAL_EXAMPLE_START
        )
        examples.append(ex)
        max_bytes = max(max_bytes, nbytes)
        pos = end
    if pos != data.size:
        raise ValueError(
            f"{path}: eval file is too long: {2 * (data.size - pos)} bytes after "
            f"{n_examples} examples"
        )
    if longest != max_bytes:
        raise ValueError(
            f"{path}: header says the longest example is {longest} bytes, found {max_bytes}"
        )
    return examples


# ----------------------------------------------------------------------------------------------
# optimizer state (resume)
#
# Header as llm.c's train_gpt2cu: [2] processes, [3] rank, [4] master weights?, [5] shuffle?,
# [10] step, [20..23] RNG state (llm.c packs two uint64 there: the RNG state and its value at the
# last update), [30..31] current shard index and [32..33] current sample index (uint64 each,
# little-endian word order). Body: AdamW m, v (fp32, this rank's shard), then the fp32 master
# weights when [4] is set, then the dataloader's shuffle state (kept as opaque bytes here).


@dataclass
class OptimizerStateHeader:
    """The header fields of an optimizer state file."""

    processes: int
    rank: int
    master_weights: bool
    shuffle: bool
    step: int
    rng: tuple[int, int, int, int] = (0, 0, 0, 0)  # header words [20..23], as uint32
    shard_index: int = 0
    sample_index: int = 0


@dataclass
class OptimizerState:
    """Header, AdamW moments (and master weights) of one rank, and the dataloader's state."""

    header: OptimizerStateHeader
    m: np.ndarray
    v: np.ndarray
    master: np.ndarray | None = None
    dataloader_state: bytes = b""


def _pack_optimizer_header(path: str, h: OptimizerStateHeader) -> np.ndarray:
    if h.processes <= 0 or not 0 <= h.rank < h.processes:
        raise ValueError(f"{path}: rank {h.rank} / processes {h.processes} are inconsistent")
    if not 0 <= h.step < 2**31:
        raise ValueError(f"{path}: step {h.step} does not fit int32")
    words = np.zeros(HEADER_INTS, dtype="<u4")
    words[0] = OPTIMIZER_MAGIC
    words[1] = OPTIMIZER_VERSION
    words[2] = h.processes
    words[3] = h.rank
    words[4] = int(h.master_weights)
    words[5] = int(h.shuffle)
    words[10] = h.step
    if len(h.rng) != 4 or any(not 0 <= w < 2**32 for w in h.rng):
        raise ValueError(f"{path}: rng must be 4 uint32 words, got {h.rng}")
    words[20:24] = h.rng
    for slot, value, name in ((30, h.shard_index, "shard"), (32, h.sample_index, "sample")):
        if not 0 <= value < 2**64:
            raise ValueError(f"{path}: {name} index {value} does not fit uint64")
        words[slot] = value & 0xFFFFFFFF
        words[slot + 1] = value >> 32
    return words


def _unpack_optimizer_header(path: str, header: np.ndarray) -> OptimizerStateHeader:
    words = header.astype(np.int64) & 0xFFFFFFFF
    h = OptimizerStateHeader(
        processes=int(header[2]),
        rank=int(header[3]),
        master_weights=bool(header[4]),
        shuffle=bool(header[5]),
        step=int(header[10]),
        rng=(int(words[20]), int(words[21]), int(words[22]), int(words[23])),
        shard_index=int(words[30]) | (int(words[31]) << 32),
        sample_index=int(words[32]) | (int(words[33]) << 32),
    )
    if h.processes <= 0 or not 0 <= h.rank < h.processes:
        raise ValueError(
            f"{path}: bad optimizer state header: rank {h.rank} of {h.processes} processes"
        )
    if header[4] not in (0, 1) or header[5] not in (0, 1):
        raise ValueError(
            f"{path}: bad optimizer state header: flags [4]={header[4]} [5]={header[5]}"
        )
    if h.step < 0:
        raise ValueError(f"{path}: bad optimizer state header: step {h.step}")
    return h


def read_optimizer_state_header(path: PathLike) -> OptimizerStateHeader:
    """Read and check an optimizer state file's header."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        header = _read_header(f, path, "optimizer state", OPTIMIZER_MAGIC, (OPTIMIZER_VERSION,))
    return _unpack_optimizer_header(path, header)


def write_optimizer_state(path: PathLike, state: OptimizerState) -> None:
    """Write an optimizer state file; master weights are written iff header.master_weights."""
    path = os.fspath(path)
    m = np.asarray(state.m, dtype=np.float32).ravel()
    v = np.asarray(state.v, dtype=np.float32).ravel()
    if m.size != v.size:
        raise ValueError(f"{path}: m has {m.size} values, v has {v.size}")
    if state.header.master_weights != (state.master is not None):
        raise ValueError(f"{path}: header.master_weights disagrees with the master array given")
    words = _pack_optimizer_header(path, state.header)
    with atomic_write(path) as f:
        _write_array(f, words)
        _write_array(f, m.astype("<f4", copy=False))
        _write_array(f, v.astype("<f4", copy=False))
        if state.master is not None:
            master = np.asarray(state.master, dtype=np.float32).ravel()
            if master.size != m.size:
                raise ValueError(f"{path}: master has {master.size} values, m has {m.size}")
            _write_array(f, master.astype("<f4", copy=False))
        f.write(state.dataloader_state)


def read_optimizer_state(path: PathLike, num_parameters: int) -> OptimizerState:
    """Read an optimizer state holding `num_parameters` values per array (this rank's shard).

    The bytes after the arrays (the dataloader's shuffle state, if any) are returned as is.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = _read_header(f, path, "optimizer state", OPTIMIZER_MAGIC, (OPTIMIZER_VERSION,))
        header = _unpack_optimizer_header(path, raw)
        n_arrays = 3 if header.master_weights else 2
        size = os.fstat(f.fileno()).st_size
        needed = HEADER_BYTES + n_arrays * num_parameters * 4
        if size < needed:
            raise ValueError(
                f"{path}: optimizer state file is truncated: {size} bytes, expected at least "
                f"{needed} ({n_arrays} arrays of {num_parameters} fp32)"
            )
        m = _read_array(f, path, "<f4", num_parameters).astype(np.float32, copy=False)
        v = _read_array(f, path, "<f4", num_parameters).astype(np.float32, copy=False)
        master = None
        if header.master_weights:
            master = _read_array(f, path, "<f4", num_parameters).astype(np.float32, copy=False)
        rest = f.read()
    if not header.shuffle and rest:
        raise ValueError(
            f"{path}: optimizer state file is too long: {len(rest)} bytes after the arrays "
            "and the header says the dataloader does not shuffle"
        )
    return OptimizerState(header=header, m=m, v=v, master=master, dataloader_state=rest)
