"""The CPU trainer program train_gpt2 (csrc/train_gpt2.c), run end to end as a subprocess.

The binary is found in $LLMC_BUILD_DIR, else on PATH (`pip install .` puts it there). The model is
a tiny GPT-2 file (L=2, C=64, maxT=64, GPT-2's vocabulary) and the data a short periodic token
sequence, so that 20 steps take a few seconds and the loss falls clearly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from llmc.config import GPT2Config
from llmc.formats import read_model, write_model, write_shard, write_tokenizer_file

TINY = GPT2Config(max_seq_len=64, num_layers=2, num_heads=4, channels=64)
STEP_LINE = re.compile(r"^step +(\d+)/(\d+) \| loss ([0-9.]+) \| norm ([0-9.]+) \| lr ([0-9.e+-]+)")
VAL_LINE = re.compile(r"^val loss ([0-9.]+)$")


def find_train_gpt2() -> str:
    build_dir = os.environ.get("LLMC_BUILD_DIR")
    if build_dir:
        path = os.path.abspath(os.path.join(build_dir, "train_gpt2"))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: not found (LLMC_BUILD_DIR is set to {build_dir})")
        return path
    found = shutil.which("train_gpt2")
    if found is None:
        pytest.skip("train_gpt2 not built: set LLMC_BUILD_DIR or pip install the package")
    return found


@pytest.fixture(scope="module")
def train_gpt2() -> str:
    return find_train_gpt2()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model, train/val shards, and a synthetic tokenizer next to the train shards."""
    root = tmp_path_factory.mktemp("train_gpt2")
    rng = np.random.default_rng(0)
    params = {}
    for name, shape in TINY.parameter_shapes().items():
        if name in ("ln1w", "ln2w", "lnfw"):
            params[name] = np.ones(shape, np.float32)
        elif name.endswith("b"):
            params[name] = np.zeros(shape, np.float32)
        else:
            params[name] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
    write_model(root / "tiny.bin", TINY, params)
    # a periodic sequence of 40 distinct tokens: learnable within a few steps
    vocab = rng.choice(50000, size=40, replace=False)
    data = np.tile(vocab, 200)
    (root / "data").mkdir()
    write_shard(root / "data" / "train_000.bin", data[:4000])
    write_shard(root / "data" / "train_001.bin", data[4000:])
    write_shard(root / "data" / "val_000.bin", np.tile(vocab, 20))
    # token i decodes to "t<i> "; EOT gets its own text
    tokens = [f"t{i} ".encode() for i in range(TINY.vocab_size)]
    tokens[50256] = b"<|endoftext|>"
    write_tokenizer_file(root / "data" / "gpt2_tokenizer.bin", tokens, 50256)
    return root


