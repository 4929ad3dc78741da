"""End-to-end GPT-2 training throughput: llmc's train_gpt2cu against the PyTorch reference.

Both train the same model from scratch on the same random-token shard (written here), with the
same batch: T tokens per row, micro-batch B, total batch D tokens per optimizer step (gradient
accumulation D / (B*T)). PyTorch runs python/llmc/reference.py's GPT2 with scaled-dot-product
attention (is_causal=True), bf16 autocast, torch.compile, fused AdamW
(torch.optim.AdamW(fused=True), weight decay on the 2-D weights) and global-norm clipping at
1.0, i.e. what train_gpt2cu does.
Each side runs in its own process; steady state is the mean over the steps after --skip (the
first steps hold the allocation, cuBLASLt warm-up and torch.compile's compilation).

MFU counts 6*N + 6*L*C*T FLOPs per token with N the parameter count including wte's padded rows
(the engines compute them: 124,475,904 for d12, 803.5M FLOPs/token at T=1024), against 989.4
TFLOP/s dense bf16 (H100/H200 SXM). Peak memory: for train_gpt2cu what it prints (device memory
in use after the first step, CUDA context included); for PyTorch the same measure (total - free
after the last step) and torch's own max_memory_allocated.

Run on a GPU machine from the repository root, after building train_gpt2cu:
    python3 dev/bench/gpt2_124m.py --build-dir build-dev                   # d12, both trainers
    python3 dev/bench/gpt2_124m.py --build-dir build-dev --build-dir build-cudnn   # two builds
    python3 dev/bench/gpt2_124m.py --build-dir build-dev --model d48 --no-torch --micro-batch 16
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PEAK_FLOPS = 989.4e12
SHARD_MAGIC, SHARD_VERSION = 20240520, 1


def flops_per_token(model: str, T: int) -> tuple[int, float]:
    """(parameter count with the padded vocabulary, training FLOPs per token)."""
    from llmc.config import GPT2Config

    cfg = GPT2Config.from_descriptor(model)
    n = sum(int(np.prod(shape)) for shape in cfg.parameter_shapes().values())
    return n, 6.0 * n + 6.0 * cfg.num_layers * cfg.channels * T


def write_shard(path: Path, tokens: int, vocab: int, seed: int) -> None:
    """An llm.c token shard (uint16) of uniformly random tokens."""
    rng = np.random.default_rng(seed)
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(rng.integers(0, vocab, tokens, dtype=np.uint16).tobytes())


def run_llmc(args: argparse.Namespace, build_dir: str, shard: Path) -> dict[str, float]:
    """Runs build_dir's train_gpt2cu and parses its per-step lines."""
    exe = Path(build_dir) / "train_gpt2cu"
    if not exe.is_file():
        raise RuntimeError(f"{exe}: no such program (build train_gpt2cu first)")
    cmd = [
        str(exe),
        "-i",
        str(shard),
        "-e",
        args.model,
        "-b",
        str(args.micro_batch),
        "-t",
        str(args.seq_len),
        "-d",
        str(args.total_batch),
        "-x",
        str(args.steps),
        "-v",
        "0",
        "-s",
        "0",
    ]
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise RuntimeError(f"{exe} exited with status {proc.returncode}:\n{tail}")
    step_ms = [
        float(m.group(1)) for m in re.finditer(r"^step .*?\| ([\d.]+) ms \|", proc.stdout, re.M)
    ]
    losses = [
        float(m.group(1))
        for m in re.finditer(r"^step .*?\| loss ([\d.naif-]+) \|", proc.stdout, re.M)
    ]
    mem = re.search(r"peak GPU memory in use: ([\d.]+) GiB", proc.stdout)
    if len(step_ms) != args.steps or mem is None:
        raise RuntimeError(f"{exe}: could not parse its output:\n{proc.stdout[-2000:]}")
    steady = step_ms[args.skip :]
    return {
        "ms": float(np.mean(steady)),
        "ms_min": min(steady),
        "ms_max": max(steady),
        "mem_gib": float(mem.group(1)),
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }


