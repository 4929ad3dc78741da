"""dev/cuda/results_table.py: the markdown table that dev/cuda/run_all.sh prints last.

The sample logs are lines in the exact printf formats of dev/cuda/*.cu and attention_sdpa.py, with
the numbers of docs/benchmarks.md (2026-11-23, one H200); no GPU is needed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "dev" / "cuda" / "results_table.py"

LAYERNORM = """\
layernorm: N=65536 C=768, bf16 storage, NVIDIA H200
device copy: 4166 GB/s (402.7 MB read + written in 193.3 us)
forward          v1   check ok   (max rel err 2.40e-03)      76.5 us     2638 GB/s   63.3% of copy
forward          v2   check ok   (max rel err 2.40e-03)      68.1 us     2966 GB/s   71.2% of copy
fused fwd        v1   check ok   (max rel err 2.40e-03)     190.8 us     2113 GB/s   50.7% of copy
fused fwd        v2   check ok   (max rel err 2.40e-03)     107.5 us     3750 GB/s   90.0% of copy
backward         v1   check ok   (max rel err 2.40e-03)     834.2 us      483 GB/s   11.6% of copy
backward         v2   check ok   (max rel err 2.40e-03)     262.1 us     1538 GB/s   36.9% of copy
all checks passed
"""

MATMUL = """\
matmul: bf16 storage, NVIDIA H200
check fwd 512x256->768                     ok   max rel err 5.20e-03
check bwd dinp 512x256->768                ok   max rel err 4.10e-03
check cached call bit-identical 512x256->768 ok   max rel err 0.00e+00
small matmul (64^3), cached plan: 9.60 us per call (host + launch bound)
qkv 768->2304 (+bias)      cublas   0.884 ms   788 TFLOP/s | \
engine   1.018 ms   683 TFLOP/s   86.8% of cuBLAS
classifier 768->50304      cublas  18.904 ms   804 TFLOP/s | \
engine  18.870 ms   805 TFLOP/s  100.2% of cuBLAS
all checks passed
"""

CLASSIFIER = """\
fused classifier, bf16, NVIDIA H200
engine version for Vp = 50304: v3-persist
check v1        N=   96 V=50257 Vp=50304  dlogits rel err 1.40e-03  \
loss rel err 6.00e-08  deterministic  ok
check v1        N=   64 V= 1023 Vp= 1024  dlogits rel err 1.30e-03  \
loss rel err 5.00e-08  deterministic  ok
check v3-persist N=   96 V=50257 Vp=50304  dlogits rel err 1.40e-03  \
loss rel err 6.00e-08  deterministic  ok
device copy: 4254.0 GB/s (read + write)
N=65536 V=50257 Vp=50304: logits 6.59 GB
time v1        loss + dlogits:   10.439 ms   1263.0 GB/s   29.7% of copy
time v3-persist loss + dlogits:    4.490 ms   2937.0 GB/s   69.0% of copy
time v1        loss only     :    6.246 ms   1055.0 GB/s   24.8% of copy (read only)
time v3-persist loss only     :    2.570 ms   2565.0 GB/s   60.3% of copy (read only)
all checks passed
"""

ATTENTION = """\
device: NVIDIA H200, 132 SMs
correctness (relative error vs a float64 CPU reference, tolerance 2e-02):
  v1 simple (phase 1)           B=2   T=50    H=3   HS=64  heads  99 | out 1.5e-03 lse 7.0e-08 \
dq 1.8e-03 dk 1.7e-03 dv 1.6e-03 | non-finite 0 | - | PASS
  v2 flash (production)         B=2   T=50    H=3   HS=64  heads  99 | out 1.9e-03 lse 1.0e-07 \
dq 2.8e-03 dk 2.7e-03 dv 2.1e-03 | non-finite 0 | bwd bit-identical | PASS
  v2 flash (production)         B=64  T=1024  H=12  HS=64  heads   2 | out 2.0e-03 lse 1.0e-07 \
dq 3.1e-03 dk 3.0e-03 dv 2.3e-03 | non-finite 0 | bwd bit-identical | PASS

