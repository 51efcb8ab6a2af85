"""Classification metrics per task and macro over tasks; perplexity and bits per base."""

from __future__ import annotations

import math

import numpy as np


def classification_metrics(y_true, y_pred, n_classes: int) -> dict[str, float]:
    """Accuracy, MCC and macro-F1 for one task, as scikit-learn defines them.

    scikit-learn's MCC (Gorodkin's multiclass form) is 0 for a constant predictor; the
    torchmetrics version used before gave 0.0048 there, flattering trivial models.
    """
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    labels = list(range(max(n_classes, 2)))
    return {
        "accuracy": float(accuracy_score(t, p)),
        "mcc": float(matthews_corrcoef(t, p)),
        "f1": float(f1_score(t, p, labels=labels, average="macro", zero_division=0)),
        "n": int(len(t)),
    }


def macro(per_task: dict[str, dict[str, float]]) -> dict[str, float]:
    """Unweighted mean of each metric over tasks."""
    keys = ("accuracy", "mcc", "f1")
    return {k: float(np.mean([m[k] for m in per_task.values()])) for k in keys}


def lm_metrics(total_nll: float, n_tokens: int, n_bases: int) -> dict[str, float]:
    """Per-token perplexity and bits per base from a summed natural-log NLL.

    Bits per base divides by bases, not tokens, so k-mer/BPE and single-nucleotide models
    compare on the same scale.
    """
    return {
        "nll_per_token": total_nll / max(n_tokens, 1),
        "perplexity": math.exp(total_nll / max(n_tokens, 1)),
        "bits_per_base": total_nll / math.log(2) / max(n_bases, 1),
    }
