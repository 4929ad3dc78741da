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
from typing import Any

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


def _losses(lines: list[str]) -> np.ndarray:
    return np.array([float(re.search(r"loss ([0-9.]+)", x).group(1)) for x in lines])  # type: ignore[union-attr]


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("name, tolerance", [("train_gpt2cu", 2e-2), ("train_gpt2cu_fp32", 1e-4)])
def test_recompute_levels_agree(name: str, tolerance: float, tmp_path: Path) -> None:
    """-r 1 and -r 2 recompute the same kernels on the same inputs: bit-identical to each other.

    -r 0 fuses the GELU into the matmul epilogue (applied to the fp32 accumulator before
    rounding), -r 1/2 apply the GELU kernel to the rounded pre-activation: equal within
    rounding (bf16: a few 1e-3 of loss after 4 steps; fp32: far below 1e-4).
    """
    program = _program(name)
    shard = tmp_path / "train.bin"
    _write_shard(shard, np.random.default_rng(3).integers(0, GPT2_VOCAB, 20000))
    flags = ("-e", "d6", "-x", "4", "-l", "1e-3")
    runs = {r: _train_losses(program, shard, None, *flags, "-r", str(r)) for r in (0, 1, 2)}
    assert len(runs[0]) == 4
    assert runs[1] == runs[2]
    np.testing.assert_allclose(_losses(runs[1]), _losses(runs[0]), rtol=0, atol=tolerance)


def _hellaswag_reference(model: Path, examples: list[Any]) -> tuple[int, int]:
    """(correct by average loss, correct by total loss) of dev/data/hellaswag.py's evaluate()."""
    sys.path.insert(0, str(REPO_ROOT / "dev" / "data"))
    try:
        import hellaswag
    finally:
        sys.path.pop(0)
    logits_fn, vocab_size = hellaswag.model_logits_fn(str(model))
    result = hellaswag.evaluate(examples, logits_fn, vocab_size)
    return result.num_correct_norm, result.num_correct


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("name", ["train_gpt2cu_fp32", "train_gpt2cu"])
def test_hellaswag_matches_python_reference(name: str, tmp_path: Path) -> None:
    """-h 1 scores an eval file as dev/data/hellaswag.py does with the PyTorch model.

    fp32: the same number of correct answers (a flip needs two completions' losses within
    ~1e-6 of each other). bf16 logits move the losses by ~1e-2, which can flip close calls:
    at most 3 of 40 may differ.
    """
    pytest.importorskip("torch")
    from llmc.formats import EvalExample, write_eval_file

    program = _program(name)
    model, _ = _make_fixture(tmp_path / "fixture", "hs", *FIXTURES["hs32"])  # V=1000, maxT=64
    rng = np.random.default_rng(4)
    examples = [
        EvalExample(
            index=i,
            label=int(rng.integers(0, 4)),
            context=[int(t) for t in rng.integers(0, 1000, int(rng.integers(1, 30)))],
            completions=[
                [int(t) for t in rng.integers(0, 1000, int(rng.integers(1, 20)))] for _ in range(4)
            ],
        )
        for i in range(40)
    ]
    eval_file = tmp_path / "eval.bin"
    write_eval_file(eval_file, examples)
    shard = tmp_path / "train.bin"
    _write_shard(shard, rng.integers(0, 1000, 5000))
    out = tmp_path / "out"
    cmd = [str(program), "-e", str(model), "-i", str(shard), "-b", "3", "-t", "64", "-x", "1"]
    cmd += ["-v", "0", "-s", "0", "-l", "0", "-h", "1", "-hf", str(eval_file), "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(
        r"HellaSwag: (\d+)/40 correct, acc_norm [0-9.]+ \| acc [0-9.]+ \((\d+)\)", result.stdout
    )
    assert match is not None, result.stdout
    ours = (int(match.group(1)), int(match.group(2)))
    reference = _hellaswag_reference(out / "model_00000001.bin", examples)
    if name.endswith("fp32"):
        assert ours == reference
    else:
        assert abs(ours[0] - reference[0]) <= 3 and abs(ours[1] - reference[1]) <= 3, (
            ours,
            reference,
        )

    # a damaged eval file is an error naming it
    eval_file.write_bytes(eval_file.read_bytes()[:-2])
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and str(eval_file) in result.stderr


