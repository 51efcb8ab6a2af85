"""GPU check for the Mamba backbone (run by the lead on a CUDA machine; installs nothing).

1. The same checkpoint on both paths: a MambaMixer's state dict saved to disk, reloaded,
   run with the fused mamba-ssm kernel (use_fast_path=True) and with our pure-PyTorch scan
   (use_fast_path=False), and loaded strictly into mamba_ssm's own `Mamba`: max |diff|.
2. Forward + backward seconds of one layer (d_model 128, batch 4) at L = 256, 1024, 4096
   for the fused kernel and our scan on the GPU.
Without mamba_ssm only our scan is timed and the JSON says why. Prints one JSON line;
finishes in well under 3 minutes.

    python bench/gpu_mamba.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from seqmodels.backbones.mamba import MambaBackbone, MambaMixer, _fused  # noqa: E402


def _time(fn, x, repeats: int = 5) -> float:
    for _ in range(2):  # warm-up (kernel selection, allocator)
        fn(x).sum().backward()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        x.grad = None
        fn(x).sum().backward()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    out: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        out["error"] = "no CUDA device"
        print(json.dumps(out))
        return
    dev = torch.device("cuda")
    out["device"] = torch.cuda.get_device_name(0)
    try:
        import mamba_ssm

        out["mamba_ssm"] = mamba_ssm.__version__
    except Exception as err:  # absent, or its CUDA extension failing to load
        out["mamba_ssm"] = f"unavailable: {type(err).__name__}: {err}"
    try:
        import causal_conv1d

        out["causal_conv1d"] = getattr(causal_conv1d, "__version__", "installed")
    except Exception as err:
        out["causal_conv1d"] = f"unavailable: {type(err).__name__}: {err}"
    fused_ok = _fused() is not None
    out["fused_path"] = fused_ok

    torch.manual_seed(0)
    d_model, batch = 128, 4
    ref = MambaMixer(d_model).to(dev)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mixer.pt")
        torch.save(ref.state_dict(), path)
        state = torch.load(path, map_location=dev, weights_only=True)
    fast, slow = MambaMixer(d_model).to(dev), MambaMixer(d_model, use_fast_path=False).to(dev)
    fast.load_state_dict(state)
    slow.load_state_dict(state)
    x = torch.randn(batch, 1024, d_model, device=dev)
    with torch.no_grad():
        y_slow = slow(x)
        if fused_ok:
            y_fast = fast(x)
            out["max_abs_diff_fused_vs_ours"] = (y_fast - y_slow).abs().max().item()
            out["max_abs_output"] = y_slow.abs().max().item()
            try:
                from mamba_ssm import Mamba

                theirs = Mamba(d_model=d_model).to(dev)
                theirs.load_state_dict(state, strict=True)  # same names and shapes
                out["max_abs_diff_mamba_ssm_module_vs_ours"] = (
                    (theirs(x) - y_slow).abs().max().item()
                )
            except Exception as err:
                out["mamba_ssm_module_error"] = f"{type(err).__name__}: {err}"
    # A whole bidirectional backbone checkpoint, both paths.
    bb = MambaBackbone(d_model=64, n_layers=2, bidirectional=True).to(dev)
    bb_slow = MambaBackbone(d_model=64, n_layers=2, bidirectional=True, use_fast_path=False)
    bb_slow = bb_slow.to(dev)
    bb_slow.load_state_dict(bb.state_dict())
    h = torch.randn(2, 300, 64, device=dev)
    with torch.no_grad():
        diff = (bb(h, "bidirectional") - bb_slow(h, "bidirectional")).abs().max().item()
    out["backbone_max_abs_diff_fast_vs_ours"] = diff

    timings = {}
    for n in (256, 1024, 4096):
        xi = torch.randn(batch, n, d_model, device=dev, requires_grad=True)
        row = {"ours_s": _time(slow, xi)}
        if fused_ok:
            row["fused_s"] = _time(fast, xi)
        timings[str(n)] = row
    out["fwd_bwd_seconds"] = timings
    out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


if __name__ == "__main__":
    main()
