"""The C fp32 reference engine, driven from Python.

``CPUModel`` wraps ``llmc._llmc.CPUModel`` (csrc/bind_model.cpp). Parameters and gradients are numpy
views of the engine's buffers, so writing into ``model.params["wte"]`` changes the model. Every
call releases the GIL while the C code runs.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from llmc import _llmc
from llmc.config import GPT2Config

FP32_VERSION = 3
BF16_VERSION = 5
_DTYPE_TO_VERSION = {"float32": FP32_VERSION, "bfloat16": BF16_VERSION}


def _as_tokens(name: str, tokens: Any, vocab_size: int) -> np.ndarray:
    """Validates a (B, T) array of token ids and returns it as contiguous int32."""
    array = np.asarray(tokens)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (B, T) array of token ids, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer token ids, got dtype {array.dtype}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"{name} holds token id {bad}, outside [0, {vocab_size})")
    return np.ascontiguousarray(array, dtype=np.int32)


def _as_batch(
    inputs: Any, targets: Any | None, config: GPT2Config
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validates a forward pass's inputs and optional targets (both (B, T)) against ``config``.

    Shared by every engine's ``forward`` (llmc.cpu, llmc.cuda).
    """
    x = _as_tokens("inputs", inputs, config.vocab_size)
    if x.shape[1] > config.max_seq_len:
        raise ValueError(
            f"inputs: sequence length {x.shape[1]} exceeds the model's maximum {config.max_seq_len}"
        )
    y = None
    if targets is not None:
        y = _as_tokens("targets", targets, config.vocab_size)
        if y.shape != x.shape:
            raise ValueError(f"targets shape {y.shape} differs from inputs shape {x.shape}")
    return x, y


def engine_config_args(config: GPT2Config, seed: int) -> tuple[int, ...]:
    """The arguments of an engine's ``from_config``: the sizes in header order, then the seed."""
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return (
        config.max_seq_len,
        config.vocab_size,
        config.padded_vocab_size,
        config.num_layers,
        config.num_heads,
        config.channels,
        seed,
    )


class CPUModel:
    """GPT-2 in fp32 on the CPU: forward, backward, AdamW and checkpoints."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.config = GPT2Config(**engine.config)
        self.params: dict[str, np.ndarray] = dict(engine.parameter_views())
        self.grads: dict[str, np.ndarray] = dict(engine.gradient_views())

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str]) -> CPUModel:
        """Loads a model file (fp32 version 3 or bf16 version 5)."""
        return cls(_llmc.CPUModel.from_checkpoint(os.fspath(path)))

    @classmethod
    def from_config(cls, config: GPT2Config, seed: int = 1337) -> CPUModel:
        """A freshly initialized model with GPT-2's init, reproducible from ``seed``."""
        return cls(_llmc.CPUModel.from_config(*engine_config_args(config, seed)))

    @property
    def num_parameters(self) -> int:
        return int(self._engine.num_parameters)

    @property
    def step_count(self) -> int:
        """Number of AdamW steps taken so far."""
        return int(self._engine.step_count)

    def forward(self, inputs: Any, targets: Any | None = None) -> float | None:
        """Runs the model on ``inputs`` (B, T) token ids.

        Returns the mean cross-entropy when ``targets`` (B, T) are given, else None. The logits of
        the pass are then available as ``self.logits``.
        """
        x, y = _as_batch(inputs, targets, self.config)
        loss = self._engine.forward(x, y)
        return None if loss is None else float(loss)

    @property
    def logits(self) -> np.ndarray:
        """Logits of the last forward pass: (B, T, Vp) float32 (a copy)."""
        return np.asarray(self._engine.logits)

    def zero_grad(self) -> None:
        self._engine.zero_grad()

    def backward(self, loss_scale: float = 1.0) -> None:
        """Adds the gradients of ``loss * loss_scale`` of the last forward pass to ``grads``."""
        self._engine.backward(loss_scale)

    def grad_norm(self) -> float:
        """Global L2 norm of the gradients."""
        return float(self._engine.grad_norm())

    def step(
        self,
        learning_rate: float,
        beta1: float = 0.9,
        beta2: float = 0.95,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        grad_scale: float = 1.0,
    ) -> None:
        """One AdamW step on the current gradients (multiplied by ``grad_scale`` first)."""
        self._engine.step(learning_rate, beta1, beta2, eps, weight_decay, grad_scale)

    def save(self, path: str | os.PathLike[str], dtype: str = "float32") -> None:
        """Writes the model file atomically, as fp32 (version 3) or bf16 (version 5)."""
        if dtype not in _DTYPE_TO_VERSION:
            raise ValueError(f"dtype must be one of {sorted(_DTYPE_TO_VERSION)}, got {dtype!r}")
        self._engine.save(os.fspath(path), _DTYPE_TO_VERSION[dtype])
