"""Does `--trainer.precision auto` pick the faster precision? For each shape, the choice
`seqmodels fit` would make (seqmodels.precision: a few timed steps of the first batch,
bf16 only when faster by the margin), repeated, against a long side-by-side measurement
of the full training step (forward, backward, clip, AdamW) in fp32 and bf16 autocast.

    python bench/precision_auto.py --threads 1
"""

from __future__ import annotations

import argparse

import torch
from _common import SHAPES, alternate, emit, environment, ours, time_per_call
from train_throughput import cpu_description, step_fn

from seqmodels.precision import AutoPrecision, choose, measure


def auto_choice(shape: dict, margin: float) -> tuple[str, float]:
    """The choice AutoPrecision makes on a fresh model and one batch, and its ratio."""
    model = ours(shape)
    model.log = model.log_dict = lambda *a, **k: None  # no trainer here
    g = torch.Generator().manual_seed(0)
    batch = {"ids": torch.randint(0, shape["vocab"], (shape["batch"], shape["block"] + 1),
                                  generator=g)}  # fmt: skip
    fp32, bf16 = measure(model, batch, AutoPrecision().rounds, "cpu")
    return choose(fp32, bf16, margin), fp32 / bf16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--shapes", nargs="+", default=["baby", "mfu512"])
    ap.add_argument("--repeats", type=int, default=5, help="auto decisions per shape")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="steps per reference round")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    margin = AutoPrecision().margin
    result: dict = {"bench": "precision_auto", **environment("cpu"), **cpu_description(),
                    "margin": margin}  # fmt: skip
    for name in args.shapes:
        shape = SHAPES[name]
        steps = {"fp32": step_fn(ours(shape), shape, "cpu", None),
                 "bf16": step_fn(ours(shape), shape, "cpu", torch.bfloat16)}  # fmt: skip
        ref = alternate(
            {k: (lambda s=s: time_per_call(s, args.steps)) for k, s in steps.items()},
            args.rounds,
        )
        speedup = ref["fp32"] / ref["bf16"]
        picks = [auto_choice(shape, margin) for _ in range(args.repeats)]
        right = choose(ref["fp32"], ref["bf16"], margin)
        result[name] = {
            "reference_bf16_speedup": round(speedup, 3),
            "reference_choice": right,
            "auto_choices": [c for c, _ in picks],
            "auto_bf16_speedups": [round(r, 3) for _, r in picks],
            "auto_agrees": sum(c == right for c, _ in picks) / len(picks),
            # the rule: never bf16 where it is slower
            "bf16_chosen_where_slower": sum(c == "bf16-mixed" for c, _ in picks)
            if speedup < 1
            else 0,
        }
    emit(result)


if __name__ == "__main__":
    main()
