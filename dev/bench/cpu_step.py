"""Training-step time of the C CPU engine against the PyTorch reference (eager fp32).

One step is forward + backward + AdamW on one batch. Both engines start from the same model file
and run the same batch in their own process (each with its own OpenMP runtime and the same number
of threads: OMP_NUM_THREADS for both, torch.set_num_threads for torch). Before any timing counts,
the loss of every step is compared between the two engines, so a fast but wrong engine shows.

    python dev/bench/cpu_step.py                     # d12 (GPT-2 124M), B=4, T=64, all cores
    python dev/bench/cpu_step.py --threads 1 --model d6 --steps 5

Prints the median step time of each engine and the ratio reference / engine. On a shared machine
other processes' load shows up as slow steps (OpenMP threads wait at every barrier for a thread
that was descheduled): use --repeat R to alternate the engines R times and keep each one's best
run, and look at the load averages printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

LOSS_TOL = 1e-4  # fp32 against fp32: relative difference of each step's loss


@dataclass
class EngineRun:
    """What one engine's process reports: per-step times (s) and the loss of every step."""

    engine: str
    threads: int
    times: list[float]
    losses: list[float]


def run_engine(args: argparse.Namespace) -> None:
    """Child process: load the model, run warmup + steps training steps, print one JSON line.

    Imports happen here, after the parent has set OMP_NUM_THREADS; the llmc process never loads
    torch (and its own OpenMP runtime).
    """
    batch = np.load(args.batch)
    x, y = batch["x"], batch["y"]
    lr, weight_decay = 1e-4, 0.1
    times: list[float] = []
    losses: list[float] = []
    if args.engine == "llmc":
        from llmc.cpu import CPUModel

        model = CPUModel.from_checkpoint(args.model_file)
        for _ in range(args.warmup + args.steps):
            start = time.perf_counter()
            loss = model.forward(x, y)
            model.zero_grad()
            model.backward()
            model.step(lr, weight_decay=weight_decay)
            times.append(time.perf_counter() - start)
            assert loss is not None
            losses.append(loss)
    else:
        import torch

        from llmc.reference import GPT2

        torch.set_num_threads(args.threads)
        ref = GPT2.from_checkpoint(args.model_file, dtype=torch.float32)
        optimizer = ref.configure_optimizer(lr, weight_decay=weight_decay)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        for _ in range(args.warmup + args.steps):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            _, loss_t = ref(xt, yt)
            assert loss_t is not None
            loss_t.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
            losses.append(float(loss_t.item()))
    print(json.dumps({"engine": args.engine, "threads": args.threads, "times": times,
                      "losses": losses}))  # fmt: skip


def spawn(engine: str, args: argparse.Namespace, model_file: str, batch_file: str) -> EngineRun:
    """Runs one engine in a fresh process with the thread count in its environment."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    command = [sys.executable, os.path.abspath(__file__), "--engine", engine]
    command += ["--model-file", model_file, "--batch", batch_file, "--threads", str(args.threads)]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{engine} benchmark process failed:\n{result.stderr}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return EngineRun(report["engine"], report["threads"], report["times"], report["losses"])


def main() -> int:
    """Parent process: write the model and batch, run both engines, check, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="d12", help="model descriptor (d12 = GPT-2 124M)")
    parser.add_argument("-B", type=int, default=4, help="batch size (4)")
    parser.add_argument("-T", type=int, default=64, help="sequence length (64)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="(all cores)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--repeat", type=int, default=1, help="runs per engine, alternating (1)")
    # internal: the child processes
    parser.add_argument("--engine", choices=("llmc", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--model-file", help=argparse.SUPPRESS)
    parser.add_argument("--batch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine is not None:
        run_engine(args)
        return 0
    if args.steps < 1 or args.warmup < 0 or args.threads < 1 or args.repeat < 1:
        parser.error("need --steps >= 1, --warmup >= 0, --threads >= 1, --repeat >= 1")

    from llmc.config import GPT2Config
    from llmc.reference import GPT2, random_batch

    config = GPT2Config.from_descriptor(args.model)
    with tempfile.TemporaryDirectory(prefix="llmc_bench_") as tmp:
        model_file = os.path.join(tmp, "model.bin")
        batch_file = os.path.join(tmp, "batch.npz")
        GPT2.from_config(config, args.seed).save_checkpoint(model_file)
        x, y = random_batch(config, args.B, args.T, args.seed + 1)
        np.savez(batch_file, x=x, y=y)
        load_before = os.getloadavg()
        runs: dict[str, list[EngineRun]] = {"llmc": [], "torch": []}
        for _ in range(args.repeat):
            for engine in runs:
                runs[engine].append(spawn(engine, args, model_file, batch_file))
        load_after = os.getloadavg()

    def median_step(run: EngineRun) -> float:
        return statistics.median(run.times[args.warmup :])

    llmc_run = min(runs["llmc"], key=median_step)
    torch_run = min(runs["torch"], key=median_step)
    worst = max(
        abs(a - b) / abs(b)
        for llmc_repeat, torch_repeat in zip(runs["llmc"], runs["torch"])
        for a, b in zip(llmc_repeat.losses, torch_repeat.losses)
    )
    print(
        f"{args.model} ({config.num_parameters() / 1e6:.1f}M parameters), B={args.B} T={args.T}, "
        f"{args.threads} threads, {args.steps} steps after {args.warmup} warm-up, "
        f"best of {args.repeat} run(s) per engine, {platform.processor() or platform.machine()}"
    )
    print(
        "load average (1, 5, 15 min) before: "
        + " ".join(f"{v:.2f}" for v in load_before)
        + ", after: "
        + " ".join(f"{v:.2f}" for v in load_after)
    )
    for engine, engine_runs in runs.items():
        per_run = " ".join(f"{1e3 * median_step(run):.1f}" for run in engine_runs)
        print(f"median ms of each {engine} run: {per_run}")
    print("losses llmc:  " + " ".join(f"{v:.5f}" for v in llmc_run.losses))
    print("losses torch: " + " ".join(f"{v:.5f}" for v in torch_run.losses))
    print(f"largest relative loss difference: {worst:.2e} (tolerance {LOSS_TOL:.0e})")
    if not worst <= LOSS_TOL:
        print("FAIL: the engines disagree; timings not reported")
        return 1

    tokens = args.B * args.T
    print(f"{'engine':<22s} {'median ms':>10s} {'min ms':>8s} {'max ms':>8s} {'tokens/s':>9s}")
    medians = {}
    for run, label in ((llmc_run, "llmc C engine"), (torch_run, "PyTorch eager fp32")):
        timed = run.times[args.warmup :]
        medians[run.engine] = median_step(run)
        print(
            f"{label:<22s} {1e3 * medians[run.engine]:10.1f} {1e3 * min(timed):8.1f} "
            f"{1e3 * max(timed):8.1f} {tokens / medians[run.engine]:9.0f}"
        )
    print(f"ratio torch / llmc: {medians['torch'] / medians['llmc']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
