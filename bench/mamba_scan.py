"""One Mamba layer (d_model 128, batch 4) forward + backward on CPU: our chunked scan vs a
plain sequential reference scan vs mambapy (when installed), and the activation memory
each keeps for backward (bytes of saved tensors, so linear growth in L is visible).

    python bench/mamba_scan.py [--lengths 256 1024 4096] [--ref-max-len 1024]

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from seqmodels.backbones.mamba import MambaMixer, selective_scan_ref


class _RefMixer(MambaMixer):
    """The same layer with the sequential reference scan (autograd through every step)."""

    def forward(self, h, state=None):
        import seqmodels.backbones.mamba as m

        saved = m.selective_scan
        m.selective_scan = lambda *a, chunk_size=None, **k: selective_scan_ref(*a, **k)
        try:
            return super().forward(h, state)
        finally:
            m.selective_scan = saved


def _saved_bytes(layer, x) -> int:
    """Bytes of the tensors autograd keeps for backward of layer(x)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    del out
    return total


def _time(layer, x, repeats: int) -> float:
    runs = []
    for _ in range(repeats + 1):  # the first call warms the allocator up
        x.grad = None
        t = time.perf_counter()
        layer(x).sum().backward()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--ref-max-len", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d_model, batch = 128, 4
    ours = MambaMixer(d_model)
    ref = _RefMixer(d_model)
    ref.load_state_dict(ours.state_dict())
    try:
        from mambapy.mamba import MambaBlock, MambaConfig

        mpy = MambaBlock(MambaConfig(d_model=d_model, n_layers=1))
    except ImportError:
        mpy = None
    # Other processes on a shared machine change these timings a lot: record the load.
    result: dict = {
        "load_avg_1min": os.getloadavg()[0],
        "d_model": d_model,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "lengths": {},
    }
    for n in args.lengths:
        x = torch.randn(batch, n, d_model, requires_grad=True)
        row = {
            "ours_s": _time(ours, x, args.repeats),
            "ours_saved_mb": _saved_bytes(ours, x) / 2**20,
        }
        if n <= args.ref_max_len:
            row["reference_s"] = _time(ref, x, 1)
            with torch.no_grad():
                diff = (ours(x) - ref(x)).abs().max().item()
            row["max_abs_diff_vs_reference"] = diff
        if mpy is not None:
            row["mambapy_s"] = _time(mpy, x, 1)
            row["mambapy_saved_mb"] = _saved_bytes(mpy, x) / 2**20
        result["lengths"][str(n)] = row
        print(f"L={n}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
