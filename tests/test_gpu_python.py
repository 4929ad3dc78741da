"""llmc.cuda.CUDAModel (the CUDA engine from Python) against llmc.cpu.CPUModel (the fp32 C engine).

The GPU tests are marked ``gpu`` (run them with ``pytest -m gpu`` on a machine with an NVIDIA GPU
and the module llmc._llmc_cuda built); without the module or a GPU they skip with the reason.

Tolerances (bf16 engine vs the fp32 CPU engine, the same as test_gpt2cu's bf16 build against the
PyTorch reference). Errors are ||gpu - cpu|| / ||cpu|| over a whole tensor. bf16 keeps 8 bits of
mantissa: one rounding is a relative error of at most 2^-9 = 2e-3, and a value goes through a few
dozen roundings (weights, every stored activation, gradient storage) that partly cancel. On the
H200 (2026-11-24) this model measured logits 6.1e-3, gradients 3.0e-3..6.9e-3, loss 1.6e-5 and
step losses within 1.6e-4; the bounds leave about 5x headroom:
    logits          3e-2
    gradients       3e-2 per tensor
    loss            1e-3 relative (a mean over B*T positions: the rounding errors average out)
    5 AdamW steps   2e-3 relative per step's loss (the bf16 weights are stochastically rounded
                    from the fp32 masters each step, a further ~lr-sized perturbation)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmc.config import PARAMETER_NAMES, GPT2Config
from llmc.cpu import CPUModel

LOGITS_TOLERANCE = 3e-2
GRAD_TOLERANCE = 3e-2
LOSS_TOLERANCE = 1e-3
STEP_LOSS_TOLERANCE = 2e-3

# small, but with the head size (32) and alignments of the real kernels' paths
SMALL = GPT2Config(
    max_seq_len=64, vocab_size=1000, padded_vocab_size=1024, num_layers=2, num_heads=4, channels=128
)
B, T = 4, 64


def _cuda_model_class() -> Any:
    try:
        from llmc.cuda import CUDAModel
    except (ImportError, RuntimeError) as error:
        pytest.skip(f"llmc.cuda is not usable here: {error}")
    return CUDAModel


@pytest.fixture(scope="module")
def cuda_model_class() -> Any:
    return _cuda_model_class()


def _batch(config: GPT2Config, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, size=(B, T + 1), dtype=np.int32)
    return tokens[:, :-1], tokens[:, 1:]


def _relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    ours64, ref64 = ours.astype(np.float64), reference.astype(np.float64)
    norm = float(np.linalg.norm(ref64))
    diff = float(np.linalg.norm(ours64 - ref64))
    return diff / norm if norm > 0 else diff


def test_import_without_a_gpu_is_a_clear_error() -> None:
    """Where the module is built but no GPU is usable, importing llmc.cuda says so."""
    try:
        from llmc import _llmc_cuda  # type: ignore[attr-defined]
    except ImportError:
        pytest.skip("llmc._llmc_cuda is not built")
    if _llmc_cuda.device_count()[0] > 0:
        pytest.skip("a GPU is present")
    result = subprocess.run(
        [sys.executable, "-c", "import llmc.cuda"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "RuntimeError: llmc.cuda: no usable CUDA GPU" in result.stderr


@pytest.mark.gpu
def test_from_config_matches_the_cpu_engine_exactly(cuda_model_class: Any) -> None:
    cpu = CPUModel.from_config(SMALL, seed=42)
    gpu = cuda_model_class.from_config(SMALL, seed=42)
    assert gpu.num_parameters == cpu.num_parameters == SMALL.num_parameters()
    assert gpu.config == SMALL and gpu.precision == "bf16"
    params = gpu.params
    for name in PARAMETER_NAMES:
        np.testing.assert_array_equal(params[name], cpu.params[name], err_msg=name)
    other = cuda_model_class.from_config(SMALL, seed=43)
    assert not np.array_equal(other.params["qkvw"], params["qkvw"])


@pytest.mark.gpu
def test_forward_backward_and_steps_match_the_cpu_engine(cuda_model_class: Any) -> None:
    cpu = CPUModel.from_config(SMALL, seed=7)
    gpu = cuda_model_class.from_config(SMALL, seed=7)
    x, y = _batch(SMALL, seed=0)

    assert gpu.forward(x) is None
    logits_only = gpu.logits
    cpu_loss = cpu.forward(x, y)
    gpu_loss = gpu.forward(x, y)
    assert cpu_loss is not None and gpu_loss is not None
    logits = gpu.logits
    assert logits.shape == (B, T, SMALL.padded_vocab_size) and logits.dtype == np.float32
    np.testing.assert_array_equal(logits, logits_only)  # the same pass, with or without targets
    V = SMALL.vocab_size
    logits_error = _relative_error(logits[..., :V], cpu.logits[..., :V])
    print(f"logits rel err {logits_error:.2e}, loss gpu {gpu_loss:.6f} cpu {cpu_loss:.6f}")
    assert logits_error < LOGITS_TOLERANCE
    assert abs(gpu_loss - cpu_loss) / cpu_loss < LOSS_TOLERANCE

    for model in (cpu, gpu):
        model.zero_grad()
        model.backward()
    gpu_grads, cpu_grads = gpu.grads, cpu.grads
    for name in PARAMETER_NAMES:
        error = _relative_error(gpu_grads[name], cpu_grads[name])
        print(f"grad {name:9s} rel err {error:.2e}")
        assert error < GRAD_TOLERANCE, name
    cpu_norm, gpu_norm = cpu.grad_norm(), gpu.grad_norm()
    assert abs(gpu_norm - cpu_norm) / cpu_norm < GRAD_TOLERANCE

    # loss_scale scales the gradients; backward accumulates (+=) like the CPU engine
    gpu.forward(x, y)
    gpu.backward(loss_scale=2.0)
    assert abs(gpu.grad_norm() - 3.0 * gpu_norm) / (3.0 * gpu_norm) < GRAD_TOLERANCE

    # a few AdamW steps on the same batch: the losses follow the CPU engine's
    for model in (cpu, gpu):
        model.zero_grad()
        model.forward(x, y)
        model.backward()
        model.step(1e-3, weight_decay=0.1)
    for step in range(4):
        losses = []
        for model in (cpu, gpu):
            loss = model.forward(x, y)
            assert loss is not None
            losses.append(loss)
            model.zero_grad()
            model.backward()
            model.step(1e-3, weight_decay=0.1)
        print(f"step {step + 1}: loss cpu {losses[0]:.6f} gpu {losses[1]:.6f}")
        assert abs(losses[1] - losses[0]) / losses[0] < STEP_LOSS_TOLERANCE
    assert gpu.step_count == cpu.step_count == 5


@pytest.mark.gpu
def test_runs_are_deterministic(cuda_model_class: Any) -> None:
    x, y = _batch(SMALL, seed=3)
    results = []
    for _ in range(2):
        model = cuda_model_class.from_config(SMALL, seed=5)
        losses = []
        for _ in range(3):
            model.zero_grad()
            losses.append(model.forward(x, y))
            model.backward()
            model.step(1e-3)
        results.append((losses, model.params["fcw"]))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.gpu
def test_save_and_load_round_trip(cuda_model_class: Any, tmp_path: Path) -> None:
    model = cuda_model_class.from_config(SMALL, seed=11)
    x, y = _batch(SMALL, seed=1)
    for _ in range(2):
        model.zero_grad()
        model.forward(x, y)
        model.backward()
        model.step(1e-3)
    model.forward(x)
    logits = model.logits
    for dtype in ("float32", "bfloat16"):
        path = tmp_path / f"model_{dtype}.bin"
        model.save(path, dtype=dtype)
        # the file holds the bf16 weights the model computes with: the reloaded model is identical
        reloaded = cuda_model_class.from_checkpoint(path)
        reloaded.forward(x)
        np.testing.assert_array_equal(reloaded.logits, logits)
        cpu = CPUModel.from_checkpoint(path)
        reloaded_params = reloaded.params
        for name in PARAMETER_NAMES:
            np.testing.assert_array_equal(reloaded_params[name], cpu.params[name], err_msg=name)


@pytest.mark.gpu
def test_set_parameters_writes_back(cuda_model_class: Any) -> None:
    model = cuda_model_class.from_config(SMALL, seed=2)
    x, y = _batch(SMALL, seed=2)
    before = model.forward(x, y)
    params = model.params
    params["lnfb"][:] = 0.5  # a copy: the model does not change
    assert model.forward(x, y) == before
    model.set_parameters({"lnfb": params["lnfb"]})
    np.testing.assert_array_equal(model.params["lnfb"], 0.5)
    assert model.forward(x, y) != before
    with pytest.raises(ValueError, match="shape"):
        model.set_parameters({"lnfb": np.zeros(3, dtype=np.float32)})
    with pytest.raises(ValueError, match="unknown tensor"):
        model.set_parameters({"nope": np.zeros(3, dtype=np.float32)})


@pytest.mark.gpu
def test_bad_inputs_raise(cuda_model_class: Any, tmp_path: Path) -> None:
    model = cuda_model_class.from_config(SMALL, seed=1)
    x, y = _batch(SMALL, seed=0)
    with pytest.raises(ValueError, match="outside"):
        model.forward(np.full((2, 4), SMALL.vocab_size), None)
    with pytest.raises(ValueError, match="2-D"):
        model.forward(np.zeros(5, dtype=np.int32))
    with pytest.raises(ValueError, match="exceeds"):
        model.forward(np.zeros((1, SMALL.max_seq_len + 1), dtype=np.int32))
    with pytest.raises(ValueError, match="differs"):
        model.forward(x, y[:, :-1])
    # the engine checks again below the Python layer
    too_long = np.zeros((1, SMALL.max_seq_len + 1), dtype=np.int32)
    with pytest.raises(ValueError, match="T must be in"):
        model._engine.forward(too_long, None)
    with pytest.raises(ValueError, match="token id"):
        model._engine.forward(np.full((1, 4), -1, dtype=np.int32), None)
    with pytest.raises(ValueError, match="forward pass with targets"):
        model.backward()
    model.forward(x)  # no targets: nothing to differentiate
    with pytest.raises(ValueError, match="forward pass with targets"):
        model.backward()
    model.forward(x, y)
    model.backward()
    with pytest.raises(RuntimeError, match="read them before"):
        _ = model.logits
    with pytest.raises(ValueError, match="dtype"):
        model.save(tmp_path / "m.bin", dtype="float16")
    with pytest.raises(RuntimeError):
        model.save(tmp_path / "missing_dir" / "m.bin")
    with pytest.raises(ValueError, match="nope"):
        cuda_model_class.from_checkpoint(tmp_path / "nope.bin")
    bad_heads = GPT2Config(
        max_seq_len=16, vocab_size=64, padded_vocab_size=64, num_layers=1, num_heads=4, channels=40
    )
    with pytest.raises(ValueError, match="head size 10"):
        cuda_model_class.from_config(bad_heads)


@pytest.mark.gpu
def test_cuda_out_of_memory_raises_and_the_model_survives(cuda_model_class: Any) -> None:
    model = cuda_model_class.from_config(SMALL, seed=1)
    x, y = _batch(SMALL, seed=0)
    loss = model.forward(x, y)
    # 2^19 x 64 positions need ~10 KB of activations each: ~340 GB, more than any one GPU has
    huge = np.zeros((1 << 19, SMALL.max_seq_len), dtype=np.int32)
    with pytest.raises(RuntimeError, match="CUDA error"):
        model.forward(huge)
    assert model.forward(x, y) == loss  # the process and the model are still fine
    model.backward()
    assert model.grad_norm() > 0
