"""GPU tests of the CUDA engine (train_gpt2cu, test_gpt2cu): parity with the PyTorch reference,
determinism, checkpoints. Run on a machine with an NVIDIA GPU: ``pytest -m gpu``.

The CUDA programs are looked up in $LLMC_BUILD_DIR, else in build*/ directories of the repository
(the newest first). Tests marked ``gpu`` skip without a GPU; the flag tests need only the binary
(they stop before touching the GPU), so CI runs them where the CUDA programs were built.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARD_MAGIC = 20240520
GPT2_VOCAB = 50257


def _find_program(name: str) -> Path | None:
    """The newest built CUDA program called name, or None."""
    dirs: list[Path] = []
    env = os.environ.get("LLMC_BUILD_DIR")
    if env:
        dirs.append(Path(env))
    dirs.extend(sorted(REPO_ROOT.glob("build*"), key=lambda p: p.stat().st_mtime, reverse=True))
    for directory in dirs:
        path = directory / name
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def _program(name: str) -> Path:
    path = _find_program(name)
    if path is None:
        pytest.skip(f"{name} not built (set LLMC_BUILD_DIR or build with LLMC_CUDA=ON)")
    return path


def _have_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    result = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False)
    return result.returncode == 0 and "GPU" in result.stdout


requires_gpu = pytest.mark.skipif(not _have_gpu(), reason="no NVIDIA GPU")


def _write_shard(path: Path, tokens: np.ndarray) -> None:
    """A token shard: 256 int32 header, then uint16 tokens."""
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = SHARD_MAGIC, 1, tokens.size
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16).tobytes())


def _make_fixture(out: Path, name: str, *args: str) -> tuple[Path, Path]:
    """Model and debug state from the PyTorch reference (float64 on the CPU)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "python"))
    cmd = [sys.executable, "-m", "llmc.reference", "fixture", "--out", str(out), "--name", name]
    cmd += ["--steps", "10", "--compute-dtype", "float64", *args]
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    return out / f"{name}.bin", out / f"{name}_debug_state.bin"


FIXTURES = {
    # head size 64 (GPT-2's), the real vocabulary (50257 padded to 50304), T a multiple of 32
    "hs64": ("--layers", "2", "--heads", "4", "--channels", "256", "-B", "4", "-T", "64"),
    # head size 32, a small vocabulary (1000 padded to 1024), T not a multiple of the tile
    "hs32": (
        "--layers", "3", "--heads", "4", "--channels", "128", "--vocab", "1000",
        "-B", "3", "-T", "50", "--max-seq-len", "64",
    ),
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(FIXTURES))
def reference_fixture(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(model.bin, debug_state.bin) written by the PyTorch reference."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp(f"fixture_{request.param}")
    return _make_fixture(out, request.param, *FIXTURES[request.param])


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("program", ["test_gpt2cu_fp32", "test_gpt2cu"])
def test_parity_with_reference(program: str, reference_fixture: tuple[Path, Path]) -> None:
    """Logits, loss, all 16 gradients, determinism and 10 AdamW steps within tolerance."""
    model, state = reference_fixture
    result = subprocess.run(
        [str(_program(program)), str(model), str(state)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "overall: PASS" in result.stdout
    assert "10 AdamW steps" in result.stdout  # the optimizer steps were checked, not skipped
    assert "SKIPPED" not in result.stdout


@pytest.mark.gpu
@requires_gpu
def test_parity_fails_on_wrong_reference(tmp_path: Path) -> None:
    """The test program can fail: gradients of another model (another seed) must not pass."""
    pytest.importorskip("torch")
    args = FIXTURES["hs32"]
    model_a, _ = _make_fixture(tmp_path / "a", "a", *args, "--seed", "1")
    _, state_b = _make_fixture(tmp_path / "b", "b", *args, "--seed", "2")
    result = subprocess.run(
        [str(_program("test_gpt2cu_fp32")), str(model_a), str(state_b)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "overall: FAIL" in result.stdout


def _train_losses(program: Path, shard: Path, out_dir: Path | None, *extra: str) -> list[str]:
    cmd = [str(program), "-i", str(shard), "-b", "4", "-t", "128", "-v", "0", "-s", "0", *extra]
    if out_dir is not None:
        cmd += ["-o", str(out_dir)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    # "step 1/3 | loss 10.9 | norm 2.6 | lr ... | ms ...": keep step, loss and norm
    return [
        " | ".join(line.split(" | ")[:3])
        for line in result.stdout.splitlines()
        if line.startswith("step ")
    ]


@pytest.mark.gpu
@requires_gpu
def test_training_is_deterministic_and_checkpoints_load(tmp_path: Path) -> None:
    """Two bf16 runs from the same seed give identical losses and norms; the checkpoint loads."""
    program = _program("train_gpt2cu")
    shard = tmp_path / "train.bin"
    _write_shard(shard, np.random.default_rng(0).integers(0, GPT2_VOCAB, 20000))
    first = _train_losses(program, shard, tmp_path / "out1", "-e", "d6", "-x", "3", "-n", "3")
    second = _train_losses(program, shard, None, "-e", "d6", "-x", "3")
    assert len(first) == 3
    assert first == second
    losses = [float(re.search(r"loss ([0-9.]+)", line).group(1)) for line in first]  # type: ignore[union-attr]
    assert all(np.isfinite(losses))
    checkpoint = tmp_path / "out1" / "model_00000003.bin"
    assert checkpoint.is_file()
    header = np.fromfile(checkpoint, dtype=np.int32, count=8)
    assert header[0] == 20240326 and header[1] == 5  # bf16 model file
    resumed = _train_losses(program, shard, None, "-e", str(checkpoint), "-x", "1")
    assert len(resumed) == 1


@pytest.mark.parametrize(
    "flags, message",
    [
        (["-pn", "2"], "not implemented yet"),
        (["-z", "1"], "not implemented yet"),
        (["-y", "1"], "not implemented yet"),
        (["-k", "triangle"], "unknown schedule"),
        (["-b", "4", "-t", "64", "-d", "100"], "not a multiple"),
        (["-q"], "missing value"),
    ],
)
def test_bad_flags_are_rejected(flags: list[str], message: str) -> None:
    """Flags are checked before the GPU is touched: runs wherever the program was built."""
    program = _program("train_gpt2cu")
    result = subprocess.run([str(program), *flags], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert message in result.stderr
