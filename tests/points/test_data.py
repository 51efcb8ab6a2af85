"""Synthetic shapes, the committed ModelNet10 split, the datamodule."""

import numpy as np
import pytest
import torch

from domains.points.data import (
    PointCloudDataModule,
    _split_files,
    committed_split,
    load_source,
    validation_names,
)
from domains.points.synthetic import CLASSES, make_shapes
from seqmodels.paths import data_path


def test_synthetic_shapes_are_labelled_reproducible_and_normalised():
    a, b = make_shapes(2, 128, seed=3), make_shapes(2, 128, seed=3)
    assert [s.label for s in a] == list(CLASSES) * 2
    for s, t in zip(a, b):
        np.testing.assert_array_equal(s.points, t.points)
        assert np.abs(s.points).max() == pytest.approx(1.0, abs=1e-5)
    torus = a[CLASSES.index("torus")].points
    # a torus has a hole: no point near the centre axis at mid height
    assert (np.hypot(torus[:, 0], torus[:, 1]) > 0.2).all()


def test_synthetic_train_and_val_do_not_share_draws():
    tr, va = (
        load_source("synthetic", "train", n_synthetic=3, n_points=64),
        load_source("synthetic", "val", n_synthetic=3, n_points=64),
    )
    assert len(tr) == len(va) == 15
    assert not any(np.allclose(p, q) for p in tr.points for q in va.points)


def test_validation_names_follow_the_documented_rule():
    names = [f"chair_{i:04d}.pcd" for i in range(1, 890)]
    val = validation_names(names)
    order = np.random.default_rng(0).permutation(889)
    assert val == sorted(names[i] for i in order[:100])
    split = committed_split()
    assert split["chair"] == val
    assert len(split["monitor"]) == 100


def test_selection_split_is_carved_from_train_and_never_reads_validation():
    from pathlib import Path

    files = [Path(f"chair_{i:04d}.pcd") for i in range(1, 890)]
    val = set(committed_split()["chair"])
    parts = {s: _split_files(files, val, s) for s in ("train", "val", "fit", "select")}
    assert len(parts["select"]) == 100 and len(parts["val"]) == 100
    assert not {f.name for f in parts["select"]} & val
    assert not set(parts["fit"]) & set(parts["select"])
    assert sorted(parts["fit"] + parts["select"]) == parts["train"]
    assert _split_files(files, val, "select") == parts["select"]  # deterministic


@pytest.mark.skipif(
    data_path("points", "modelnet10_pcd") is None, reason="../shared/data/points absent"
)
def test_modelnet10_split_matches_the_committed_file():
    folder = data_path("points", "modelnet10_pcd", "monitor_train")
    names = [p.name for p in folder.glob("*.pcd")]
    assert validation_names(names) == committed_split()["monitor"]
    va = load_source("modelnet10", "val", ("monitor",), n_points=256)
    assert len(va) == 100 and va.points.shape == (100, 256, 3)


def test_datamodule_batches():
    dm = PointCloudDataModule("synthetic", n_points=64, n_synthetic=4, batch_size=5)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["points"].shape == (5, 64, 3) and batch["label"].shape == (5,)
    assert dm.n_classes == 5


def test_token_source_trains_on_the_splits_it_is_given():
    from domains.points.data import PointTokenSource

    dm = PointTokenSource("synthetic", n_points=32, n_synthetic=2, splits=("fit", "select"))
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.splits.items() if v} == {"train": 10, "val": 10}


def test_token_source_views_are_seeded_subsets_of_training_shapes_only():
    from domains.points.data import PointTokenSource

    def build(**kw):
        dm = PointTokenSource("synthetic", n_points=32, n_synthetic=2, classes=["sphere"], **kw)
        dm.setup("fit")
        return dm.splits

    plain, a, b = build(), build(views=3, view_points=8), build(views=3, view_points=8)
    assert (len(plain["train"]), len(a["train"]), len(a["val"])) == (2, 2 + 6, 2)
    for e, f in zip(a["train"], b["train"]):
        assert torch.equal(e["x"], f["x"])  # seeded
    cloud, view = a["train"][0]["x"], a["train"][2]["x"]
    assert view.shape == cloud.shape
    assert torch.equal(view[:8], view[8:16])  # one 8-point subset, tiled
    rows = {tuple(r) for r in cloud.tolist()}
    assert (
        all(tuple(r) in rows for r in view.tolist()) and len({tuple(r) for r in view.tolist()}) == 8
    )
    with pytest.raises(ValueError, match="view_points must divide"):
        build(views=1, view_points=7)
