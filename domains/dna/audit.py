"""Leakage audit of a train / test pair of labelled DNA sequences.

What it measures (all with hashed k-mers, both strands by default, `domains.dna.kmers`):
- the fraction of test sequences sharing at least one k-mer with a training sequence, and
  the fraction with most (> half) of their k-mers in the training set;
- near-duplicate groups: sequences linked by chains of shared k-mers (train and test
  together), how many groups span both sides, and the largest group;
- the memorisation rule: each test sequence gets the majority label of the training
  sequences sharing a k-mer with it (the training majority class when none does). It has
  no trained parameters, so a model that barely beats it has shown little beyond lookup;
- with genomic coordinates, the fraction of test intervals that overlap a training
  interval by more than half their length (as measured on Genomic Benchmarks' split).
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from domains.dna.alphabet import DNAInputError
from domains.dna.kmers import incidence, kmer_sets, shared_kmer_groups


def memorisation_rule(
    train_mat, train_y: np.ndarray, test_mat, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions of the memorisation rule and whether any training sequence voted.

    Each training sequence sharing a k-mer with the test sequence votes its label once; ties
    and test sequences without a match fall to the training majority class.
    """
    train_y = np.asarray(train_y)
    shares = (test_mat @ train_mat.T).astype(bool).astype(np.float32)  # test x train
    votes = np.asarray(shares @ np.eye(n_classes, dtype=np.float32)[train_y])
    prior = np.bincount(train_y, minlength=n_classes).astype(np.float32)
    pred = (votes + 1e-6 * prior / max(prior.sum(), 1)).argmax(1)  # tiny prior breaks ties
    return pred, votes.sum(1) > 0


def memorisation_predict(
    train_seqs: Sequence[str],
    train_y: np.ndarray,
    test_seqs: Sequence[str],
    n_classes: int,
    k: int = 32,
    strand: str = "both",
) -> tuple[np.ndarray, np.ndarray]:
    """`memorisation_rule` from sequences."""
    train_mat, vocab = incidence(kmer_sets(train_seqs, k, strand))
    test_mat, _ = incidence(kmer_sets(test_seqs, k, strand), vocab)
    return memorisation_rule(train_mat, train_y, test_mat, n_classes)


def _frac(mask: np.ndarray) -> float:
    return float(mask.mean()) if len(mask) else float("nan")


def audit_pair(
    train_seqs: Sequence[str],
    test_seqs: Sequence[str],
    train_y: np.ndarray | None = None,
    test_y: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
    k: int = 32,
    strand: str = "both",
) -> dict[str, Any]:
    """All sequence-level audit figures of one pair (labels optional)."""
    from domains.dna.metrics import classification_metrics

    train_sets = kmer_sets(train_seqs, k, strand)
    test_sets = kmer_sets(test_seqs, k, strand)
    train_mat, vocab = incidence(train_sets)
    test_mat, _ = incidence(test_sets, vocab)
    n_kmers = np.array([len(s) for s in test_sets])
    in_train = np.asarray(test_mat.sum(1)).ravel()
    frac_in_train = np.divide(in_train, n_kmers, out=np.zeros(len(n_kmers)), where=n_kmers > 0)
    groups = shared_kmer_groups(train_sets + test_sets)
    side = np.r_[np.zeros(len(train_sets), bool), np.ones(len(test_sets), bool)]
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    has_train = np.bincount(groups[~side], minlength=n_groups) > 0
    has_test = np.bincount(groups[side], minlength=n_groups) > 0
    test_groups = shared_kmer_groups(test_sets)
    out: dict[str, Any] = {
        "k": k,
        "strand": strand,
        "n_train": len(train_seqs),
        "n_test": len(test_seqs),
        "test_sharing_kmer_with_train": _frac(in_train > 0),
        "test_mostly_in_train": _frac(frac_in_train > 0.5),
        "test_sharing_kmer_within_test": _frac(np.bincount(test_groups)[test_groups] > 1),
        "groups": n_groups,
        "largest_group": int(np.bincount(groups).max()) if n_groups else 0,
        "groups_spanning_train_and_test": int((has_train & has_test).sum()),
        "test_in_spanning_groups": _frac((has_train & has_test)[groups[side]]),
        "frac_kmers_in_train": frac_in_train.tolist(),
    }
    if train_y is not None and test_y is not None:
        train_y, test_y = np.asarray(train_y), np.asarray(test_y)
        n_classes = int(max(train_y.max(initial=0), test_y.max(initial=0))) + 1
        n_classes = max(n_classes, len(labels or []))
        pred, covered = memorisation_rule(train_mat, train_y, test_mat, n_classes)
        out["memorisation"] = classification_metrics(test_y, pred, n_classes)
        out["memorisation"]["coverage"] = _frac(covered)
        majority = np.full(len(test_y), np.bincount(train_y, minlength=n_classes).argmax())
        out["majority"] = classification_metrics(test_y, majority, n_classes)
        names = list(labels) if labels else [str(c) for c in range(n_classes)]
        out["per_label"] = {
            names[c]: {
                "n_test": int((test_y == c).sum()),
                "test_sharing_kmer_with_train": _frac(in_train[test_y == c] > 0),
                "test_mostly_in_train": _frac(frac_in_train[test_y == c] > 0.5),
            }
            for c in range(n_classes)
        }
        out["test_labels"] = [names[c] for c in test_y]
    return out


