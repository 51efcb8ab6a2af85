"""Output heads on backbone states: pooling, per-task classification / regression MLPs,
and domain-supplied head modules."""

from __future__ import annotations

import importlib

import torch
from torch import nn

POOLINGS = ("mean", "last", "first")


def pool(h: torch.Tensor, pad: torch.Tensor | None, how: str = "mean") -> torch.Tensor:
    """(B, L, D) states to (B, D): mean over real tokens, the last real token, or the first."""
    if how not in POOLINGS:
        raise ValueError(f"unknown pooling {how!r}; expected one of {POOLINGS}")
    if pad is None:
        pad = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
    if how == "first":
        return h[:, 0]
    if how == "last":
        last = pad.long().sum(1).clamp(min=1) - 1
        return h[torch.arange(h.shape[0], device=h.device), last]
    w = pad.unsqueeze(-1).to(h.dtype)
    return (h * w).sum(1) / w.sum(1).clamp(min=1)


class TaskHead(nn.Module):
    """A small MLP from pooled states to one task's outputs (logits or regressed values)."""

    def __init__(self, d_model: int, n_outputs: int, hidden: int | None = None, dropout=0.0):
        super().__init__()
        hidden = hidden or d_model
        self.net = nn.Sequential(
            nn.Linear(d_model, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_outputs),
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled)


def build_head(spec: dict | None, d_model: int, n_outputs: int, dropout: float) -> nn.Module:
    """A task head: the default MLP (`TaskHead`), or a domain's module given as
    {"class_path": "pkg.mod.Class", "init_args": {...}}, built as
    Class(d_model=..., n_outputs=..., **init_args)."""
    if not spec:
        return TaskHead(d_model, n_outputs, dropout=dropout)
    module, _, name = spec["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"head {spec['class_path']!r} cannot be imported: {err}") from err
    return cls(d_model=d_model, n_outputs=n_outputs, **spec.get("init_args", {}))
