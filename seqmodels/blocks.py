"""Building blocks for learned tokenizers, on the transformer backbone's attention.

- `CrossAttentionBlock`: pre-norm cross-attention (queries attend to a context) + MLP.
- `QueryEncoder`: learnable queries cross-attend a set or a patch sequence and then each
  other (Perceiver; G3PT's cross-scale querying uses one per level of detail).
- `PatchEmbed` + `register_attention`: image patches with K register tokens appended and
  the FlexTok encoder mask (patches bidirectional among themselves, registers see every
  patch and the registers before them, patches never see registers).
- `FourierFeatures` + `QueryDecoder`: tokens back to outputs queried at given positions
  (a point's occupancy, a pixel's value), each query independent of the others.
- `NestedDropout`: keep the first k tokens, replace the rest by a learned mask token, k
  uniform in [min_keep, K] or a power of two (FlexTok, One-D-Piece).

Self-attention reuses the backbone's `Block` (and so its `AttentionSpec` masks); sets get
identity rotary tables, so nothing depends on the order of the tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .backbones.attention import AttentionSpec, sdpa
from .backbones.transformer import Block, rope_tables


def _mlp(d: int, ratio: float) -> nn.Sequential:
    hidden = int(ratio * d)
    return nn.Sequential(
        nn.Linear(d, hidden, bias=False), nn.GELU(), nn.Linear(hidden, d, bias=False)
    )


class CrossAttention(nn.Module):
    """Multi-head attention of queries x (B, Lq, d) to a context (B, Lk, d_context).

    context_pad: (B, Lk) bool, True for real keys; padded keys are never attended.
    """

    def __init__(self, d_model: int, n_heads: int, d_context: int | None = None, dropout=0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads, self.dropout = n_heads, dropout
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_context or d_model, 2 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, context_pad: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, Lq, D = x.shape
        H, hd = self.n_heads, D // self.n_heads
        q = self.q(x).view(B, Lq, H, hd).transpose(1, 2)
        k, v = self.kv(context).view(B, context.shape[1], 2, H, hd).permute(2, 0, 3, 1, 4)
        mask = None if context_pad is None else context_pad[:, None, None, :].to(x.device)
        y = sdpa(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, Lq, D))


class CrossAttentionBlock(nn.Module):
    """x + CrossAttention(norm(x), norm(context)), then x + MLP(norm(x))."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_context: int | None = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.norm_q = nn.RMSNorm(d_model)
        self.norm_ctx = nn.RMSNorm(d_context or d_model)
        self.attn = CrossAttention(d_model, n_heads, d_context, dropout)
        self.norm2 = nn.RMSNorm(d_model)
        self.mlp = _mlp(d_model, mlp_ratio)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x, context, context_pad=None):
        x = x + self.drop(self.attn(self.norm_q(x), self.norm_ctx(context), context_pad))
        return x + self.drop(self.mlp(self.norm2(x)))