def run(
    binary: str, args: list[str], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")  # stable timing on a loaded CI machine
    return subprocess.run(
        [binary, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def base_args(workdir: Path) -> list[str]:
    data = workdir / "data"
    return ["-i", str(data / "train_*.bin"), "-j", str(data / "val_*.bin"), "-e",
            str(workdir / "tiny.bin"), "-b", "4", "-t", "32"]  # fmt: skip


def test_training_run(train_gpt2: str, workdir: Path) -> None:
    out = workdir / "out"
    args = [*base_args(workdir), "-o", str(out), "-x", "20", "-l", "1e-3", "-v", "10",
            "-m", "4", "-s", "10", "-g", "16", "-n", "10"]  # fmt: skip
    result = run(train_gpt2, args, workdir)
    assert result.returncode == 0, result.stderr + result.stdout
    lines = result.stdout.splitlines()

    # the settings table names the inputs
    assert any("| train data" in line and "train_*.bin" in line for line in lines)
    assert any("| model" in line and "tiny.bin" in line for line in lines)
    assert any("| tokenizer" in line and "gpt2_tokenizer.bin" in line for line in lines)

    steps = [STEP_LINE.match(line) for line in lines]
    losses = [float(m.group(3)) for m in steps if m]
    assert [int(m.group(1)) for m in steps if m] == list(range(1, 21))
    assert all(int(m.group(2)) == 20 for m in steps if m)
    assert all(np.isfinite(losses))
    assert losses[0] == pytest.approx(np.log(TINY.vocab_size), abs=0.3)  # random init
    assert np.mean(losses[-3:]) < losses[0] - 1.5, losses

    val_losses = [float(m.group(1)) for m in map(VAL_LINE.match, lines) if m]
    assert len(val_losses) == 3  # steps 0, 10 and the end
    assert val_losses[-1] < val_losses[0] - 1.0

    # a sample after step 10 and at the end, decoded with the tokenizer next to the data
    assert result.stdout.count("generating:") == 2
    samples = re.findall(r"generating:\n---\n(.*?)\n---", result.stdout, re.S)
    assert len(samples) == 2
    for sample in samples:
        assert re.fullmatch(r"((t\d+ )|<\|endoftext\|>){15}", sample), sample
    assert "total time" in result.stdout

    # checkpoints load and hold trained weights
    initial_config, initial = read_model(workdir / "tiny.bin")
    for step in (10, 20):
        config, params = read_model(out / f"model_{step:08d}.bin")
        assert config == initial_config
        assert not np.array_equal(params["wte"], initial["wte"])
    assert sorted(p.name for p in out.iterdir()) == [
        "main.log",
        "model_00000010.bin",
        "model_00000020.bin",
    ]
    log = (out / "main.log").read_text()
    assert "# micro batch B 4" in log
    assert len(re.findall(r"^s:\d+ trl:", log, re.M)) == 20
    assert len(re.findall(r"^s:\d+ tel:", log, re.M)) == 3

    # training continues from a checkpoint: its first loss is the trained model's
    again = run(train_gpt2, [*base_args(workdir), "-e", str(out / "model_00000020.bin"), "-x", "1",
                             "-v", "0", "-tk", str(workdir / "data" / "gpt2_tokenizer.bin"),
                             "-g", "4"], workdir)  # fmt: skip
    assert again.returncode == 0, again.stderr
    first = next(m for m in map(STEP_LINE.match, again.stdout.splitlines()) if m)
    assert float(first.group(3)) < losses[0] - 1.5


def test_accumulation_schedule_and_data_parallel_sharding(train_gpt2: str, workdir: Path) -> None:
    args = [*base_args(workdir), "-d", "512", "-x", "4", "-u", "2", "-k", "linear", "-q", "0.1",
            "-l", "1e-3", "-pn", "2", "-pr", "1", "-v", "2", "-m", "-1", "-s", "0", "-g", "8",
            "-gc", "0.5"]  # fmt: skip
    result = run(train_gpt2, args, workdir)
    assert result.returncode == 0, result.stderr + result.stdout
    assert re.search(r"\| grad accumulation steps +\| 2 ", result.stdout)  # 512 / (4*32*2)
    assert re.search(r"\| process rank / processes +\| 1 / 2 ", result.stdout)
    lrs = [float(m.group(5)) for m in map(STEP_LINE.match, result.stdout.splitlines()) if m]
    # warmup 2 steps to 1e-3, then linear decay towards 1e-4 at step 4
    np.testing.assert_allclose(lrs, [5e-4, 1e-3, 1e-3, 5.5e-4], rtol=1e-3)
    assert len(re.findall(r"^val loss", result.stdout, re.M)) == 3


def test_no_tokenizer_skips_samples(train_gpt2: str, workdir: Path, tmp_path: Path) -> None:
    shutil.copy(workdir / "data" / "train_000.bin", tmp_path / "train.bin")
    args = ["-i", str(tmp_path / "train.bin"), "-e", str(workdir / "tiny.bin"), "-b", "2",
            "-t", "16", "-x", "2", "-v", "0"]  # fmt: skip
    result = run(train_gpt2, args, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "not found: no samples" in result.stdout
    assert "generating:" not in result.stdout


# ---------------------------------------------------------------------------------------------
# bad flags and files: exit status 1 (not a signal) and a message naming the flag or the file


def corrupt_files(workdir: Path, tmp_path: Path) -> dict[str, Path]:
    model = (workdir / "tiny.bin").read_bytes()
    shard = (workdir / "data" / "train_000.bin").read_bytes()
    files = {
        "bad_magic_model.bin": b"\x01\x02\x03\x04" + model[4:],
        "truncated_model.bin": model[: len(model) // 2],
        "truncated_shard.bin": shard[:-6],
        "bad_magic_shard.bin": b"\x00" * 8 + shard[8:],
        "big_id_shard.bin": b"",
    }
    paths = {}
    for name, contents in files.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(contents)
    write_shard(paths["big_id_shard.bin"], np.full(1000, 60000))
    return paths


BAD_RUNS = [
    # (extra args replacing the defaults, what the message must name)
    (["-zz", "1"], "-zz"),
    (["-b"], "-b"),
    (["-b", "0"], "-b"),
    (["-b", "four"], "-b"),
    (["-t", "128"], "-t"),
    (["-t", "-3"], "-t"),
    (["-d", "100"], "-d"),
    (["-x", "0"], "-x"),
    (["-l", "nan"], "-l"),
    (["-q", "2"], "-q"),
    (["-k", "exponential"], "-k"),
    (["-g", "40"], "-g"),
    (["-pr", "2", "-pn", "2"], "-pr"),
    (["-seed", "-1"], "-seed"),
    (["stray"], "stray"),
    (["-i", "{tmp}/missing_*.bin"], "missing_*.bin"),
    (["-j", "{tmp}/missing_val.bin"], "missing_val.bin"),
    (["-e", "{tmp}/no_model.bin"], "no_model.bin"),
    (["-e", "d7"], "d7"),
    (["-e", "{tmp}/bad_magic_model.bin"], "bad_magic_model.bin"),
    (["-e", "{tmp}/truncated_model.bin"], "truncated_model.bin"),
    (["-i", "{tmp}/truncated_shard.bin"], "truncated_shard.bin"),
    (["-i", "{tmp}/bad_magic_shard.bin"], "bad_magic_shard.bin"),
    (["-i", "{tmp}/big_id_shard.bin"], "big_id_shard.bin"),
    (["-tk", "{tmp}/bad_magic_model.bin"], "bad_magic_model.bin"),
    (["-o", "{tmp}/truncated_shard.bin"], "truncated_shard.bin"),
]


@pytest.mark.parametrize(("extra", "named"), BAD_RUNS, ids=[" ".join(a) for a, _ in BAD_RUNS])
def test_bad_flags_and_files(
    train_gpt2: str, workdir: Path, tmp_path: Path, extra: list[str], named: str
) -> None:
    corrupt_files(workdir, tmp_path)
    extra = [arg.replace("{tmp}", str(tmp_path)) for arg in extra]
    # the bad argument comes last so that "missing value" really is missing
    args = [*base_args(workdir), "-x", "2", "-v", "1", "-m", "1", "-s", "0", "-g", "8", *extra]
    result = run(train_gpt2, args, tmp_path)
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "error" in result.stderr
    assert named in result.stderr, result.stderr
    assert not list(tmp_path.glob("model_*.bin"))
