"""The C engine (llmc.cpu.CPUModel) against the PyTorch reference (llmc.reference.GPT2).

The reference runs in float64 from the same fp32 parameters, so every measured difference is the
C engine's own fp32 error. Errors are relative: ||c - ref|| / ||ref|| over a whole tensor. Run with
`pytest -s tests/test_parity.py` to see the error of every tensor.

Also here: `test_gpt2`, the C parity program, end to end on a fixture written by
llmc.reference.write_parity_fixture (found on PATH, or in $LLMC_BUILD_DIR).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the parity tests need torch (pip install torch)")

import torch

from llmc.config import DECAYED_PARAMETERS, PARAMETER_NAMES, GPT2Config
from llmc.cpu import CPUModel
from llmc.formats import (
    read_debug_state,
    read_losses_sidecar,
    write_debug_state,
    write_losses_sidecar,
)
from llmc.reference import GPT2, random_batch, write_parity_fixture

LOGITS_TOL = 1e-5
LOSS_TOL = 1e-5
GRAD_TOL = 1e-4
TRAJECTORY_TOL = 1e-5  # loss at each of the AdamW steps
# AdamW divides by sqrt(v): elements whose gradient is near zero (rounding noise in fp32) take
# steps of different size in the two engines, so parameters drift apart faster than the losses.
PARAMS_AFTER_STEPS_TOL = 1e-4
STEPS = 10


@dataclass(frozen=True)
class Case:
    """A model shape and a batch shape to compare on."""

    name: str
    config: GPT2Config
    B: int
    T: int


CASES = [
    Case("L2-C64-H4", GPT2Config(64, 97, 2, 4, 64, 128), B=2, T=32),
    Case("L3-C96-H3-T33", GPT2Config(64, 97, 3, 3, 96, 128), B=3, T=33),
    Case("L4-C192-H6", GPT2Config(128, 211, 4, 6, 192, 256), B=4, T=128),
    Case("L2-C128-H8-V300", GPT2Config(80, 300, 2, 8, 128, 384), B=2, T=57),
    Case("L1-C32-H1-T1", GPT2Config(8, 50, 1, 1, 32, 128), B=1, T=1),
]
CASE_IDS = [case.name for case in CASES]


def rel_error(a: np.ndarray, ref: np.ndarray) -> float:
    """||a - ref|| / ||ref|| in float64; 0 when both are zero, inf when only ref is."""
    diff = float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(ref, np.float64)))
    norm = float(np.linalg.norm(np.asarray(ref, np.float64)))
    if norm == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / norm


def report(title: str, errors: dict[str, float], tol: float) -> list[str]:
    """Prints every error (visible with pytest -s) and returns the names above tol."""
    print(f"\n{title} (tolerance {tol:.0e})")
    for name, err in errors.items():
        print(f"  {name:>10s}  {err:.3e}{'  FAIL' if not err <= tol else ''}")
    return [name for name, err in errors.items() if not err <= tol]


def make_pair(case: Case, seed: int, tmp_path: Path) -> tuple[CPUModel, GPT2]:
    """The same fp32 parameters in the C engine and in a float64 reference, via a model file.

    The padded wte rows are filled with noise: the engine must ignore them in the loss anyway.
    """
    model = GPT2.from_config(case.config, seed)
    with torch.no_grad():
        model.wte[case.config.vocab_size :].normal_(0.0, 0.02)
    path = tmp_path / f"{case.name}.bin"
    model.save_checkpoint(str(path))
    return CPUModel.from_checkpoint(path), GPT2.from_checkpoint(str(path), dtype=torch.float64)


def reference_step(ref: GPT2, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Forward and backward of the reference on a fresh gradient: (logits, loss)."""
    ref.zero_grad(set_to_none=True)
    logits, loss = ref(torch.from_numpy(x), torch.from_numpy(y))
    assert loss is not None
    loss.backward()
    return logits.detach().numpy(), float(loss.item())


def engine_step(engine: CPUModel, x: np.ndarray, y: np.ndarray) -> float:
    """Forward and backward of the C engine on zeroed gradients: the loss."""
    loss = engine.forward(x, y)
    assert loss is not None
    engine.zero_grad()
    engine.backward()
    return loss