RESUME_FLAGS = ("-e", "d6", "-x", "10", "-l", "1e-3", "-u", "2", "-q", "0.1", "-c", "0.1")


def _checkpoint_files(directory: Path, step: int) -> list[Path]:
    return [
        directory / f"model_{step:08d}.bin",
        directory / f"state_{step:08d}_00000.bin",
        directory / f"DONE_{step:08d}",
    ]


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("name", ["train_gpt2cu", "train_gpt2cu_fp32"])
def test_resume_is_exact(name: str, tmp_path: Path) -> None:
    """10 steps straight == 5 steps, checkpoint, resume for 5: same losses, norms and files."""
    from llmc.formats import read_model_header, read_optimizer_state

    program = _program(name)
    shard = tmp_path / "train.bin"
    _write_shard(shard, np.random.default_rng(1).integers(0, GPT2_VOCAB, 30000))
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    straight = _train_losses(program, shard, straight_dir, *RESUME_FLAGS, "-n", "5")
    assert len(straight) == 10
    # a run killed after its step-5 checkpoint: only those files are in its directory
    resumed_dir.mkdir()
    for path in _checkpoint_files(straight_dir, 5):
        assert path.is_file(), path
        shutil.copy(path, resumed_dir / path.name)
    resumed = _train_losses(program, shard, resumed_dir, *RESUME_FLAGS, "-n", "5", "-y", "1")
    assert resumed == straight[5:]
    assert len(set(straight)) == 10  # the losses move: a no-op resume could not pass
    for a, b in zip(_checkpoint_files(straight_dir, 10), _checkpoint_files(resumed_dir, 10)):
        assert a.read_bytes() == b.read_bytes(), f"{b.name} differs from the straight run's"

    # the state file is the format of llmc.formats
    config, version = read_model_header(straight_dir / "model_00000005.bin")
    assert version == (3 if name.endswith("fp32") else 5)
    state = read_optimizer_state(straight_dir / "state_00000005_00000.bin", config.num_parameters())
    assert state.header.step == 5 and state.header.processes == 1 and state.header.shuffle
    assert (state.master is None) == name.endswith("fp32")
    assert np.abs(state.m).max() > 0 and state.v.min() >= 0
    assert len(state.dataloader_state) == 8  # the shuffle seed


@pytest.mark.gpu
@requires_gpu
def test_resume_rejects_bad_state(tmp_path: Path) -> None:
    """Truncated or mismatched state files fail with the file named; no DONE marker: fresh start."""
    program = _program("train_gpt2cu")
    shard = tmp_path / "train.bin"
    _write_shard(shard, np.random.default_rng(2).integers(0, GPT2_VOCAB, 20000))
    small = ("-b", "4", "-t", "128", "-v", "0", "-s", "0", "-e", "d6")
    base = [str(program), "-i", str(shard), *small]
    out = tmp_path / "out"
    subprocess.run([*base, "-x", "2", "-n", "1", "-o", str(out)], check=True, capture_output=True)
    state = out / "state_00000002_00000.bin"

    def resume(*extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [*base, "-x", "3", "-y", "1", "-o", str(out), *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    result = resume("-sh", "0")
    assert result.returncode != 0 and str(state) in result.stderr and "shuffle" in result.stderr
    result = resume("-seed", "7")
    assert result.returncode != 0 and str(state) in result.stderr and "seed" in result.stderr
    data = state.read_bytes()
    state.write_bytes(data[: len(data) - 100])
    result = resume()
    assert result.returncode != 0 and str(state) in result.stderr and "bytes" in result.stderr
    state.write_bytes(b"\0" * 8 + data[8:])
    result = resume()
    assert result.returncode != 0 and str(state) in result.stderr and "magic" in result.stderr
    # without its DONE marker the step-2 checkpoint is incomplete: -y 1 takes step 1
    (out / "DONE_00000002").unlink()
    result = resume()
    assert result.returncode == 0, result.stderr
    assert "step 1 (" in result.stdout and "step     2/3" in result.stdout
    # an empty directory: a fresh start
    result = subprocess.run(
        [*base, "-x", "1", "-y", "1", "-o", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "no checkpoint found" in result.stdout


@pytest.mark.parametrize(
    "flags, message",
    [
        (["-pn", "2"], "not implemented yet"),
        (["-z", "1"], "not implemented yet"),
        (["-y", "1"], "needs the checkpoint directory -o"),
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
