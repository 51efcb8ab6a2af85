"""G3PT-style cross-scale querying tokenizer for point clouds.

encode: each point's Fourier features -> a per-point MLP (the context set); learnable
  queries, `scales` of them per level (e.g. 1, 4, 16, 64), cross-attend the set
  (seqmodels.blocks.QueryEncoder), level s attending levels <= s (block-causal), so
  a coarse level summarises the shape on its own.
quantise: seqmodels.quantizers.MultiScaleQuantizer (VAR's residual scheme) with FSQ (or
  LFQ) per token: level s codes what levels < s left. Levels are linked by a fixed
  parent tree (`ParentResampler`: token i of level s is a child of token
  i * n_{s-1} // n_s), so "what is left" is the level's feature minus its ancestors'
  codes. The queries are learned: the tree gives no spatial or raster order, and
  nothing inside a level (no position encoding) distinguishes one token from
  another except what it learned to encode.
decode: the cumulative code after level s (VAR's f_hat, at the finest level's tokens)
  is read by M query points drawn on the unit sphere (seqmodels.blocks.QueryDecoder;
  each query independent, so any M can be decoded) that map to surface points.

Loss: Chamfer distance (PointFlow's definition, metrics.py) between the decoded set and
the whole input at one random level per shape and, by default (`train_levels=
"final+random"`), also at the finest level on every step, averaged: the fine levels' tokens
get a gradient on every batch (with `"random"` alone the 64-token level carried almost
nothing and reconstruction was not monotone in scale; see the domain README). In training
the encoder reads a random `train_points` subset and `train_points` points are decoded;
the quantiser's auxiliary term is added. We chose points
with a Chamfer loss over an occupancy field because the training data are surface samples
(the ModelNet clouds have no inside / outside labels and many meshes are not watertight),
and Chamfer is also what the evaluation measures. Training every level makes every prefix
of levels a valid coarse reconstruction.
"""

from __future__ import annotations

import torch
from torch import nn

from seqmodels.backbones.attention import AttentionSpec
from seqmodels.blocks import FourierFeatures, QueryDecoder, QueryEncoder
from seqmodels.quantizers import MultiScaleQuantizer, ParentResampler
from seqmodels.tokenizer import Tokenizer

from .metrics import chamfer_distance
from .sampling import spread


def level_ids(sizes: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((n,), s) for s, n in enumerate(sizes)])


def block_causal(sizes: list[int], prefix: int = 0) -> AttentionSpec:
    """Level s sees levels <= s (and `prefix` leading positions that everything sees)."""
    lv = torch.cat([torch.full((prefix,), -1), level_ids(sizes)])
    return AttentionSpec("custom", allowed=lv[None, :] <= lv[:, None])


