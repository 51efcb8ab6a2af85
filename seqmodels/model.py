"""The sequence model as a plain `nn.Module`, built from a `ModelConfig`: token embedding
(or a linear projection of continuous tokens), an optional condition prefix, the learned
mask embedding, a backbone, and the output head. Training lives in `seqmodels.training`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from .backbones import BACKBONES, AttentionSpec


@dataclass
class ModelConfig:
    """What the model is. vocab_size for discrete tokens, or d_input for continuous ones
    (then the head regresses d_input values per position); both for continuous inputs
    with discrete targets (next-scale over a learned tokenizer: VAR feeds the coarser
    scales' reconstruction and predicts the next scale's codes). d_cond > 0 adds
    `n_cond_tokens` prefix positions projected from a condition vector; cond_dropout > 0
    adds a learned null condition (classifier-free guidance). scale_sizes: tokens per
    scale of a next-scale sequence; each position gets its scale's learned embedding."""

    vocab_size: int = 0
    d_input: int = 0
    d_cond: int = 0
    n_cond_tokens: int = 1
    backbone: str = "transformer"
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    max_len: int = 512
    dropout: float = 0.0
    backbone_args: dict = field(default_factory=dict)
    tie_embeddings: bool = True
    cond_dropout: float = 0.0
    scale_sizes: list = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """The config fields of `d` (e.g. a SeqLM's hyperparameters); other keys ignored."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names and v is not None}
        kw["backbone_args"] = dict(kw.get("backbone_args") or {})
        return cls(**kw)

    def to_dict(self) -> dict:
        return asdict(self)


def init_normal(m: nn.Module, std: float = 0.02) -> None:
    """GPT-2 style initialisation of linear and embedding layers."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=std)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)


