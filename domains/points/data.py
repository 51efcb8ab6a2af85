"""Point-cloud sources, the fixed ModelNet10 validation split, and the datamodule.

A source is `synthetic` (parametric shapes made here, see synthetic.py), `modelnet10` (the
shared ModelNet10 surface clouds, ../shared/data/points/modelnet10_pcd/, 1,024 points per
official training mesh) or any file / folder the readers in io.py understand.

Validation split of ModelNet10 (fixed, seeded, committed in splits/modelnet10_val.json):
for each class, the file names sorted, permuted by numpy's default_rng(0), the first 100
held out: 100 chairs of 889 and 100 monitors of 465. Model selection never reads them:
it uses `select`, 100 further shapes per class carved out of the training shapes (their
names sorted, permuted by default_rng(1), the first 100; computed, not committed, since it
depends only on the committed split), with models trained on the rest (`fit`).
Synthetic data: the training shapes come from seed `seed`, validation from seed + 1,000,
so no parametric draw is shared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from seqmodels.data import TokenDataModule
from seqmodels.datasets import fetch_hint
from seqmodels.paths import data_path

from .io import read_shapes
from .synthetic import CLASSES as SYNTHETIC_CLASSES
from .synthetic import make_shapes

MODELNET_CLASSES = ("chair", "monitor")
SPLIT_FILE = Path(__file__).with_name("splits") / "modelnet10_val.json"
VAL_PER_CLASS = 100
SPLIT_SEED = 0
SELECT_SEED = 1
SPLITS = ("train", "val", "all", "fit", "select")


@dataclass
class PointSet:
    points: np.ndarray  # float32 (B, N, 3), shape_bbox-normalised
    labels: np.ndarray  # int64 (B,) index into `classes`
    classes: tuple[str, ...]
    names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def of_class(self, name: str) -> PointSet:
        keep = self.labels == self.classes.index(name)
        names = [n for n, k in zip(self.names, keep) if k]
        return PointSet(self.points[keep], self.labels[keep], self.classes, names)


def source_classes(source: str, classes=None) -> tuple[str, ...]:
    """The class names a source yields (given ones, or the source's defaults)."""
    if classes:
        return tuple(classes)
    return SYNTHETIC_CLASSES if source == "synthetic" else MODELNET_CLASSES


def modelnet10_folder(cls: str) -> Path:
    folder = data_path("points", "modelnet10_pcd", f"{cls}_train")
    if folder is None:
        raise FileNotFoundError(
            f"ModelNet10 clouds for {cls!r} not found under SEQMODELS_DATA or ../shared/data"
            f" (points/modelnet10_pcd/); {fetch_hint(f'points/modelnet10_pcd/{cls}_train')}"
        )
    return folder


def validation_names(names: list[str], n_val: int = VAL_PER_CLASS, seed: int = SPLIT_SEED):
    """The held-out file names of one class: sorted, permuted with `seed`, first n_val."""
    names = sorted(names)
    order = np.random.default_rng(seed).permutation(len(names))
    return sorted(names[i] for i in order[:n_val])


def committed_split() -> dict[str, list[str]]:
    return json.loads(SPLIT_FILE.read_text())


def _split_files(files: list[Path], val: set[str], split: str) -> list[Path]:
    if split == "all":
        return files
    if split == "val":
        return [f for f in files if f.name in val]
    train = [f for f in files if f.name not in val]
    if split == "train":
        return train
    select = set(validation_names([f.name for f in train], VAL_PER_CLASS, SELECT_SEED))
    return [f for f in train if (f.name in select) == (split == "select")]


def load_source(
    source: str = "synthetic",
    split: str = "train",
    classes: tuple[str, ...] | None = None,
    n_points: int = 1024,
    n_synthetic: int = 100,
    seed: int = 0,
) -> PointSet:
    """Shapes of one split of a source, as a PointSet: `train` / `val` (the committed
    validation split), `all`, or for model selection `fit` / `select` (train = fit + select).

    Shapes that fail to read are reported on stderr (file and shape named) and skipped."""
    import sys

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if source == "synthetic":
        classes = tuple(classes or SYNTHETIC_CLASSES)
        offset = {"val": 1000, "select": 2000}.get(split, 0)  # fit = train: no shape shared
        shapes = make_shapes(n_synthetic, n_points, classes, seed + offset)
        labels = np.array([classes.index(s.label) for s in shapes])
        pts = np.stack([s.points for s in shapes])
        return PointSet(pts, labels, classes, [s.name for s in shapes])
    if source == "modelnet10":
        classes = tuple(classes or MODELNET_CLASSES)
        held_out = committed_split()
        files, labels = [], []
        for k, cls in enumerate(classes):
            all_files = sorted(modelnet10_folder(cls).glob("*.pcd"))
            chosen = _split_files(all_files, set(held_out[cls]), split)
            files += chosen
            labels += [k] * len(chosen)
        result = read_shapes(files, n_points, seed=seed)
        for err in result.errors:
            print(f"skipped: {err}", file=sys.stderr)
        by_name = dict(zip(map(str, files), labels))
        return PointSet(
            np.stack([s.points for s in result.shapes]),
            np.array([by_name[s.name] for s in result.shapes]),
            classes,
            [s.name for s in result.shapes],
        )
    result = read_shapes([source], n_points, seed=seed)
    for err in result.errors:
        print(f"skipped: {err}", file=sys.stderr)
    if not result.shapes:
        raise ValueError(f"{source}: no readable shape")
    found = tuple(classes or sorted({s.label or "shape" for s in result.shapes}))
    return PointSet(
        np.stack([s.points for s in result.shapes]),
        np.array(
            [
                found.index(s.label or "shape") if (s.label or "shape") in found else 0
                for s in result.shapes
            ]
        ),
        found,
        [s.name for s in result.shapes],
    )


class _Clouds(Dataset):
    def __init__(self, ps: PointSet):
        self.points = torch.from_numpy(ps.points)
        self.labels = torch.from_numpy(ps.labels).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"points": self.points[i], "label": self.labels[i]}


