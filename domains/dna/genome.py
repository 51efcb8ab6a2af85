"""Pretraining windows from a reference genome (FASTA, plain, gzipped or bgzipped).

- Reading: Biopython's `SeqIO.index`, which reads BGZF-compressed FASTA (the .fa.gz /
  .fai / .gzi of `samtools faidx`) directly; a plain-gzip file is read with SeqIO.parse.
- Soft-masked bases (lowercase = repeats) by policy: "upper" keeps them as bases, "n"
  turns them into N, "drop" leaves out windows with more than `max_masked` of them.
- Runs of N (telomeres, gaps) split a chromosome into pieces; windows never cross one.
- Windows of `window` bases every `stride`; `shifts` extra window grids per piece, each at
  a seeded random offset, so the same region is seen at several phases (random shifts).
- Hold-out by blocks: the genome is cut into `block`-base blocks and whole blocks go to
  val / test (seeded), so a shifted training window never overlaps a held-out one; windows
  that straddle two blocks of different splits are left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from domains.dna.alphabet import DNAInputError

SOFT_MASK_POLICIES = ("upper", "n", "drop")
_N_RUN = re.compile(r"[Nn]+")


@dataclass
class GenomeWindow:
    seq: str  # upper-case ACGTN
    split: str  # train / val / test
    where: str  # chrom:start-end (0-based, half-open)


def read_genome(path: str | Path) -> dict[str, str]:
    """{record id: sequence with its soft-masking} of a (b)gzipped or plain FASTA file."""
    from Bio import SeqIO

    path = Path(path)
    if not path.is_file():
        raise DNAInputError(f"{path}: no such file")
    try:
        index = SeqIO.index(str(path), "fasta")  # plain or BGZF (bgzip) FASTA
        try:
            return {k: str(index[k].seq) for k in index}
        finally:
            index.close()
    except ValueError:
        import gzip

        with gzip.open(path, "rt", encoding="utf-8") as fh:  # plain gzip: no random access
            return {r.id: str(r.seq) for r in SeqIO.parse(fh, "fasta")}


def genome_windows(
    genome: dict[str, str],
    window: int = 256,
    stride: int | None = None,
    shifts: int = 0,
    soft_mask: str = "upper",
    max_masked: float = 0.5,
    block: int = 100_000,
    fractions: tuple[float, float] = (0.02, 0.02),
    seed: int = 0,
) -> list[GenomeWindow]:
    """Windows of every record (see the module docstring), with their split."""
    if soft_mask not in SOFT_MASK_POLICIES:
        raise ValueError(f"soft_mask must be one of {SOFT_MASK_POLICIES}, got {soft_mask!r}")
    stride = stride or window
    rng = np.random.default_rng(seed)
    out: list[GenomeWindow] = []
    for chrom, seq in genome.items():
        n_blocks = len(seq) // block + 1
        draw = rng.random(n_blocks)
        split_of = np.where(
            draw < fractions[0],
            "val",
            np.where(draw < fractions[0] + fractions[1], "test", "train"),
        )
        lower = np.frombuffer(seq.encode("latin-1"), np.uint8) >= ord("a")
        masked_cum = np.r_[0, np.cumsum(lower)]
        for piece in _pieces(seq, window):
            start0, end0 = piece
            offsets = [0] + [int(rng.integers(1, max(stride, 2))) for _ in range(shifts)]
            for off in offsets:
                for s in range(start0 + off, end0 - window + 1, stride):
                    e = s + window
                    b0, b1 = s // block, (e - 1) // block
                    if split_of[b0] != split_of[b1]:
                        continue
                    frac_masked = (masked_cum[e] - masked_cum[s]) / window
                    if soft_mask == "drop" and frac_masked > max_masked:
                        continue
                    w = seq[s:e]
                    if soft_mask == "n":
                        w = re.sub(r"[a-z]", "N", w)
                    out.append(GenomeWindow(w.upper(), str(split_of[b0]), f"{chrom}:{s}-{e}"))
    return out


def _pieces(seq: str, min_len: int) -> list[tuple[int, int]]:
    """(start, end) of the stretches between runs of N that can hold one window."""
    out, start = [], 0
    for m in _N_RUN.finditer(seq):
        if m.start() - start >= min_len:
            out.append((start, m.start()))
        start = m.end()
    if len(seq) - start >= min_len:
        out.append((start, len(seq)))
    return out
