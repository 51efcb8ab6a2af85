"""Tiny end-to-end: pretrain a Mamba SeqLM on synthetic patch tokens with the mixture,
finetune the affinity decoder from its checkpoint, segment, score."""

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from domains.em.data import EMDataModule, load_source
from domains.em.finetune import AffinityModel, train_affinities
from domains.em.pretrain import EMPretrainLM
from domains.em.segmentation import metrics, watershed
from domains.em.volume import VolumeError

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


def test_validation_crops_are_disjoint_from_training_crops():
    dm = EMDataModule(**SMALL, n_crops=20, batch_size=2, val_fraction=0.25)
    dm.setup("fit")
    em = load_source("synthetic", synthetic_shape=(16, 64, 64), synthetic_cells=8)
    assert len(dm.splits["val"]) == 5 and len(dm.splits["train"]) == 15
    # The augmentations flip / turn crops, so compare voxel multisets by row band: every
    # validation crop's voxels come from rows 32..63, every training crop's from 0..31.
    top, bottom = set(np.round(em.raw[:, :32], 6).ravel()), set(np.round(em.raw[:, 32:], 6).ravel())
    for split, band in (("val", bottom), ("train", top)):
        for e in dm.splits[split]:
            vox = set(np.round(e["x"].numpy(), 6).ravel())
            assert len(vox & band) > 0.99 * len(vox), split
    with pytest.raises(VolumeError, match="validation crops come from the last"):
        EMDataModule(**{**SMALL, "crop": (8, 48, 48)}, n_crops=20).setup("fit")


def test_several_section_ranges():
    dm = EMDataModule(**SMALL, sections=[[0, 8], [8, 16]], n_crops=6, val_fraction=0.0)
    dm.setup("fit")
    assert len(dm.splits["train"]) == 6
    with pytest.raises(VolumeError, match="outside the stack"):
        EMDataModule(**SMALL, sections=[[0, 8], [12, 40]], n_crops=2).setup("fit")


def _scratch(**kw):
    cfg = {
        "backbone": "mamba",
        "d_model": 16,
        "n_layers": 1,
        "backbone_args": {"bidirectional": True},
    }
    return AffinityModel(SMALL["crop"], SMALL["patch"], backbone_config=cfg, **kw)


def test_seeded_models_start_identical_and_crop_checked_early():
    pl.seed_everything(3)
    a = _scratch()
    pl.seed_everything(3)
    b = _scratch()
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    with pytest.raises(VolumeError, match="not a multiple of the patch"):
        AffinityModel((8, 30, 32), SMALL["patch"], backbone_config={"d_model": 16})


def test_no_weight_decay_on_norms_biases_a_log_and_d():
    m = _scratch(weight_decay=0.05)
    names = {id(p): n for n, p in m.named_parameters()}
    for g in m.param_groups():
        for p in g["params"]:
            n = names[id(p)]
            leaf = n.rsplit(".", 1)[-1]
            no_decay = p.dim() < 2 or leaf in ("A_log", "D") or "embed" in n
            assert (g["weight_decay"] == 0) == no_decay, n


