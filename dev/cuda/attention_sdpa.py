"""Times PyTorch's causal attention backends (cuDNN and FlashAttention-2) at the shapes that
dev/cuda/attention.cu times, so that one device call gives same-machine ratios.

Usage (on the GPU machine): python3 dev/cuda/attention_sdpa.py
Layout (B, H, T, HS) contiguous bf16, is_causal=True; median of 30 runs after 5 warm-ups, timed with
CUDA events; TFLOP/s count causal FLOPs as half (forward 4 B H T^2 HS / 2, backward 2.5x that).
"""

from __future__ import annotations

import statistics

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

SHAPES = [(64, 12, 1024, 64), (32, 12, 2048, 64), (16, 12, 4096, 64), (64, 6, 1024, 128)]
BACKENDS = [("cuDNN", SDPBackend.CUDNN_ATTENTION), ("flash (FA2)", SDPBackend.FLASH_ATTENTION)]


def _median_ms(fn: object, reps: int = 30, warmup: int = 5) -> float:
    """Median time in ms of fn() over reps runs, after warmup runs."""
    assert callable(fn)
    times = []
    for it in range(warmup + reps):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        if it >= warmup:
            times.append(start.elapsed_time(stop))
    return statistics.median(times)


def _time_backend(
    backend: SDPBackend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor
) -> tuple[float, float]:
    """(forward ms, forward + backward ms) of causal SDPA on one backend."""

    def fwd() -> None:
        with torch.no_grad():
            scaled_dot_product_attention(q, k, v, is_causal=True)

    def fwd_bwd() -> None:
        out = scaled_dot_product_attention(q, k, v, is_causal=True)
        out.backward(dout)

    with sdpa_kernel(backend):
        return _median_ms(fwd), _median_ms(fwd_bwd)


def main() -> None:
    """Prints one row per (backend, shape)."""
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    header = f"{'backend':12} {'B':>4} {'T':>5} {'H':>3} {'HS':>4} | {'fwd ms':>8} {'TFLOP/s':>7}"
    print(header + f" | {'f+b ms':>8} {'TFLOP/s':>7}")
    for b, h, t, hs in SHAPES:
        gen = torch.Generator(device="cuda").manual_seed(0)
        shape = (b, h, t, hs)
        q, k, v = (
            torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
            for _ in range(3)
        )
        dout = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
        fwd_flop = 4.0 * b * h * t * t * hs / 2
        for name, backend in BACKENDS:
            try:
                tf, tfb = _time_backend(backend, q, k, v, dout)
            except RuntimeError as exc:
                print(f"{name:12} {b:4d} {t:5d} {h:3d} {hs:4d} | not available: {str(exc)[:80]}")
                continue
            row = f"{name:12} {b:4d} {t:5d} {h:3d} {hs:4d} | {tf:8.3f} {fwd_flop / tf * 1e-9:7.1f}"
            print(row + f" | {tfb:8.3f} {3.5 * fwd_flop / tfb * 1e-9:7.1f}")


if __name__ == "__main__":
    main()
