"""Turns the logs of the dev/cuda programs into one markdown results table.

Usage: python3 dev/cuda/results_table.py RESULTS_DIR [--date YYYY-MM-DD] [--device NAME]

RESULTS_DIR holds, per program, `<kernel>.log` (its stdout and stderr) and `<kernel>.rc` (its exit
status), as dev/cuda/run_all.sh writes them. A program that prints `RESULT | ...` lines
(dev/cuda/common.cuh) gets one row per such line. Older programs with their own output (layernorm,
matmul, fused_classifier, attention, attention_sdpa) have their own parsers; any other log gets one
row with its verdict only. A program that exited non-zero, printed no final "all checks passed" line
or failed a check makes its rows say FAIL, and this script then exits with status 1.
Notes (the copy bandwidth each program measured) are printed first and the table last.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

KNOWN_ORDER = (
    "encoder",
    "layernorm",
    "gelu",
    "matmul",
    "attention",
    "attention_sdpa",
    "softmax",
    "crossentropy",
    "fused_classifier",
    "adamw",
    "global_norm",
    "nccl_all_reduce",
)
PASS_LINES = ("all checks passed", "all checks PASS")
FAIL = "FAIL"


@dataclass
class Row:
    """One line of the results table."""

    kernel: str
    version: str
    time: str
    rate: str
    limit: str
    check: str


@dataclass
class Parsed:
    """What one program's log gave: its rows, notes, and whether every check passed."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ok: bool = True


def _verdict_ok(text: str) -> bool:
    """True when the log ends its checks with the program's all-passed line."""
    return any(line.strip() in PASS_LINES for line in text.splitlines())


_LAYERNORM_HEAD = re.compile(r"^layernorm: N=(\d+) C=(\d+)")
_LAYERNORM_ROW = re.compile(
    r"^(forward|fused fwd|backward)\s+(v\d)\s+check (ok|FAIL)\s+\(max rel err (\S+)\)\s+"
    r"(\S+) us\s+(\S+) GB/s\s+(\S+)% of copy"
)
_COPY = re.compile(r"^device copy: ([\d.]+) GB/s")


def parse_layernorm(text: str) -> Parsed:
    """Rows of `layernorm` (forward, fused residual + forward, backward; v1 and v2)."""
    out = Parsed()
    shape = ""
    names = {"forward": "forward", "fused fwd": "fused residual + forward", "backward": "backward"}
    for line in text.splitlines():
        if m := _LAYERNORM_HEAD.match(line):
            shape = f" (N={m.group(1)} C={m.group(2)})"
        elif m := _COPY.match(line):
            out.notes.append(f"layernorm: device copy {m.group(1)} GB/s")
        elif m := _LAYERNORM_ROW.match(line):
            ok = m.group(3) == "ok"
            out.ok = out.ok and ok
            out.rows.append(
                Row(
                    kernel=f"layernorm {names[m.group(1)]}{shape}",
                    version=m.group(2),
                    time=f"{m.group(5)} us",
                    rate=f"{m.group(6)} GB/s",
                    limit=f"{m.group(7)}% of copy",
                    check=f"pass ({m.group(4)})" if ok else f"{FAIL} ({m.group(4)})",
                )
            )
    return out


_CLASSIFIER_HEAD = re.compile(r"^N=(\d+) V=(\d+) Vp=(\d+):")
_CLASSIFIER_CHECK = re.compile(r"^check (\S+)\s+N=.*\s(ok|FAIL)$")
_CLASSIFIER_TIME = re.compile(
    r"^time (\S+)\s+(loss \+ dlogits|loss only)\s*:\s+(\S+) ms\s+(\S+) GB/s\s+(\S+)% of copy"
)


def parse_fused_classifier(text: str) -> Parsed:
    """Rows of `fused_classifier` (loss + dlogits and loss only, per version)."""
    out = Parsed()
    shape = ""
    checks: dict[str, bool] = {}
    engine = ""
    for line in text.splitlines():
        if m := _CLASSIFIER_CHECK.match(line.rstrip()):
            checks[m.group(1)] = checks.get(m.group(1), True) and m.group(2) == "ok"
        elif m := re.match(r"^engine version for Vp = \d+: (\S+)", line):
            engine = m.group(1)
        elif m := _COPY.match(line):
            out.notes.append(f"fused_classifier: device copy {m.group(1)} GB/s")
        elif m := _CLASSIFIER_HEAD.match(line):
            shape = f" (N={m.group(1)} Vp={m.group(3)})"
        elif m := _CLASSIFIER_TIME.match(line):
            version = m.group(1)
            ok = checks.get(version, False)
            what = "loss + dlogits" if m.group(2).startswith("loss +") else "loss only (read)"
            out.rows.append(
                Row(
                    kernel=f"fused classifier {what}{shape}",
                    version=version + (" (engine)" if version == engine else ""),
                    time=f"{m.group(3)} ms",
                    rate=f"{m.group(4)} GB/s",
                    limit=f"{m.group(5)}% of copy",
                    check="pass" if ok else FAIL,
                )
            )
    out.ok = bool(checks) and all(checks.values())
    return out


