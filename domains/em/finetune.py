"""Downstream segmentation: the core `FinetuneModule` with a dense affinity head on a
pretrained (or fresh) backbone, trained with class-balanced BCE; tiled inference.

Head (`AffinityHead`): each token state -> `channels` features per voxel of its patch (a
linear unpatchify), concatenated with the raw crop, then Conv3d(`kernel`) + ReLU +
Conv3d(1x1x1) to one affinity logit per offset. The raw input gives the head full
resolution at the patch seams. The core module supplies what finetuning needs to keep
what pretraining learned: backbone_lr, freeze_fraction (backbone frozen for the first
part of training), layer_lr_decay, and exact resume; the EM module only adds the
parameter grouping mamba-ssm uses (no weight decay on A_log and D either).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from torch.utils.data import DataLoader, Dataset

from seqmodels.training import FinetuneModule

from .pretrain import load_backbone
from .segmentation import OFFSETS, affinities, balanced_weights, check_offsets
from .tokens import check_crop, crop_at, patchify, random_crop_origin, tiles, unpatchify
from .volume import VolumeError

AUGMENTS = ("flip", "intensity", "elastic", "missing")


class AffinityHead(nn.Module):
    """Token states (B, L, d) and the batch's raw crop -> affinity logits (B, C, Z, Y, X)."""

    def __init__(
        self,
        d_model: int,
        n_outputs: int,
        crop: list[int],
        patch: list[int],
        channels: int = 4,
        kernel: list[int] = (3, 3, 3),
    ):
        super().__init__()
        self.crop, self.patch, self.channels = tuple(crop), tuple(patch), channels
        self.unpatch = nn.Linear(d_model, channels * math.prod(self.patch))
        pad = tuple(k // 2 for k in kernel)
        self.conv = nn.Conv3d(channels + 1, channels, tuple(kernel), padding=pad)
        self.out = nn.Conv3d(channels, n_outputs, 1)

    def forward(self, h: torch.Tensor, batch: dict) -> torch.Tensor:
        b, n = h.shape[:2]
        f = self.unpatch(h).view(b, n, self.channels, -1).transpose(1, 2)
        f = unpatchify(f, self.crop, self.patch)  # (B, C, Z, Y, X)
        f = torch.cat([f, batch["raw"][:, None].to(f.dtype)], dim=1)
        # GELU, not ReLU: with a few channels a ReLU head can fall silent on interiors
        # (every unit off), capping the affinity there at sigmoid(bias)
        return self.out(F.gelu(self.conv(f)))


class AffinityModel(FinetuneModule):
    """FinetuneModule with one dense_binary task: affinities for `offsets` of the crop.
    Extra keyword arguments are FinetuneModule's (pretrained, backbone_config, lr,
    backbone_lr, freeze_fraction, layer_lr_decay, weight_decay, warmup_steps, max_steps)."""

    def __init__(
        self,
        crop: list[int],
        patch: list[int],
        offsets=OFFSETS,
        channels: int = 4,
        kernel: list[int] = (3, 3, 3),
        per_section: bool = False,
        **finetune,
    ):
        # The head draws from its own stream, seeded from the caller's seeded state before
        # the backbone (loaded or fresh) draws anything: at one seed every arm gets the
        # same fresh head, independent of the scratch backbone's weights.
        object.__setattr__(self, "_head_seed", int(torch.randint(2**62, (1,))))
        crop, patch = tuple(int(c) for c in crop), tuple(int(p) for p in patch)
        check_crop(crop, crop, patch, "affinity model")  # a multiple of the patch, now
        offsets = check_offsets(offsets)
        d_input = math.prod(patch)
        pretrained = finetune.pop("pretrained", None)
        backbone = None
        if pretrained:  # loaded here: the core loader refuses EMPretrainLM checkpoints
            backbone = load_backbone(pretrained)
            finetune["backbone_config"] = backbone.config.to_dict()
        elif finetune.get("backbone_config") is not None:
            finetune["backbone_config"] = {**finetune["backbone_config"], "d_input": d_input}
        spec = {
            "class_path": f"{__name__}.AffinityHead",
            "init_args": {"crop": list(crop), "patch": list(patch), "channels": channels,
                          "kernel": [int(k) for k in kernel]},
        }  # fmt: skip
        task = {"name": "affinity", "kind": "dense_binary", "n_outputs": len(offsets)}
        finetune.setdefault("attention", "bidirectional")
        super().__init__(tasks=[{**task, "head": spec}], **finetune)
        if self.lm is None:
            raise ValueError("affinity model: pass pretrained or backbone_config")
        if backbone is not None and self.lm.config.d_input == d_input:
            self.lm.load_state_dict(backbone.state_dict())
        if self.lm.config.d_input != d_input:
            raise VolumeError(
                f"{pretrained}: tokens of {self.lm.config.d_input} voxels, "
                f"but patch {patch} gives {d_input}"
            )
        self.crop, self.patch, self.offsets = crop, patch, offsets
        self.per_section = per_section
        self.rebuild_args = {
            "crop": list(crop), "patch": list(patch), "offsets": [list(o) for o in offsets],
            "channels": channels, "kernel": [int(k) for k in kernel],
            "per_section": per_section,
            **{k: v for k, v in finetune.items() if k != "backbone_config"},
        }  # fmt: skip
        self.pretrained = pretrained

    def _build_heads(self) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._head_seed)
            super()._build_heads()

    def checkpoint(self) -> dict:
        """What `load_affinity_model` needs: weights and arguments, no pretrained path."""
        args = {**self.rebuild_args, "backbone_config": self.lm.config.to_dict()}
        return {"state_dict": self.state_dict(), "affinity_args": args}

    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        """raw (B, Z, Y, X) crop -> affinity logits (B, C, Z, Y, X)."""
        batch = {"x": patchify(raw, self.patch), "raw": raw}
        return self(batch)["affinity"][1]

    @torch.no_grad()
    def predict_volume(
        self, raw: np.ndarray, batch_size: int = 4, overlap: tuple[int, int, int] | None = None
    ) -> np.ndarray:
        """Affinities (C, Z, Y, X) in [0, 1] (one per offset) for a whole volume: overlapping tiles, averaged
        with a weight that falls off towards each tile's border (seams)."""
        check_crop(raw.shape, self.crop, self.patch, "prediction volume")
        overlap = overlap or tuple(c // 4 if c < s else 0 for c, s in zip(self.crop, raw.shape))
        self.eval()
        acc = np.zeros((len(self.offsets), *raw.shape), dtype=np.float32)
        norm = np.zeros(raw.shape, dtype=np.float32)
        win = _window(self.crop)
        origins = tiles(raw.shape, self.crop, overlap)
        dev = next(self.parameters()).device
        for s in range(0, len(origins), batch_size):
            group = origins[s : s + batch_size]
            x = torch.from_numpy(np.stack([crop_at(raw, o, self.crop) for o in group]))
            p = torch.sigmoid(self.logits(x.float().to(dev))).float().cpu().numpy()
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
    """Random augmented crops with affinity targets and balanced BCE weights, as the core's
    dense_binary batches: x (tokens), raw, label (affinities), label_mask (weights). The
    crop of item i is drawn from (seed, i), so epochs and reruns are reproducible.

    augment (any of AUGMENTS): flip = flips and in-plane 90-degree turns; intensity =
    per-section contrast, brightness and gamma jitter; elastic = one smooth in-plane
    displacement field for the crop (labels nearest-neighbour); missing = one section of
    the raw blanked with probability 0.1 (the labels kept: infer it from its neighbours).
    """

    def __init__(
        self,
        raw: np.ndarray,
        labels: np.ndarray,
        crop,
        patch,
        per_section: bool,
        length: int,
        seed: int = 0,
        offsets=OFFSETS,
        augment=("flip", "intensity"),
    ):
        check_crop(raw.shape, crop, patch, "finetuning volume")
        if labels.shape != raw.shape:
            raise ValueError(f"labels {labels.shape} and raw {raw.shape} differ in shape")
        bad = set(augment) - set(AUGMENTS)
        if bad:
            raise ValueError(f"unknown augmentations {sorted(bad)}; choose from {AUGMENTS}")
        self.raw, self.labels, self.crop, self.patch = raw, labels, tuple(crop), tuple(patch)
        self.per_section, self.length, self.seed = per_section, length, seed
        self.offsets, self.augment = offsets, set(augment)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, i])
        o = random_crop_origin(self.raw.shape, self.crop, rng)
        r, lab = crop_at(self.raw, o, self.crop), crop_at(self.labels, o, self.crop)
        if "flip" in self.augment:
            square = self.crop[1] == self.crop[2]  # 90-degree turns would change the shape
            k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
            fy, fx = rng.random() < 0.5, rng.random() < 0.5
            r, lab = (_flip_rot(a, k, fy, fx) for a in (r, lab))
        if "elastic" in self.augment:
            r, lab = _elastic(r, lab, rng)
        r = r.astype(np.float32)
        if "intensity" in self.augment:
            r = _intensity(r, rng)
        if "missing" in self.augment and rng.random() < 0.1:
            r = r.copy()
            r[int(rng.integers(r.shape[0]))] = 0.0
        aff, valid = affinities(lab, self.offsets)
        if self.per_section:
            for c, off in enumerate(self.offsets):
                if off[0]:
                    valid[c] = False  # instances are per section: no z-affinity truth
        w = balanced_weights(aff, valid)
        raw_t = torch.from_numpy(np.ascontiguousarray(r))
        return {
            "x": patchify(raw_t, self.patch),
            "raw": raw_t,
            "label": torch.from_numpy(aff),
            "label_mask": torch.from_numpy(w),
        }