class PointCloudDataModule(pl.LightningDataModule):
    """Batches {"points": (B, N, 3), "label": (B,)} of a source's train / val split."""

    def __init__(
        self,
        source: str = "synthetic",
        classes: list[str] | None = None,
        n_points: int = 1024,
        n_synthetic: int = 100,
        batch_size: int = 16,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.sets: dict[str, PointSet] = {}

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        for split in ("train", "val"):
            if split not in self.sets:
                self.sets[split] = load_source(
                    hp.source,
                    split,
                    tuple(hp.classes) if hp.classes else None,
                    hp.n_points,
                    hp.n_synthetic,
                    hp.seed,
                )

    @property
    def n_classes(self) -> int:
        return len(self.sets["train"].classes)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(
            _Clouds(self.sets["train"]),
            self.hparams.batch_size,
            shuffle=True,
            drop_last=True,
            generator=g,
            num_workers=self.hparams.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Clouds(self.sets["val"]), self.hparams.batch_size)


class PointTokenSource(TokenDataModule):
    """The same shapes as examples {"x": (N, 3) points, "label", "split"} for the core
    `TokenizedDataModule` (tokens encoded once by a trained tokenizer and cached); its
    batches carry the clouds as `points` too, which `PointTokenizer.encode` reads.
    `splits`: the source splits trained and validated on, (train, val) by default;
    (fit, select) for model selection that never reads the validation shapes.
    `views`: extra training examples per shape, each the tokens of a random
    `view_points`-point subset of its cloud (seeded by `seed`; validation shapes get
    none). PointFlow and LION train on a fresh subset of a larger cloud every epoch; with
    only the 1,024 shared points per shape, subsets are the resampling left, and they give
    the AR several token sequences of one shape instead of one to memorise."""

    def __init__(
        self,
        source: str = "synthetic",
        classes: list[str] | None = None,
        n_points: int = 1024,
        n_synthetic: int = 100,
        splits: tuple[str, str] = ("train", "val"),
        views: int = 0,
        view_points: int = 512,
        **kwargs,
    ):
        kwargs.setdefault("val_fraction", 0.0)
        kwargs.setdefault("test_fraction", 0.0)
        super().__init__(**kwargs)
        if views < 0:
            raise ValueError(f"views must be >= 0, got {views}")
        if views and (view_points < 1 or n_points % view_points):
            raise ValueError(f"view_points must divide n_points ({n_points}), got {view_points}")
        self.source, self.classes = source, tuple(classes) if classes else None
        self.n_points, self.n_synthetic = n_points, n_synthetic
        self.source_splits = tuple(splits)
        self.views, self.view_points = views, view_points

    def build(self) -> list[dict]:
        examples = []
        for role, split in zip(("train", "val"), self.source_splits):
            ps = load_source(
                self.source, split, self.classes, self.n_points, self.n_synthetic, self.seed
            )
            examples += [
                {"x": torch.from_numpy(p), "label": int(k), "split": role}
                for p, k in zip(ps.points, ps.labels)
            ]
            if role == "train":
                examples += self._views(ps)
        return examples

    def _views(self, ps: PointSet) -> list[dict]:
        """`views` random subsets per shape, each tiled to n_points: the encoder is a
        per-point map under attention pooling, so a set with every point repeated r times
        encodes exactly as the set itself does (tested), and the batch keeps one size."""
        g = torch.Generator().manual_seed(self.seed)
        reps = self.n_points // self.view_points
        out = []
        for p, k in zip(ps.points, ps.labels):
            cloud = torch.from_numpy(p)
            for _ in range(self.views):
                keep = torch.randperm(len(cloud), generator=g)[: self.view_points]
                out.append({"x": cloud[keep].repeat(reps, 1), "label": int(k), "split": "train"})
        return out

    def collate(self, examples) -> dict:
        batch = super().collate(examples)
        batch["points"] = batch["x"]
        return batch