class SeqModel(nn.Module):
    """embed (+ condition prefix) -> backbone -> head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = self.config = config
        if c.backbone not in BACKBONES:
            raise ValueError(
                f"unknown backbone {c.backbone!r}; expected one of {sorted(BACKBONES)}"
            )
        if not c.vocab_size and not c.d_input:
            raise ValueError("ModelConfig needs vocab_size (discrete) or d_input (continuous)")
        d = c.d_model
        self.n_cond = c.n_cond_tokens if c.d_cond else 0
        if c.d_input and c.vocab_size:
            self.proj_in = nn.Linear(c.d_input, d)
            self.head = nn.Linear(d, c.vocab_size, bias=False)
        elif c.d_input:
            self.proj_in = nn.Linear(c.d_input, d)
            self.head = nn.Linear(d, c.d_input)
        else:
            self.embed = nn.Embedding(c.vocab_size, d)
            self.head = nn.Linear(d, c.vocab_size, bias=False)
            if c.tie_embeddings:
                self.head.weight = self.embed.weight
        self.mask_embed = nn.Parameter(torch.zeros(d))
        if c.d_cond:
            self.cond_proj = nn.Linear(c.d_cond, self.n_cond * d)
            if c.cond_dropout > 0:
                self.null_cond = nn.Parameter(torch.zeros(self.n_cond, d))
        if c.scale_sizes:
            sizes = torch.tensor([int(n) for n in c.scale_sizes])
            self.scale_embed = nn.Embedding(len(sizes), d)
            level = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
            self.register_buffer("level", level, persistent=False)
        self.backbone = BACKBONES[c.backbone](
            d_model=d,
            n_layers=c.n_layers,
            n_heads=c.n_heads,
            max_len=c.max_len + self.n_cond,
            dropout=c.dropout,
            **c.backbone_args,
        )
        # Only the model's own layers: a backbone initialises itself (Mamba's dt_proj
        # and A_log have initialisations of their own).
        for name, m in self.named_children():
            if name != "backbone":
                m.apply(init_normal)

    @property
    def discrete(self) -> bool:
        """Discrete targets (cross-entropy over vocab_size), whatever the inputs."""
        return bool(self.config.vocab_size) or not self.config.d_input

    def embed_inputs(
        self, ids=None, x=None, blank=None, cond=None, drop_cond=None, start: int = 0
    ) -> torch.Tensor:
        """Token embeddings (blanks replaced by the mask embedding; plus the scale
        embedding of sequence positions start.. when the model has scales), with the
        condition prefix in front when `cond` is given; rows where `drop_cond` (B,) is
        True get the learned null condition instead."""
        h = self.embed(ids) if x is None else self.proj_in(x)
        if blank is not None:
            h = torch.where(blank.unsqueeze(-1), self.mask_embed.to(h.dtype), h)
        if self.config.scale_sizes:
            end = start + h.shape[1]
            if end > len(self.level):
                raise ValueError(f"{end} positions, but the scales hold {len(self.level)}")
            h = h + self.scale_embed(self.level[start:end]).to(h.dtype)
        if cond is not None:
            prefix = self.cond_proj(cond.to(h.dtype)).view(h.shape[0], self.n_cond, -1)
            if drop_cond is not None:
                if not hasattr(self, "null_cond"):
                    raise ValueError(
                        "this model has no null condition (train with cond_dropout > 0)"
                    )
                null = self.null_cond.to(h.dtype)[None]
                prefix = torch.where(drop_cond.view(-1, 1, 1).to(h.device), null, prefix)
            h = torch.cat([prefix, h], dim=1)
        return h

    def hidden(
        self, ids=None, x=None, cond=None, mask="causal", blank=None, cache=None, drop_cond=None
    ):
        """Backbone states (B, L, d_model) for the sequence positions (condition prefix
        dropped). With a cache, the condition prefix goes in on the first call only, and
        `mask` covers the sequence positions so far (it is shifted past the prefix on
        every call, since the cache holds the prefix)."""
        n = self.n_cond if cache is None or cache.pos == 0 else 0
        if n and cond is None:
            raise ValueError("this model is conditioned: pass cond (B, d_cond)")
        if cond is not None and not self.n_cond:
            raise ValueError("this model takes no condition (d_cond is 0), but cond was given")
        start = cache.pos - self.n_cond if cache is not None and cache.pos else 0
        h = self.embed_inputs(ids, x, blank, cond if n else None, drop_cond, start)
        out = self.backbone(h, AttentionSpec.of(mask).with_prefix(self.n_cond), cache)
        return out[:, n:]

    def forward(
        self, ids=None, x=None, cond=None, mask="causal", blank=None, cache=None, drop_cond=None
    ):
        """Logits (B, L, V) for discrete targets, regressed tokens (B, L, D) for continuous.
        drop_cond (B,) bool: rows that take the null condition (guidance, cond dropout)."""
        return self.head(self.hidden(ids, x, cond, mask, blank, cache, drop_cond))

    def has_decode_step(self) -> bool:
        """Whether `decode_step` applies: token inputs, no scale embeddings (they depend on
        the position), and a backbone with a static step (the transformer)."""
        c = self.config
        return not c.d_input and not c.scale_sizes and hasattr(self.backbone, "decode_step")

    def decode_step(self, ids: torch.Tensor, pos: torch.Tensor, cache) -> torch.Tensor:
        """fp32 logits (B, V) of one new token per row (ids (B, 1)) at cache position `pos`
        (a 0-d long tensor), after a prefill through `forward`; static shapes for
        `torch.compile` (see `Transformer.decode_step`). Does not advance cache.pos."""
        return self.head(self.backbone.decode_step(self.embed(ids), pos, cache))[:, -1].float()

    def new_cache(self, batch: int):
        """A decoding cache for `batch` rows, or None when the backbone has none."""
        if not getattr(self.backbone, "supports_cache", False):
            return None
        p = next(self.parameters())
        return self.backbone.new_cache(batch, p.device, p.dtype)

    def resize_vocab(self, n: int) -> None:
        """Grow (or shrink) the embedding and LM head to n rows, keeping existing rows."""
        old = self.embed.weight.data
        emb = nn.Embedding(n, old.shape[1]).to(old.device, old.dtype)
        nn.init.normal_(emb.weight, std=0.02)
        k = min(n, old.shape[0])
        emb.weight.data[:k] = old[:k]
        self.embed = emb
        old_head = self.head.weight.data
        self.head = nn.Linear(old.shape[1], n, bias=False).to(old.device, old.dtype)
        if self.config.tie_embeddings:
            self.head.weight = self.embed.weight
        else:
            nn.init.normal_(self.head.weight, std=0.02)
            self.head.weight.data[:k] = old_head[:k]
        self.config.vocab_size = n