def _flip_rot(a: np.ndarray, k: int, fy: bool, fx: bool) -> np.ndarray:
    a = a[:, ::-1] if fy else a
    a = a[:, :, ::-1] if fx else a
    return np.ascontiguousarray(np.rot90(a, k, axes=(1, 2)))


def _intensity(r: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-section contrast x[0.9, 1.1], brightness +-0.1 and gamma 2**[-0.3, 0.3]
    (gunpowder's IntensityAugment, plus gamma), clipped to [0, 1]."""
    z = r.shape[0]
    scale = rng.uniform(0.9, 1.1, (z, 1, 1)).astype(np.float32)
    shift = rng.uniform(-0.1, 0.1, (z, 1, 1)).astype(np.float32)
    gamma = np.float32(2.0 ** rng.uniform(-0.3, 0.3))
    return np.clip(np.clip(r * scale + shift, 0, 1) ** gamma, 0, 1).astype(np.float32)


def _elastic(r: np.ndarray, lab: np.ndarray, rng: np.random.Generator, alpha=4.0, sigma=12.0):
    """A smooth random in-plane displacement (Gaussian-filtered noise, `alpha` pixels at
    most about, `sigma` pixels smooth), the same for every section of the crop."""
    _, y, x = r.shape
    d = [ndimage.gaussian_filter(rng.uniform(-1, 1, (y, x)), sigma) for _ in range(2)]
    d = [alpha * di / max(1e-6, float(np.abs(di).max())) for di in d]
    gy, gx = np.meshgrid(np.arange(y), np.arange(x), indexing="ij")
    coords = np.stack([gy + d[0], gx + d[1]])
    warp = [ndimage.map_coordinates(s, coords, order=1, mode="reflect") for s in r]
    wlab = [ndimage.map_coordinates(s, coords, order=0, mode="reflect") for s in lab]
    return np.stack(warp).astype(r.dtype), np.stack(wlab).astype(lab.dtype)


def train_affinities(
    model: AffinityModel,
    raw: np.ndarray,
    labels: np.ndarray,
    steps: int,
    batch_size: int,
    out: Path,
    seed: int = 0,
    augment=("flip", "intensity"),
) -> AffinityModel:
    """Fit for exactly `steps` optimiser steps (the equal finetuning budget). The caller
    seeds before building the model (`pl.seed_everything`), so arms differ only in what
    they are meant to differ in."""
    ds = CropDataset(
        raw, labels, model.crop, model.patch, model.per_section, steps * batch_size, seed,
        model.offsets, augment,
    )  # fmt: skip
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
        limit_val_batches=0,
    )
    trainer.fit(model, loader)
    return model
