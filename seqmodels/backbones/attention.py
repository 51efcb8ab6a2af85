"""Attention masks as data: which positions each query may see."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

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

    def matrix(self, L: int, device: torch.device) -> torch.Tensor:
        """The bool (B or 1, L, L) matrix of this mask over L positions, True = may attend.
        A padded query with no visible key would give NaN in attention: it sees itself."""
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
            m = self.allowed.to(device).bool()
            m = m[None] if m.dim() == 2 else m
            if m.shape[-2:] != (L, L):
                raise ValueError(
                    f"the custom mask is {tuple(m.shape[-2:])}, the sequence has {L} positions"
                )
        if self.pad is not None:
            if self.pad.shape[-1] != L:
                raise ValueError(f"pad covers {self.pad.shape[-1]} positions, not {L}")
            m = m & self.pad.to(device)[:, None, :]
            m = m | torch.eye(L, dtype=torch.bool, device=device)[None]
        return m

    def dense(self, L: int, device: torch.device) -> torch.Tensor | None:
        """A bool (B or 1, 1, L, L) matrix for scaled_dot_product_attention, or None when
        plain causal or bidirectional attention without padding applies (the fast path)."""
        if self.kind in ("causal", "bidirectional") and self.pad is None:
            return None
        return self.matrix(L, device)[:, None]

    def rows(self, start: int, L: int, device: torch.device) -> torch.Tensor | None:
        """With a KV cache: the mask rows of the new queries [start, start + L) over the
        keys [0, start + L), as (B or 1, 1, L, start + L); None for one causal query
        (it sees every key). The spec is in absolute positions: `allowed` and `pad` cover
        all start + L positions. Raises when a cached position would have to see a new
        one (its cached keys and values would be stale), e.g. bidirectional after a prefill."""
        if self.kind == "causal" and self.pad is None:
            if L == 1:
                return None
            q = torch.arange(start, start + L, device=device)
            return (torch.arange(start + L, device=device)[None, :] <= q[:, None])[None, None]
        m = self.matrix(start + L, device)
        if start and bool(m[:, :start, start:].any()):
            raise ValueError(
                f"a {self.kind} mask lets cached positions (< {start}) see new ones: "
                "a KV cache cannot honour it (run the whole sequence without a cache)"
            )
        return m[:, None, start:]

    def block_ends(self, L: int, device: torch.device) -> torch.Tensor | None:
        """For a block-causal mask, the exclusive end of each position's block, (B or 1, L)
        long: position i sees exactly the keys [0, end_i), and the positions sharing an end
        form one block. None for a mask that is not block-causal. Padding is not applied.
        Causal is blocks of one; bidirectional one block; prefix one block of the prefix,
        then blocks of one. Scan backbones (Mamba) honour exactly these masks."""
        idx = torch.arange(L, device=device)
        if self.kind == "causal":
            return (idx + 1)[None]
        if self.kind == "bidirectional":
            return torch.full((1, L), L, device=device, dtype=torch.long)
        if self.kind == "prefix":
            p = self.prefix_len.to(device).long().clamp(max=L)[:, None]
            return torch.maximum(idx[None] + 1, p)
        a = replace(self, pad=None).matrix(L, device)
        end = a.sum(-1)
        ok = (
            (a == (idx < end[..., None])).all()  # each row sees a prefix of the keys
            & (end > idx).all()  # ... that includes itself
            & (end[..., 1:] >= end[..., :-1]).all()
            & (end.gather(-1, (end - 1).clamp(min=0)) == end).all()  # the block ends at end-1
        )
        return end if bool(ok) else None


def sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
) -> torch.Tensor:
    """`F.scaled_dot_product_attention`, but on CPU a bf16 / fp16 attention that will be
    differentiated runs in fp32: torch's CPU flash-attention forward + backward is 2.6-4.3x
    slower in bf16 than in fp32 with the casts (an AMX Xeon at (12, 8, 64, 64) and
    (12, 4, 64, 32); 2-2.5x on a Zen 4 EPYC). Forward-only calls (decoding) keep the input
    dtype, where the bf16 kernel is as fast."""
    low = q.dtype in (torch.bfloat16, torch.float16)
    if low and q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad:
        # CPU autocast lists SDPA as a bf16 op: it would cast the fp32 copies back.
        with torch.autocast("cpu", enabled=False):
            if attn_mask is not None and attn_mask.is_floating_point():
                attn_mask = attn_mask.float()
            y = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask, dropout_p, is_causal
            )
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)
