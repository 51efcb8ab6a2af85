"""Baselines scored on the same split as the models, so every model figure has them beside it.

- majority: the training majority class.
- memorisation: vote of the training sequences sharing a 32-mer (`domains.dna.audit`).
- kmer_lr: logistic regression (scikit-learn) on overlapping k-mer frequencies (canonical,
  both strands); the inverse regularisation C is chosen on the validation split.
- gb_cnn: the Genomic Benchmarks baseline CNN (Grešová et al. 2023,
  genomic_benchmarks/models/torch.py), re-written here for any number of classes: a
  100-dim base embedding, three Conv1d(kernel 8) + BatchNorm + ReLU + MaxPool(2) blocks with
  16, 8 and 4 channels, flatten, Linear(512), Linear(classes); Adam (lr 1e-3), batch 64,
  trained from scratch for a fixed number of epochs, and the epoch with the best validation
  accuracy is the one scored (no test data in model selection).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from domains.dna.audit import memorisation_predict
from domains.dna.kmers import kmer_counts
from domains.dna.metrics import classification_metrics
from domains.dna.tasks import LabelledTask

BASELINES = ("majority", "memorisation", "kmer_lr", "gb_cnn")
LR_GRID = (0.01, 0.1, 1.0, 10.0)


def kmer_lr_predict(
    train: tuple[Sequence[str], np.ndarray],
    val: tuple[Sequence[str], np.ndarray],
    test_seqs: Sequence[str],
    k: int = 6,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Test predictions of k-mer logistic regression, C picked on `val` (train when empty)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import MaxAbsScaler

    scale = MaxAbsScaler().fit(kmer_counts(train[0], k))  # sparse-safe scaling
    x_tr, x_te = (
        scale.transform(kmer_counts(train[0], k)),
        scale.transform(kmer_counts(test_seqs, k)),
    )
    x_val = scale.transform(kmer_counts(val[0], k)) if len(val[0]) else x_tr
    y_val = val[1] if len(val[0]) else train[1]
    best = None
    for c in LR_GRID:
        clf = LogisticRegression(C=c, max_iter=2000).fit(x_tr, train[1])
        acc = float((clf.predict(x_val) == y_val).mean())
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    acc, c, clf = best
    return clf.predict(x_te), {"C": c, "val_accuracy": acc, "k": k}


def _gb_cnn(n_classes: int, vocab: int, length: int):
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv1d(cin, cout, 8), nn.BatchNorm1d(cout), nn.ReLU(), nn.MaxPool1d(2)]

    class GBCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, 100)
            self.convs = nn.Sequential(*block(100, 16), *block(16, 8), *block(8, 4), nn.Flatten())
            with torch.no_grad():
                flat = self.convs(torch.zeros(1, 100, length)).shape[1]
            self.head = nn.Sequential(nn.Linear(flat, 512), nn.Linear(512, n_classes))

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.convs(self.embed(ids).transpose(1, 2)))

    return GBCNN()


def _encode_fixed(seqs: Sequence[str], length: int) -> np.ndarray:
    """Base codes 1..5 (A C G T N), right-padded with 0 / cut to `length`."""
    lut = np.zeros(256, np.int64)
    for i, b in enumerate("ACGTN", start=1):
        lut[ord(b)] = i
    out = np.zeros((len(seqs), length), np.int64)
    for i, s in enumerate(seqs):
        codes = lut[np.frombuffer(s[:length].encode("latin-1"), np.uint8)]
        out[i, : len(codes)] = codes
    return out


def gb_cnn_predict(
    train: tuple[Sequence[str], np.ndarray],
    val: tuple[Sequence[str], np.ndarray],
    test_seqs: Sequence[str],
    n_classes: int,
    epochs: int = 10,
    seed: int = 0,
    batch_size: int = 64,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Test predictions of the Genomic Benchmarks CNN at its best validation epoch."""
    import torch

    torch.manual_seed(seed)
    length = max(len(s) for s in [*train[0], *val[0], *test_seqs])
    x_tr, y_tr = torch.as_tensor(_encode_fixed(train[0], length)), torch.as_tensor(train[1])
    x_val = torch.as_tensor(_encode_fixed(val[0] or train[0], length))
    y_val = torch.as_tensor(val[1] if len(val[0]) else train[1])
    x_te = torch.as_tensor(_encode_fixed(test_seqs, length))
    model = _gb_cnn(max(n_classes, 2), 6, length)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)

    def predict(x: torch.Tensor) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            return torch.cat(
                [model(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)]
            ).numpy()

    best: tuple[float, int, dict] | None = None
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_tr), generator=gen).split(batch_size):
            if len(idx) < 2:
                continue  # BatchNorm needs two samples
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
        acc = float((predict(x_val) == y_val.numpy()).mean())
        if best is None or acc > best[0]:
            best = (acc, epoch, {k: v.clone() for k, v in model.state_dict().items()})
    acc, epoch, state = best
    model.load_state_dict(state)
    return predict(x_te), {"best_epoch": epoch + 1, "val_accuracy": acc, "epochs": epochs}


def run_baselines(
    task: LabelledTask,
    which: Sequence[str] = BASELINES,
    lr_k: int = 6,
    mem_k: int = 32,
    cnn_epochs: int = 10,
    seeds: Sequence[int] = (0,),
) -> dict[str, dict[str, Any]]:
    """Test metrics of each baseline on the task's own split (seeded ones: mean and sd)."""
    unknown = set(which) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baseline(s) {sorted(unknown)}; have {BASELINES}")
    train, val = task.subset("train"), task.subset("val")
    test_seqs, y_test = task.subset("test")
    n_classes = len(task.labels)
    out: dict[str, dict[str, Any]] = {}
    if "majority" in which:
        pred = np.full(len(y_test), np.bincount(train[1], minlength=n_classes).argmax())
        out["majority"] = classification_metrics(y_test, pred, n_classes)
    if "memorisation" in which:
        pred, covered = memorisation_predict(train[0], train[1], test_seqs, n_classes, mem_k)
        out["memorisation"] = {
            **classification_metrics(y_test, pred, n_classes),
            "coverage": float(covered.mean()),
            "k": mem_k,
        }
    if "kmer_lr" in which:
        pred, info = kmer_lr_predict(train, val, test_seqs, lr_k)
        out["kmer_lr"] = {**classification_metrics(y_test, pred, n_classes), **info}
    if "gb_cnn" in which:
        runs = []
        for seed in seeds:
            pred, info = gb_cnn_predict(train, val, test_seqs, n_classes, cnn_epochs, seed)
            runs.append({**classification_metrics(y_test, pred, n_classes), **info})
        out["gb_cnn"] = seed_summary(runs)
    return out


def seed_summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean of accuracy / MCC / F1 over seeds, with their sd and the runs themselves."""
    out: dict[str, Any] = {}
    for key in ("accuracy", "mcc", "f1"):
        vals = np.array([r[key] for r in runs])
        out[key] = float(vals.mean())
        out[f"{key}_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    out["n"] = runs[0]["n"]
    out["seeds"] = len(runs)
    out["runs"] = list(runs)
    return out