def parent_tree(sizes: list[int]) -> list[list[int]]:
    """Token i of level s has parent i * n_{s-1} // n_s (a balanced tree)."""
    return [[i * sizes[s - 1] // sizes[s] for i in range(sizes[s])] for s in range(1, len(sizes))]


def sphere_seeds(batch: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, n, 3) points uniform on the unit sphere."""
    g = torch.randn(batch, n, 3, generator=generator)
    return g / g.norm(dim=-1, keepdim=True).clamp_min(1e-8)


class PointTokenizer(Tokenizer):
    """Point sets (B, N, 3) <-> token ids (B, sum(scales)), coarse levels first; the core
    `Tokenizer` contract (loss / encode / decode, `scales`, `quantizer`, exact resume)."""

    def __init__(
        self,
        scales: list[int] = (1, 4, 16, 64),
        d_model: int = 96,
        n_heads: int = 4,
        encoder_layers: int = 2,
        decoder_layers: int = 2,
        n_freqs: int = 6,
        quantizer: dict | None = None,
        train_points: int = 512,
        aux_weight: float = 1.0,
        train_levels: str = "final+random",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if train_levels not in ("random", "final+random"):
            raise ValueError(f"train_levels must be random or final+random, not {train_levels!r}")
        sizes = [int(n) for n in scales]
        for a, b in zip(sizes, sizes[1:]):
            if b < a:
                raise ValueError(f"scales must not shrink, got {sizes}")
        self.scales = sizes
        d = d_model
        self.fourier = FourierFeatures(3, n_freqs)
        self.point_mlp = nn.Sequential(
            nn.Linear(self.fourier.d_out, d), nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d)
        )
        self.encoder = QueryEncoder(d, sum(sizes), None, n_heads, encoder_layers)
        self.encoder_mask = block_causal(sizes)
        self.quantizer = MultiScaleQuantizer(
            quantizer or {"kind": "fsq", "levels": [8, 5, 5, 5]},
            sizes,
            dim=d,
            shared=False,
            resampler=ParentResampler(sizes, parent_tree(sizes)),
        )
        self.decoder = QueryDecoder(d, 3, 3, n_heads, decoder_layers, n_freqs)

    @property
    def sizes(self) -> list[int]:
        return self.scales

    @property
    def n_tokens(self) -> int:
        return sum(self.scales)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    # ------------------------------------------------------------------ encode / decode
    def features(self, points: torch.Tensor) -> list[torch.Tensor]:
        """Per-level query features [(B, n_s, d)] of clouds (B, N, 3)."""
        context = self.point_mlp(self.fourier(points))
        h = self.encoder(context, mask=self.encoder_mask)
        return list(h.split(self.scales, dim=1))

    @torch.no_grad()
    def encode(self, batch: dict | torch.Tensor) -> torch.Tensor:
        """Token ids (B, sum(scales)), level 0 first, of a batch {"points": (B, N, 3)}
        (or the clouds themselves)."""
        points = batch["points"] if isinstance(batch, dict) else batch
        _, ids, _ = self.quantizer.quantize_scales(self.features(points.to(self.device)))
        return ids

    def decode_codes(self, f_hat: torch.Tensor, n_points: int, seeds=None, generator=None):
        q = seeds if seeds is not None else sphere_seeds(len(f_hat), n_points, generator)
        return self.decoder(f_hat, q.to(f_hat))

    @torch.no_grad()
    def decode(
        self,
        ids: torch.Tensor,
        n_points: int = 1024,
        levels: int | None = None,
        seed: int = 0,
        oversample: int = 1,
    ) -> torch.Tensor:
        """Clouds (B, n_points, 3) from the ids of the first `levels` levels (all by default;
        `ids` may hold just those levels); `oversample` > 1 decodes that many times the
        points and keeps a farthest-point subset (sampling.py: an even spread)."""
        k = levels or len(self.quantizer.split(ids))
        ids = ids[:, : self.quantizer.starts[k]].to(self.device)
        f_hat = self.quantizer.indices_to_codes(ids)
        g = torch.Generator().manual_seed(seed)
        return spread(
            self.decode_codes(f_hat, n_points * oversample, generator=g), n_points, oversample
        )

    # ------------------------------------------------------------------ training
    def loss(self, batch: dict, generator: torch.Generator | None = None):
        """Training: Chamfer at one random level per shape (train_points decoded);
        evaluation: the mean over every level at the input's size, each level logged."""
        points = batch["points"]
        B, S = len(points), len(self.scales)
        seen = points
        if self.training and points.shape[1] > self.hparams.train_points:
            # the encoder reads a random subset (a set function: density-robust, and cheaper)
            keep = torch.rand(B, points.shape[1], generator=generator).argsort(dim=1)
            keep = keep[:, : self.hparams.train_points].to(points.device)
            seen = points.gather(1, keep[..., None].expand(-1, -1, 3))
        cumulative, ids, aux = self.quantizer.quantize_scales(self.features(seen))
        logs = {}
        if self.training:
            level = torch.randint(0, S, (B,), generator=generator).to(points.device)
            f_hat = torch.stack(cumulative)[level, torch.arange(B, device=points.device)]
            seeds = sphere_seeds(B, self.hparams.train_points, generator)
            cd = chamfer_distance(self.decode_codes(f_hat, 0, seeds), points).mean()
            if self.hparams.train_levels == "final+random":  # the finest level every step
                final = chamfer_distance(self.decode_codes(cumulative[-1], 0, seeds), points)
                cd = (cd + final.mean()) / 2
        else:  # every level, same seeds: the per-level reconstruction curve
            seeds = sphere_seeds(B, points.shape[1], generator)
            per_level = [
                chamfer_distance(self.decode_codes(f, 0, seeds), points).mean() for f in cumulative
            ]
            logs = {f"chamfer_level{s}": v for s, v in enumerate(per_level)}
            cd = torch.stack(per_level).mean()
        logs["chamfer"] = cd
        return cd + self.hparams.aux_weight * aux, logs, ids
