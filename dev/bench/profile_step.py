"""Per-kernel profile of one GPT-2 training step of the CUDA engine, grouped by phase.

Runs build/profile_gpt2cu (one warm-up step, then one step between cudaProfilerStart/Stop) under
`ncu --clock-control none --profile-from-start off` and prints, per kernel (same names summed) and
per group -- encoder / forward blocks / classifier / backward blocks / optimizer -- the time, the
share of the step, the DRAM bandwidth and the tensor-core utilisation. Groups follow launch order:
encoder kernels by name; the fused classifier kernel and the matmuls right before (logits) and
right after it (dlogits) are the classifier; global norm and AdamW are the optimizer; the rest are
forward blocks before the classifier and backward blocks after it.

    python3 dev/bench/profile_step.py --build-dir build-dev [--model d12 -B 16 -T 1024]
"""

from __future__ import annotations

import argparse
import collections
import csv
import io
import re
import subprocess
import sys
from pathlib import Path

METRICS = {
    "time": "gpu__time_duration.sum",
    "dram": "dram__bytes.sum.per_second",
    "hmma": "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
    "gmma": "sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active",
}
# ncu's units, to ms and GB/s ("nsecond" or "ns", "Gbyte/second" or "byte/s" or "GB/s", ...)
TIME_UNITS = {"n": 1e-6, "u": 1e-3, "m": 1.0, "": 1e3}
RATE_PREFIX = {"": 1e-9, "K": 1e-6, "M": 1e-3, "G": 1.0, "T": 1e3}


def to_ms(value: float, unit: str) -> float:
    """A time in ncu's unit, in ms."""
    prefix = unit[:-6] if unit.endswith("second") else unit[:-1] if unit.endswith("s") else None
    if prefix is None or prefix not in TIME_UNITS:
        raise RuntimeError(f"ncu: unknown time unit {unit!r}")
    return value * TIME_UNITS[prefix]


def to_gbs(value: float, unit: str) -> float:
    """A rate in ncu's unit, in GB/s."""
    match = re.fullmatch(r"([KMGT]?)(?:byte|B)/(?:second|s)", unit)
    if match is None:
        raise RuntimeError(f"ncu: unknown rate unit {unit!r}")
    return value * RATE_PREFIX[match.group(1)]


def run_ncu(args: argparse.Namespace) -> list[dict[str, float | str]]:
    """Kernels of the profiled step in launch order: name, ms, GB/s, tensor %."""
    exe = Path(args.build_dir) / "profile_gpt2cu"
    if not exe.is_file():
        raise RuntimeError(f"{exe}: no such program (cmake --build ... --target profile_gpt2cu)")
    cmd = [
        "ncu",
        "--clock-control",
        "none",
        "--profile-from-start",
        "off",
        "--csv",
        "--metrics",
        ",".join(METRICS.values()),
        str(exe),
        args.model,
        str(args.B),
        str(args.T),
    ]
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ncu failed (status {proc.returncode}):\n{proc.stderr[-2000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith('"')]
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    if not rows:
        raise RuntimeError(f"ncu printed no metrics:\n{proc.stdout[-2000:]}")
    header = rows[0]
    col = {
        name: header.index(name)
        for name in ("ID", "Kernel Name", "Metric Name", "Metric Unit", "Metric Value")
    }
    kernels: dict[int, dict[str, float | str]] = {}
    for r in rows[1:]:
        k = kernels.setdefault(
            int(r[col["ID"]]),
            {"name": r[col["Kernel Name"]], "hmma": 0.0, "gmma": 0.0, "dram": 0.0, "time": 0.0},
        )
        metric, unit = r[col["Metric Name"]], r[col["Metric Unit"]]
        text = r[col["Metric Value"]].replace(",", "")
        try:
            value = float(text)
        except ValueError:  # "n/a": the metric does not apply to this kernel
            value = 0.0
        for key, name in METRICS.items():
            if metric == name:
                if key == "time":
                    value = to_ms(value, unit)
                elif key == "dram":
                    value = to_gbs(value, unit)
                k[key] = value
    return [kernels[i] for i in sorted(kernels)]


def group_of(kernels: list[dict[str, float | str]]) -> list[str]:
    """The group of every kernel, by launch order and name."""
    names = [str(k["name"]) for k in kernels]
    cls = next((i for i, n in enumerate(names) if "fused_classifier" in n), len(names))
    groups = []
    for i, name in enumerate(names):
        if "encoder" in name:
            groups.append("encoder")
        elif "adamw" in name or "global_norm" in name:
            groups.append("optimizer")
        elif i == cls or i == cls - 1 or i == cls + 1:
            groups.append("classifier")
        elif i < cls:
            groups.append("forward blocks")
        else:
            groups.append("backward blocks")
    return groups


def main(argv: list[str] | None = None) -> int:
    """Runs the profile and prints the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", default="build-dev")
    parser.add_argument("--model", default="d12")
    parser.add_argument("-B", type=int, default=16)
    parser.add_argument("-T", type=int, default=1024)
    parser.add_argument("--top", type=int, default=25, help="kernels listed")
    args = parser.parse_args(argv)
    kernels = run_ncu(args)
    groups = group_of(kernels)
    total = sum(float(k["time"]) for k in kernels)
    print(f"\n{len(kernels)} kernels, {total:.3f} ms (sum of kernel times, one step)\n")
    print("| group | kernels | ms | share | DRAM GB/s (time-weighted) | tensor % (time-weighted) |")
    print("|---|---|---|---|---|---|")
    order = ["encoder", "forward blocks", "classifier", "backward blocks", "optimizer"]
    for g in order:
        ks = [k for k, kg in zip(kernels, groups, strict=True) if kg == g]
        t = sum(float(k["time"]) for k in ks)
        if not ks or t == 0:
            continue
        bw = sum(float(k["dram"]) * float(k["time"]) for k in ks) / t
        tc = sum(max(float(k["hmma"]), float(k["gmma"])) * float(k["time"]) for k in ks) / t
        print(f"| {g} | {len(ks)} | {t:.3f} | {100 * t / total:.1f}% | {bw:.0f} | {tc:.1f} |")
    by_name: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for k, g in zip(kernels, groups, strict=True):
        short = re.sub(r"[<(].*", "", str(k["name"]))[:60]
        acc = by_name[f"{g}: {short}"]
        t = float(k["time"])
        acc[0] += t
        acc[1] += 1
        acc[2] += float(k["dram"]) * t
        acc[3] += max(float(k["hmma"]), float(k["gmma"])) * t
    print("\n| kernel (group: name) | calls | ms | share | DRAM GB/s | tensor % |")
    print("|---|---|---|---|---|---|")
    for name, (t, n, bw, tc) in sorted(by_name.items(), key=lambda x: -x[1][0])[: args.top]:
        print(
            f"| {name} | {int(n)} | {t:.3f} | {100 * t / total:.1f}% | {bw / t:.0f} | "
            f"{tc / t:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
