"""3D patches as tokens (TokenUnify): a (z, y, x) crop cut into pz x py x px patches, in
raster order z, y, x; each patch flattened to one continuous token of pz*py*px voxels.
Optional discrete tokens: the patch's mean intensity quantised to `levels` bins."""

from __future__ import annotations

import numpy as np
import torch

from .volume import VolumeError

DEFAULT_PATCH = (4, 16, 16)
DEFAULT_CROP = (16, 160, 160)


def check_crop(
    shape: tuple[int, ...],
    crop: tuple[int, int, int],
    patch: tuple[int, int, int],
    name: str = "volume",
) -> None:
    """Crops must fit the volume and be whole multiples of the patch."""
    if any(c > s for c, s in zip(crop, shape)):
        raise VolumeError(f"{name}: crop {tuple(crop)} is larger than the volume {tuple(shape)}")
    if any(c % p for c, p in zip(crop, patch)):
        raise VolumeError(f"crop {tuple(crop)} is not a multiple of the patch {tuple(patch)}")


def grid(crop: tuple[int, int, int], patch: tuple[int, int, int]) -> tuple[int, int, int]:
    """Number of patches along z, y, x."""
    return tuple(c // p for c, p in zip(crop, patch))  # type: ignore[return-value]


def patchify(vol: np.ndarray | torch.Tensor, patch: tuple[int, int, int] = DEFAULT_PATCH):
    """(..., Z, Y, X) -> (..., nz*ny*nx, pz*py*px), raster order z, y, x."""
    pz, py, px = patch
    *lead, Z, Y, X = vol.shape
    nz, ny, nx = Z // pz, Y // py, X // px
    if (nz * pz, ny * py, nx * px) != (Z, Y, X):
        raise VolumeError(f"volume {(Z, Y, X)} is not a multiple of the patch {tuple(patch)}")
    v = vol.reshape(*lead, nz, pz, ny, py, nx, px)
    n = len(lead)
    perm = (*range(n), n, n + 2, n + 4, n + 1, n + 3, n + 5)
    v = v.transpose(perm) if isinstance(v, np.ndarray) else v.permute(perm)
    return v.reshape(*lead, nz * ny * nx, pz * py * px)


def unpatchify(tokens, crop: tuple[int, int, int], patch: tuple[int, int, int] = DEFAULT_PATCH):
    """Inverse of `patchify`: (..., N, pz*py*px) -> (..., Z, Y, X)."""
    pz, py, px = patch
    nz, ny, nx = grid(crop, patch)
    *lead, n_tok, dim = tokens.shape
    if (n_tok, dim) != (nz * ny * nx, pz * py * px):
        raise VolumeError(f"{n_tok} tokens of {dim} voxels do not tile a crop {tuple(crop)}")
    v = tokens.reshape(*lead, nz, ny, nx, pz, py, px)
    n = len(lead)
    perm = (*range(n), n, n + 3, n + 1, n + 4, n + 2, n + 5)
    v = v.transpose(perm) if isinstance(v, np.ndarray) else v.permute(perm)
    return v.reshape(*lead, nz * pz, ny * py, nx * px)


def random_crop_origin(shape, crop, rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(rng.integers(0, s - c + 1)) for s, c in zip(shape, crop))  # type: ignore


def crop_at(vol: np.ndarray, origin, crop) -> np.ndarray:
    (z, y, x), (cz, cy, cx) = origin, crop
    return vol[z : z + cz, y : y + cy, x : x + cx]


def tiles(shape, crop, overlap: tuple[int, int, int] = (0, 0, 0)) -> list[tuple[int, int, int]]:
    """Crop origins covering a volume (the last tile flush with the end), for inference."""
    axes = []
    for s, c, o in zip(shape, crop, overlap):
        step = max(1, c - o)
        starts = list(range(0, max(s - c, 0) + 1, step))
        if starts[-1] != s - c:
            starts.append(s - c)
        axes.append(starts)
    return [(z, y, x) for z in axes[0] for y in axes[1] for x in axes[2]]


def quantise(tokens: np.ndarray, levels: int = 64) -> np.ndarray:
    """Discrete tokens: each patch's mean intensity (in [0, 1]) as one of `levels` bins."""
    if levels < 2:
        raise ValueError("quantisation needs at least 2 levels")
    mean = np.asarray(tokens, dtype=np.float32).mean(-1)
    return np.clip((mean * levels).astype(np.int64), 0, levels - 1)


def dequantise(ids: np.ndarray, levels: int = 64) -> np.ndarray:
    """Bin centres of `quantise`."""
    return (np.asarray(ids, dtype=np.float32) + 0.5) / levels
