"""The `synthetic` dataset: random background with known motifs planted in the positives.

Each task has its own motif (and GC content); label 1 sequences carry the motif (with a few
point mutations) at a jittered position, label 0 sequences carry none, and half of them carry
a shuffled decoy with the same composition, so base counts alone do not give the label away.
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
    motif_start: int | None  # where the motif was planted (None for negatives)


def _background(rng: np.random.Generator, n: int, gc: float) -> np.ndarray:
    p = np.array([(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2])
    return rng.choice(np.frombuffer(b"ACGT", np.uint8), size=n, p=p)


def synthetic_examples(
    n_per_task: int = 400,
    length: int = 100,
    tasks: list[str] | None = None,
    mutation_rate: float = 0.1,
    seed: int = 0,
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
        center = (length - len(m)) // 2
        for i in range(n_per_task):
            seq = _background(rng, length, gc)
            label = i % 2
            start = int(
                np.clip(center + rng.integers(-length // 5, length // 5 + 1), 0, length - len(m))
            )
            if label == 1:
                planted = m.copy()
                hits = rng.random(len(m)) < mutation_rate
                planted[hits] = rng.choice(np.frombuffer(b"ACGT", np.uint8), hits.sum())
                seq[start : start + len(m)] = planted
            elif rng.random() < 0.5:
                seq[start : start + len(m)] = rng.permutation(m)
            out.append(
                SyntheticExample(name, seq.tobytes().decode(), label, start if label else None)
            )
    return out