@pytest.mark.slow
def test_pretrain_finetune_segment(tmp_path):
    pl.seed_everything(0)
    dm = EMDataModule(**SMALL, n_crops=16, batch_size=4)
    lm = EMPretrainLM(
        backbone="mamba",
        d_model=16,
        n_layers=1,
        max_len=8,
        warmup_steps=1,
        norm_pix=True,
        backbone_args={"bidirectional": True},
        objective={
            "name": "mixture",
            "mode": "sum",
            "components": [
                {"name": "random_token", "ratio": 0.6, "weight": 1},
                {"name": "next_all", "attention": "bidirectional", "weight": 1},
            ],
        },
    )
    trainer = pl.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        log_every_n_steps=1,
    )
    trainer.fit(lm, dm)
    logged = dict(trainer.callback_metrics)
    for name in ("random_token", "next_all"):  # each component's loss
        assert math.isfinite(float(logged[f"train/loss_{name}"]))
    logged.update(trainer.validate(lm, dm, verbose=False)[0])
    # norm-pix targets: both trivial predictors score about 1 beside the validation loss
    assert float(logged["val/baseline_patch_mean"]) == pytest.approx(1.0, abs=0.05)
    assert math.isfinite(float(logged["val/baseline_global_mean"]))
    ckpt = tmp_path / "lm.ckpt"
    trainer.save_checkpoint(ckpt)

    em = load_source("synthetic", synthetic_shape=(16, 64, 64), synthetic_cells=8)
    model = AffinityModel(
        SMALL["crop"], SMALL["patch"], pretrained=str(ckpt), max_steps=4, warmup_steps=1,
        freeze_fraction=0.5, backbone_lr=1e-4,
    )  # fmt: skip
    before = model.lm.backbone.layers[0].mixer.A_log.detach().clone()
    assert torch.equal(before, lm.model.backbone.layers[0].mixer.A_log.detach())  # loaded
    pl.seed_everything(5)
    pre = AffinityModel(SMALL["crop"], SMALL["patch"], pretrained=str(ckpt))
    pl.seed_everything(5)
    fresh = _scratch()
    for (n, p), (_, q) in zip(pre.heads.named_parameters(), fresh.heads.named_parameters()):
        assert torch.equal(p, q), n  # same seed, same fresh head, whatever the backbone
    train_affinities(model, em.raw[:8], em.labels[:8], steps=2, batch_size=2, out=tmp_path)
    # frozen for the first half of the 4 steps: the backbone has not moved yet
    assert torch.equal(before, model.lm.backbone.layers[0].mixer.A_log.detach())
    aff = model.predict_volume(em.raw[8:])
    assert aff.shape == (3, 8, 64, 64) and aff.min() >= 0 and aff.max() <= 1
    m = metrics(em.labels[8:], watershed(aff))
    assert all(np.isfinite(v) for v in m.values())


@pytest.mark.slow
def test_cli_sections_seeds_and_baseline(tmp_path):
    import argparse
    import json

    from domains.em.cli import cmd_evaluate, cmd_finetune, register
    from seqmodels.commands import CLIError

    root = argparse.ArgumentParser()
    register(root.add_subparsers())
    base = ["em", "finetune", "--source", "synthetic", "--synthetic-shape", "16", "64", "64",
            "--synthetic-cells", "8", "--crop", "8", "32", "32", "--steps", "2",
            "--backbone-config", '{"backbone": "mamba", "d_model": 16, "n_layers": 1}']  # fmt: skip
    with pytest.raises(CLIError, match="pass --train-sections and --test-sections"):
        cmd_finetune(root.parse_args([*base, "--out", str(tmp_path / "a")]))
    overlap = ["--train-sections", "0", "10", "--test-sections", "8", "16"]
    with pytest.raises(CLIError, match="overlap"):
        cmd_finetune(root.parse_args([*base, *overlap, "--out", str(tmp_path / "b")]))
    ok = ["--train-sections", "0", "8", "--test-sections", "8", "16", "--seeds", "0", "1"]
    m = cmd_finetune(
        root.parse_args([*base, *ok, "--method", "skimage", "--out", str(tmp_path / "c")])
    )
    assert m["n_seeds"] == 2 and m["voi_sd"] >= 0 and "baseline_voi" in m
    assert (tmp_path / "c" / "report.md").is_file()
    ckpt = tmp_path / "c" / "seed_1" / "affinity.ckpt"
    ev = ["em", "evaluate", "--source", "synthetic", "--synthetic-shape", "16", "64", "64",
          "--synthetic-cells", "8", "--model", str(ckpt), "--sections", "8", "16",
          "--method", "skimage", "--out", str(tmp_path / "e")]  # fmt: skip
    again = cmd_evaluate(root.parse_args(ev))
    first = json.loads((tmp_path / "c" / "seed_1" / "metrics.json").read_text())
    assert again["voi"] == pytest.approx(first["voi"])  # the checkpoint rebuilds the model
    assert again["baseline_voi"] == pytest.approx(first["baseline_voi"])
    with pytest.raises(CLIError, match="overlap"):
        cmd_evaluate(root.parse_args([*ev, "--tune-sections", "0", "10"]))


@pytest.mark.parametrize("config", ["pretrain_isbi_mixture.yaml"])  # sections as ranges
def test_pretraining_configs_parse(config):
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).parents[2] / "recipes" / "em" / config
    cmd = [sys.executable, "-m", "seqmodels", "fit", "--config", str(path), "--print_config"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "domains.em.pretrain.EMPretrainLM" in r.stdout
