"""Attention masks as data: which positions each query may see."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

KINDS = ("causal", "bidirectional", "prefix", "custom")


@dataclass
class AttentionSpec:
    """What each query may attend to.

    kind: "causal"; "bidirectional"; "prefix" (the first `prefix_len[b]` positions see each
    other fully, the rest is causal); "custom" (`allowed` is a bool (L, L) or (B, L, L)
    matrix, True = may attend, e.g. block-causal masks for next-scale prediction).
    pad: (B, L) bool, True for real tokens; padded keys are never attended.
    """

    kind: str = "causal"
    prefix_len: torch.Tensor | None = None
    allowed: torch.Tensor | None = None
    pad: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown attention kind {self.kind!r}; expected one of {KINDS}")
        if self.kind == "prefix" and self.prefix_len is None:
            raise ValueError("a prefix attention mask needs prefix_len")
        if self.kind == "custom" and self.allowed is None:
            raise ValueError("a custom attention mask needs the allowed matrix")

    @classmethod
    def of(cls, mask: str | AttentionSpec | None) -> AttentionSpec:
        if isinstance(mask, AttentionSpec):
            return mask
        return cls(kind=mask or "causal")

    def with_prefix(self, n: int) -> AttentionSpec:
        """The same mask with `n` always-visible condition positions put in front."""
        if n == 0:
            return self
        pad = self.pad
        if pad is not None:
            pad = torch.cat([pad.new_ones(pad.shape[0], n), pad], dim=1)
        if self.kind == "prefix":
            return replace(self, prefix_len=self.prefix_len + n, pad=pad)
        if self.kind == "custom":
            a = self.allowed
            lead = a.shape[:-2]
            L = a.shape[-1]
            full = a.new_ones(*lead, n + L, n + L)
            full[..., n:, n:] = a
            full[..., :n, n:] = False  # condition tokens do not look at the sequence
            return replace(self, allowed=full, pad=pad)
        if self.kind == "causal":
            # Causal already lets every later position see the condition tokens.
            return replace(self, pad=pad)
        return replace(self, pad=pad)

    def dense(self, L: int, device: torch.device) -> torch.Tensor | None:
        """A bool (B or 1, 1, L, L) matrix for scaled_dot_product_attention, or None when
        plain causal attention without padding applies (the fast path)."""
        if self.kind == "causal" and self.pad is None:
            return None
        if self.kind == "bidirectional" and self.pad is None:
            return None
        idx = torch.arange(L, device=device)
        causal = idx[None, :] <= idx[:, None]
        if self.kind == "causal":
            m = causal[None]
        elif self.kind == "bidirectional":
            m = torch.ones(1, L, L, dtype=torch.bool, device=device)
        elif self.kind == "prefix":
            in_prefix = idx[None, :] < self.prefix_len.to(device)[:, None]  # (B, L) keys
            m = causal[None] | in_prefix[:, None, :]
        else:
            m = self.allowed.to(device)
            m = m[None] if m.dim() == 2 else m
        if self.pad is not None:
            m = m & self.pad.to(device)[:, None, :]
            # A padded query with no visible key would give NaN: let it see itself.
            m = m | torch.eye(L, dtype=torch.bool, device=device)[None]
        return m[:, None]
