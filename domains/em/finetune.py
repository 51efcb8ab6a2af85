"""Downstream segmentation: a light affinity decoder on a pretrained (or fresh) SeqLM
backbone, trained with class-balanced BCE; tiled inference; watershed; metrics.

Decoder: each token state -> `channels` features per voxel of its patch (a linear
unpatchify), concatenated with the raw crop, then Conv3d(`kernel`) + ReLU + Conv3d(1x1x1)
to 3 affinity logits. The raw input gives the decoder full resolution at the patch seams.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from seqmodels.checkpoint import load_checkpoint
from seqmodels.training import SeqLM

from .segmentation import affinities, balanced_weights
from .tokens import check_crop, crop_at, patchify, random_crop_origin, tiles, unpatchify


class AffinityModel(pl.LightningModule):
    def __init__(
        self,
        crop: list[int],
        patch: list[int],
        pretrained: str | None = None,
        backbone_config: dict | None = None,
        channels: int = 8,
        kernel: tuple[int, int, int] = (3, 3, 3),
        per_section: bool = False,
        lr: float = 1e-3,
        backbone_lr: float | None = None,
        weight_decay: float = 0.01,
        warmup_steps: int = 20,
        max_steps: int = 200,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.crop, self.patch = tuple(crop), tuple(patch)
        d_input = math.prod(self.patch)
        if pretrained:
            ckpt = load_checkpoint(pretrained)
            hp = SeqLM.hparams_for_load(ckpt)
            if hp.get("d_input") != d_input:
                raise ValueError(
                    f"{pretrained}: tokens of {hp.get('d_input')} voxels, "
                    f"but patch {self.patch} gives {d_input}"
                )
            self.lm = SeqLM(**hp)
            self.lm.load_state_dict(ckpt["state_dict"])
        else:
            self.lm = SeqLM(**{**(backbone_config or {}), "d_input": d_input})
        self.lm.hparams.init_from = None
        self.channels = channels
        d = self.lm.hparams.d_model
        self.unpatch = nn.Linear(d, channels * d_input)
        self.conv = nn.Conv3d(
            channels + 1, channels, tuple(kernel), padding=tuple(k // 2 for k in kernel)
        )
        self.out = nn.Conv3d(channels, 3, 1)

    def backbone_config(self) -> dict:
        """SeqLM arguments that rebuild this backbone (Lightning's saved hparams of a module
        built inside another module's __init__ also hold the outer module's arguments)."""
        keys = inspect.signature(SeqLM.__init__).parameters
        return {k: v for k, v in self.lm.hparams.items() if k in keys and k != "init_from"}

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        """raw (B, Z, Y, X) crop -> affinity logits (B, 3, Z, Y, X)."""
        b = raw.shape[0]
        tokens = patchify(raw, self.patch)
        h = self.lm.hidden(x=tokens, mask="bidirectional")
        f = self.unpatch(h).view(b, h.shape[1], self.channels, -1).transpose(1, 2)
        f = unpatchify(f, self.crop, self.patch)  # (B, C, Z, Y, X)
        f = torch.cat([f, raw[:, None]], dim=1)
        return self.out(F.relu(self.conv(f)))

    def training_step(self, batch, batch_idx):
        logits = self(batch["raw"])
        loss = F.binary_cross_entropy_with_logits(
            logits.float(), batch["aff"], weight=batch["weight"], reduction="sum"
        ) / batch["weight"].sum().clamp(min=1)
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        head = [p for n, p in self.named_parameters() if not n.startswith("lm.")]
        groups = [
            {"params": head, "lr": hp.lr},
            {"params": self.lm.parameters(), "lr": hp.backbone_lr or hp.lr},
        ]
        opt = torch.optim.AdamW(groups, weight_decay=hp.weight_decay)

        def factor(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            t = min(1.0, (step - hp.warmup_steps) / max(1, hp.max_steps - hp.warmup_steps))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @torch.no_grad()
    def predict_volume(
        self, raw: np.ndarray, batch_size: int = 4, overlap: tuple[int, int, int] | None = None
    ) -> np.ndarray:
        """Affinities (3, Z, Y, X) in [0, 1] for a whole volume: overlapping tiles, averaged
        with a weight that falls off towards each tile's border (seams)."""
        check_crop(raw.shape, self.crop, self.patch, "prediction volume")
        overlap = overlap or tuple(c // 4 if c < s else 0 for c, s in zip(self.crop, raw.shape))
        self.eval()
        acc = np.zeros((3, *raw.shape), dtype=np.float32)
        norm = np.zeros(raw.shape, dtype=np.float32)
        win = _window(self.crop)
        origins = tiles(raw.shape, self.crop, overlap)
        dev = next(self.parameters()).device
        for s in range(0, len(origins), batch_size):
            group = origins[s : s + batch_size]
            x = torch.from_numpy(np.stack([crop_at(raw, o, self.crop) for o in group]))
            p = torch.sigmoid(self(x.float().to(dev))).cpu().numpy()
            for o, pi in zip(group, p):
                sl = tuple(slice(a, a + c) for a, c in zip(o, self.crop))
                acc[(slice(None), *sl)] += pi * win
                norm[sl] += win
        return acc / norm


def _window(crop) -> np.ndarray:
    ws = [np.minimum(np.arange(1, c + 1), np.arange(c, 0, -1)).astype(np.float32) for c in crop]
    ws = [np.minimum(w, max(1.0, c / 4)) for w, c in zip(ws, crop)]
    return ws[0][:, None, None] * ws[1][None, :, None] * ws[2][None, None, :]


class CropDataset(Dataset):
    """Random augmented crops with affinity targets and balanced BCE weights; the crop of
    item i is drawn from (seed, i), so epochs and reruns are reproducible."""

    def __init__(
        self,
        raw: np.ndarray,
        labels: np.ndarray,
        crop,
        per_section: bool,
        length: int,
        seed: int = 0,
    ):
        check_crop(raw.shape, crop, (1, 1, 1), "finetuning volume")
        if labels.shape != raw.shape:
            raise ValueError(f"labels {labels.shape} and raw {raw.shape} differ in shape")
        self.raw, self.labels, self.crop = raw, labels, tuple(crop)
        self.per_section, self.length, self.seed = per_section, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, i])
        o = random_crop_origin(self.raw.shape, self.crop, rng)
        r, lab = crop_at(self.raw, o, self.crop), crop_at(self.labels, o, self.crop)
        square = self.crop[1] == self.crop[2]  # 90-degree turns would change the shape
        k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
        fy, fx = rng.random() < 0.5, rng.random() < 0.5
        r, lab = (_flip_rot(a, k, fy, fx) for a in (r, lab))
        aff, valid = affinities(lab)
        if self.per_section:
            valid[0] = False  # instances are per section: no z-affinity ground truth
        w = balanced_weights(aff, valid)
        return {
            "raw": torch.from_numpy(r.astype(np.float32)),
            "aff": torch.from_numpy(aff),
            "weight": torch.from_numpy(w),
        }


def _flip_rot(a: np.ndarray, k: int, fy: bool, fx: bool) -> np.ndarray:
    a = a[:, ::-1] if fy else a
    a = a[:, :, ::-1] if fx else a
    return np.ascontiguousarray(np.rot90(a, k, axes=(1, 2)))


def train_affinities(
    model: AffinityModel,
    raw: np.ndarray,
    labels: np.ndarray,
    steps: int,
    batch_size: int,
    out: Path,
    seed: int = 0,
) -> AffinityModel:
    """Fit for exactly `steps` optimiser steps (the equal finetuning budget)."""
    pl.seed_everything(seed, workers=True)
    ds = CropDataset(raw, labels, model.crop, model.hparams.per_section, steps * batch_size, seed)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False)
    trainer = pl.Trainer(
        max_steps=steps,
        max_epochs=1,
        default_root_dir=str(out),
        accelerator="auto",
        devices=1,
        logger=pl.loggers.CSVLogger(str(out)),
        enable_checkpointing=False,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, loader)
    return model
