"""Quantisers with one interface, for learned tokenizers.

Every quantiser maps continuous features `z` (B, N, dim) to

    quantized, indices, aux_loss = q(z)

with `quantized` (B, N, dim) carrying straight-through gradients to `z`, `indices` (B, N)
long in [0, codebook_size), and `aux_loss` a scalar to add to the training loss (zero when
the method needs none). `q.indices_to_codes(indices)` inverts the index step.

- `FSQ` and `LFQ` wrap vector-quantize-pytorch (Mentzer et al. 2023; Yu et al. 2023).
- `MultiScaleQuantizer` is VAR's multi-scale residual quantiser (Tian et al. 2024) over
  token sets: scale s codes what scales < s left. vector-quantize-pytorch's residual
  quantisers keep one resolution for every stage; VAR's changes the number of tokens per
  scale, which needs the down / up resampling between scales that `Resampler` provides,
  so this one is written here. It also owns the conversion from indices to the
  next-scale model's continuous inputs (`next_scale_inputs`), as VAR's quantiser does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from vector_quantize_pytorch import FSQ as _FSQ
from vector_quantize_pytorch import LFQ as _LFQ


class Quantizer(nn.Module):
    """The interface: forward(z) -> (quantized, indices, aux_loss); indices_to_codes."""

    dim: int
    codebook_size: int

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _check_input(z: torch.Tensor, dim: int, name: str) -> None:
    if z.dim() != 3 or z.shape[-1] != dim:
        raise ValueError(f"{name} expects features (B, N, {dim}), got {tuple(z.shape)}")


class FSQ(Quantizer):
    """Finite scalar quantisation: each of len(levels) channels is bounded and rounded to
    levels[i] values; the codebook is the product grid (size prod(levels)). A linear
    projection maps `dim` in and out when dim != len(levels). No auxiliary loss."""

    def __init__(self, levels: Sequence[int] = (8, 5, 5, 5), dim: int | None = None):
        super().__init__()
        levels = [int(v) for v in levels]
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels must be integers >= 2, got {levels}")
        self.levels = levels
        self.dim = dim or len(levels)
        # Level 2 needs the library's symmetric variant (an even grid has no zero).
        self.fsq = _FSQ(levels=levels, dim=self.dim, preserve_symmetry=2 in levels)
        self.codebook_size = int(math.prod(levels))

    def forward(self, z):
        _check_input(z, self.dim, "FSQ")
        quantized, indices = self.fsq(z)
        return quantized, indices.long(), z.new_zeros(())

    def indices_to_codes(self, indices):
        return self.fsq.indices_to_codes(indices.long())


class LFQ(Quantizer):
    """Lookup-free quantisation (MAGVIT-v2): log2(codebook_size) channels, each the sign
    of its input, so code i is the binary expansion of i mapped to +-1. The auxiliary loss
    is `entropy_weight * (per-sample entropy - diversity_gamma * codebook entropy) +
    commitment_weight * ||z - sign(z)||^2` (computed in training mode only)."""

    def __init__(
        self,
        codebook_size: int = 256,
        dim: int | None = None,
        entropy_weight: float = 0.1,
        commitment_weight: float = 0.25,
        diversity_gamma: float = 1.0,
    ):
        super().__init__()
        if codebook_size < 2 or codebook_size & (codebook_size - 1):
            raise ValueError(f"LFQ codebook_size must be a power of two, got {codebook_size}")
        bits = int(math.log2(codebook_size))
        self.dim = dim or bits
        self.codebook_size = codebook_size
        self.lfq = _LFQ(
            dim=self.dim,
            codebook_size=codebook_size,
            entropy_loss_weight=entropy_weight,
            commitment_loss_weight=commitment_weight,
            diversity_gamma=diversity_gamma,
        )

    def forward(self, z):
        _check_input(z, self.dim, "LFQ")
        quantized, indices, aux = self.lfq(z)
        return quantized, indices.long(), aux

    def indices_to_codes(self, indices):
        return self.lfq.indices_to_codes(indices.long())


QUANTIZERS: dict[str, type[Quantizer]] = {"fsq": FSQ, "lfq": LFQ}


def build_quantizer(spec: dict | Quantizer, dim: int | None = None) -> Quantizer:
    """`{"kind": "fsq", "levels": [8, 5, 5]}` or `{"kind": "lfq", "codebook_size": 256}`;
    `dim` is the feature size it sees (projections are added when it differs)."""
    if isinstance(spec, Quantizer):
        return spec
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in QUANTIZERS:
        raise ValueError(f"unknown quantizer kind {kind!r}; expected one of {sorted(QUANTIZERS)}")
    if dim is not None:
        spec.setdefault("dim", dim)
    try:
        return QUANTIZERS[kind](**spec)
    except TypeError as err:
        raise ValueError(f"quantizer {kind!r}: {err}") from err


# ------------------------------------------------------------------ resampling between scales


class Resampler(nn.Module):
    """Moves features between a scale's token set and the finest one.

    `down(x, s)`: (B, n_last, D) -> (B, n_s, D); `up(x, s)`: (B, n_s, D) -> (B, n_last, D).
    Scales are `sizes[s]` tokens each, coarse to fine.
    """

    def __init__(self, sizes: Sequence[int]):
        super().__init__()
        self.sizes = [int(n) for n in sizes]

    def down(self, x: torch.Tensor, s: int) -> torch.Tensor:
        raise NotImplementedError

    def up(self, x: torch.Tensor, s: int) -> torch.Tensor:
        raise NotImplementedError


class InterpolateResampler(Resampler):
    """Token sequences (`scales` of ints) or row-major grids (`scales` of (h, w)): area
    averaging down, linear / bicubic interpolation up, as VAR does on its feature maps."""

    def __init__(self, scales: Sequence[int | Sequence[int]]):
        shapes = [tuple(s) if isinstance(s, (list, tuple)) else (int(s),) for s in scales]
        if len({len(s) for s in shapes}) != 1 or len(shapes[0]) not in (1, 2):
            raise ValueError(f"scales must all be ints or all (h, w) pairs, got {list(scales)}")
        super().__init__([math.prod(s) for s in shapes])
        self.shapes = shapes

    def _to_map(self, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *shape)

    def _from_map(self, m: torch.Tensor) -> torch.Tensor:
        return m.flatten(2).transpose(1, 2)

    def down(self, x, s):
        if s == len(self.shapes) - 1:
            return x
        m = self._to_map(x, self.shapes[-1])
        return self._from_map(F.interpolate(m, size=self.shapes[s], mode="area"))

    def up(self, x, s):
        if s == len(self.shapes) - 1:
            return x
        m = self._to_map(x, self.shapes[s])
        mode = "linear" if len(self.shapes[s]) == 1 else "bicubic"
        if min(self.shapes[s]) == 1:
            mode = "nearest"  # nothing to interpolate between
        return self._from_map(F.interpolate(m, size=self.shapes[-1], mode=mode))


class ParentResampler(Resampler):
    """Token sets linked by parents (e.g. farthest-point levels): `parents[s - 1][i]` is the
    index at scale s-1 of token i of scale s. Up copies each ancestor's features to its
    finest-scale descendants; down averages the descendants. down(up(x)) == x."""

    def __init__(self, sizes: Sequence[int], parents: Sequence[Sequence[int]]):
        super().__init__(sizes)
        if len(parents) != len(self.sizes) - 1:
            raise ValueError(f"{len(self.sizes)} scales need {len(self.sizes) - 1} parent lists")
        last = len(self.sizes) - 1
        anc = [torch.arange(self.sizes[last])]
        for s in range(last, 0, -1):
            p = torch.as_tensor(parents[s - 1], dtype=torch.long)
            if p.shape != (self.sizes[s],) or p.min() < 0 or p.max() >= self.sizes[s - 1]:
                raise ValueError(
                    f"parents of scale {s} must list {self.sizes[s]} indices in "
                    f"[0, {self.sizes[s - 1]})"
                )
            anc.insert(0, p[anc[0]])
        for s, a in enumerate(anc):
            counts = torch.bincount(a, minlength=self.sizes[s])
            if (counts == 0).any():
                raise ValueError(
                    f"token {int((counts == 0).nonzero()[0])} of scale {s} has no "
                    "descendant at the finest scale"
                )
            self.register_buffer(f"anc{s}", a, persistent=False)
            self.register_buffer(f"count{s}", counts.float(), persistent=False)

    def up(self, x, s):
        return x[:, getattr(self, f"anc{s}")]

    def down(self, x, s):
        a = getattr(self, f"anc{s}")
        out = x.new_zeros(x.shape[0], self.sizes[s], x.shape[2]).index_add_(1, a, x)
        return out / getattr(self, f"count{s}").to(x.dtype)[None, :, None]


# ------------------------------------------------------------------ the multi-scale quantiser


class MultiScaleQuantizer(Quantizer):
    """VAR's multi-scale residual quantiser over token sets.

    f_hat = 0; for s in scales (coarse to fine): r_s = z_s - down(f_hat, s), where z_s is
    down(z, s) for a finest-scale input z (VAR) or the given per-scale features;
    q_s, idx_s = Q(r_s); f_hat += up(q_s, s). `quantized` is f_hat at the finest scale;
    `indices` are the scales' indices concatenated, coarse first (B, sum(sizes)).

    quantizer: a spec for `build_quantizer` (one per scale when `shared` is False, as
    ResidualFSQ keeps one per stage; VAR shares one codebook). scale_decay: scale s codes
    residuals divided by scale_decay**s (ResidualFSQ's levels**-s idea; 1 = off), so a
    bounded quantiser (FSQ) can resolve the smaller residuals of fine scales.
    resampler: InterpolateResampler(scales) unless given (ParentResampler for sets).
    commitment_weight: weight of ||z - sg(f_hat)||^2 added to the quantisers' aux losses.
    """

    def __init__(
        self,
        quantizer: dict | Quantizer,
        scales: Sequence[int | Sequence[int]],
        dim: int | None = None,
        shared: bool = True,
        scale_decay: float = 1.0,
        resampler: Resampler | None = None,
        commitment_weight: float = 0.0,
    ):
        super().__init__()
        self.resampler = resampler or InterpolateResampler(scales)
        self.sizes = list(self.resampler.sizes)
        n = len(self.sizes)
        if not shared and isinstance(quantizer, Quantizer):
            raise ValueError("shared=False needs a quantizer spec (dict), not a module")
        self.quantizers = nn.ModuleList(
            build_quantizer(quantizer, dim) for _ in range(1 if shared else n)
        )
        self.dim = self.quantizers[0].dim
        self.codebook_size = self.quantizers[0].codebook_size
        self.scale_factors = [scale_decay**s for s in range(n)]
        self.commitment_weight = commitment_weight
        starts = [0]
        for size in self.sizes:
            starts.append(starts[-1] + size)
        self.starts = starts

    def _q(self, s: int) -> Quantizer:
        return self.quantizers[s if len(self.quantizers) > 1 else 0]

    @property
    def n_tokens(self) -> int:
        return self.starts[-1]

    def split(self, indices: torch.Tensor) -> list[torch.Tensor]:
        """Concatenated indices (B, L) -> one (B, n_s) tensor per scale present."""
        return [
            indices[:, a:b] for a, b in zip(self.starts, self.starts[1:]) if b <= indices.shape[1]
        ]

    def _codes(self, idx: torch.Tensor, s: int) -> torch.Tensor:
        return self._q(s).indices_to_codes(idx) * self.scale_factors[s]

    def quantize_scales(
        self, z: torch.Tensor | Sequence[torch.Tensor]
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Like forward, but returns f_hat after every scale (coarse-to-fine decoding)."""
        per_scale = not torch.is_tensor(z)
        if per_scale:
            if len(z) != len(self.sizes):
                raise ValueError(f"{len(self.sizes)} scales, got {len(z)} feature tensors")
            for s, zs in enumerate(z):
                if zs.dim() != 3 or zs.shape[1:] != (self.sizes[s], self.dim):
                    raise ValueError(
                        f"scale {s} features must be (B, {self.sizes[s]}, {self.dim}), "
                        f"got {tuple(zs.shape)}"
                    )
            ref = z[-1]
        else:
            if z.dim() != 3 or z.shape[1:] != (self.sizes[-1], self.dim):
                raise ValueError(
                    f"MultiScaleQuantizer expects features (B, {self.sizes[-1]}, {self.dim}), "
                    f"got {tuple(z.shape)}"
                )
            ref = z
        f_hat = torch.zeros_like(ref)
        cumulative, indices = [], []
        aux = ref.new_zeros(())
        for s in range(len(self.sizes)):
            target = z[s] if per_scale else self.resampler.down(z, s)
            residual = (target - self.resampler.down(f_hat, s)) / self.scale_factors[s]
            q, idx, a = self._q(s)(residual)
            f_hat = f_hat + self.resampler.up(q * self.scale_factors[s], s)
            cumulative.append(f_hat)
            indices.append(idx)
            aux = aux + a / len(self.sizes)
        if self.commitment_weight:
            aux = aux + self.commitment_weight * F.mse_loss(ref, f_hat.detach())
        return cumulative, torch.cat(indices, dim=1), aux

    def forward(self, z):
        cumulative, indices, aux = self.quantize_scales(z)
        return cumulative[-1], indices, aux

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """f_hat at the finest scale from the indices of the first k scales (a prefix of
        the concatenation): the coarse-to-fine reconstruction after k scales."""
        parts = self.split(indices)
        if not parts or sum(p.shape[1] for p in parts) != indices.shape[1]:
            raise ValueError(
                f"{indices.shape[1]} indices do not end on a scale boundary {self.starts[1:]}"
            )
        f_hat = None
        for s, idx in enumerate(parts):
            up = self.resampler.up(self._codes(idx, s), s)
            f_hat = up if f_hat is None else f_hat + up
        return f_hat

    def next_scale_input(self, indices: torch.Tensor) -> torch.Tensor:
        """The next-scale model's input for scale k, given the indices of scales < k:
        the cumulative reconstruction of scales < k at scale k's tokens (B, n_k, dim),
        VAR's `get_next_autoregressive_input`."""
        k = len(self.split(indices))
        if k == 0 or k >= len(self.sizes):
            raise ValueError(f"give the indices of 1..{len(self.sizes) - 1} whole scales")
        return self.resampler.down(self.indices_to_codes(indices), k)

    def next_scale_inputs(self, indices: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing inputs for all scales (B, sum(sizes), dim): zeros for scale 0
        (its positions are blank, the model starts from the condition), then for each
        scale k >= 1 the cumulative reconstruction of scales < k resampled to scale k
        (VAR's `idxBl_to_var_input`, not parent ids)."""
        parts = self.split(indices)
        if len(parts) != len(self.sizes) or indices.shape[1] != self.n_tokens:
            raise ValueError(f"expected {self.n_tokens} indices (scales {self.sizes})")
        B = indices.shape[0]
        first = self._codes(parts[0], 0)
        out = [first.new_zeros(B, self.sizes[0], self.dim)]
        f_hat = self.resampler.up(first, 0)
        for s in range(1, len(self.sizes)):
            out.append(self.resampler.down(f_hat, s))
            f_hat = f_hat + self.resampler.up(self._codes(parts[s], s), s)
        return torch.cat(out, dim=1)


# ------------------------------------------------------------------ codebook metrics


def codebook_metrics(indices: torch.Tensor, codebook_size: int) -> dict[str, torch.Tensor]:
    """Usage (fraction of codes that occur) and perplexity (exp of the entropy of the code
    histogram; codebook_size when uniform, 1 when one code is used) of a batch of indices,
    as VQ-VAE papers report them."""
    counts = torch.bincount(indices.flatten().long(), minlength=codebook_size).float()
    p = counts / counts.sum().clamp(min=1)
    entropy = -(p * p.clamp(min=1e-12).log()).sum()
    return {"usage": (counts > 0).float().mean(), "perplexity": entropy.exp()}
