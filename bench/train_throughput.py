"""Training throughput of the seqmodels transformer against litgpt's GPT at the same shape.

Default: nanoGPT's CPU "baby GPT" (4 layers, 4 heads, width 128, block 64, batch 12,
vocab 65, AdamW, grad clip 1.0). Both models run the same step (forward, cross-entropy,
backward, clip, AdamW) in the same process, alternating rounds. Also: bf16 autocast vs
fp32 for ours, and model-FLOPs utilisation at width 512 against the matmul peak measured
in the same run; RMSNorm forward + backward (ours, torch's nn.RMSNorm, nn.LayerNorm) at
the baby and width-512 shapes. `--compile`: our step with the loss compiled (embedding to
cross-entropy, one graph, as `seqmodels fit --compile` does), its cold compile seconds
(inductor's caches off) and its loss against eager's, beside our eager step and litgpt
eager. `--device cuda
--shape gpt2` runs the 124M GPT-2 shape in bf16.

    python bench/train_throughput.py [--rounds 5] [--steps 20] [--threads N] [--compile]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    SHAPES,
    alternate,
    emit,
    environment,
    matmul_peak,
    ours,
    time_per_call,
)

from seqmodels.training import SeqLM  # noqa: E402


def litgpt_model(shape: dict, device: str) -> torch.nn.Module:
    from litgpt import GPT, Config

    cfg = Config(
        block_size=shape["block"],
        vocab_size=shape["vocab"],
        padded_vocab_size=shape["vocab"],
        n_layer=shape["n_layers"],
        n_head=shape["n_heads"],
        n_embd=shape["d_model"],
    )
    return GPT(cfg).to(device)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def step_fn(model, shape: dict, device: str, autocast: torch.dtype | None):
    """One training step as a closure: forward, cross-entropy, backward, clip, AdamW.
    Ours runs as `seqmodels fit` runs it (the objective's loss, the module's optimiser:
    fused AdamW); litgpt's GPT as litgpt trains it on this device (AdamW, fused on CUDA)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, shape["vocab"], (shape["batch"], shape["block"] + 1), generator=g)
    x = x.to(device)
    kind = "cuda" if device.startswith("cuda") else "cpu"
    if isinstance(model, SeqLM):
        opt = model.configure_optimizers()["optimizer"]
        batch = {"ids": x}

        def loss_of() -> torch.Tensor:
            return model.objective_loss(batch, None)[0]
    else:
        opt = torch.optim.AdamW(
            model.parameters(), lr=3e-4, weight_decay=0.1, fused=device.startswith("cuda")
        )
        inp, tgt = x[:, :-1], x[:, 1:]

        def loss_of() -> torch.Tensor:
            return F.cross_entropy(model(inp).float().flatten(0, 1), tgt.flatten())

    def step() -> None:
        ctx = torch.autocast(kind, dtype=autocast) if autocast else contextlib.nullcontext()
        with ctx:
            loss = loss_of()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def cpu_description() -> dict:
    """The CPU's model name and whether it has the bf16 matrix instructions."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                 if ln.startswith("model name")), "")  # fmt: skip
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines()
                  if ln.startswith("flags")), [])  # fmt: skip
    return {"cpu_model": name, "amx_bf16": "amx_bf16" in flags,
            "avx512_bf16": "avx512_bf16" in flags}  # fmt: skip


def norm_timings(rounds: int, device: str) -> dict:
    """Microseconds of forward + backward of a (12, 64, d) fp32 batch, d = 128 and 512."""
    from seqmodels.norms import RMSNorm

    out = {}
    for d in (128, 512):
        x = torch.randn(12, 64, d, device=device, requires_grad=True)
        g = torch.randn(12, 64, d, device=device)
        norms = {
            "seqmodels": RMSNorm(d).to(device),
            "torch_rmsnorm": torch.nn.RMSNorm(d).to(device),
            "torch_layernorm": torch.nn.LayerNorm(d, bias=False).to(device),
        }

        def timer(m, x=x, g=g):
            def once() -> None:
                m(x).backward(g)
                x.grad = None

            return lambda: time_per_call(once, 50, device)

        sec = alternate({k: timer(m) for k, m in norms.items()}, rounds)
        for k, v in sec.items():
            out[f"rmsnorm_d{d}_{k}_us"] = round(v * 1e6, 1)
        out[f"rmsnorm_d{d}_speedup_vs_torch"] = round(sec["torch_rmsnorm"] / sec["seqmodels"], 2)
    return out


def flops_per_token(model: torch.nn.Module, shape: dict) -> float:
    """6N for the weights plus attention scores and values (PaLM appendix B)."""
    return 6 * n_params(model) + 12 * shape["n_layers"] * shape["d_model"] * shape["block"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", default="baby", choices=sorted(SHAPES))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="steps timed per round")
    ap.add_argument("--no-litgpt", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time our step compiled")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = args.device
    shape = SHAPES[args.shape]
    tokens = shape["batch"] * shape["block"]
    result: dict = {"bench": "train_throughput", "shape": args.shape, **environment(dev)}
    if dev == "cpu":
        result.update(cpu_description())
    bf16 = torch.bfloat16 if dev.startswith("cuda") else None  # GPU runs in bf16

    models = {"seqmodels": ours(shape, dev)}
    if not args.no_litgpt:
        models["litgpt"] = litgpt_model(shape, dev)
    steps = {k: step_fn(m, shape, dev, bf16) for k, m in models.items()}
    if dev == "cpu":  # bf16 autocast beside fp32, both models, in the same rounds
        steps.update({f"{k}_bf16": step_fn(m, shape, dev, torch.bfloat16)
                      for k, m in models.items()})  # fmt: skip
    timers = {k: (lambda s=s: time_per_call(s, args.steps, dev)) for k, s in steps.items()}
    sec = alternate(timers, args.rounds)
    for k, s in sec.items():
        result[f"{k}_ms_per_step"] = round(s * 1e3, 2)
        result[f"{k}_tokens_per_s"] = round(tokens / s)
    for k, m in models.items():
        result[f"{k}_params"] = n_params(m)
    if "litgpt" in sec:
        result["speedup_vs_litgpt"] = round(sec["litgpt"] / sec["seqmodels"], 3)
    if dev == "cpu":
        result["bf16_speedup_vs_fp32"] = round(sec["seqmodels"] / sec["seqmodels_bf16"], 3)
        if "litgpt" in sec:
            result["litgpt_bf16_speedup_vs_fp32"] = round(sec["litgpt"] / sec["litgpt_bf16"], 3)
            result["bf16_speedup_vs_litgpt_bf16"] = round(
                sec["litgpt_bf16"] / sec["seqmodels_bf16"], 3
            )
            # Each at its faster precision (what `--trainer.precision auto` aims for).
            best = min(sec["seqmodels"], sec["seqmodels_bf16"])
            result["best_speedup_vs_litgpt_best"] = round(
                min(sec["litgpt"], sec["litgpt_bf16"]) / best, 3
            )

    if args.compile:
        import torch._inductor.config as inductor_config

        # Cold compile seconds: no kernels or graphs from an earlier run's cache.
        inductor_config.force_disable_caches = True
        torch.manual_seed(0)
        m = ours(shape, dev)
        m.load_state_dict(models["seqmodels"].state_dict())
        m.compile_loss()  # what `seqmodels fit --compile` does to a SeqLM
        # The same loss as eager at the same weights and batch (fp32 tolerance).
        check = {"ids": torch.randint(0, shape["vocab"], (shape["batch"], shape["block"] + 1))}
        t0 = time.perf_counter()
        compiled_loss = m.objective_loss(check, None)[0]  # compiles the forward graph
        first_forward = time.perf_counter() - t0
        eager_model = ours(shape, dev)
        eager_model.load_state_dict(m.state_dict())
        with torch.no_grad():
            ref = eager_model.objective_loss(check, None)[0]
        result["compiled_loss_abs_diff"] = float((compiled_loss.detach() - ref).abs())
        compiled_loss.backward()  # compiles the backward graph
        m.zero_grad(set_to_none=True)
        step = step_fn(m, shape, dev, bf16)
        t0 = time.perf_counter()
        step()
        first = time.perf_counter() - t0 + first_forward
        fns = {"compiled": lambda: time_per_call(step, args.steps, dev)}
        fns["eager"] = lambda: time_per_call(steps["seqmodels"], args.steps, dev)
        if "litgpt" in steps:
            fns["litgpt"] = lambda: time_per_call(steps["litgpt"], args.steps, dev)
        if dev == "cpu":  # the compiled step under bf16 autocast: its own graphs
            step16 = step_fn(m, shape, dev, torch.bfloat16)
            t0 = time.perf_counter()
            step16()
            first16 = time.perf_counter() - t0
            fns["compiled_bf16"] = lambda: time_per_call(step16, args.steps, dev)
        csec = alternate(fns, args.rounds)
        if "compiled_bf16" in csec:
            # The compiled bf16 loss against eager bf16 at the same (trained) weights.
            eager_model.load_state_dict(m.state_dict())
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                diff = m.objective_loss(check, None)[0] - eager_model.objective_loss(check, None)[0]
            result["compiled_bf16_loss_abs_diff"] = float(diff.abs())
            c16 = csec["compiled_bf16"]
            result["seqmodels_compiled_bf16_ms_per_step"] = round(c16 * 1e3, 2)
            result["compile_seconds_bf16"] = round(first16 - c16, 1)
            if "litgpt" in csec:
                result["compiled_bf16_speedup_vs_litgpt_eager"] = round(csec["litgpt"] / c16, 3)
        result["seqmodels_compiled_ms_per_step"] = round(csec["compiled"] * 1e3, 2)
        result["seqmodels_eager_ms_per_step_in_compiled_block"] = round(csec["eager"] * 1e3, 2)
        result["compile_seconds"] = round(first - csec["compiled"], 1)
        result["compiled_speedup_vs_eager"] = round(csec["eager"] / csec["compiled"], 3)
        if "litgpt" in csec:
            result["litgpt_ms_per_step_in_compiled_block"] = round(csec["litgpt"] * 1e3, 2)
            result["compiled_speedup_vs_litgpt_eager"] = round(csec["litgpt"] / csec["compiled"], 3)
        # Steps after which the compile has paid for itself against our eager step.
        saved = csec["eager"] - csec["compiled"]
        if saved > 0:
            result["compile_pays_back_after_steps"] = round(result["compile_seconds"] / saved)

    if dev == "cpu":
        result.update(norm_timings(args.rounds, dev))
        # MFU at width 512 against the matmul peak measured now; fp32 and bf16 alternating.
        wide = SHAPES["mfu512"]
        peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
        mw = ours(wide, dev)
        wsteps = {
            "fp32": step_fn(mw, wide, dev, None),
            "bf16": step_fn(mw, wide, dev, torch.bfloat16),
        }
        wsec = alternate(
            {k: (lambda s=s: time_per_call(s, args.steps, dev)) for k, s in wsteps.items()},
            args.rounds,
        )
        result["width512_bf16_speedup_vs_fp32"] = round(wsec["fp32"] / wsec["bf16"], 3)
        for name, s in wsec.items():
            achieved = flops_per_token(mw, wide) * wide["batch"] * wide["block"] / s / 1e9
            result[f"width512_{name}_gflops"] = round(achieved, 1)
            result[f"matmul_peak_{name}_gflops"] = round(peaks[name], 1)
            result[f"width512_{name}_mfu"] = round(achieved / peaks[name], 3)
    else:
        peak = matmul_peak(torch.bfloat16, dev, n=8192, reps=20)
        m = models["seqmodels"]
        achieved = flops_per_token(m, shape) * tokens / sec["seqmodels"] / 1e9
        result["matmul_peak_bf16_gflops"] = round(peak, 1)
        result["seqmodels_gflops"] = round(achieved, 1)
        result["seqmodels_mfu"] = round(achieved / peak, 3)
    emit(result)


if __name__ == "__main__":
    main()