timings (median, ms; TFLOP/s with causal FLOPs counted as half; cuDNN at B*H=768 T=1024 HS=64 \
on this machine kind: fwd 0.325 ms, fwd+bwd 1.388 ms):
version                       B     T    H   HS |   fwd ms TFLOP/s |   bwd ms TFLOP/s |   f+b ms \
TFLOP/s | vs simple
simple (phase 1)             64  1024   12   64 |   17.416     5.9 |   82.400     3.1 |   99.812 \
    3.6 |      1.0x
flash (production)           64  1024   12   64 |    0.432   238.8 |    1.481   174.0 |    1.909 \
  189.0 |     52.3x
flash (production)           16  4096   12   64 |    1.420   290.4 |    4.800   270.0 |    6.172 \
  233.8 |         -

all checks PASS
"""

SDPA = """\
torch 2.11.0+cu130, NVIDIA H200
backend         B     T   H   HS |   fwd ms TFLOP/s |   f+b ms TFLOP/s
cuDNN          64  1024  12   64 |    0.324   317.8 |    1.611   223.9
flash (FA2)    64  1024  12   64 |    0.492   209.5 |    2.374   152.0
cuDNN          16  4096  12   64 | not available: No available kernel
"""


@pytest.fixture(scope="module")
def rt() -> ModuleType:
    """The results_table script, loaded as a module from its path."""
    spec = importlib.util.spec_from_file_location("dev_cuda_results_table", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _write(folder: Path, logs: dict[str, tuple[str, int | None]]) -> Path:
    """Writes <kernel>.log and <kernel>.rc (rc None: no .rc file) and returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for kernel, (text, rc) in logs.items():
        (folder / f"{kernel}.log").write_text(text)
        if rc is not None:
            (folder / f"{kernel}.rc").write_text(f"{rc}\n")
    return folder


def _all_pass() -> dict[str, tuple[str, int | None]]:
    """The five logs of a run where everything passed."""
    return {
        "layernorm": (LAYERNORM, 0),
        "matmul": (MATMUL, 0),
        "fused_classifier": (CLASSIFIER, 0),
        "attention": (ATTENTION, 0),
        "attention_sdpa": (SDPA, 0),
    }


def _find(rows: list[Any], kernel_part: str, version: str) -> Any:
    """The one row whose kernel contains kernel_part and whose version is version."""
    hits = [r for r in rows if kernel_part in r.kernel and r.version == version]
    assert len(hits) == 1, (kernel_part, version, [(r.kernel, r.version) for r in rows])
    return hits[0]


def test_all_pass_rows(rt: ModuleType, tmp_path: Path) -> None:
    rows, notes, ok = rt.collect(_write(tmp_path, _all_pass()))
    assert ok
    assert "layernorm: device copy 4166 GB/s" in notes
    assert "fused_classifier: device copy 4254.0 GB/s" in notes
    # 6 layernorm + 2x2 matmul + 4 classifier + 3 attention + 3 sdpa rows, known order first
    assert len(rows) == 6 + 4 + 4 + 3 + 3
    assert rows[0].kernel.startswith("layernorm")
    fused = _find(rows, "layernorm fused residual + forward (N=65536 C=768)", "v2")
    assert (fused.time, fused.rate, fused.limit) == ("107.5 us", "3750 GB/s", "90.0% of copy")
    assert fused.check == "pass (2.40e-03)"
    eng = _find(rows, "matmul fwd+bwd qkv 768->2304 (+bias)", "engine")
    assert (eng.time, eng.rate, eng.limit, eng.check) == (
        "1.018 ms",
        "683 TFLOP/s",
        "86.8% of cuBLAS",
        "pass (3 checks)",
    )
    plain = _find(rows, "matmul fwd+bwd classifier 768->50304", "cuBLAS plain")
    assert (plain.time, plain.rate, plain.limit) == ("18.904 ms", "804 TFLOP/s", "limit")
    v3 = _find(rows, "fused classifier loss + dlogits (N=65536 Vp=50304)", "v3-persist (engine)")
    assert (v3.time, v3.rate, v3.limit, v3.check) == (
        "4.490 ms",
        "2937.0 GB/s",
        "69.0% of copy",
        "pass",
    )
    read = _find(rows, "fused classifier loss only (read)", "v1")
    assert read.limit == "24.8% of copy"
    flash = _find(rows, "attention B=64 T=1024 H=12 HS=64", "v2 flash (production)")
    assert flash.time == "fwd 0.432 / f+b 1.909 ms"
    assert flash.rate == "238.8 / 189.0 TFLOP/s"
    # cuDNN 0.324 / 1.611 ms in the same run: 75% and 84% of its speed
    assert flash.limit == "75% / 84% of cuDNN"
    assert flash.check == "pass"
    long_t = _find(rows, "attention B=16 T=4096", "v2 flash (production)")
    assert long_t.limit == "-"  # cuDNN not available at that shape
    simple = _find(rows, "attention B=64 T=1024", "v1 simple (phase 1)")
    assert simple.time == "fwd 17.416 / f+b 99.812 ms"
    assert _find(rows, "attention B=64 T=1024", "torch cuDNN").limit == "reference"
    assert _find(rows, "attention B=16 T=4096", "torch cuDNN").time == "not available"


