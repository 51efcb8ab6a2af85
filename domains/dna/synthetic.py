"""The `synthetic` dataset: random background with known motifs planted in the positives.

Each task has its own motif (and GC content); label 1 sequences carry `copies` copies of the
motif (with a few point mutations) at random positions, label 0 sequences carry none. With `decoy_rate`, that
fraction of the negatives carries a shuffled copy of the motif (same composition), so base
counts alone cannot give the label away (harder: needs order-aware motif detection).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SYNTHETIC_TASKS = {
    "tata": ("TATAAAAG", 0.40),
    "ccaat": ("GGCCAATCT", 0.50),
    "ebox": ("CACGTGAC", 0.55),
    "gcbox": ("GGGGCGGGGC", 0.60),
    "inr": ("TCAGTTCT", 0.45),
}


@dataclass
class SyntheticExample:
    task: str
    seq: str
    label: int
    motif_starts: list[int]  # where the motif copies were planted (empty for negatives)


def _background(rng: np.random.Generator, n: int, gc: float) -> np.ndarray:
    p = np.array([(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2])
    return rng.choice(np.frombuffer(b"ACGT", np.uint8), size=n, p=p)


def synthetic_examples(
    n_per_task: int = 400,
    length: int = 100,
    tasks: list[str] | None = None,
    mutation_rate: float = 0.1,
    seed: int = 0,
    decoy_rate: float = 0.0,
    copies: int = 3,
) -> list[SyntheticExample]:
    """Balanced labelled examples for each task, deterministic for a seed."""
    rng = np.random.default_rng(seed)
    names = tasks or list(SYNTHETIC_TASKS)
    out = []
    for name in names:
        if name not in SYNTHETIC_TASKS:
            raise ValueError(f"unknown synthetic task {name!r}; have {sorted(SYNTHETIC_TASKS)}")
        motif, gc = SYNTHETIC_TASKS[name]
        m = np.frombuffer(motif.encode(), np.uint8)
        if length < len(m) + 10:
            raise ValueError(f"length {length} too short for motif {motif!r}")
        if length < copies * len(m) + 2:
            raise ValueError(f"length {length} too short for {copies} x motif {motif!r}")
        slots = length // len(m)  # non-overlapping slots a motif copy can occupy
        for i in range(n_per_task):
            seq = _background(rng, length, gc)
            label = i % 2
            starts = sorted(int(x) * len(m) for x in rng.choice(slots, copies, replace=False))
            for start in starts:
                if label == 1:
                    planted = m.copy()
                    hits = rng.random(len(m)) < mutation_rate
                    planted[hits] = rng.choice(np.frombuffer(b"ACGT", np.uint8), hits.sum())
                    seq[start : start + len(m)] = planted
                elif rng.random() < decoy_rate:
                    seq[start : start + len(m)] = rng.permutation(m)
            out.append(
                SyntheticExample(name, seq.tobytes().decode(), label, starts if label else [])
            )
    return out