_MATMUL_CHECK = re.compile(r"^check .*\s(ok|FAIL)\s+max rel err")
_MATMUL_ROW = re.compile(
    r"^(.*\S)\s+cublas\s+(\S+) ms\s+(\S+) TFLOP/s \| engine\s+(\S+) ms\s+(\S+) TFLOP/s\s+"
    r"(\S+)% of cuBLAS"
)


def parse_matmul(text: str) -> Parsed:
    """Rows of `matmul` (forward + backward per layer: plain cuBLAS, then the engine)."""
    out = Parsed()
    results = [m.group(1) == "ok" for m in map(_MATMUL_CHECK.match, text.splitlines()) if m]
    out.ok = bool(results) and all(results)
    check = f"pass ({len(results)} checks)" if out.ok else FAIL
    for line in text.splitlines():
        if m := _MATMUL_ROW.match(line):
            kernel = f"matmul fwd+bwd {m.group(1)}"
            out.rows.append(
                Row(
                    kernel,
                    "cuBLAS plain",
                    f"{m.group(2)} ms",
                    f"{m.group(3)} TFLOP/s",
                    "limit",
                    "-",
                )
            )
            out.rows.append(
                Row(
                    kernel,
                    "engine",
                    f"{m.group(4)} ms",
                    f"{m.group(5)} TFLOP/s",
                    f"{m.group(6)}% of cuBLAS",
                    check,
                )
            )
    return out


_ATT_CHECK = re.compile(r"^\s+v(\d+) (.*?)\s+B=\d+\s.*\|\s*(PASS|FAIL)\s*$")
_SHAPE = re.compile(r"^(.*\S)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$")


def _timing_fields(line: str, parts: int) -> tuple[str, tuple[str, ...], list[str]] | None:
    """(name, (B, T, H, HS), [ms, TFLOP/s, ...]) of a `name B T H HS | ms TF | ...` line."""
    cells = [c.strip() for c in line.split("|")]
    if len(cells) < parts:
        return None
    m = _SHAPE.match(cells[0])
    if not m:
        return None
    numbers = " ".join(cells[1:parts]).split()
    try:
        [float(x) for x in numbers]
    except ValueError:
        return None
    return m.group(1), (m.group(2), m.group(3), m.group(4), m.group(5)), numbers


def parse_attention_sdpa(text: str) -> dict[tuple[str, ...], tuple[float, float]]:
    """cuDNN's (fwd ms, fwd+bwd ms) per (B, T, H, HS) from attention_sdpa.py's output."""
    cudnn: dict[tuple[str, ...], tuple[float, float]] = {}
    for line in text.splitlines():
        f = _timing_fields(line, 3)
        if f and f[0] == "cuDNN" and len(f[2]) == 4:
            cudnn[f[1]] = (float(f[2][0]), float(f[2][2]))
    return cudnn


def rows_attention_sdpa(text: str) -> Parsed:
    """Rows of attention_sdpa.py (PyTorch's backends: references, not checked here)."""
    out = Parsed()
    for line in text.splitlines():
        if line.startswith("SKIPPED"):
            out.rows.append(Row("attention (torch SDPA)", "-", "-", "-", "-", line.strip()))
            continue
        f = _timing_fields(line, 3)
        if f is None:
            m = re.match(r"^(.*\S)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+) \| not available", line)
            if m:
                kernel = f"attention B={m.group(2)} T={m.group(3)} H={m.group(4)} HS={m.group(5)}"
                out.rows.append(Row(kernel, f"torch {m.group(1)}", "not available", "-", "-", "-"))
            continue
        name, (b, t, h, hs), nums = f
        if len(nums) != 4:
            continue
        out.rows.append(
            Row(
                kernel=f"attention B={b} T={t} H={h} HS={hs}",
                version=f"torch {name}",
                time=f"fwd {nums[0]} / f+b {nums[2]} ms",
                rate=f"{nums[1]} / {nums[3]} TFLOP/s",
                limit="reference",
                check="-",
            )
        )
    return out


def parse_attention(text: str, cudnn: dict[tuple[str, ...], tuple[float, float]]) -> Parsed:
    """Rows of `attention` (one per version and timed shape; % of cuDNN when it was timed)."""
    out = Parsed()
    checks: dict[str, bool] = {}
    labels: dict[str, str] = {}
    for line in text.splitlines():
        if m := _ATT_CHECK.match(line):
            name = m.group(2).strip()
            labels[name] = f"v{m.group(1)} {name}"
            checks[name] = checks.get(name, True) and m.group(3) == "PASS"
    for line in text.splitlines():
        f = _timing_fields(line, 4)
        if f is None or len(f[2]) != 6:
            continue
        name, shape, nums = f
        limit = "-"
        if shape in cudnn:
            ref_fwd, ref_both = cudnn[shape]
            fwd_pct = 100.0 * ref_fwd / float(nums[0])
            both_pct = 100.0 * ref_both / float(nums[4])
            limit = f"{fwd_pct:.0f}% / {both_pct:.0f}% of cuDNN"
        b, t, h, hs = shape
        out.rows.append(
            Row(
                kernel=f"attention B={b} T={t} H={h} HS={hs}",
                version=labels.get(name, name),
                time=f"fwd {nums[0]} / f+b {nums[4]} ms",
                rate=f"{nums[1]} / {nums[5]} TFLOP/s",
                limit=limit,
                check="pass" if checks.get(name, False) else FAIL,
            )
        )
    out.ok = bool(checks) and all(checks.values())
    return out


