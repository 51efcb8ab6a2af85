"""Pre-norm decoder (RMSNorm, RoPE, scaled_dot_product_attention) with a KV cache.

The backbone maps embeddings (B, L, d_model) to states of the same shape; token
embeddings, condition prefixes and heads live in `SeqLM`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..norms import RMSNorm
from .attention import AttentionSpec, sdpa


def rope_tables(
    head_dim: int, max_len: int, base: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :d/2], x[..., d/2:]) by position-dependent angles."""
    # chunk / split rather than slicing: their backward is one cat of the parts' gradients,
    # where each slice's backward writes a zero tensor of x's size and adds it in.
    x1, x2 = x.chunk(2, dim=-1)
    # The tables in x's dtype: a bf16 x times fp32 tables would promote every product to
    # fp32 (and cast back), the slowest part of a bf16 step on CPU after attention.
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class KVCache:
    """Preallocated keys and values per layer; `pos` is the number of cached positions."""

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_heads: int,
        max_len: int,
        head_dim: int,
        device: torch.device,
        dtype: torch.dtype,
    ):
        shape = (batch, n_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.pos = 0
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > max_len {self.max_len}")
        self.k[layer][:, :, self.pos : end] = k
        self.v[layer][:, :, self.pos : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout

    def _qkv(self, x, cos, sin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as (B, H, L, hd), q and k rotated."""
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.n_heads, D // self.n_heads)
        # One rotation for q and k together: decoding is bound by per-op overhead.
        qk, v = qkv.split((2, 1), dim=2)
        q, k = apply_rope(qk, cos[:, None, None], sin[:, None, None]).unbind(2)
        return tuple(t.transpose(1, 2) for t in (q, k, v.squeeze(2)))

    def forward(self, x, cos, sin, mask, is_causal: bool, cache: KVCache | None, layer: int):
        B, L, D = x.shape
        q, k, v = self._qkv(x, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        y = sdpa(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )
        return self.proj(y.transpose(1, 2).reshape(B, L, D))

    def decode_step(self, x, cos, sin, visible, k_all, v_all, pos):
        """One new position per row (x (B, 1, D)) at `pos`, written into and attending over
        the whole preallocated cache layer (k_all, v_all (B, H, max_len, hd)); `visible`
        (1, 1, max_len, 1) marks the keys <= pos."""
        B, _, D = x.shape
        q, k, v = self._qkv(x, cos, sin)
        k_all.index_copy_(2, pos.view(1), k)
        v_all.index_copy_(2, pos.view(1), v)
        # Attention as broadcast products and sums, not SDPA: inductor fuses these into
        # its own loops, where the CPU flash kernel costs about 39 us a call for a single
        # query (an AMX Xeon, batch 1: the whole compiled step went from 475 to 352 us).
        scores = (q * k_all).sum(-1, keepdim=True) * (q.shape[-1] ** -0.5)  # (B, H, T, 1)
        p = scores.masked_fill(~visible, float("-inf")).softmax(2)
        y = (p * v_all).sum(2, keepdim=True)  # (B, H, 1, hd)
        return self.proj(y.transpose(1, 2).reshape(B, 1, D))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.attn = Attention(d_model, n_heads, dropout)
        self.norm2 = RMSNorm(d_model)
        hidden = int(mlp_ratio * d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, hidden, bias=False),
            nn.GELU(),
            nn.Linear(hidden, d_model, bias=False),
        )
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x, cos, sin, mask, is_causal, cache, layer):
        x = x + self.drop(self.attn(self.norm1(x), cos, sin, mask, is_causal, cache, layer))
        return x + self.drop(self.mlp(self.norm2(x)))

    def decode_step(self, x, cos, sin, visible, k_all, v_all, pos):
        x = x + self.attn.decode_step(self.norm1(x), cos, sin, visible, k_all, v_all, pos)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """Decoder stack; the attention mask (causal, prefix, bidirectional, custom) is per call."""

    supports_cache = True

    def __init__(
        self,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        max_len: int = 512,
        dropout: float = 0.0,
        mlp_ratio: float = 4.0,
        rope_base: float = 10000.0,
    ):
        super().__init__()
        self.n_heads, self.max_len = n_heads, max_len
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, mlp_ratio, dropout) for _ in range(n_layers)
        )
        self.norm = RMSNorm(d_model)
        cos, sin = rope_tables(d_model // n_heads, max_len, rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)

    def new_cache(self, batch: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        hd = self.cos.shape[-1] * 2
        return KVCache(len(self.blocks), batch, self.n_heads, self.max_len, hd, device, dtype)

    def forward(
        self,
        h: torch.Tensor,
        mask: str | AttentionSpec = "causal",
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """h (B, L, d_model) -> states. With a cache, h holds the positions [cache.pos,
        cache.pos + L) and `mask` is in absolute positions (see `AttentionSpec.rows`)."""
        L = h.shape[1]
        start = cache.pos if cache is not None else 0
        if start + L > self.max_len:
            raise ValueError(f"sequence of {start + L} positions exceeds max_len {self.max_len}")
        cos, sin = self.cos[start : start + L], self.sin[start : start + L]
        spec = AttentionSpec.of(mask)
        if cache is not None:
            # The new queries [start, start + L) take the spec's rows over every key so far.
            dense, is_causal = spec.rows(start, L, h.device), False
        else:
            dense = spec.dense(L, h.device)
            # Without a dense mask SDPA's own causal kernel applies (or none: bidirectional).
            is_causal = dense is None and spec.kind == "causal"
        for i, block in enumerate(self.blocks):
            h = block(h, cos, sin, dense, is_causal, cache, i)
        if cache is not None:
            cache.pos += L
        return self.norm(h)

    def decode_step(self, h: torch.Tensor, pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """States (B, 1, d_model) of one new causal position per row at `pos` (a 0-d long
        tensor, = cache.pos), after a prefill through `forward`; does not advance cache.pos.
        Every shape is static (the whole cache is read, later keys masked) and the position
        is a tensor, so `torch.compile` builds one graph for every position: the gpt-fast
        approach to decoding, where `forward` with a cache has a new key length per token."""
        cos, sin = self.cos.index_select(0, pos.view(1)), self.sin.index_select(0, pos.view(1))
        visible = (torch.arange(cache.max_len, device=h.device) <= pos).view(1, 1, -1, 1)
        for i, block in enumerate(self.blocks):
            h = block.decode_step(h, cos, sin, visible, cache.k[i], cache.v[i], pos)
        return self.norm(h)
