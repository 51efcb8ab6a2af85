"""Issue 13's fixes: bad labels, 2-D images, HDF5 keys, long-range offsets, the skimage
merge honouring its threshold, scoring functions, the threshold baseline, norm-pix."""

import numpy as np
import pytest
import torch

from domains.em.pretrain import baselines, norm_pix
from domains.em.segmentation import (
    LONG_RANGE,
    OFFSETS,
    affinities,
    check_offsets,
    threshold_segmentation,
    tune_threshold_baseline,
    watershed,
)
from domains.em.volume import VolumeError, check_volume, load_labels, read_array


def _tif(path, arr):
    import tifffile

    tifffile.imwrite(path, arr, photometric="minisblack")
    return path


def test_negative_and_overflowing_label_ids(tmp_path):
    lab = np.ones((2, 4, 4), dtype=np.int32)
    lab[1, 2, 3] = -5
    with pytest.raises(VolumeError, match=r"negative label id -5 at \(z=1, y=2, x=3\)"):
        load_labels(_tif(tmp_path / "neg.tif", lab), lab.shape)
    big = np.ones((2, 4, 4), dtype=np.uint64)
    big[0, 0, 0] = np.uint64(2**63 + 7)
    np.save(tmp_path / "big.npy", big)
    with pytest.raises(VolumeError, match="does not fit int64"):
        load_labels(tmp_path / "big.npy", big.shape)
    ok = load_labels(_tif(tmp_path / "ok.tif", np.ones((2, 4, 4), np.uint16)), (2, 4, 4))
    assert ok.dtype == np.int64


def test_2d_image_is_refused():
    with pytest.raises(VolumeError, match=r"img.png: a 2D image \(4, 5\)"):
        check_volume(np.zeros((4, 5)), "img.png")
    assert check_volume(np.zeros((1, 4, 5))).shape == (1, 4, 5)


def test_hdf5_group_key_and_nested_dataset(tmp_path):
    import h5py

    vol = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "nested.h5"
    with h5py.File(p, "w") as f:
        f["volumes/raw"] = vol
    np.testing.assert_array_equal(read_array(p), vol)  # the only dataset, though nested
    with pytest.raises(VolumeError, match="'volumes' is a group, not a dataset"):
        read_array(p, "volumes")
    with h5py.File(p, "a") as f:
        f["volumes/labels/ids"] = vol
    with pytest.raises(VolumeError, match=r"volumes/labels/ids.*volumes/raw"):
        read_array(p)


def test_long_range_offsets():
    lab = np.zeros((1, 1, 30), dtype=np.int64)
    lab[0, 0, :20] = 1
    lab[0, 0, 20:] = 2
    offs = check_offsets([*OFFSETS, *LONG_RANGE])
    aff, valid = affinities(lab, offs)
    c = offs.index((0, 0, 9))
    assert not valid[c, 0, 0, :9].any() and valid[c, 0, 0, 9:].all()
    np.testing.assert_array_equal(aff[c, 0, 0, 9:20], 1)  # both ends in cell 1
    np.testing.assert_array_equal(aff[c, 0, 0, 20:29], 0)  # v - 9 in cell 1, v in 2
    with pytest.raises(ValueError, match="must start with"):
        check_offsets([(0, 1, 0), (1, 0, 0), (0, 0, 1)])


def _two_cells():
    """Two 2-D cells split by a line of weak (0.6) affinity, cut in four by seeds."""
    aff = np.ones((3, 1, 20, 20), dtype=np.float32)
    aff[0] = 0
    aff[1:, 0, :, 10] = 0.6  # a weak boundary between the two halves
    aff[1:, 0, 10, :] = 0.05  # a strong one across
    return aff


def test_skimage_merge_uses_threshold():
    aff = _two_cells()
    low = watershed(aff, threshold=0.5, per_section=True, method="skimage", seed_threshold=0.9)
    high = watershed(aff, threshold=0.7, per_section=True, method="skimage", seed_threshold=0.9)
    assert len(np.unique(low)) < len(np.unique(high))  # 0.6 boundary merged only below 0.6