_RESULT_PREFIX = "RESULT |"


def parse_result_lines(text: str) -> Parsed:
    """Rows of a program that prints `RESULT | kernel | version | time | rate | limit | check`."""
    out = Parsed()
    for line in text.splitlines():
        if not line.startswith(_RESULT_PREFIX):
            continue
        cells = [c.strip() for c in line[len(_RESULT_PREFIX) :].split("|")]
        if len(cells) != 6:
            out.ok = False
            out.notes.append(f"malformed result line: {line.strip()!r}")
            continue
        row = Row(*cells)
        if row.check.startswith(FAIL):
            out.ok = False
        out.rows.append(row)
    return out


def _read(path: Path) -> str:
    """A log's text ('' when the file is absent)."""
    return path.read_text(errors="replace") if path.is_file() else ""


def _exit_status(results: Path, kernel: str) -> int | None:
    """The exit status recorded in <kernel>.rc, None when there is none."""
    path = results / f"{kernel}.rc"
    if not path.is_file():
        return None
    text = path.read_text().strip()
    try:
        return int(text)
    except ValueError as exc:
        raise ValueError(f"{path}: expected an exit status, got {text!r}") from exc


def collect(results: Path) -> tuple[list[Row], list[str], bool]:
    """(rows, notes, all passed) for every <kernel>.log in the results folder."""
    if not results.is_dir():
        raise ValueError(f"{results}: not a directory")
    logs = sorted(p.stem for p in results.glob("*.log"))
    kernels = [k for k in KNOWN_ORDER if k in logs] + [k for k in logs if k not in KNOWN_ORDER]
    cudnn = parse_attention_sdpa(_read(results / "attention_sdpa.log"))
    rows: list[Row] = []
    notes: list[str] = []
    all_ok = True
    for kernel in kernels:
        text = _read(results / f"{kernel}.log")
        rc = _exit_status(results, kernel)
        if _RESULT_PREFIX in text:
            parsed = parse_result_lines(text)
        elif kernel == "layernorm":
            parsed = parse_layernorm(text)
        elif kernel == "fused_classifier":
            parsed = parse_fused_classifier(text)
        elif kernel == "matmul":
            parsed = parse_matmul(text)
        elif kernel == "attention":
            parsed = parse_attention(text, cudnn)
        elif kernel == "attention_sdpa":
            parsed = rows_attention_sdpa(text)
        else:
            parsed = Parsed(ok=_verdict_ok(text))
            parsed.notes.append(f"{kernel}: no table parser; see {kernel}.log")
        if kernel != "attention_sdpa":
            parsed.ok = parsed.ok and _verdict_ok(text)
        parsed.ok = parsed.ok and rc == 0
        why = f"exit status {rc}" if rc is not None else "no exit status recorded"
        if not parsed.ok:
            all_ok = False
            for row in parsed.rows:
                if not row.check.startswith(FAIL):
                    row.check = f"{FAIL} (program: {why})" if rc != 0 else FAIL
            if not parsed.rows:
                parsed.rows.append(Row(kernel, "-", "-", "-", "-", f"{FAIL} ({why}, no results)"))
        elif not parsed.rows:
            parsed.rows.append(Row(kernel, "-", "-", "-", "-", "pass (no timings parsed)"))
        rows.extend(parsed.rows)
        notes.extend(parsed.notes)
    return rows, notes, all_ok


def render(rows: list[Row], date: str, device: str) -> str:
    """The markdown table."""
    header = ["kernel", "version", "time", "GB/s or TFLOP/s", "% of limit", "check"]
    header += ["date", "device"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r.kernel, r.version, r.time, r.rate, r.limit, r.check, date, device]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Prints the notes, then the table; returns 1 when any program failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("results", type=Path, help="folder with <kernel>.log and <kernel>.rc")
    parser.add_argument("--date", default="-", help="date to print in every row")
    parser.add_argument("--device", default="-", help="device name to print in every row")
    args = parser.parse_args(argv)
    try:
        rows, notes, ok = collect(args.results)
    except (OSError, ValueError) as exc:
        print(f"results_table: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(f"results_table: {args.results}: no <kernel>.log files", file=sys.stderr)
        return 2
    for note in notes:
        print(f"- {note}")
    print()
    print(render(rows, args.date, args.device), end="")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
