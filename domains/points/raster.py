"""The raster baseline: plain next-token AR over occupied voxels in a fixed raster order.

A cloud in [-1, 1]^3 is voxelised at `resolution`^3; its occupied cells, as ids
x * R^2 + y * R + z sorted ascending (the raster order G3PT argues against), are the
token sequence [bos, cells..., eos]. Decoding draws points uniformly inside the generated
cells. The model is the core `SeqLM` (objective next_token, class as a one-hot condition
prefix with `cond_dropout` for guidance), trained by an ordinary `seqmodels fit` stage and
sampled with the core `generate` (KV cache).
"""

from __future__ import annotations

import numpy as np
import torch

from seqmodels.data import TokenDataModule
from seqmodels.vocab import SPECIALS, Vocab

from .data import load_source
from .sampling import spread

OFFSET = len(SPECIALS)  # cell c has vocabulary id c + OFFSET


def cells_of(points: np.ndarray, resolution: int) -> np.ndarray:
    """Sorted unique occupied-cell ids of one cloud (N, 3) in [-1, 1]^3."""
    r = resolution
    c = np.floor((np.asarray(points) + 1) / 2 * r).clip(0, r - 1).astype(np.int64)
    return np.unique(c[:, 0] * r * r + c[:, 1] * r + c[:, 2])


def cloud_of(cells, resolution: int, n_points: int, rng: np.random.Generator) -> np.ndarray:
    """n_points drawn uniformly inside the given cells (cell ids; others ignored)."""
    r = resolution
    cells = np.asarray([c for c in cells if 0 <= c < r**3], dtype=np.int64)
    if len(cells) == 0:
        return np.zeros((n_points, 3), np.float32)  # an empty sample: a point, scored as such
    pick = cells[rng.integers(len(cells), size=n_points)]
    ijk = np.stack([pick // (r * r), (pick // r) % r, pick % r], axis=1)
    return ((ijk + rng.random((n_points, 3))) / r * 2 - 1).astype(np.float32)


def raster_vocab(resolution: int) -> Vocab:
    return Vocab(str(c) for c in range(resolution**3))


class RasterDataModule(TokenDataModule):
    """[bos, sorted occupied cells, eos] per shape, `cond` = one-hot class, the source's
    own train / val split (ModelNet10: the committed validation split)."""

    def __init__(
        self,
        source: str = "synthetic",
        classes: list[str] | None = None,
        resolution: int = 12,
        n_points: int = 1024,
        n_synthetic: int = 100,
        **kwargs,
    ):
        kwargs.setdefault("val_fraction", 0.0)
        kwargs.setdefault("test_fraction", 0.0)
        super().__init__(**kwargs)
        # stored in the checkpoint, so `points generate` knows the grid and the classes
        self.save_hyperparameters("source", "classes", "resolution", "n_points", "n_synthetic")
        self.source, self.classes = source, tuple(classes) if classes else None
        self.resolution, self.n_points, self.n_synthetic = resolution, n_points, n_synthetic

    def build(self) -> list[dict]:
        self.vocab = raster_vocab(self.resolution)
        examples = []
        for split in ("train", "val"):
            ps = load_source(
                self.source, split, self.classes, self.n_points, self.n_synthetic, self.seed
            )
            eye = np.eye(len(ps.classes), dtype=np.float32)
            for pts, lab in zip(ps.points, ps.labels):
                ids = cells_of(pts, self.resolution) + OFFSET
                examples.append(
                    {
                        "ids": [Vocab.bos_id, *ids.tolist(), Vocab.eos_id],
                        "cond": eye[lab].tolist(),
                        "label": int(lab),
                        "split": split,
                    }
                )
        return examples


@torch.no_grad()
def generate_raster(
    model,
    labels: list[int],
    n_classes: int,
    resolution: int,
    n_points: int = 1024,
    guidance: float = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    batch_size: int = 50,
    oversample: int = 1,
) -> np.ndarray:
    """Clouds (len(labels), n_points, 3) sampled from a raster SeqLM (`oversample` times
    the points drawn in the cells, a farthest-point subset kept: sampling.py)."""
    from seqmodels.sampling import generate

    eye = torch.eye(n_classes)
    cond = eye[torch.tensor(labels)]
    extra = {"guidance": guidance} if guidance != 1.0 else {}  # guidance: a newer core
    out = generate(
        model,
        [[Vocab.bos_id]] * len(labels),
        cond=cond,
        max_new_tokens=model.hparams.max_len,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_id=Vocab.eos_id,
        seed=seed,
        batch_size=batch_size,
        progress=True,
        **extra,
    )
    rng = np.random.default_rng(seed)
    m = n_points * oversample
    clouds = np.stack([cloud_of([t - OFFSET for t in ids], resolution, m, rng) for ids in out])
    return spread(torch.from_numpy(clouds), n_points, oversample).numpy()
