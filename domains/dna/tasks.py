"""Labelled DNA classification tasks and their seeded train/val/test splits.

A task spec (from a recipe) is one of
  {name, table: FILE, seq_col, label_col, labels?}            CSV/TSV with a label column
  {name, files: {LABEL: [FILE, ...], ...}}                      one sequence file set per label
  {name, synthetic: TASK, n, length}                            planted-motif data (synthetic)
plus an optional `split: overlap | random`.
Relative paths resolve against `data_dir` (default: the shared `dna/` folder).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from domains.dna.alphabet import DEFAULT_POLICY, BasePolicy, DNAInputError
from domains.dna.readers import ReadReport, read_records
from domains.dna.splits import make_split
from domains.dna.synthetic import synthetic_examples

SPLITS = ("train", "val", "test")

# The five promoter tasks of recipes/dna/omni-multitask.yaml, on shared/data/dna.
PROMOTER_TASKS: list[dict[str, Any]] = [
    {"name": "human_nontata", "table": "human_nontata_promoters.csv", "label_col": "label"},
    {
        "name": "ecoli",
        "files": {"1": ["promoters/Ecoli_prom.fa"], "0": ["promoters/Ecoli_non_prom.fa"]},
    },
    {
        "name": "bacillus",
        "files": {"1": ["promoters/Bacillus_prom.fa"], "0": ["promoters/Bacillus_non_prom.fa"]},
    },
    {
        "name": "mouse_tata",
        "files": {"1": ["promoters/Mouse_tata.fa"], "0": ["promoters/Mouse_nonprom.fa"]},
    },
    {
        "name": "arabidopsis_tata",
        "files": {
            "1": ["promoters/Arabidopsis_tata.fa"],
            "0": ["promoters/Arabidopsis_non_prom.fa"],
        },
    },
]


@dataclass
class LabelledTask:
    name: str
    labels: list[str]  # the declared label set, in class-index order
    seqs: list[str]
    y: np.ndarray  # class indices into `labels`
    split: np.ndarray  # "train" / "val" / "test" per example
    errors: list[str] = field(default_factory=list)  # bad records that were skipped
    split_method: str = "overlap"

    def subset(self, split: str) -> tuple[list[str], np.ndarray]:
        idx = np.flatnonzero(self.split == split)
        return [self.seqs[i] for i in idx], self.y[idx]


def _resolve(path: str | Path, data_dir: Path | None) -> Path:
    p = Path(path)
    if not (p.is_absolute() or data_dir is None):
        p = data_dir / p
    if not p.exists():
        from seqmodels.datasets import fetch_hint

        raise FileNotFoundError(f"{p}: not found; {fetch_hint('dna/' + Path(path).as_posix())}")
    return p


def load_task(
    spec: dict[str, Any],
    data_dir: str | Path | None = None,
    policy: BasePolicy = DEFAULT_POLICY,
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    max_per_label: int | None = None,
    split: str = "overlap",
    split_k: int = 32,
    split_strand: str = "both",
) -> LabelledTask:
    """Read one task, drop exact duplicate sequences, split (`domains.dna.splits`).

    split: "overlap" (default: sequences sharing a `split_k`-mer, on `split_strand`, stay in
        one split) or "random" (stratified); a spec's own `split:` key overrides it.
    Bad records are skipped and listed in `errors`; `max_per_label` caps each class (a seeded
    subsample) to keep CPU recipes small.
    """
    name = spec["name"]
    data_dir = Path(data_dir) if data_dir is not None else None
    report = ReadReport()
    pairs: list[tuple[str, str]] = []
    if "table" in spec:
        labels = [str(x) for x in spec["labels"]] if "labels" in spec else None
        recs = read_records(
            _resolve(spec["table"], data_dir),
            policy=policy,
            seq_col=spec.get("seq_col", "seq"),
            label_col=spec.get("label_col", "label"),
            labels=labels,
            on_error="skip",
            report=report,
        )
        pairs = [(r.seq, r.label) for r in recs]
        labels = labels or sorted({lab for _, lab in pairs})
    elif "files" in spec:
        labels = [str(k) for k in spec["files"]]
        for lab, files in spec["files"].items():
            for f in [files] if isinstance(files, str) else files:
                recs = read_records(
                    _resolve(f, data_dir), policy=policy, on_error="skip", report=report
                )
                pairs += [(r.seq, str(lab)) for r in recs]
    elif "synthetic" in spec:
        ex = synthetic_examples(
            spec.get("n", 400), spec.get("length", 100), [spec["synthetic"]], seed=seed
        )
        pairs = [(e.seq, str(e.label)) for e in ex]
        labels = ["0", "1"]
    else:
        raise DNAInputError(f"task {name!r}: needs one of 'table', 'files' or 'synthetic'")
    labels = sorted(labels)
    seen: dict[str, str] = {}
    for seq, lab in pairs:
        seen.setdefault(seq, lab)
    if not seen:
        raise DNAInputError(f"task {name!r}: no usable records ({len(report.errors)} bad)")
    seqs = list(seen)
    y = np.array([labels.index(seen[s]) for s in seqs])
    if max_per_label:
        rng = np.random.default_rng(seed + 1)
        keep = np.concatenate(
            [rng.permutation(np.flatnonzero(y == c))[:max_per_label] for c in range(len(labels))]
        )
        keep.sort()
        seqs, y = [seqs[i] for i in keep], y[keep]
    method = spec.get("split", split)
    where = make_split(seqs, y, method, fractions, seed, split_k, split_strand)
    return LabelledTask(name, labels, seqs, y, where, report.errors, method)
