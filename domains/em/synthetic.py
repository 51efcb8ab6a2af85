"""`synthetic`: EM-like volumes made here, with ground-truth instances.

Cells are 3D Voronoi regions of random seeds (distances scaled by the voxel size, so
anisotropic stacks get flat cells like real serial sections); voxels near a boundary are
membrane (dark). Cytoplasm gets a per-cell grey level and texture, then blur and noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree


def make_synthetic(
    shape: tuple[int, int, int] = (32, 160, 160),
    n_cells: int = 40,
    voxel_size: tuple[float, float, float] = (4.0, 1.0, 1.0),
    membrane_width: float = 1.5,
    noise: float = 0.08,
    blur: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw float32 in [0, 1] and int64 instances (1..n, 0 = membrane), both `shape`."""
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"synthetic shape must be three positive sizes, got {shape}")
    if n_cells < 2:
        raise ValueError("synthetic volumes need at least 2 cells")
    rng = np.random.default_rng(seed)
    scale = np.asarray(voxel_size, dtype=np.float64)
    seeds = rng.random((n_cells, 3)) * np.asarray(shape) * scale
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    pts = grid.reshape(-1, 3) * scale
    # Two nearest seeds: the first gives the cell, the gap to the second the distance to
    # the Voronoi face (half the difference of distances along the seed line, roughly).
    dist, idx = cKDTree(seeds).query(pts, k=2)
    cell = idx[:, 0].reshape(shape) + 1
    to_face = ((dist[:, 1] - dist[:, 0]) / 2).reshape(shape)
    membrane = to_face < membrane_width
    instances = np.where(membrane, 0, cell).astype(np.int64)

    grey = 0.55 + 0.25 * rng.random(n_cells + 1)
    raw = grey[cell]
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(0.5, 2.0, 2.0))
    raw = raw + 0.15 * texture / (texture.std() + 1e-8)
    raw[membrane] = 0.15
    raw = ndimage.gaussian_filter(raw, sigma=(blur * 0.25, blur, blur)) if blur > 0 else raw
    raw = raw + noise * rng.standard_normal(shape)
    return np.clip(raw, 0, 1).astype(np.float32), instances
