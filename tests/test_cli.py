"""The llmc command: info and convert."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmc import cli, formats
from llmc.config import GPT2Config
from llmc.cpu import CPUModel

TINY = GPT2Config(
    max_seq_len=16, vocab_size=50, padded_vocab_size=64, num_layers=1, num_heads=2, channels=16
)


def test_info_describes_each_kind_of_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_path = tmp_path / "model.bin"
    CPUModel.from_config(TINY, seed=0).save(model_path)
    shard_path = tmp_path / "shard.bin"
    formats.write_shard(shard_path, np.arange(100, dtype=np.uint16))
    tokenizer_path = tmp_path / "tok.bin"
    formats.write_tokenizer_file(tokenizer_path, [b"a", b"b", b"c"], eot_token=2)
    assert cli.main(["info", str(model_path), str(shard_path), str(tokenizer_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "GPT-2 model (fp32, v3): L=1 H=2 C=16 V=50 Vp=64 maxT=16" in out[0]
    assert f"{TINY.num_parameters():,} parameters" in out[0]
    assert out[1].endswith("token shard, 100 tokens")
    assert out[2].endswith("tokenizer, 3 tokens, EOT id 2")


def test_info_rejects_unknown_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\1" * 2048)
    short = tmp_path / "short.bin"
    short.write_bytes(b"\0" * 10)
    assert cli.main(["info", str(junk), str(short), str(tmp_path / "missing.bin")]) == 1
    err = capsys.readouterr().err
    assert "junk.bin: unknown magic" in err
    assert "short.bin: shorter than" in err
    assert "missing.bin" in err


def test_convert_round_trips_through_bf16(tmp_path: Path) -> None:
    fp32_path, bf16_path, back_path = (tmp_path / n for n in ("a.bin", "b.bin", "c.bin"))
    model = CPUModel.from_config(TINY, seed=4)
    model.save(fp32_path)
    assert cli.main(["convert", str(fp32_path), str(bf16_path), "--dtype", "bf16"]) == 0
    assert cli.main(["convert", str(bf16_path), str(back_path), "--dtype", "fp32"]) == 0
    _, back = formats.read_model(back_path)
    for name, param in model.params.items():
        np.testing.assert_allclose(back[name], param, rtol=2**-8, atol=0)
    assert bf16_path.stat().st_size < fp32_path.stat().st_size
