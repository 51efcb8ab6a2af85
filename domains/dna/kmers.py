"""Hashed k-mer sets of DNA sequences (both strands), the unit of leakage audits and
overlap-aware splits.

A k-mer (k <= 32) is packed into one uint64 at 2 bits per base, so "do these sequences
share a k-mer" is set arithmetic on integer arrays (numpy), not on strings. With
`strand="both"` each k-mer is stored canonically: the smaller code of the k-mer and its
reverse complement, so a sequence and its reverse complement have the same set. Windows
containing N (or any non-ACGT byte) are left out: N carries no sequence identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

STRANDS = ("both", "forward")

_CODE = np.full(256, 255, dtype=np.uint8)
for _i, _b in enumerate("ACGT"):
    _CODE[ord(_b)] = _CODE[ord(_b.lower())] = _i


def _check(k: int, strand: str) -> None:
    if not 1 <= k <= 32:
        raise ValueError(f"k must be in 1..32 (one uint64 per k-mer), got {k}")
    if strand not in STRANDS:
        raise ValueError(f"strand must be one of {STRANDS}, got {strand!r}")


def _codes_2d(codes: np.ndarray, k: int, strand: str) -> np.ndarray:
    """(n, L) base codes (0-3, 255 = not ACGT) -> (n, L-k+1) k-mer hashes, invalid = max."""
    n, length = codes.shape
    m = length - k + 1
    fw = np.zeros((n, m), dtype=np.uint64)
    rc = np.zeros((n, m), dtype=np.uint64)
    bad = np.zeros((n, m), dtype=bool)
    c64 = codes.astype(np.uint64)
    for j in range(k):  # k vectorised shifts instead of a Python loop over positions
        col = c64[:, j : j + m]
        bad |= codes[:, j : j + m] == 255
        fw = (fw << np.uint64(2)) | (col & np.uint64(3))
        rc |= (np.uint64(3) - (col & np.uint64(3))) << np.uint64(2 * j)
    out = np.minimum(fw, rc) if strand == "both" else fw
    out[bad] = np.iinfo(np.uint64).max
    return out


def _hashed_blocks(seqs: Sequence[str], k: int, strand: str):
    """(record indices, hashes (n, L - k + 1)) per block of equal-length records at least k
    long. Equal-length records (promoter sets are fixed-length) hash as one 2-D block, at
    most 2048 rows at a time (bounded memory for long records)."""
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        by_len.setdefault(len(s), []).append(i)
    for length, idx in by_len.items():
        if length < k:
            continue
        for s in range(0, len(idx), 2048):
            part = np.asarray(idx[s : s + 2048])
            raw = "".join(seqs[i] for i in part).encode("latin-1", "replace")
            codes = _CODE[np.frombuffer(raw, np.uint8)].reshape(len(part), length)
            yield part, _codes_2d(codes, k, strand)


def kmer_sets(seqs: Sequence[str], k: int = 32, strand: str = "both") -> list[np.ndarray]:
    """Sorted unique k-mer hashes of each sequence (empty when shorter than k)."""
    _check(k, strand)
    out: list[np.ndarray] = [np.empty(0, np.uint64)] * len(seqs)
    invalid = np.iinfo(np.uint64).max
    for part, hashes in _hashed_blocks(seqs, k, strand):
        for row, i in enumerate(part):
            h = np.unique(hashes[row])
            out[i] = h[h != invalid]
    return out


def incidence(sets: Sequence[np.ndarray], vocab: np.ndarray | None = None):
    """Sparse (n_sequences, n_kmers) 0/1 matrix over a shared k-mer vocabulary.

    Returns (matrix, vocab); pass the vocab of one matrix to build another in the same
    columns (k-mers not in it are dropped).
    """
    rows = np.repeat(np.arange(len(sets)), [len(s) for s in sets])
    flat = np.concatenate(sets) if len(sets) else np.empty(0, np.uint64)
    if vocab is None:
        vocab, cols = np.unique(flat, return_inverse=True)
    else:
        cols = np.searchsorted(vocab, flat)
        cols = np.minimum(cols, max(len(vocab) - 1, 0))
        keep = vocab[cols] == flat if len(vocab) else np.zeros(len(flat), bool)
        rows, cols = rows[keep], cols[keep]
    mat = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)), shape=(len(sets), max(len(vocab), 1))
    )
    return mat, vocab


def shared_kmer_groups(sets: Sequence[np.ndarray]) -> np.ndarray:
    """Group id per sequence: sequences linked by a chain of shared k-mers share a group.

    This is the union-find of the leakage literature, done as connected components of the
    bipartite sequence / k-mer graph with scipy (one C pass instead of a Python loop).
    """
    from scipy.sparse.csgraph import connected_components

    n = len(sets)
    mat, vocab = incidence(sets)
    graph = sp.bmat([[None, mat], [mat.T, None]], format="csr")
    _, labels = connected_components(graph, directed=False)
    seq_labels = labels[:n]
    # Renumber 0..G-1 in order of first appearance (stable, independent of k-mer order).
    _, first, inv = np.unique(seq_labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inv]


def shares_kmer(
    seqs: Sequence[str], others: Sequence[str], k: int = 32, strand: str = "both"
) -> np.ndarray:
    """Per sequence of `seqs`: does it share a k-mer with any of `others`?"""
    ref = np.unique(np.concatenate(kmer_sets(others, k, strand) or [np.empty(0, np.uint64)]))
    if not len(ref):
        return np.zeros(len(seqs), dtype=bool)
    mat, _ = incidence(kmer_sets(seqs, k, strand), ref)
    return np.diff(mat.indptr) > 0


def kmer_counts(seqs: Sequence[str], k: int = 6, strand: str = "both"):
    """Sparse (n, 4^k) counts of overlapping k-mers (canonical with strand="both"), each
    row divided by its number of k-mers: the features of the k-mer baselines."""
    _check(k, strand)
    if k > 12:
        raise ValueError(f"k-mer count features need k <= 12 (4^k columns), got {k}")
    rows, cols = [], []
    invalid = np.iinfo(np.uint64).max
    for part, h in _hashed_blocks(seqs, k, strand):
        ok = h != invalid
        rows.append(np.broadcast_to(part[:, None], h.shape)[ok])
        cols.append(h[ok].astype(np.int64))
    r = np.concatenate(rows) if rows else np.empty(0, np.int64)
    c = np.concatenate(cols) if cols else np.empty(0, np.int64)
    mat = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(len(seqs), 4**k))
    mat.sum_duplicates()
    totals = np.asarray(mat.sum(1)).ravel()
    return sp.diags(1.0 / np.maximum(totals, 1)) @ mat
