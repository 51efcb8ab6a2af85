"""EM sources and the pretraining datamodule (continuous patch tokens, or quantised ids).

A source is `synthetic` (made here, see synthetic.py), `isbi` (the shared ISBI 2012 stack)
or a path to a raw volume (h5 / tif / zarr / npy / folder of slices).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from seqmodels.data import TokenDataModule
from seqmodels.datasets import fetch_hint
from seqmodels.paths import data_path
from seqmodels.vocab import Vocab

from .synthetic import make_synthetic
from .tokens import (
    DEFAULT_CROP,
    DEFAULT_PATCH,
    check_crop,
    crop_at,
    patchify,
    quantise,
    random_crop_origin,
)
from .volume import VolumeError, instances_from_membranes, load_labels, load_volume, normalise

ISBI_VOXEL_NM = (50.0, 4.0, 4.0)  # ssTEM sections 50 nm apart, 4 nm pixels


@dataclass
class EMData:
    raw: np.ndarray  # float32 (z, y, x) in [0, 1]
    labels: np.ndarray | None  # int64 instances, 0 = boundary / ignore
    voxel_size: tuple[float, float, float]
    per_section: bool  # instances are 2D per section (no z-affinity ground truth)
    name: str


def load_source(
    source: str = "synthetic",
    key: str | None = None,
    labels: str | None = None,
    labels_key: str | None = None,
    voxel_size: tuple[float, float, float] | None = None,
    norm: str = "percentile",
    synthetic_shape: tuple[int, int, int] = (32, 160, 160),
    synthetic_cells: int = 40,
    seed: int = 0,
) -> EMData:
    """Raw volume (normalised) and instances, when the source has them."""
    if source == "synthetic":
        vs = tuple(voxel_size or (4.0, 1.0, 1.0))
        raw, inst = make_synthetic(tuple(synthetic_shape), synthetic_cells, vs, seed=seed)
        return EMData(raw, inst, vs, False, "synthetic")
    if source == "isbi_all":
        # The 30 labelled ISBI sections then the 30 unlabelled ones of the challenge's
        # test stack (0..29 and 30..59 here), each stack normalised on its own.
        parts = []
        for name in ("isbi2012", "isbi2012_test"):
            root = data_path("em", name)
            if root is None:
                raise VolumeError(
                    f"isbi_all: em/{name} not found under the data root; {fetch_hint('em/' + name)}"
                )
            vs = voxel_size or ISBI_VOXEL_NM
            parts.append(load_volume(root / "volume.tif", voxel_size=vs, norm=norm))
        raw = np.concatenate([v.data for v in parts])
        return EMData(raw, None, parts[0].voxel_size, True, "isbi_all")
    if source == "isbi":
        root = data_path("em", "isbi2012")
        if root is None:
            raise VolumeError(
                f"isbi: em/isbi2012 not found under the data root; {fetch_hint('em/isbi2012')}"
            )
        vol = load_volume(root / "volume.tif", voxel_size=voxel_size or ISBI_VOXEL_NM, norm=norm)
        membranes = load_labels(root / "membranes.tif", vol.shape)
        # Instances: connected components of non-membrane (255) in each section.
        return EMData(vol.data, instances_from_membranes(membranes), vol.voxel_size, True, "isbi")
    vol = load_volume(source, key, voxel_size=voxel_size or (1.0, 1.0, 1.0), norm=norm)
    lab = load_labels(labels, vol.shape, labels_key).astype(np.int64) if labels else None
    return EMData(vol.data, lab, vol.voxel_size, False, vol.name)


def section_ranges(n: int, sections, name: str) -> list[slice]:
    """`[start, stop]` or a list of such ranges, each checked against the stack."""
    if sections is None or (len(sections) and not isinstance(sections[0], (list, tuple))):
        return [section_range(n, sections, name)]
    return [section_range(n, list(r), name) for r in sections]


def check_disjoint(named: dict[str, list[int] | None], name: str = "sections") -> None:
    """Raise when two of the named [start, stop] section ranges overlap."""
    items = [(k, v) for k, v in named.items() if v is not None]
    for i, (a, ra) in enumerate(items):
        for b, rb in items[i + 1 :]:
            if ra[0] < rb[1] and rb[0] < ra[1]:
                raise VolumeError(
                    f"{name}: {a} sections {list(ra)} overlap {b} sections {list(rb)}; "
                    "tune, train and test sections must be disjoint"
                )


def section_range(n: int, sections: list[int] | None, name: str) -> slice:
    """`[start, stop]` z-sections (Python slice semantics) checked against the stack."""
    if sections is None:
        return slice(0, n)
    if len(sections) != 2 or not 0 <= sections[0] < sections[1] <= n:
        raise VolumeError(f"{name}: sections {sections} outside the stack of {n} sections")
    return slice(int(sections[0]), int(sections[1]))


class EMDataModule(TokenDataModule):
    """Random crops of a volume as patch tokens: examples {"x": (L, pz*py*px)} or, with
    `levels`, discrete {"ids": quantised patch means}. `sections` keeps crops inside a z
    range, or a list of ranges (hold the evaluation sections out of pretraining).
    Validation crops (val_fraction of n_crops) come from each section's last crop-height
    rows and training crops from the rows above: disjoint by construction."""

    def __init__(
        self,
        source: str = "synthetic",
        key: str | None = None,
        voxel_size: list[float] | None = None,
        norm: str = "percentile",
        sections: list[int] | list[list[int]] | None = None,
        crop: tuple[int, int, int] = DEFAULT_CROP,
        patch: tuple[int, int, int] = DEFAULT_PATCH,
        n_crops: int = 128,
        levels: int | None = None,
        synthetic_shape: tuple[int, int, int] = (32, 160, 160),
        synthetic_cells: int = 40,
        **kwargs,
    ):
        kwargs.setdefault("val_fraction", 0.1)
        kwargs.setdefault("test_fraction", 0.0)
        super().__init__(**kwargs)
        self.source, self.key, self.norm = source, key, norm
        self.voxel_size = tuple(voxel_size) if voxel_size else None
        self.sections = sections
        self.crop, self.patch = tuple(crop), tuple(patch)
        self.n_crops, self.levels = n_crops, levels
        self.synthetic_shape, self.synthetic_cells = tuple(synthetic_shape), synthetic_cells
        if levels is not None:
            self.vocab = Vocab([f"q{i}" for i in range(levels)])

    def build(self) -> list[dict]:
        em = load_source(
            self.source,
            self.key,
            voxel_size=self.voxel_size,
            norm=self.norm,
            synthetic_shape=self.synthetic_shape,
            synthetic_cells=self.synthetic_cells,
            seed=self.seed,
        )
        vols = [em.raw[sl] for sl in section_ranges(em.raw.shape[0], self.sections, em.name)]
        for v in vols:
            check_crop(v.shape, self.crop, self.patch, em.name)
        cy = self.crop[1]
        n_val = round(self.n_crops * self.val_fraction)
        if n_val and any(v.shape[1] < 2 * cy for v in vols):
            raise VolumeError(
                f"{em.name}: validation crops come from the last {cy} rows, training crops "
                f"from the rest; sections of {vols[0].shape[1]} rows need a crop of at most "
                f"{vols[0].shape[1] // 2} rows (or val_fraction 0)"
            )
        # Validation crops from the bottom band of rows, training crops from above it:
        # no validation voxel is ever a training voxel.
        bands = {"train": [v[:, : v.shape[1] - cy] if n_val else v for v in vols],
                 "val": [v[:, v.shape[1] - cy :] for v in vols]}  # fmt: skip
        rng = np.random.default_rng(self.seed)
        examples = []
        for i in range(self.n_crops):
            split = "val" if i < n_val else "train"
            region = bands[split]
            depth = np.array([v.shape[0] - self.crop[0] + 1 for v in region], dtype=np.float64)
            v = region[int(rng.choice(len(region), p=depth / depth.sum()))]
            c = crop_at(v, random_crop_origin(v.shape, self.crop, rng), self.crop)
            c = _augment(c, rng)
            tok = patchify(np.ascontiguousarray(c), self.patch)
            if self.levels is None:
                ex = {"x": torch.from_numpy(np.ascontiguousarray(tok))}
            else:
                ids = quantise(tok, self.levels) + self.vocab.token_to_id("q0")
                ex = {"ids": ids.tolist()}
            examples.append({**ex, "split": split})
        return examples


def _augment(c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flips and in-plane rotations (by 90 degrees only for square crops, so the shape
    stays): symmetries of EM sections."""
    if rng.random() < 0.5:
        c = c[:, ::-1]
    if rng.random() < 0.5:
        c = c[:, :, ::-1]
    k = int(rng.integers(4)) if c.shape[1] == c.shape[2] else 2 * int(rng.integers(2))
    return np.rot90(c, k, axes=(1, 2))


__all__ = [
    "EMData",
    "EMDataModule",
    "check_disjoint",
    "load_source",
    "normalise",
    "section_range",
    "section_ranges",
]
