"""The CUDA engine (llmc/gpt2cu.cuh, bf16) driven from Python, with the API of ``llmc.cpu``.

``CUDAModel`` wraps ``llmc._llmc_cuda.CUDAModel`` (csrc/bind_cuda.cpp, csrc/bind_cuda.cu), built
when CMake finds CUDA and ``LLMC_BUILD_PYTHON`` is on. The model runs in bf16 (activations,
weights, gradients) with fp32 master weights and fp32 AdamW state, like ``train_gpt2cu``.

Differences from ``llmc.cpu.CPUModel``, all because the tensors live on the GPU:

- ``params`` and ``grads`` are fp32 numpy COPIES made on each access (``params`` holds the fp32
  master weights); writing into them does not change the model: use ``set_parameters``.
- ``backward`` turns the logits of the forward pass into their gradient in place (as the trainer
  does), so read ``logits`` before calling ``backward``; one ``backward`` per ``forward``.

Every call releases the GIL while the GPU works. A CUDA or cuBLAS failure (e.g. out of memory)
raises RuntimeError instead of ending the interpreter. Importing this module raises ImportError
when the extension was not built and RuntimeError when no GPU is usable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from llmc.config import PARAMETER_NAMES, GPT2Config
from llmc.cpu import _DTYPE_TO_VERSION, _as_batch, engine_config_args

try:
    from llmc import _llmc_cuda  # type: ignore[attr-defined]
except ImportError as error:
    raise ImportError(
        "llmc.cuda needs the extension module llmc._llmc_cuda, built only when CMake finds "
        "nvcc and cuBLAS (cmake -DLLMC_CUDA=ON -DLLMC_BUILD_PYTHON=ON, or pip install on a machine "
        f"with the CUDA toolkit): {error}"
    ) from error

_count, _why = _llmc_cuda.device_count()
if _count == 0:
    raise RuntimeError(f"llmc.cuda: no usable CUDA GPU ({_why})")


class CUDAModel:
    """GPT-2 in bf16 on the GPU: forward, backward, AdamW and checkpoints."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.config = GPT2Config(**engine.config)
        self._shapes = self.config.parameter_shapes()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], seed: int = 0) -> CUDAModel:
        """Loads a model file (fp32 version 3 or bf16 version 5).

        ``seed`` seeds the stochastic rounding of AdamW's bf16 weights (0 as in test_gpt2cu).
        """
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        return cls(_llmc_cuda.CUDAModel.from_checkpoint(os.fspath(path), seed))

    @classmethod
    def from_config(cls, config: GPT2Config, seed: int = 1337) -> CUDAModel:
        """A freshly initialized model: the CPU engine's init with ``seed``, bit for bit."""
        return cls(_llmc_cuda.CUDAModel.from_config(*engine_config_args(config, seed)))

    @property
    def num_parameters(self) -> int:
        return int(self._engine.num_parameters)

    @property
    def step_count(self) -> int:
        """Number of AdamW steps taken so far."""
        return int(self._engine.step_count)

    @property
    def precision(self) -> str:
        """Storage precision of the engine: "bf16"."""
        return str(self._engine.precision)

    def _split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        offset = 0
        for name in PARAMETER_NAMES:
            shape = self._shapes[name]
            count = int(np.prod(shape))
            out[name] = flat[offset : offset + count].reshape(shape)
            offset += count
        return out

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The fp32 master weights by name, in the on-disk shapes (a COPY made on each access)."""
        return self._split(self._engine.parameters())

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """The gradients (bf16 on the GPU) as fp32, by name (a COPY made on each access)."""
        return self._split(self._engine.gradients())

    def set_parameters(self, values: Mapping[str, Any]) -> None:
        """Overwrites the named parameter tensors (fp32 master and bf16 weights) on the GPU."""
        for name, array in values.items():
            if name not in self._shapes:
                raise ValueError(f"set_parameters: unknown tensor {name!r}")
            value = np.ascontiguousarray(array, dtype=np.float32)
            if value.shape != self._shapes[name]:
                raise ValueError(
                    f"set_parameters: {name} has shape {self._shapes[name]}, got {value.shape}"
                )
            self._engine.set_parameter(PARAMETER_NAMES.index(name), value.reshape(-1))

    def forward(self, inputs: Any, targets: Any | None = None) -> float | None:
        """Runs the model on ``inputs`` (B, T) token ids.

        Returns the mean cross-entropy when ``targets`` (B, T) are given, else None. The logits of
        the pass are then available as ``self.logits`` until ``backward`` consumes them.
        """
        x, y = _as_batch(inputs, targets, self.config)
        loss = self._engine.forward(x, y)
        return None if loss is None else float(loss)

    @property
    def logits(self) -> np.ndarray:
        """Logits of the last forward pass: (B, T, Vp) float32 (a copy of the bf16 values)."""
        return np.asarray(self._engine.logits)

    def zero_grad(self) -> None:
        self._engine.zero_grad()

    def backward(self, loss_scale: float = 1.0) -> None:
        """Adds the gradients of ``loss * loss_scale`` of the last forward pass to ``grads``.

        The last forward must have had targets; its logits are replaced by their gradient.
        """
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
        """One AdamW step on the current gradients (multiplied by ``grad_scale`` first).

        The bf16 weights are stochastically rounded from the fp32 masters, as in train_gpt2cu.
        A ``grad_scale`` of 0 skips the step (the engine's rule for non-finite gradient norms).
        """
        self._engine.step(learning_rate, beta1, beta2, eps, weight_decay, grad_scale)

    def save(self, path: str | os.PathLike[str], dtype: str = "float32") -> None:
        """Writes the (bf16) weights as a model file: fp32 (version 3) or bf16 (version 5)."""
        if dtype not in _DTYPE_TO_VERSION:
            raise ValueError(f"dtype must be one of {sorted(_DTYPE_TO_VERSION)}, got {dtype!r}")
        self._engine.save(os.fspath(path), _DTYPE_TO_VERSION[dtype])
