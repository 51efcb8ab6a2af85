"""Classification metrics per task and macro over tasks; perplexity and bits per base."""

from __future__ import annotations

import math

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_f1_score,
    multiclass_matthews_corrcoef,
)


def classification_metrics(y_true, y_pred, n_classes: int) -> dict[str, float]:
    """Accuracy, MCC and macro-F1 (torchmetrics) for one task."""
    t = torch.as_tensor(np.asarray(y_true), dtype=torch.long)
    p = torch.as_tensor(np.asarray(y_pred), dtype=torch.long)
    n_classes = max(n_classes, 2)
    return {
        "accuracy": float(multiclass_accuracy(p, t, n_classes, average="micro")),
        "mcc": float(multiclass_matthews_corrcoef(p, t, n_classes)),
        "f1": float(multiclass_f1_score(p, t, n_classes, average="macro")),
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