def parameter_errors(engine: CPUModel, ref: GPT2, lr: float, steps: int) -> dict[str, float]:
    """Relative error of every parameter after `steps` AdamW steps, the key bias split off.

    The key bias (qkvb[:, C:2C]) adds the same number to every attention score of a row, which
    the softmax ignores: its gradient is zero in exact arithmetic, and what each engine computes is
    rounding noise (~1e-20 in float64, ~1e-11 in fp32). AdamW turns noise into steps of up to
    lr * |g| / eps, so the key bias is only checked to stay much smaller than lr * steps.
    """
    C = engine.config.channels
    ref_params = ref.params_numpy()
    errors = {}
    for name in PARAMETER_NAMES:
        if name == "qkvb":
            for part, columns in (("q", slice(0, C)), ("v", slice(2 * C, 3 * C))):
                errors[f"qkvb[{part}]"] = rel_error(
                    engine.params[name][:, columns], ref_params[name][:, columns]
                )
            key_bias = np.abs(engine.params[name][:, C : 2 * C]).max()
            assert key_bias <= 0.1 * lr * steps, f"key bias moved by {key_bias:.2e}"
            assert np.abs(ref_params[name][:, C : 2 * C]).max() <= 0.1 * lr * steps
        else:
            errors[name] = rel_error(engine.params[name], ref_params[name])
    return errors


def copy_grads(engine: CPUModel) -> dict[str, np.ndarray]:
    return {name: np.array(grad) for name, grad in engine.grads.items()}


# ------------------------------------------------------------------------------------------------
# forward, loss, gradients


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_parity(case: Case, tmp_path: Path) -> None:
    engine, ref = make_pair(case, seed=1, tmp_path=tmp_path)
    x, y = random_batch(case.config, case.B, case.T, seed=2)

    assert engine.forward(x) is None  # without targets: logits only
    logits_only = np.array(engine.logits)
    loss = engine.forward(x, y)
    assert loss is not None
    logits = np.array(engine.logits)
    assert logits.shape == (case.B, case.T, case.config.padded_vocab_size)
    assert logits.dtype == np.float32
    assert np.array_equal(logits, logits_only)

    with torch.no_grad():
        ref_logits, ref_loss = ref(torch.from_numpy(x), torch.from_numpy(y))
    assert ref_loss is not None
    errors = {
        "logits": rel_error(logits, ref_logits.numpy()),
        "loss": abs(loss - ref_loss.item()) / abs(ref_loss.item()),
    }
    failed = report(f"forward {case.name}", errors, LOGITS_TOL)
    assert not failed, f"{case.name}: relative error above {LOGITS_TOL:.0e} in {failed}"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_backward_parity(case: Case, tmp_path: Path) -> None:
    engine, ref = make_pair(case, seed=3, tmp_path=tmp_path)
    x, y = random_batch(case.config, case.B, case.T, seed=4)
    engine_step(engine, x, y)
    reference_step(ref, x, y)
    ref_grads = ref.grads_numpy()

    errors = {name: rel_error(engine.grads[name], ref_grads[name]) for name in PARAMETER_NAMES}
    failed = report(f"gradients {case.name}", errors, GRAD_TOL)
    assert not failed, f"{case.name}: gradient relative error above {GRAD_TOL:.0e} in {failed}"
    V = case.config.vocab_size
    assert not engine.grads["wte"][V:].any(), "padded wte rows must get exactly zero gradient"
    for name in PARAMETER_NAMES:
        assert engine.grads[name].shape == case.config.parameter_shapes()[name]
        assert np.all(np.isfinite(engine.grads[name])), name


@pytest.mark.parametrize("case", CASES[:3], ids=CASE_IDS[:3])
def test_grad_norm(case: Case, tmp_path: Path) -> None:
    engine, ref = make_pair(case, seed=5, tmp_path=tmp_path)
    x, y = random_batch(case.config, case.B, case.T, seed=6)
    engine_step(engine, x, y)
    reference_step(ref, x, y)
    grads = [getattr(ref, name).grad for name in PARAMETER_NAMES]
    ref_norm = float(torch.nn.utils.get_total_norm(grads, norm_type=2.0))
    norm = engine.grad_norm()
    err = abs(norm - ref_norm) / ref_norm
    print(f"\ngrad norm {case.name}: engine {norm:.8f} reference {ref_norm:.8f} rel {err:.2e}")
    assert err <= LOSS_TOL


# ------------------------------------------------------------------------------------------------
# gradient accumulation and scaling


