"""Class-conditional cross-scale AR over a trained PointTokenizer's ids (VAR / G3PT).

Inputs (teacher forcing) are VAR's: for level s, the cumulative code of levels < s
resampled to level s's tokens (`MultiScaleQuantizer.next_scale_inputs`, continuous, not
parent ids), plus a level embedding and a slot embedding (which learned query a token
came from: the slots are the tokenizer's queries, not a spatial or raster order). A class
token leads; attention is block-causal over levels (level s sees the class token and
levels <= s); targets are the ids of level s. Generation samples all tokens of a level in
parallel, level by level, with classifier-free guidance: the class is dropped to a null
class with probability `cond_dropout` in training, and at sampling
logits = uncond + guidance * (cond - uncond).

The tokenizer is loaded from its checkpoint, frozen, and kept inside this module, so an
AR checkpoint alone generates point clouds. Training data: the core TokenizedDataModule
over `PointTokenSource` (tokens and next-scale inputs encoded once, cached), or raw
clouds (encoded per batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.blocks import SelfAttentionStack
from seqmodels.sampling import top_k_filter, top_p_filter
from seqmodels.training import _Optimised

from .tokenizer import PointTokenizer, block_causal, level_ids


def load_ar(path: str) -> CrossScaleAR:
    """A trained CrossScaleAR (its tokenizer comes from the checkpoint's own weights)."""
    from seqmodels.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    hp = dict(ckpt["hyper_parameters"])
    ar = CrossScaleAR(**{**hp, "tokenizer": None}, tokenizer_hparams=ckpt["tokenizer_hparams"])
    ar.load_state_dict(ckpt["state_dict"])
    return ar.eval()


def load_tokenizer(path: str) -> PointTokenizer:
    from seqmodels.checkpoint import load_module

    tok = load_module(path)
    if not isinstance(tok, PointTokenizer):
        raise ValueError(f"{path}: a {type(tok).__name__}, not a PointTokenizer checkpoint")
    return tok


class CrossScaleAR(_Optimised):
    def __init__(
        self,
        tokenizer: str,
        class_names: list[str] = ("shape",),
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        cond_dropout: float = 0.1,
        dropout: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 50,
        max_steps: int = 1000,
        min_lr_ratio: float = 0.1,
        seed: int = 0,
        tokenizer_hparams: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer_hparams"])
        # From a tokenizer checkpoint when training; from the AR checkpoint's own copy of
        # the tokenizer's hyperparameters (weights in its state dict) when loading.
        if tokenizer_hparams is not None:
            self.tok = PointTokenizer(**tokenizer_hparams).eval()
        else:
            self.tok = load_tokenizer(tokenizer)
        self.tok.requires_grad_(False)
        sizes = self.tok.sizes
        L, d = sum(sizes), d_model
        self.proj_in = nn.Linear(self.tok.quantizer.dim, d)
        self.level_embed = nn.Embedding(len(sizes), d)
        self.slot_embed = nn.Parameter(torch.randn(L, d) * 0.02)
        self.classes = list(class_names)
        self.class_embed = nn.Embedding(len(self.classes) + 1, d)  # the last row is the null class
        self.backbone = SelfAttentionStack(d, n_heads, n_layers, L + 1, dropout=dropout)
        self.norm = nn.RMSNorm(d)
        self.head = nn.Linear(d, self.tok.codebook_size)
        self.mask = block_causal(sizes, prefix=1)
        self.register_buffer("levels", level_ids(sizes), persistent=False)
        self.gen = torch.Generator().manual_seed(seed)

    def resume_generators(self) -> dict[str, torch.Generator]:
        return {"ar": self.gen}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["tokenizer_hparams"] = dict(self.tok.hparams)

    def train(self, mode: bool = True):
        super().train(mode)
        self.tok.eval()  # frozen: never in training mode
        return self

    def param_groups(self) -> list[dict]:
        groups = super().param_groups()
        for g in groups:
            g["params"] = [p for p in g["params"] if p.requires_grad]
        return groups

    @property
    def null_class(self) -> int:
        return len(self.classes)

    def logits(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits (B, L', V) for the first L' positions given their inputs (B, L', dim)."""
        n = inputs.shape[1]
        h = self.proj_in(inputs) + self.level_embed(self.levels[:n]) + self.slot_embed[:n]
        h = torch.cat([self.class_embed(labels)[:, None], h], dim=1)
        allowed = self.mask.allowed[: n + 1, : n + 1]
        h = self.backbone(h, type(self.mask)("custom", allowed=allowed))
        return self.head(self.norm(h[:, 1:]))

    def _loss(self, batch: dict, split: str) -> torch.Tensor:
        if "ids" in batch:  # from the core TokenizedDataModule: encoded once, cached
            ids, inputs = batch["ids"], batch["x"]
        else:  # raw clouds: encode on the fly
            ids = self.tok.encode(batch["points"])
            inputs = self.tok.quantizer.next_scale_inputs(ids)
        labels = batch["label"].long()
        if split == "train" and self.hparams.cond_dropout > 0:
            drop = torch.rand(len(labels), generator=self.gen) < self.hparams.cond_dropout
            labels = torch.where(drop.to(labels.device), self.null_class, labels)
        logits = self.logits(inputs, labels)
        loss = F.cross_entropy(logits.flatten(0, 1), ids.flatten())
        self.log(f"{split}/loss", loss, prog_bar=True, batch_size=len(ids))
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._loss(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._loss(batch, "val")

    @torch.no_grad()
    def generate(
        self,
        labels: torch.Tensor,
        guidance: float = 1.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Token ids (B, sum(scales)) for class ids `labels` (B,), level by level, all
        tokens of a level in parallel. guidance 1 = conditional, 0 = unconditional."""
        q, sizes = self.tok.quantizer, self.tok.sizes
        B = len(labels)
        labels = labels.long().to(self.device)
        null = torch.full_like(labels, self.null_class)
        ids = torch.zeros(B, 0, dtype=torch.long, device=self.device)
        inputs = torch.zeros(B, sizes[0], q.dim, device=self.device)
        for s, n in enumerate(sizes):
            if s > 0:
                inputs = torch.cat([inputs, q.next_scale_input(ids)], dim=1)
            if guidance == 1.0:
                logit = self.logits(inputs, labels)[:, -n:]
            else:
                both = self.logits(torch.cat([inputs, inputs]), torch.cat([labels, null]))[:, -n:]
                cond, uncond = both.chunk(2)
                logit = uncond + guidance * (cond - uncond)
            logit = top_p_filter(top_k_filter(logit / max(temperature, 1e-6), top_k), top_p)
            probs = logit.softmax(-1).flatten(0, 1)
            # drawn on the CPU: the generator is a CPU one, the draws device-independent
            new = torch.multinomial(probs.float().cpu(), 1, generator=generator)
            new = new.view(B, n).to(self.device)
            ids = torch.cat([ids, new], dim=1)
        return ids