def run_torch(args: argparse.Namespace, shard: Path) -> dict[str, float]:
    """Trains the PyTorch reference in this process (called in a subprocess by main)."""
    import torch

    from llmc.config import DECAYED_PARAMETERS, PARAMETER_NAMES, GPT2Config
    from llmc.reference import GPT2

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = torch.device("cuda")
    cfg = GPT2Config.from_descriptor(args.model)
    model = GPT2.from_config(cfg, seed=1337).to(device)
    model.use_sdpa = True
    decayed = [getattr(model, n) for n in PARAMETER_NAMES if n in DECAYED_PARAMETERS]
    others = [getattr(model, n) for n in PARAMETER_NAMES if n not in DECAYED_PARAMETERS]
    groups = [{"params": decayed, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    compiled = torch.compile(model)

    data = np.fromfile(shard, dtype=np.uint16, offset=1024).astype(np.int64)
    tokens = torch.from_numpy(data).to(device)
    B, T = args.micro_batch, args.seq_len
    accum = args.total_batch // (B * T)
    position = 0
    step_ms, losses = [], []
    compile_start = time.perf_counter()
    for step in range(args.steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for _ in range(accum):
            if position + B * T + 1 > tokens.numel():
                position = 0
            chunk = tokens[position : position + B * T + 1]
            position += B * T
            x, y = chunk[:-1].view(B, T), chunk[1:].view(B, T)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                _, loss = compiled(x, y)
            assert loss is not None
            (loss / accum).backward()
            loss_sum += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(loss_sum) / accum  # waits for the step
        torch.cuda.synchronize()
        ms = 1e3 * (time.perf_counter() - start)
        step_ms.append(ms)
        losses.append(loss_value)
        print(
            f"torch step {step + 1}/{args.steps} | loss {loss_value:.6f} | {ms:.1f} ms", flush=True
        )
    free, total = torch.cuda.mem_get_info()
    steady = step_ms[args.skip :]
    return {
        "ms": float(np.mean(steady)),
        "ms_min": min(steady),
        "ms_max": max(steady),
        "mem_gib": (total - free) / 2**30,
        "alloc_gib": torch.cuda.max_memory_allocated() / 2**30,
        "first_step_s": step_ms[0] / 1e3,
        "wall_s": time.perf_counter() - compile_start,
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }


def main(argv: list[str] | None = None) -> int:
    """Parses flags, runs both trainers and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--build-dir",
        action="append",
        help="folder holding train_gpt2cu (default build-dev); repeat to compare builds",
    )
    parser.add_argument("--model", default="d12", help="descriptor d12 / d24 / d36 / d48")
    parser.add_argument("--micro-batch", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--total-batch", type=int, default=524288)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--skip", type=int, default=4, help="steps left out of the steady state")
    parser.add_argument("--shard", default="/tmp/llmc_bench_rand.bin")
    parser.add_argument("--no-torch", action="store_true", help="train_gpt2cu only")
    parser.add_argument("--no-llmc", action="store_true", help="PyTorch only")
    parser.add_argument("--worker", choices=["torch"], help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.total_batch % (args.micro_batch * args.seq_len) != 0:
        parser.error(f"--total-batch {args.total_batch} is not a multiple of B*T")
    if not 0 <= args.skip < args.steps:
        parser.error("--skip must be in [0, --steps)")
    shard = Path(args.shard)
    build_dirs = args.build_dir or ["build-dev"]

    if args.worker == "torch":
        print("RESULT " + json.dumps(run_torch(args, shard)), flush=True)
        return 0

    n_params, fpt = flops_per_token(args.model, args.seq_len)
    if not shard.is_file():
        write_shard(shard, 4 * args.total_batch + 1, 50257, seed=0)
    print(
        f"{args.model}: {n_params:,} parameters (padded vocabulary), {fpt / 1e6:.1f}M FLOPs/token; "
        f"B={args.micro_batch} T={args.seq_len} total batch {args.total_batch}, "
        f"{args.steps} steps, "
        f"steady state over steps {args.skip + 1}..{args.steps}",
        flush=True,
    )
    results: dict[str, dict[str, float]] = {}
    if not args.no_llmc:
        for build_dir in build_dirs:
            name = "llmc train_gpt2cu" + (f" ({build_dir})" if len(build_dirs) > 1 else "")
            results[name] = run_llmc(args, build_dir, shard)
    if not args.no_torch:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "torch"] + [
            a for a in (argv if argv is not None else sys.argv[1:]) if a != "--worker"
        ]
        print("$ " + " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = re.search(r"^RESULT (.*)$", proc.stdout, re.M)
        if proc.returncode != 0 or found is None:
            print((proc.stdout + proc.stderr)[-4000:])
            raise RuntimeError(f"the PyTorch worker failed (status {proc.returncode})")
        results["PyTorch compiled"] = json.loads(found.group(1))

    tokens = args.total_batch
    print("\n| trainer | ms/step | tokens/s | MFU | peak memory |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        tps = tokens / (r["ms"] / 1e3)
        r["tokens_per_s"] = tps
        r["mfu"] = 100.0 * tps * fpt / PEAK_FLOPS
        mem = f"{r['mem_gib']:.2f} GiB"
        if "alloc_gib" in r:
            mem += f" (allocated {r['alloc_gib']:.2f})"
        print(
            f"| {name} | {r['ms']:.1f} ({r['ms_min']:.1f}-{r['ms_max']:.1f}) | {tps / 1e3:.1f}K | "
            f"{r['mfu']:.1f}% | {mem} |"
        )
    if "PyTorch compiled" in results:
        theirs = results["PyTorch compiled"]
        print()
        for name, ours in results.items():
            if name.startswith("llmc"):
                ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
                print(f"{name} / PyTorch tokens/s: {ratio:.3f}x")
        print(f"PyTorch first step (compile) {theirs['first_step_s']:.1f} s")
    for name, r in results.items():
        print(f"{name}: loss {r['loss_first']:.4f} -> {r['loss_last']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