def test_gradient_accumulation(tmp_path: Path) -> None:
    """Two half batches with loss_scale 0.5 give the gradients of the whole batch's mean loss."""
    case = CASES[1]
    engine, ref = make_pair(case, seed=7, tmp_path=tmp_path)
    B = 4
    x, y = random_batch(case.config, B, case.T, seed=8)
    full_loss = engine_step(engine, x, y)
    full = copy_grads(engine)

    engine.zero_grad()
    half_losses = []
    for part in (slice(0, B // 2), slice(B // 2, B)):
        loss = engine.forward(x[part], y[part])
        assert loss is not None
        half_losses.append(loss)
        engine.backward(loss_scale=0.5)
    accumulated = copy_grads(engine)
    assert sum(half_losses) / 2 == pytest.approx(full_loss, rel=1e-6)

    reference_step(ref, x, y)
    ref_grads = ref.grads_numpy()
    errors_full = {name: rel_error(accumulated[name], full[name]) for name in PARAMETER_NAMES}
    errors_ref = {name: rel_error(accumulated[name], ref_grads[name]) for name in PARAMETER_NAMES}
    failed = report("accumulated vs one batch (engine)", errors_full, 1e-5)
    failed += report("accumulated vs reference", errors_ref, GRAD_TOL)
    assert not failed, f"gradient accumulation differs in {failed}"


def test_loss_scale_and_accumulation_without_zero_grad(tmp_path: Path) -> None:
    case = CASES[0]
    engine, _ = make_pair(case, seed=9, tmp_path=tmp_path)
    x, y = random_batch(case.config, case.B, case.T, seed=10)
    engine_step(engine, x, y)
    once = copy_grads(engine)

    engine.zero_grad()
    engine.forward(x, y)
    engine.backward(loss_scale=2.0)
    for name in PARAMETER_NAMES:
        np.testing.assert_allclose(engine.grads[name], 2.0 * once[name], rtol=1e-6, atol=0)

    engine.forward(x, y)  # no zero_grad: gradients add up to 3x
    engine.backward(loss_scale=1.0)
    for name in PARAMETER_NAMES:
        np.testing.assert_allclose(
            engine.grads[name], 3.0 * once[name], rtol=1e-5, atol=1e-7 * np.abs(once[name]).max()
        )

    engine.zero_grad()
    for name in PARAMETER_NAMES:
        assert not engine.grads[name].any(), name


# ------------------------------------------------------------------------------------------------
# AdamW


@pytest.mark.parametrize("case", CASES[:4], ids=CASE_IDS[:4])
def test_adamw_trajectory(case: Case, tmp_path: Path) -> None:
    """STEPS AdamW steps on one batch: the loss before every step, then every parameter."""
    lr, betas, eps, weight_decay = 1e-3, (0.9, 0.95), 1e-8, 0.1
    engine, ref = make_pair(case, seed=11, tmp_path=tmp_path)
    optimizer = ref.configure_optimizer(lr, betas=betas, eps=eps, weight_decay=weight_decay)
    x, y = random_batch(case.config, case.B, case.T, seed=12)

    losses, ref_losses = [], []
    for _ in range(STEPS):
        losses.append(engine_step(engine, x, y))
        engine.step(lr, betas[0], betas[1], eps, weight_decay)
        ref_losses.append(reference_step(ref, x, y)[1])
        optimizer.step()
    assert engine.step_count == STEPS

    print(f"\nlosses {case.name}: " + " ".join(f"{loss:.6f}" for loss in losses))
    step_errors = {
        f"step {i}": abs(a - b) / abs(b) for i, (a, b) in enumerate(zip(losses, ref_losses))
    }
    failed = report(f"loss trajectory {case.name}", step_errors, TRAJECTORY_TOL)
    assert not failed, f"{case.name}: loss trajectory differs at {failed}"
    assert losses[-1] < losses[0] - 0.1, "10 steps on one batch must lower the loss"

    param_errors = parameter_errors(engine, ref, lr, STEPS)
    title = f"parameters after {STEPS} steps {case.name}"
    failed = report(title, param_errors, PARAMS_AFTER_STEPS_TOL)
    assert not failed, f"{case.name}: parameters differ after {STEPS} steps in {failed}"


def test_weight_decay_only_on_2d_weights(tmp_path: Path) -> None:
    """With zero gradients AdamW only decays: 2-D weights shrink by (1 - lr*wd), the rest stay."""
    case = CASES[0]
    engine, _ = make_pair(case, seed=13, tmp_path=tmp_path)
    x, y = random_batch(case.config, case.B, case.T, seed=14)
    engine_step(engine, x, y)
    engine.zero_grad()
    before = {name: np.array(p) for name, p in engine.params.items()}
    lr, weight_decay = 1e-2, 0.5
    engine.step(lr, weight_decay=weight_decay)
    for name in PARAMETER_NAMES:
        factor = 1.0 - lr * weight_decay if name in DECAYED_PARAMETERS else 1.0
        np.testing.assert_allclose(engine.params[name], factor * before[name], rtol=1e-6, atol=0)


def test_grad_scale(tmp_path: Path) -> None:
    """step(grad_scale=s) updates as if the gradients were multiplied by s (gradient clipping)."""
    case = CASES[1]
    lr, scale = 1e-3, 0.37
    engine, ref = make_pair(case, seed=15, tmp_path=tmp_path)
    optimizer = ref.configure_optimizer(lr, weight_decay=0.1)
    x, y = random_batch(case.config, case.B, case.T, seed=16)
    for _ in range(3):
        engine_step(engine, x, y)
        engine.step(lr, weight_decay=0.1, grad_scale=scale)
        reference_step(ref, x, y)
        with torch.no_grad():
            for name in PARAMETER_NAMES:
                grad = getattr(ref, name).grad
                assert grad is not None
                grad.mul_(scale)
        optimizer.step()
    errors = parameter_errors(engine, ref, lr, steps=3)
    failed = report("parameters after 3 steps with grad_scale", errors, PARAMS_AFTER_STEPS_TOL)
    assert not failed, f"grad_scale: parameters differ in {failed}"


# ------------------------------------------------------------------------------------------------
# init and checkpoints


def test_engine_init_statistics_and_seed() -> None:
    config = GPT2Config(256, 1000, 4, 4, 128, 1024)
    engine = CPUModel.from_config(config, seed=21)
    assert engine.config == config
    assert engine.num_parameters == config.num_parameters()
    params = engine.params
    projection_std = 0.02 / math.sqrt(2 * config.num_layers)
    for name in DECAYED_PARAMETERS:
        values = params[name][: config.vocab_size] if name == "wte" else params[name]
        std = projection_std if name in ("attprojw", "fcprojw") else 0.02
        assert np.std(values) == pytest.approx(std, rel=0.03), name
        assert abs(np.mean(values)) < 0.1 * std, name
    assert not params["wte"][config.vocab_size :].any(), "padded wte rows must be zero"
    for name in ("ln1w", "ln2w", "lnfw"):
        assert np.all(params[name] == 1.0), name
    for name in ("ln1b", "ln2b", "qkvb", "attprojb", "fcb", "fcprojb", "lnfb"):
        assert not params[name].any(), name

    same = CPUModel.from_config(config, seed=21)
    other = CPUModel.from_config(config, seed=22)
    for name in PARAMETER_NAMES:
        assert np.array_equal(same.params[name], params[name]), name
    for name in DECAYED_PARAMETERS:
        assert not np.array_equal(other.params[name], params[name]), name


def test_engine_init_runs_like_the_reference() -> None:
    """A model initialized by the engine, copied into the reference, gives the same loss."""
    case = CASES[1]
    engine = CPUModel.from_config(case.config, seed=23)
    ref = GPT2(case.config, dtype=torch.float64)
    ref.load_numpy(engine.params)
    x, y = random_batch(case.config, case.B, case.T, seed=24)
    loss = engine.forward(x, y)
    assert loss is not None
    with torch.no_grad():
        ref_logits, ref_loss = ref(torch.from_numpy(x), torch.from_numpy(y))
    assert ref_loss is not None
    assert rel_error(np.array(engine.logits), ref_logits.numpy()) <= LOGITS_TOL
    assert abs(loss - ref_loss.item()) / ref_loss.item() <= LOSS_TOL


def test_engine_checkpoints_read_by_the_reference(tmp_path: Path) -> None:
    case = CASES[1]
    engine, _ = make_pair(case, seed=25, tmp_path=tmp_path)
    x, y = random_batch(case.config, case.B, case.T, seed=26)
    engine_step(engine, x, y)
    engine.step(1e-3, weight_decay=0.1)  # parameters that no init produces

    fp32_path = tmp_path / "engine_fp32.bin"
    engine.save(fp32_path)
    loaded = GPT2.from_checkpoint(str(fp32_path)).params_numpy()
    for name in PARAMETER_NAMES:
        assert np.array_equal(loaded[name], engine.params[name]), name

    bf16_path = tmp_path / "engine_bf16.bin"
    engine.save(bf16_path, dtype="bfloat16")
    loaded = GPT2.from_checkpoint(str(bf16_path)).params_numpy()
    for name in PARAMETER_NAMES:
        expected = torch.from_numpy(np.array(engine.params[name])).to(torch.bfloat16).float()
        assert np.array_equal(loaded[name], expected.numpy()), f"{name}: not torch's bf16 rounding"


# ------------------------------------------------------------------------------------------------
# test_gpt2, the C parity program


def find_test_gpt2() -> str | None:
    """The test_gpt2 binary: $LLMC_BUILD_DIR/test_gpt2 when set, else the one on PATH."""
    build_dir = os.environ.get("LLMC_BUILD_DIR")
    if build_dir:
        candidate = os.path.join(build_dir, "test_gpt2")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("test_gpt2")


TEST_GPT2 = find_test_gpt2()
needs_test_gpt2 = pytest.mark.skipif(
    TEST_GPT2 is None,
    reason="test_gpt2 not found: not on PATH (pip install . puts it there) and not in "
    f"$LLMC_BUILD_DIR ({os.environ.get('LLMC_BUILD_DIR', 'unset')})",
)

FIXTURE_CONFIG = GPT2Config(64, 97, 2, 4, 64, 128)


@pytest.fixture(scope="module")
def parity_fixture(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    out = tmp_path_factory.mktemp("parity_fixture")
    fixture = write_parity_fixture(
        str(out), FIXTURE_CONFIG, B=4, T=32, seed=31, steps=STEPS, learning_rate=1e-3,
        weight_decay=0.1,
    )  # fmt: skip
    return fixture.model_path, fixture.debug_state_path


def run_test_gpt2(model_path: str, debug_state_path: str) -> subprocess.CompletedProcess[str]:
    assert TEST_GPT2 is not None
    result = subprocess.run(
        [TEST_GPT2, model_path, debug_state_path],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    print(f"\n$ test_gpt2 {model_path} {debug_state_path}  -> exit {result.returncode}")
    print(result.stdout[-4000:])
    print(result.stderr[-2000:])
    return result


@needs_test_gpt2
def test_test_gpt2_passes_on_reference_fixture(parity_fixture: tuple[str, str]) -> None:
    result = run_test_gpt2(*parity_fixture)
    assert result.returncode == 0, f"test_gpt2 failed:\n{result.stdout}\n{result.stderr}"


@needs_test_gpt2
def test_test_gpt2_fails_on_corrupt_gradient(
    parity_fixture: tuple[str, str], tmp_path: Path
) -> None:
    model_path, debug_state_path = parity_fixture
    state = read_debug_state(debug_state_path, FIXTURE_CONFIG)
    grad = state.grads["attprojw"]
    grad.flat[7] += 10.0 * float(np.abs(grad).max())  # one element, far off
    corrupt_path = str(tmp_path / "corrupt_debug_state.bin")
    write_debug_state(corrupt_path, state, FIXTURE_CONFIG)
    reference = read_losses_sidecar(debug_state_path)
    assert reference is not None
    write_losses_sidecar(corrupt_path, reference)
    result = run_test_gpt2(model_path, corrupt_path)
    assert result.returncode != 0, "test_gpt2 passed a debug state with a corrupt gradient"


@needs_test_gpt2
def test_test_gpt2_fails_on_wrong_loss_trajectory(
    parity_fixture: tuple[str, str], tmp_path: Path
) -> None:
    model_path, debug_state_path = parity_fixture
    corrupt_path = str(tmp_path / "debug_state.bin")
    shutil.copyfile(debug_state_path, corrupt_path)
    reference = read_losses_sidecar(debug_state_path)
    assert reference is not None
    reference.losses[-1] *= 1.01
    write_losses_sidecar(corrupt_path, reference)
    result = run_test_gpt2(model_path, corrupt_path)
    assert result.returncode != 0, "test_gpt2 passed a wrong loss at the last AdamW step"


@needs_test_gpt2
def test_test_gpt2_rejects_missing_file(parity_fixture: tuple[str, str], tmp_path: Path) -> None:
    result = run_test_gpt2(parity_fixture[0], str(tmp_path / "no_such_debug_state.bin"))
    assert result.returncode != 0
    assert "no_such_debug_state.bin" in result.stdout + result.stderr