# -------------------------------------------------------------------- intervals


def read_intervals(path: str | Path) -> list[tuple[str, int, int]]:
    """(chrom, start, end) rows of a BED file or a CSV/TSV with region|chrom, start, end
    columns (Genomic Benchmarks' coordinate files); gzipped or not."""
    path = Path(path)
    if not path.is_file():
        raise DNAInputError(f"{path}: no such file")
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
        text = fh.read()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("#", "track"))]
    if not lines:
        raise DNAInputError(f"{path}: no intervals")
    delim = "\t" if "\t" in lines[0] else ","
    rows = list(csv.reader(lines, delimiter=delim))
    header = [c.strip().lower() for c in rows[0]]
    chrom_col = next((header.index(c) for c in ("region", "chrom", "chr") if c in header), None)
    if chrom_col is not None and "start" in header and "end" in header:
        cols, body, first_line = (
            (chrom_col, header.index("start"), header.index("end")),
            rows[1:],
            2,
        )
    else:  # BED: chrom, start, end without a header
        cols, body, first_line = (0, 1, 2), rows, 1
    out = []
    for n, row in enumerate(body, start=first_line):
        try:
            c, s, e = row[cols[0]], int(row[cols[1]]), int(row[cols[2]])
        except (IndexError, ValueError) as err:
            raise DNAInputError(f"{path} line {n}: not an interval ({err}): {row}") from err
        if e <= s:
            raise DNAInputError(f"{path} line {n}: end {e} <= start {s}")
        out.append((c, s, e))
    return out


def max_overlap_fraction(
    query: Sequence[tuple[str, int, int]], ref: Sequence[tuple[str, int, int]]
) -> np.ndarray:
    """For each query interval, the largest fraction of its length covered by one ref one.

    Hand-written (sorted starts + searchsorted per chromosome) rather than adding pyranges
    or bioframe for one function; ref intervals are scanned from the longest ref length back.
    """
    by_chrom: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for c in {c for c, _, _ in ref}:
        iv = np.array([(s, e) for cc, s, e in ref if cc == c], dtype=np.int64)
        iv = iv[np.argsort(iv[:, 0])]
        by_chrom[c] = (iv[:, 0], iv[:, 1])
    max_len = max((e - s for _, s, e in ref), default=0)
    out = np.zeros(len(query))
    for i, (c, s, e) in enumerate(query):
        if c not in by_chrom:
            continue
        starts, ends = by_chrom[c]
        lo, hi = np.searchsorted(starts, [s - max_len, e])
        if hi > lo:
            ov = np.minimum(ends[lo:hi], e) - np.maximum(starts[lo:hi], s)
            out[i] = max(ov.max(), 0) / (e - s)
    return out


def interval_audit(
    train: dict[str, list[tuple[str, int, int]]], test: dict[str, list[tuple[str, int, int]]]
) -> dict[str, Any]:
    """Overlap of test intervals with train intervals (and within test), per label group.

    `train` / `test` map a group name (e.g. the file's stem: positive / negative) to its
    intervals.
    """
    all_train = [iv for ivs in train.values() for iv in ivs]
    all_test = [iv for ivs in test.values() for iv in ivs]
    out: dict[str, Any] = {"n_train_intervals": len(all_train), "n_test_intervals": len(all_test)}
    per: dict[str, dict[str, float]] = {}
    for name, ivs in test.items():
        f = max_overlap_fraction(ivs, all_train)
        per[name] = {"n": len(ivs), "overlap_train_gt_half": _frac(f > 0.5), "any": _frac(f > 0)}
    f_all = max_overlap_fraction(all_test, all_train)
    out["test_overlapping_train_gt_half"] = _frac(f_all > 0.5)
    out["test_overlapping_train_any"] = _frac(f_all > 0)
    # Within test: overlap with another test interval (drop the self-match of each).
    within = np.zeros(len(all_test))
    order = sorted(range(len(all_test)), key=lambda i: all_test[i])
    for a, b in zip(order, order[1:]):  # neighbours in sorted order hold the largest overlap
        (ca, sa, ea), (cb, sb, eb) = all_test[a], all_test[b]
        if ca == cb:
            ov = min(ea, eb) - max(sa, sb)
            within[a] = max(within[a], ov / (ea - sa))
            within[b] = max(within[b], ov / (eb - sb))
    out["test_overlapping_test_gt_half"] = _frac(within > 0.5)
    out["per_group"] = per
    return out