class SelfAttentionStack(nn.Module):
    """The backbone's pre-norm `Block`s under an `AttentionSpec`; `rope=False` uses
    identity rotations (unordered sets: no position information)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_layers: int,
        max_len: int = 1024,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        rope: bool = False,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, mlp_ratio, dropout) for _ in range(n_layers)
        )
        cos, sin = rope_tables(d_model // n_heads, max_len)
        if not rope:
            cos, sin = torch.ones_like(cos), torch.zeros_like(sin)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, h: torch.Tensor, mask: str | AttentionSpec = "bidirectional"):
        L = h.shape[1]
        if self.cos.shape[0] < L:
            raise ValueError(f"{L} positions exceed max_len {self.cos.shape[0]}")
        spec = AttentionSpec.of(mask)
        dense = spec.dense(L, h.device)
        is_causal = dense is None and spec.kind == "causal"
        for i, block in enumerate(self.blocks):
            h = block(h, self.cos[:L], self.sin[:L], dense, is_causal, None, i)
        return h


class QueryEncoder(nn.Module):
    """`n_queries` learnable queries read an input set / sequence (B, N, d_input) by
    cross-attention, then attend to each other (under `mask`, e.g. block-causal levels);
    `n_layers` rounds of both. Returns (B, n_queries, d_model)."""

    def __init__(
        self,
        d_model: int,
        n_queries: int,
        d_input: int | None = None,
        n_heads: int = 4,
        n_layers: int = 2,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n_queries, d_model) * 0.02)
        self.proj_in = (
            nn.Linear(d_input, d_model) if d_input and d_input != d_model else nn.Identity()
        )
        self.cross = nn.ModuleList(
            CrossAttentionBlock(d_model, n_heads, None, mlp_ratio, dropout) for _ in range(n_layers)
        )
        self.self_attn = nn.ModuleList(
            SelfAttentionStack(d_model, n_heads, 1, n_queries, mlp_ratio, dropout)
            for _ in range(n_layers)
        )
        self.norm = nn.RMSNorm(d_model)

    def forward(
        self,
        inputs: torch.Tensor,
        pad: torch.Tensor | None = None,
        mask: str | AttentionSpec = "bidirectional",
    ) -> torch.Tensor:
        context = self.proj_in(inputs)
        h = self.queries[None].expand(inputs.shape[0], -1, -1)
        for cross, self_attn in zip(self.cross, self.self_attn):
            h = self_attn(cross(h, context, pad), mask)
        return self.norm(h)


def register_attention(n_patches: int, n_registers: int) -> AttentionSpec:
    """FlexTok's encoder mask over [patches..., registers...]: patches see all patches and
    no register; register i sees every patch and registers <= i. So register i's state
    depends on the image and registers before it only: any prefix of registers is a
    complete, self-consistent encoding."""
    L = n_patches + n_registers
    allowed = torch.zeros(L, L, dtype=torch.bool)
    allowed[:n_patches, :n_patches] = True
    allowed[n_patches:, :n_patches] = True
    allowed[n_patches:, n_patches:] = torch.ones(n_registers, n_registers).tril().bool()
    return AttentionSpec("custom", allowed=allowed)


class PatchEmbed(nn.Module):
    """Images (B, C, H, W) -> [patch tokens (B, N, d) + learned positions; K registers].

    Returns (B, N + K, d_model); `self.mask` is `register_attention(N, K)`.
    """

    def __init__(
        self,
        image_size: int | tuple[int, int],
        patch_size: int,
        in_channels: int,
        d_model: int,
        n_registers: int = 0,
    ):
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if h % patch_size or w % patch_size:
            raise ValueError(f"image size {(h, w)} is not divisible by patch size {patch_size}")
        self.grid = (h // patch_size, w // patch_size)
        self.n_patches = self.grid[0] * self.grid[1]
        self.n_registers = n_registers
        self.proj = nn.Conv2d(in_channels, d_model, patch_size, stride=patch_size)
        self.pos = nn.Parameter(torch.randn(self.n_patches, d_model) * 0.02)
        self.registers = nn.Parameter(torch.randn(n_registers, d_model) * 0.02)
        self.mask = register_attention(self.n_patches, n_registers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"PatchEmbed expects images (B, C, H, W), got {tuple(images.shape)}")
        patches = self.proj(images).flatten(2).transpose(1, 2) + self.pos
        regs = self.registers[None].expand(images.shape[0], -1, -1)
        return torch.cat([patches, regs], dim=1)


class FourierFeatures(nn.Module):
    """Positions (..., d_in) -> [x, sin(2^k pi x), cos(2^k pi x) for k < n_freqs]
    (NeRF's positional encoding), size d_in * (1 + 2 n_freqs)."""

    def __init__(self, d_in: int, n_freqs: int = 6):
        super().__init__()
        self.d_in, self.n_freqs = d_in, n_freqs
        self.register_buffer(
            "freqs", math.pi * 2.0 ** torch.arange(n_freqs, dtype=torch.float32), persistent=False
        )

    @property
    def d_out(self) -> int:
        return self.d_in * (1 + 2 * self.n_freqs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = (x[..., None] * self.freqs).flatten(-2)
        return torch.cat([x, angles.sin(), angles.cos()], dim=-1)


class QueryDecoder(nn.Module):
    """Tokens (B, T, d_model) -> outputs (B, M, d_out) at M query positions (B, M, d_pos):
    each query, the Fourier features of its position through an MLP, cross-attends the
    tokens `n_layers` times. Queries do not see each other, so any number of positions
    can be decoded (all pixels, or occupancy at arbitrary points)."""

    def __init__(
        self,
        d_model: int,
        d_pos: int,
        d_out: int,
        n_heads: int = 4,
        n_layers: int = 2,
        n_freqs: int = 6,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.fourier = FourierFeatures(d_pos, n_freqs)
        self.embed = nn.Sequential(
            nn.Linear(self.fourier.d_out, d_model), nn.GELU(), nn.Linear(d_model, d_model)
        )
        self.layers = nn.ModuleList(
            CrossAttentionBlock(d_model, n_heads, None, mlp_ratio, dropout) for _ in range(n_layers)
        )
        self.norm = nn.RMSNorm(d_model)
        self.out = nn.Linear(d_model, d_out)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        token_pad: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.embed(self.fourier(positions.to(tokens.dtype)))
        for layer in self.layers:
            h = layer(h, tokens, token_pad)
        return self.out(self.norm(h))


class NestedDropout(nn.Module):
    """Keep the first k of K tokens, replace the rest by a learned mask token.

    mode "uniform": k uniform in [min_keep, K]; "pow2": k uniform over the powers of two
    in [min_keep, K] (K included when it is not one). In eval mode no token is dropped
    unless k is given. forward returns (tokens, k) with k (B,) long.
    """

    def __init__(self, d_model: int, mode: str = "uniform", min_keep: int = 1):
        super().__init__()
        if mode not in ("uniform", "pow2"):
            raise ValueError(f"nested dropout mode must be uniform or pow2, not {mode!r}")
        if min_keep < 0:
            raise ValueError("min_keep must be >= 0")
        self.mode, self.min_keep = mode, min_keep
        self.mask_token = nn.Parameter(torch.randn(d_model) * 0.02)

    def choices(self, K: int) -> torch.Tensor:
        if self.min_keep > K:
            raise ValueError(f"min_keep {self.min_keep} exceeds the {K} tokens")
        if self.mode == "uniform":
            return torch.arange(self.min_keep, K + 1)
        ks = {2**i for i in range(K.bit_length()) if self.min_keep <= 2**i <= K} | {K}
        return torch.tensor(sorted(ks))

    def sample_k(self, batch: int, K: int, generator: torch.Generator | None = None):
        c = self.choices(K)
        return c[torch.randint(len(c), (batch,), generator=generator)]

    def forward(
        self,
        tokens: torch.Tensor,
        k: torch.Tensor | int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, K = tokens.shape[:2]
        if k is None:
            k = self.sample_k(B, K, generator) if self.training else torch.full((B,), K)
        k = torch.as_tensor(k, dtype=torch.long).expand(B).to(tokens.device)
        keep = torch.arange(K, device=tokens.device)[None, :] < k[:, None]
        out = torch.where(keep[..., None], tokens, self.mask_token.to(tokens.dtype))
        return out, k
