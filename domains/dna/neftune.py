"""NEFTune (Jain et al. 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning"):
uniform noise on the input embeddings while finetuning, as Omni-DNA's SFT does (alpha 5).

The noise is Uniform(-1, 1) * alpha / sqrt(L * d) for a batch of length L and width d,
added in training mode only, so validation, test and inference see clean embeddings. It is
a Lightning callback that hooks the model's token embedding, so any SeqLM finetuning stage
can turn it on from its config (`trainer.callbacks`) without a change to the core.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch import nn


def find_token_embedding(module: nn.Module) -> nn.Embedding:
    """The module's token embedding: the nn.Embedding whose own name is `embed`."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Embedding) and name.rsplit(".", 1)[-1] == "embed":
            return sub
    raise ValueError(f"{type(module).__name__}: no token embedding named 'embed' to add noise to")


class NEFTune(pl.Callback):
    """Noisy input embeddings during training (alpha 5 as in Omni-DNA; 0 turns it off)."""

    def __init__(self, alpha: float = 5.0) -> None:
        if alpha < 0:
            raise ValueError(f"NEFTune alpha must be >= 0, got {alpha}")
        self.alpha = alpha
        self._handle = None

    def noise_hook(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        if not module.training or self.alpha == 0:
            return output
        length, dim = output.shape[-2], output.shape[-1]
        scale = self.alpha / math.sqrt(length * dim)
        return output + torch.empty_like(output).uniform_(-scale, scale)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # At train start, after init_from / vocabulary growth replaced the embedding.
        self._handle = find_token_embedding(pl_module).register_forward_hook(self.noise_hook)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
