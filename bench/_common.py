"""Shared pieces of the benchmarks: timing, matmul peak, environment description."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_per_call(fn: Callable[[], object], n: int, device: str = "cpu") -> float:
    """Seconds per call of fn, over n calls after one warm-up call."""
    fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t) / n


def alternate(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Run each timing function in turn, `rounds` times, and keep the median of each: the
    competitors see the same machine state (thermal, other load) side by side."""
    got: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            got[k].append(fn())
    return {k: statistics.median(v) for k, v in got.items()}


def matmul_peak(dtype: torch.dtype, device: str = "cpu", n: int = 2048, reps: int = 5) -> float:
    """Measured GFLOP/s of an n^3 matmul: the ceiling that MFU is relative to."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    s = time_per_call(lambda: a @ b, reps, device)
    return 2 * n**3 / s / 1e9


def environment(device: str) -> dict:
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": device,
    }
    if device.startswith("cuda"):
        env["card"] = torch.cuda.get_device_name()
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def emit(result: dict) -> None:
    """The benchmark's result: one JSON object on the last line."""
    print(json.dumps(result))


# nanoGPT's CPU "baby GPT" and the larger shapes the benches time, in one place.
SHAPES = {
    "baby": dict(n_layers=4, n_heads=4, d_model=128, block=64, batch=12, vocab=65),
    "mfu512": dict(n_layers=4, n_heads=8, d_model=512, block=64, batch=12, vocab=65),
    "gpt2": dict(n_layers=12, n_heads=12, d_model=768, block=1024, batch=8, vocab=50304),
}


def ours(shape: dict, device: str = "cpu") -> torch.nn.Module:
    """The seqmodels LM at a bench shape."""
    from seqmodels.training import SeqLM

    return SeqLM(
        vocab_size=shape["vocab"],
        d_model=shape["d_model"],
        n_layers=shape["n_layers"],
        n_heads=shape["n_heads"],
        max_len=shape["block"],
    ).to(device)
