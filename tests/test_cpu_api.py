"""The C engine's Python API (llmc.cpu): construction, views, checkpoints, errors, determinism."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import llmc
from llmc import formats
from llmc.config import PARAMETER_NAMES, GPT2Config
from llmc.cpu import CPUModel

TINY = GPT2Config(
    max_seq_len=32, vocab_size=61, padded_vocab_size=64, num_layers=2, num_heads=2, channels=32
)


def random_batch(config: GPT2Config, B: int, T: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, size=(B, T + 1), dtype=np.int32)
    return tokens[:, :-1], tokens[:, 1:]


def test_import_resolves_to_the_python_package() -> None:
    # the repository's top-level llmc/ holds C headers; it must never shadow the package
    assert llmc.__file__ is not None
    assert Path(llmc.__file__).name == "__init__.py"
    assert hasattr(llmc, "GPT2Config")


def test_from_config_is_seeded_and_follows_gpt2_init() -> None:
    config = GPT2Config.from_descriptor("d6")
    a = CPUModel.from_config(config, seed=7)
    b = CPUModel.from_config(config, seed=7)
    c = CPUModel.from_config(config, seed=8)
    assert a.num_parameters == config.num_parameters()
    for name in PARAMETER_NAMES:
        np.testing.assert_array_equal(a.params[name], b.params[name])
    assert not np.array_equal(a.params["qkvw"], c.params["qkvw"])
    V = config.vocab_size
    assert abs(float(a.params["wte"][:V].std()) - 0.02) < 1e-3
    assert np.all(a.params["wte"][V:] == 0)  # padded rows are never used
    residual_std = 0.02 / np.sqrt(2 * config.num_layers)
    assert abs(float(a.params["fcprojw"].std()) - residual_std) < 1e-4
    assert abs(float(a.params["attprojw"].std()) - residual_std) < 1e-4
    assert np.all(a.params["ln1w"] == 1) and np.all(a.params["ln1b"] == 0)
    assert np.all(a.params["qkvb"] == 0) and np.all(a.params["lnfw"] == 1)


def test_parameter_views_share_memory_with_the_engine() -> None:
    model = CPUModel.from_config(TINY, seed=1)
    x, y = random_batch(TINY, 2, 8, seed=0)
    before = model.forward(x, y)
    model.params["lnfb"][:] = 0.5  # a write through the view changes the model itself
    after = model.forward(x, y)
    assert before != after
    shapes = TINY.parameter_shapes()
    for name in PARAMETER_NAMES:
        assert model.params[name].shape == shapes[name]
        assert model.grads[name].shape == shapes[name]
        assert model.params[name].dtype == np.float32


def test_views_outlive_the_wrapper() -> None:
    view = CPUModel.from_config(TINY, seed=1).params["wte"]
    # the model is unreachable now, but the view keeps its buffer alive
    assert float(np.abs(view).sum()) > 0


def test_forward_without_targets_returns_logits_only() -> None:
    model = CPUModel.from_config(TINY, seed=1)
    x, y = random_batch(TINY, 3, 5, seed=0)
    assert model.forward(x) is None
    logits = model.logits
    assert logits.shape == (3, 5, TINY.padded_vocab_size)
    loss = model.forward(x, y)
    assert loss is not None and np.isfinite(loss)
    np.testing.assert_array_equal(model.logits, logits)
    model.forward(x)
    with pytest.raises(ValueError, match="forward pass with targets"):
        model.backward()


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = CPUModel.from_config(TINY, seed=3)
    fp32_path, bf16_path = tmp_path / "m32.bin", tmp_path / "m16.bin"
    model.save(fp32_path)
    model.save(bf16_path, dtype="bfloat16")
    loaded = CPUModel.from_checkpoint(fp32_path)
    for name in PARAMETER_NAMES:
        np.testing.assert_array_equal(loaded.params[name], model.params[name])
    # the C writer's bf16 rounding equals the Python formats module's (round to nearest even)
    config, params16 = formats.read_model(bf16_path)
    assert config == TINY
    loaded16 = CPUModel.from_checkpoint(bf16_path)
    for name in PARAMETER_NAMES:
        expected = formats.bfloat16_bits_to_float32(
            formats.float32_to_bfloat16_bits(model.params[name])
        )
        np.testing.assert_array_equal(params16[name], expected)
        np.testing.assert_array_equal(loaded16.params[name], expected)
    assert not list(tmp_path.glob("*.tmp"))  # no temporary file left behind


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (np.zeros((4,), dtype=np.int32), "2-D"),
        (np.zeros((2, 0), dtype=np.int32), "empty"),
        (np.zeros((2, 4), dtype=np.float32), "integer"),
        (np.full((2, 4), 61, dtype=np.int64), "outside"),
        (np.full((2, 4), -1, dtype=np.int32), "outside"),
        (np.full((2, 4), 2**33, dtype=np.int64), "outside"),
        (np.zeros((1, 33), dtype=np.int32), "exceeds"),
    ],
)
def test_bad_inputs_raise(inputs: np.ndarray, message: str) -> None:
    model = CPUModel.from_config(TINY, seed=1)
    with pytest.raises(ValueError, match=message):
        model.forward(inputs)


def test_bad_targets_and_calls_raise() -> None:
    model = CPUModel.from_config(TINY, seed=1)
    x, y = random_batch(TINY, 2, 4, seed=0)
    with pytest.raises(ValueError, match="shape"):
        model.forward(x, y[:, :3])
    with pytest.raises(ValueError, match="outside"):
        model.forward(x, np.full_like(y, 99))
    with pytest.raises(ValueError, match="forward pass with targets"):
        model.backward()
    with pytest.raises(ValueError, match="no forward pass"):
        _ = model.logits
    with pytest.raises(ValueError, match="dtype"):
        model.save("unused.bin", dtype="float16")
    with pytest.raises(ValueError, match="seed"):
        CPUModel.from_config(TINY, seed=-1)


def write_model_header(path: Path, header: list[int], body_bytes: int) -> None:
    values = np.zeros(256, dtype="<i4")
    values[: len(header)] = header
    with open(path, "wb") as f:
        f.write(values.tobytes())
        f.write(b"\0" * body_bytes)


def test_bad_model_files_raise_with_the_file_name(tmp_path: Path) -> None:
    good = tmp_path / "good.bin"
    CPUModel.from_config(TINY, seed=0).save(good)
    size = good.stat().st_size
    cases: dict[str, tuple[bytes, str]] = {}
    data = good.read_bytes()
    cases["truncated_body.bin"] = (data[: size - 4], "bytes")
    cases["extra_bytes.bin"] = (data + b"\0\0\0\0", "bytes")
    cases["truncated_header.bin"] = (data[:100], "truncated header")
    bad_magic = bytearray(data)
    bad_magic[0:4] = np.int32(1234).tobytes()
    cases["bad_magic.bin"] = (bytes(bad_magic), "bad magic")
    bad_version = bytearray(data)
    bad_version[4:8] = np.int32(4).tobytes()
    cases["bad_version.bin"] = (bytes(bad_version), "version")
    bad_heads = bytearray(data)
    bad_heads[20:24] = np.int32(3).tobytes()  # H = 3 does not divide C = 32
    cases["bad_heads.bin"] = (bytes(bad_heads), "not divisible")
    absurd = bytearray(data)
    absurd[16:20] = np.int32(2**30).tobytes()  # L = 2^30
    cases["absurd.bin"] = (bytes(absurd), "out of range")
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=message) as error:
            CPUModel.from_checkpoint(path)
        assert name in str(error.value)
    with pytest.raises(ValueError, match=r"missing\.bin"):
        CPUModel.from_checkpoint(tmp_path / "missing.bin")


def test_save_to_unwritable_path_raises(tmp_path: Path) -> None:
    model = CPUModel.from_config(TINY, seed=0)
    with pytest.raises(RuntimeError, match="cannot open"):
        model.save(tmp_path / "no_such_dir" / "m.bin")


def test_gradient_accumulation_adds() -> None:
    model = CPUModel.from_config(TINY, seed=2)
    x, y = random_batch(TINY, 2, 8, seed=5)
    model.zero_grad()
    model.forward(x, y)
    model.backward()
    once = {name: g.copy() for name, g in model.grads.items()}
    model.backward(loss_scale=0.5)  # adds half of the same gradient again
    for name in PARAMETER_NAMES:
        np.testing.assert_allclose(model.grads[name], 1.5 * once[name], rtol=1e-5, atol=1e-9)
    model.zero_grad()
    assert all(not g.any() for g in model.grads.values())


def test_engine_calls_release_the_gil() -> None:
    # while a long forward pass runs in another thread, this thread keeps running Python code;
    # a held GIL would stall it for the whole pass
    config = GPT2Config.from_descriptor("d6")
    model = CPUModel.from_config(config, seed=0)
    x, y = random_batch(config, 4, 64, seed=0)
    start = time.perf_counter()
    model.forward(x, y)
    duration = time.perf_counter() - start
    worker = threading.Thread(target=model.forward, args=(x, y))
    stamps = [time.perf_counter()]
    worker.start()
    while worker.is_alive():
        stamps.append(time.perf_counter())
    worker.join()
    longest_stall = max(b - a for a, b in zip(stamps, stamps[1:]))
    assert longest_stall < 0.5 * duration, (longest_stall, duration)


def test_models_train_concurrently_in_threads() -> None:
    # each thread's result must equal a single-threaded run of the same steps
    def train(seed: int) -> list[float]:
        model = CPUModel.from_config(TINY, seed=seed)
        x, y = random_batch(TINY, 4, 16, seed=seed)
        losses = []
        for _ in range(3):
            model.zero_grad()
            loss = model.forward(x, y)
            assert loss is not None
            losses.append(loss)
            model.backward()
            model.step(1e-3)
        return losses

    expected = {seed: train(seed) for seed in (1, 2)}
    results: dict[int, list[float]] = {}
    threads = [
        threading.Thread(target=lambda s=seed: results.__setitem__(s, train(s))) for seed in (1, 2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == expected


DETERMINISM_SCRIPT = """
import numpy as np
from llmc.config import GPT2Config
from llmc.cpu import CPUModel
config = GPT2Config(max_seq_len=64, vocab_size=300, padded_vocab_size=384, num_layers=2,
                    num_heads=4, channels=64)
model = CPUModel.from_config(config, seed=11)
rng = np.random.default_rng(0)
tokens = rng.integers(0, 300, size=(4, 65))
for _ in range(3):
    model.zero_grad()
    loss = model.forward(tokens[:, :-1], tokens[:, 1:])
    model.backward()
    model.step(1e-3, weight_decay=0.1)
print(repr(loss), model.grad_norm(), float(model.params["wte"].sum()))
"""


def test_results_do_not_depend_on_the_thread_count() -> None:
    outputs = []
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        result = subprocess.run(
            [sys.executable, "-c", DETERMINISM_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1]