def test_table_markdown(rt: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _write(tmp_path, _all_pass())
    assert rt.main([str(folder), "--date", "2026-11-23", "--device", "NVIDIA H200"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert out.rstrip().endswith(table[-1])  # the table comes last
    assert table[0] == (
        "| kernel | version | time | GB/s or TFLOP/s | % of limit | check | date | device |"
    )
    assert len(table) == 2 + 20
    for line in table[2:]:
        assert line.count("|") == 9
        assert line.endswith("| 2026-11-23 | NVIDIA H200 |")


def test_failed_check_line(rt: ModuleType, tmp_path: Path) -> None:
    logs = _all_pass()
    bad = LAYERNORM.replace("backward         v2   check ok  ", "backward         v2   check FAIL")
    bad = bad.replace("all checks passed", "SOME CHECKS FAILED")
    logs["layernorm"] = (bad, 1)
    rows, _, ok = rt.collect(_write(tmp_path, logs))
    assert not ok
    assert _find(rows, "layernorm backward", "v2").check.startswith("FAIL")
    # the program exited 1, so each of its rows says FAIL; other programs stay pass
    assert all(r.check.startswith("FAIL") for r in rows if r.kernel.startswith("layernorm"))
    assert _find(rows, "matmul fwd+bwd qkv", "engine").check == "pass (3 checks)"


def test_failed_check_makes_main_fail(rt: ModuleType, tmp_path: Path) -> None:
    logs = _all_pass()
    bad = CLASSIFIER.replace("deterministic  ok\ndevice", "NOT DETERMINISTIC  FAIL\ndevice")
    logs["fused_classifier"] = (bad.replace("all checks passed", "SOME CHECKS FAILED"), 1)
    folder = _write(tmp_path, logs)
    rows, _, ok = rt.collect(folder)
    assert not ok
    assert _find(rows, "loss + dlogits", "v3-persist (engine)").check.startswith("FAIL")
    assert rt.main([str(folder)]) == 1


def test_attention_check_fail_marks_only_that_version(rt: ModuleType, tmp_path: Path) -> None:
    logs = _all_pass()
    text = ATTENTION.replace("bwd bit-identical | PASS", "bwd NOT DETERMINISTIC | FAIL", 1)
    logs["attention"] = (text.replace("all checks PASS", "SOME CHECKS FAILED"), 1)
    rows, _, ok = rt.collect(_write(tmp_path, logs))
    assert not ok
    assert _find(rows, "attention B=64 T=1024", "v2 flash (production)").check == "FAIL"
    assert _find(rows, "attention B=64 T=1024", "v1 simple (phase 1)").check.startswith("FAIL")


def test_crash_without_output(rt: ModuleType, tmp_path: Path) -> None:
    logs = _all_pass()
    logs["matmul"] = ("matmul: bf16 storage, NVIDIA H200\nCUDA error: out of memory\n", 1)
    rows, _, ok = rt.collect(_write(tmp_path, logs))
    assert not ok
    matmul = [r for r in rows if r.kernel.startswith("matmul")]
    assert len(matmul) == 1 and matmul[0].check == "FAIL (exit status 1, no results)"


def test_zero_exit_without_verdict_fails(rt: ModuleType, tmp_path: Path) -> None:
    logs = _all_pass()
    logs["layernorm"] = (LAYERNORM.replace("all checks passed\n", ""), 0)
    rows, _, ok = rt.collect(_write(tmp_path, logs))
    assert not ok
    assert _find(rows, "layernorm forward", "v2").check == "FAIL"


def test_timeout_and_missing_rc(rt: ModuleType, tmp_path: Path) -> None:
    logs = _all_pass()
    logs["attention"] = (ATTENTION.split("\ntimings")[0], 124)
    logs["matmul"] = (MATMUL, None)
    rows, _, ok = rt.collect(_write(tmp_path, logs))
    assert not ok
    att = [r for r in rows if r.kernel == "attention"]
    assert att[0].check == "FAIL (exit status 124, no results)"
    assert _find(rows, "qkv", "engine").check == "FAIL (program: no exit status recorded)"


def test_sdpa_skipped_and_unknown_program(rt: ModuleType, tmp_path: Path) -> None:
    logs = _all_pass()
    logs["attention_sdpa"] = ("SKIPPED: no PyTorch with CUDA\n", 0)
    logs["newkernel"] = ("newkernel: ...\nall checks passed\n", 0)
    rows, notes, ok = rt.collect(_write(tmp_path, logs))
    assert ok
    assert _find(rows, "attention B=64 T=1024", "v2 flash (production)").limit == "-"
    assert _find(rows, "attention (torch SDPA)", "-").check.startswith("SKIPPED")
    new = _find(rows, "newkernel", "-")
    assert new.check == "pass (no timings parsed)"
    assert rows[-1] is new
    assert "newkernel: no table parser; see newkernel.log" in notes


def test_bad_folder(rt: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        rt.collect(tmp_path / "absent")
    assert rt.main([str(tmp_path)]) == 2  # empty: no logs
    (tmp_path / "layernorm.log").write_text(LAYERNORM)
    (tmp_path / "layernorm.rc").write_text("oops\n")
    assert rt.main([str(tmp_path)]) == 2


ENCODER = """\
encoder: B=64 T=1024 C=768, bf16 storage, NVIDIA H200
device copy: 4211 GB/s (1073.7 MB read + written in 509.9 us)
check encoder forward v1                                   max rel err 0.00e+00 (tol 1e-02)  ok
RESULT | encoder forward (B=64 T=1024 C=768) | v1 | 61.2 us | 3290 GB/s | 78.1% | pass (0.00e+00)
RESULT | encoder forward (B=64 T=1024 C=768) | v2 (engine) | 52.0 us | 3871 GB/s | 91.9% of copy | -
all checks passed
"""


def test_result_lines(rt: ModuleType, tmp_path: Path) -> None:
    logs = _all_pass()
    logs["encoder"] = (ENCODER, 0)
    rows, _, ok = rt.collect(_write(tmp_path, logs))
    assert ok
    v2 = _find(rows, "encoder forward (B=64 T=1024 C=768)", "v2 (engine)")
    assert (v2.time, v2.rate, v2.limit, v2.check) == ("52.0 us", "3871 GB/s", "91.9% of copy", "-")
    assert _find(rows, "encoder forward", "v1").check == "pass (0.00e+00)"


def test_result_line_fail_and_malformed(rt: ModuleType, tmp_path: Path) -> None:
    logs = _all_pass()
    logs["encoder"] = (ENCODER.replace("pass (0.00e+00)", "FAIL (3.00e-01)"), 0)
    rows, _, ok = rt.collect(_write(tmp_path, logs))
    assert not ok
    assert _find(rows, "encoder forward", "v2 (engine)").check.startswith("FAIL")
    logs["encoder"] = (ENCODER.replace("| 52.0 us ", ""), 0)
    rows, notes, ok = rt.collect(_write(tmp_path, logs))
    assert not ok
    assert any(n.startswith("malformed result line") for n in notes)
