"""Why `--threads` defaults to fewer threads on a busy machine: the time of one training step
of a small model (nanoGPT's baby shape: 4 x 128, block 64, batch 12) at 1..N torch threads,
on the machine as it is and with one busy process per core started beside it.

    python bench/threads.py [--rounds 3] [--steps 10] [--max-threads N]

Run it with `heavy --alone` on the shared machine. The busy processes spin in pure Python,
as other single-threaded jobs would; the thread counts alternate within each round.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import SHAPES, alternate, emit, environment, ours, time_per_call  # noqa: E402

from seqmodels.commands import default_threads  # noqa: E402

BABY = SHAPES["baby"]


def _spin() -> None:
    while True:
        pass


def train_step():
    """One step (forward, cross-entropy, backward, AdamW) of a fresh baby-shape model."""
    torch.manual_seed(0)
    model = ours(BABY)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    x = torch.randint(0, BABY["vocab"], (BABY["batch"], BABY["block"] + 1))

    def step() -> None:
        logits = model(ids=x[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def at_threads(step, n: int, steps: int):
    def timed() -> float:
        torch.set_num_threads(n)
        return time_per_call(step, steps)

    return timed


def measure(step, counts: list[int], rounds: int, steps: int) -> dict[str, float]:
    sec = alternate({str(n): at_threads(step, n, steps) for n in counts}, rounds)
    return {n: round(s * 1e3, 1) for n, s in sec.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="steps timed per round")
    ap.add_argument("--max-threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    counts = sorted({1, *range(2, args.max_threads + 1)})
    step = train_step()
    result: dict = {"bench": "threads", "shape": "baby", **environment("cpu")}
    result["cpus"] = os.cpu_count()
    result["loadavg_before"] = round(os.getloadavg()[0], 2)
    result["default_threads_now"] = default_threads()
    result["ms_per_step"] = measure(step, counts, args.rounds, args.steps)

    busy = [mp.Process(target=_spin, daemon=True) for _ in range(os.cpu_count() or 1)]
    for p in busy:
        p.start()
    try:
        result["busy_processes"] = len(busy)
        result["ms_per_step_busy"] = measure(step, counts, args.rounds, args.steps)
    finally:
        for p in busy:
            p.terminate()
            p.join()
    quiet, loaded = result["ms_per_step"], result["ms_per_step_busy"]
    top = str(counts[-1])
    result["busy_slowdown_of_most_threads_vs_1"] = round(loaded[top] / loaded["1"], 2)
    result["quiet_speedup_of_most_threads_vs_1"] = round(quiet["1"] / quiet[top], 2)
    result["loadavg_after"] = round(os.getloadavg()[0], 2)
    emit(result)


if __name__ == "__main__":
    main()
