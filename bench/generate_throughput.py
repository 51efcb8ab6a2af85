"""Generation throughput: new tokens/s for 256 new tokens at batch 1 and 16, with our KV
cache vs recomputing the prefix every step, and vs litgpt's KV-cached generate at the
same shape (4 layers, 4 heads, width 128, vocab 65), in the same process.

    python bench/generate_throughput.py [--new 256] [--rounds 3] [--compile]

--compile adds our decoding compiled as `generate --compile` does it (the static one-token
step) and, beside it, with the backbone compiled for dynamic shapes, each with its compile
seconds (first call less a steady one).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import alternate, emit, environment  # noqa: E402
from train_throughput import cpu_description  # noqa: E402

from seqmodels.backbones import compile_backbones  # noqa: E402
from seqmodels.sampling import compile_decoding, generate  # noqa: E402
from seqmodels.training import SeqLM  # noqa: E402

SHAPE = dict(n_layers=4, n_heads=4, d_model=128, vocab=65)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-litgpt", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also decode with the backbone compiled")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev, new = args.device, args.new
    block = new + 8
    ours = (
        SeqLM(
            vocab_size=SHAPE["vocab"],
            d_model=SHAPE["d_model"],
            n_layers=SHAPE["n_layers"],
            n_heads=SHAPE["n_heads"],
            max_len=block,
        )
        .to(dev)
        .eval()
    )
    result: dict = {"bench": "generate_throughput", "new_tokens": new, **environment(dev)}
    if dev == "cpu":
        result.update(cpu_description())

    def run_ours(batch: int, cache: bool, model=ours):
        # eos_id=-1 is never drawn: every sample runs the full 256 tokens.
        return lambda: timed(
            lambda: generate(
                model,
                [[1]] * batch,
                max_new_tokens=new,
                eos_id=-1,
                use_cache=cache,
                seed=0,
                batch_size=batch,
            )
        )

    fns = {}
    for b in (1, 16):
        fns[f"seqmodels_cache_b{b}"] = run_ours(b, True)
        fns[f"seqmodels_recompute_b{b}"] = run_ours(b, False)
    if args.compile:
        # `generate --compile`: the static one-token step (one graph per batch size); and,
        # for comparison, the backbone with dynamic shapes (one graph for every length),
        # what `generate --compile` did before and still does for a Mamba.
        step, backbone = copy.deepcopy(ours), copy.deepcopy(ours)
        assert compile_decoding(step) == "step"
        compile_backbones(backbone, dynamic=True)
        for name, model in (("compiled", step), ("compiled_backbone", backbone)):
            for b in (1, 16):
                fns[f"seqmodels_{name}_b{b}"] = run_ours(b, True, model)
                first = fns[f"seqmodels_{name}_b{b}"]()  # compiles the graphs of batch b
                again = fns[f"seqmodels_{name}_b{b}"]()
                result[f"{name}_compile_seconds_b{b}"] = round(first - again, 1)
    if not args.no_litgpt:
        from litgpt import GPT, Config
        from litgpt.generate.base import batched_generate_fn
        from litgpt.generate.base import generate as lit_generate

        cfg = Config(
            block_size=block,
            vocab_size=SHAPE["vocab"],
            padded_vocab_size=SHAPE["vocab"],
            n_layer=SHAPE["n_layers"],
            n_head=SHAPE["n_heads"],
            n_embd=SHAPE["d_model"],
        )
        lit = GPT(cfg).to(dev).eval()

        def run_lit(batch: int):
            def go():
                lit.set_kv_cache(batch_size=batch, device=torch.device(dev))
                prompt = torch.ones(batch, 1, dtype=torch.long, device=dev)
                with torch.inference_mode():
                    if batch == 1:
                        lit_generate(lit, prompt[0], new + 1, temperature=1.0)
                    else:
                        for _ in batched_generate_fn(
                            lit,
                            prompt,
                            new + 1,
                            sample_args={"temperature": 1.0},
                            include_prompt=False,
                            include_eos=False,
                        ):
                            pass
                lit.clear_kv_cache()

            return lambda: timed(go)

        for b in (1, 16):
            fns[f"litgpt_cache_b{b}"] = run_lit(b)
    sec = alternate(fns, args.rounds)
    for k, s in sec.items():
        batch = int(k.rsplit("_b", 1)[1])
        result[f"{k}_tokens_per_s"] = round(batch * new / s, 1)
    for b in (1, 16):
        result[f"cache_speedup_vs_recompute_b{b}"] = round(
            sec[f"seqmodels_recompute_b{b}"] / sec[f"seqmodels_cache_b{b}"], 2
        )
        if not args.no_litgpt:
            result[f"speedup_vs_litgpt_b{b}"] = round(
                sec[f"litgpt_cache_b{b}"] / sec[f"seqmodels_cache_b{b}"], 2
            )
            if args.compile:
                for name in ("compiled", "compiled_backbone"):
                    result[f"{name}_speedup_vs_litgpt_b{b}"] = round(
                        sec[f"litgpt_cache_b{b}"] / sec[f"seqmodels_{name}_b{b}"], 2
                    )
    emit(result)


if __name__ == "__main__":
    main()
