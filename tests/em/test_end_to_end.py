"""Tiny end-to-end: pretrain a Mamba SeqLM on synthetic patch tokens with the mixture,
finetune the affinity decoder from its checkpoint, segment, score."""

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from domains.em.data import EMDataModule, load_source
from domains.em.finetune import AffinityModel, train_affinities
from domains.em.segmentation import metrics, watershed
from domains.em.volume import VolumeError
from seqmodels.training import SeqLM

SMALL = {
    "source": "synthetic",
    "synthetic_shape": (16, 64, 64),
    "synthetic_cells": 8,
    "crop": (8, 32, 32),
    "patch": (4, 16, 16),
}


def test_datamodule_continuous_and_discrete():
    dm = EMDataModule(**SMALL, n_crops=6, batch_size=2)
    dm.setup("fit")
    assert dm.d_input == 4 * 16 * 16
    x = dm.splits["train"][0]["x"]
    assert x.shape == (8, 1024) and x.dtype == torch.float32
    dq = EMDataModule(**SMALL, n_crops=6, levels=16, batch_size=2)
    dq.setup("fit")
    ids = dq.splits["train"][0]["ids"]
    assert len(ids) == 8 and all(dq.vocab.id_to_token(i).startswith("q") for i in ids)


def test_rectangular_crops_keep_their_shape_under_augmentation():
    dm = EMDataModule(**{**SMALL, "crop": (8, 16, 48)}, n_crops=12, batch_size=2)
    dm.setup("fit")
    assert {tuple(e["x"].shape) for s in dm.splits.values() for e in s} == {(6, 1024)}


def test_datamodule_bad_crop_and_sections():
    with pytest.raises(VolumeError, match="larger than the volume"):
        EMDataModule(**{**SMALL, "crop": (32, 32, 32)}, n_crops=2).setup("fit")
    with pytest.raises(VolumeError, match="outside the stack"):
        EMDataModule(**SMALL, sections=[10, 40], n_crops=2).setup("fit")


@pytest.mark.slow
def test_pretrain_finetune_segment(tmp_path):
    pl.seed_everything(0)
    dm = EMDataModule(**SMALL, n_crops=16, batch_size=4)
    lm = SeqLM(
        backbone="mamba",
        d_model=16,
        n_layers=1,
        max_len=8,
        warmup_steps=1,
        objective={
            "name": "mixture",
            "mode": "sum",
            "components": {"random_token": 1, "next_token": 1, "next_all": 1},
        },
    )
    trainer = pl.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        limit_val_batches=0,
        log_every_n_steps=1,
    )
    trainer.fit(lm, dm)
    logged = trainer.callback_metrics
    for name in ("random_token", "next_token", "next_all"):  # each component's loss
        assert math.isfinite(float(logged[f"train/loss_{name}"]))
    ckpt = tmp_path / "lm.ckpt"
    trainer.save_checkpoint(ckpt)

    em = load_source("synthetic", synthetic_shape=(16, 64, 64), synthetic_cells=8)
    model = AffinityModel(
        SMALL["crop"], SMALL["patch"], pretrained=str(ckpt), max_steps=3, warmup_steps=1
    )
    before = model.lm.backbone.layers[0].mixer.A_log.detach().clone()
    assert torch.equal(before, lm.backbone.layers[0].mixer.A_log.detach())  # weights loaded
    train_affinities(model, em.raw[:8], em.labels[:8], steps=3, batch_size=2, out=tmp_path)
    aff = model.predict_volume(em.raw[8:])
    assert aff.shape == (3, 8, 64, 64) and aff.min() >= 0 and aff.max() <= 1
    m = metrics(em.labels[8:], watershed(aff))
    assert all(np.isfinite(v) for v in m.values())