# -------------------------------------------------------------------- report


def audit_table(audit: dict[str, Any]) -> str:
    """Markdown table of the headline figures of `audit_pair` (+ `intervals`)."""
    rows = [
        ("test sequences", f"{audit['n_test']} (train {audit['n_train']})"),
        (
            f"test sharing a {audit['k']}-mer with train",
            f"{audit['test_sharing_kmer_with_train']:.3f}",
        ),
        ("test with > half their k-mers in train", f"{audit['test_mostly_in_train']:.3f}"),
        (
            "test sharing a k-mer with another test seq",
            f"{audit['test_sharing_kmer_within_test']:.3f}",
        ),
        ("near-duplicate groups (train + test)", str(audit["groups"])),
        ("largest group", str(audit["largest_group"])),
        ("groups spanning train and test", str(audit["groups_spanning_train_and_test"])),
    ]
    if "memorisation" in audit:
        m, maj = audit["memorisation"], audit["majority"]
        rows += [
            ("memorisation rule accuracy / MCC", f"{m['accuracy']:.3f} / {m['mcc']:.3f}"),
            ("memorisation rule coverage", f"{m['coverage']:.3f}"),
            ("majority class accuracy / MCC", f"{maj['accuracy']:.3f} / {maj['mcc']:.3f}"),
        ]
        for lab, d in audit["per_label"].items():
            rows.append(
                (f"label {lab}: test sharing a k-mer", f"{d['test_sharing_kmer_with_train']:.3f}")
            )
    if "intervals" in audit:
        rows += _interval_rows(audit["intervals"])
    return _markdown(rows)


def _interval_rows(iv: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        ("test intervals", f"{iv['n_test_intervals']} (train {iv['n_train_intervals']})"),
        ("test intervals overlapping train > half", f"{iv['test_overlapping_train_gt_half']:.3f}"),
        ("test intervals overlapping test > half", f"{iv['test_overlapping_test_gt_half']:.3f}"),
    ]
    for name, d in iv["per_group"].items():
        rows.append((f"{name}: overlapping train > half", f"{d['overlap_train_gt_half']:.3f}"))
    return rows


def interval_table(iv: dict[str, Any]) -> str:
    """Markdown table of `interval_audit`."""
    return _markdown(_interval_rows(iv))


def _markdown(rows: list[tuple[str, str]]) -> str:
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'figure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {a.ljust(width)} | {b} |" for a, b in rows]
    return "\n".join(lines) + "\n"


def audit_plot(audits: dict[str, dict[str, Any]], path: str | Path) -> None:
    """Per pair: histogram of each test sequence's fraction of k-mers found in train (by
    label), and bars of the sharing fraction and memorisation vs majority accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(audits), 2, figsize=(10, 3.4 * len(audits)), squeeze=False)
    for (name, a), (ax0, ax1) in zip(audits.items(), axes):
        frac = np.asarray(a["frac_kmers_in_train"])
        labs = np.asarray(a.get("test_labels", ["all"] * len(frac)))
        for lab in sorted(set(labs.tolist())):
            ax0.hist(frac[labs == lab], bins=20, range=(0, 1), alpha=0.6, label=f"label {lab}")
        ax0.set_xlabel(f"fraction of a test sequence's {a['k']}-mers found in train")
        ax0.set_ylabel("test sequences")
        ax0.set_title(name)
        ax0.legend()
        bars = {
            "share a k-mer": a["test_sharing_kmer_with_train"],
            "> half in train": a["test_mostly_in_train"],
        }
        if "memorisation" in a:
            bars["memorisation acc"] = a["memorisation"]["accuracy"]
            bars["majority acc"] = a["majority"]["accuracy"]
        if "intervals" in a:
            bars["intervals > half"] = a["intervals"]["test_overlapping_train_gt_half"]
        ax1.bar(list(bars), list(bars.values()), color="tab:gray")
        ax1.set_ylim(0, 1)
        ax1.tick_params(axis="x", rotation=25)
        ax1.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