def test_waterz_scoring_median():
    pytest.importorskip("waterz")
    aff = _two_cells()
    for scoring in ("mean", "median", "quantile:75"):
        seg = watershed(aff, 0.5, True, "waterz", 0.9, scoring=scoring)
        assert seg.shape == (1, 20, 20) and seg.min() >= 1
    with pytest.raises(ValueError, match="unknown scoring"):
        watershed(aff, 0.5, True, "waterz", 0.9, scoring="max")


def test_threshold_baseline_finds_dark_membranes():
    lab = np.zeros((2, 16, 16), dtype=np.int64)
    lab[:, :, :7], lab[:, :, 8:] = 1, 2
    lab[1][lab[1] > 0] += 2
    raw = np.where(lab > 0, 0.8, 0.1).astype(np.float32)
    best = tune_threshold_baseline(raw, lab, per_section=True)
    assert 0.1 <= best["threshold"] < 0.8 and best["voi"] == pytest.approx(0, abs=1e-9)
    assert len(np.unique(threshold_segmentation(raw, 0.5, True))) == 5  # 4 cells + 0


def test_norm_pix_and_baselines():
    t = torch.rand(2, 5, 16) * 3 + 1
    n = norm_pix(t)
    assert torch.allclose(n.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(n.var(-1, unbiased=False), torch.ones(2, 5), atol=1e-3)
    b = baselines(t, torch.ones(2, 5))
    assert b["baseline_patch_mean"] < b["baseline_global_mean"]
    b = baselines(n, torch.ones(2, 5))
    assert b["baseline_patch_mean"] == pytest.approx(1.0, abs=1e-3)


def test_center_pix_target_reaches_the_loss(monkeypatch):
    from domains.em.pretrain import EMPretrainLM, center_pix
    from seqmodels.objectives import ObjectiveOutput
    from seqmodels.training import SeqLM

    t = torch.rand(2, 5, 16) * 3 + 1
    c = center_pix(t)
    assert torch.allclose(c.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(c.var(-1), t.var(-1), atol=1e-4)  # spread kept, unlike norm-pix
    seen = []
    monkeypatch.setattr(SeqLM, "part_loss", lambda self, out: seen.append(out.targets) or 0.0)
    out = ObjectiveOutput("random_token", t, None, None, t, torch.ones(2, 5))
    for kw, want in (({"center_pix": True}, c), ({"norm_pix": True}, norm_pix(t)), ({}, t)):
        EMPretrainLM(d_model=16, n_layers=1, n_heads=2, max_len=8, **kw).part_loss(out)
        assert torch.allclose(seen[-1], want, atol=1e-5)
    with pytest.raises(ValueError, match="choose one target"):
        EMPretrainLM(norm_pix=True, center_pix=True)


def test_summary_and_curve(tmp_path):
    import argparse
    import json

    from domains.em.cli import cmd_curve, summarise

    runs = [{"seed": s, "voi": v, "voi_split": v / 2, "voi_merge": v / 2, "arand": 0.1,
             "baseline_voi": 2.0, "baseline_arand": 0.3} for s, v in ((0, 1.0), (1, 2.0))]  # fmt: skip
    m = summarise(runs)
    assert m["voi"] == pytest.approx(1.5) and m["voi_sd"] == pytest.approx(np.std([1, 2], ddof=1))
    for arm, n, v in (("scratch", 2, 1.5), ("mixture", 2, 1.2), ("scratch", 4, 1.1)):
        d = tmp_path / f"{arm}{n}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"voi": v, "voi_sd": 0.1, "baseline_voi": 2}))
    items = [
        f"{a}:{n}={tmp_path / f'{a}{n}'}"
        for a, n in (("scratch", 2), ("mixture", 2), ("scratch", 4))
    ]
    out = cmd_curve(argparse.Namespace(runs=items, out=str(tmp_path / "c")))
    assert out == {"voi_scratch_2": 1.5, "voi_scratch_4": 1.1, "voi_mixture_2": 1.2}
    assert (tmp_path / "c" / "label_efficiency.png").stat().st_size > 1000
    assert "| 4 | 1.1000 +- 0.1000 |  |" in (tmp_path / "c" / "label_efficiency.md").read_text()
