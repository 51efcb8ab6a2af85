"""EM volumes: readers (HDF5, TIFF stacks, Zarr, folders of PNG slices), checks and
intensity normalisation. Arrays are (z, y, x); voxel sizes are (z, y, x) in nm."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class VolumeError(ValueError):
    """A volume or label stack that cannot be used; the message names the file."""


@dataclass
class Volume:
    data: np.ndarray  # (z, y, x)
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    name: str = "volume"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]


def _numeric_key(p: Path) -> tuple:
    # Slice files are named 0.png, 1.png, ... 10.png: sort by the numbers, not lexically.
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name))


def read_array(path: str | Path, key: str | None = None) -> np.ndarray:
    """The raw array stored at `path`: .h5/.hdf5/.hdf (dataset `key`), .tif/.tiff, .zarr
    (array, or `key` inside a group), .npy, or a folder of .png/.tif slices."""
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5", ".hdf"):
        import h5py

        with h5py.File(path, "r") as f:
            if key is None:
                # Every dataset in the file, nested ones included (e.g. volumes/raw).
                names: list[str] = []
                f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
                if len(names) != 1:
                    raise VolumeError(f"{path}: pass a dataset key, one of {sorted(names)}")
                key = names[0]
            if key not in f:
                raise VolumeError(f"{path}: no dataset {key!r}; has {sorted(f)}")
            if not isinstance(f[key], h5py.Dataset):
                inside = sorted(f[key])
                raise VolumeError(f"{path}: {key!r} is a group, not a dataset; it holds {inside}")
            return np.asarray(f[key])
    if suffix in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    if suffix == ".zarr":
        import zarr

        node = zarr.open(str(path), mode="r")
        if key is not None:
            if key not in node:
                raise VolumeError(f"{path}: no array {key!r} in this zarr group")
            node = node[key]
        elif not hasattr(node, "shape"):
            raise VolumeError(f"{path}: a zarr group; pass the array key")
        return np.asarray(node[...])
    if suffix == ".npy":
        return np.load(path)
    if path.is_dir():
        files = sorted(
            (p for p in path.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff")),
            key=_numeric_key,
        )
        if not files:
            raise VolumeError(f"{path}: no .png or .tif slices in this folder")
        from skimage.io import imread

        slices = []
        for f in files:
            s = imread(f)
            if s.ndim != 2:
                raise VolumeError(f"{f}: a slice must be a 2D greyscale image, got {s.shape}")
            if slices and s.shape != slices[0].shape:
                raise VolumeError(f"{f}: slice shape {s.shape} differs from {slices[0].shape}")
            slices.append(s)
        return np.stack(slices)
    raise VolumeError(f"{path}: unknown volume format {suffix!r} (h5, tif, zarr, npy, folder)")


def check_volume(data: np.ndarray, name: str = "volume") -> np.ndarray:
    """Raise a clear error for data that is not a usable 3D volume (a 2D image is refused:
    reading one section as a whole volume is almost always a wrong path or key)."""
    data = np.asarray(data)
    if data.ndim == 2:
        raise VolumeError(
            f"{name}: a 2D image {data.shape}, not a (z, y, x) volume; for one section save "
            "it as a stack of shape (1, Y, X)"
        )
    if data.ndim != 3:
        raise VolumeError(f"{name}: expected a 3D (z, y, x) volume, got shape {data.shape}")
    if data.size == 0:
        raise VolumeError(f"{name}: empty volume, shape {data.shape}")
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise VolumeError(f"{name}: voxels must be numeric, got dtype {data.dtype}")
    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        if bad.any():
            z, y, x = np.argwhere(bad)[0]
            raise VolumeError(
                f"{name}: {int(bad.sum())} NaN/inf voxels, the first at (z={z}, y={y}, x={x})"
            )
    return data


def normalise(data: np.ndarray, mode: str = "percentile", low: float = 1, high: float = 99):
    """Intensities to float32 in [0, 1]: `percentile` clips to the [low, high] percentiles
    (robust to dust and saturated pixels), `minmax` uses the extremes, `uint8` divides by 255."""
    x = data.astype(np.float32)
    if mode == "uint8":
        return np.clip(x / 255.0, 0, 1)
    if mode == "percentile":
        lo, hi = np.percentile(x, [low, high])
    elif mode == "minmax":
        lo, hi = float(x.min()), float(x.max())
    else:
        raise ValueError(f"unknown normalisation {mode!r}: percentile, minmax or uint8")
    if hi <= lo:  # a constant volume carries no contrast; map it to zeros
        return np.zeros_like(x)
    return np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0, 1).astype(np.float32)


def load_volume(
    path: str | Path,
    key: str | None = None,
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0),
    norm: str | None = "percentile",
) -> Volume:
    """Read, check and (optionally) normalise a raw volume."""
    if len(voxel_size) != 3 or min(voxel_size) <= 0:
        raise VolumeError(f"{path}: voxel_size must be three positive numbers (z, y, x)")
    data = check_volume(read_array(path, key), str(path))
    if norm:
        data = normalise(data, norm)
    return Volume(data, tuple(float(v) for v in voxel_size), Path(path).stem)


def load_labels(path: str | Path, shape: tuple[int, ...], key: str | None = None) -> np.ndarray:
    """An integer label stack that must match the raw volume's shape."""
    labels = check_volume(read_array(path, key), str(path))
    if labels.shape != tuple(shape):
        raise VolumeError(f"{path}: labels of shape {labels.shape} for a volume of {shape}")
    if np.issubdtype(labels.dtype, np.floating) and not np.all(labels == np.round(labels)):
        raise VolumeError(f"{path}: labels must be integers")
    if labels.dtype == bool:
        raise VolumeError(f"{path}: a boolean mask, not instance labels (ids 1..n, 0 = boundary)")
    if labels.size and labels.min() < 0:
        z, y, x = np.argwhere(labels < 0)[0]
        raise VolumeError(
            f"{path}: negative label id {labels[z, y, x]} at (z={z}, y={y}, x={x}); "
            "instance ids must be >= 0 (0 = boundary / ignore)"
        )
    if labels.size and labels.max() > np.iinfo(np.int64).max:  # uint64 ids past int64
        raise VolumeError(
            f"{path}: label id {labels.max()} does not fit int64; relabel the instances "
            "(e.g. skimage.segmentation.relabel_sequential)"
        )
    return labels.astype(np.int64)


def instances_from_membranes(membranes: np.ndarray, membrane_value: int = 0) -> np.ndarray:
    """ISBI-style membrane maps to instances: the connected components (4-connected) of
    non-membrane pixels in each section, numbered uniquely across the stack; 0 = membrane."""
    from skimage.measure import label

    out = np.zeros(membranes.shape, dtype=np.int64)
    offset = 0
    for z in range(membranes.shape[0]):
        lab = label(membranes[z] != membrane_value, connectivity=1)
        out[z] = np.where(lab > 0, lab + offset, 0)
        offset += int(lab.max())
    return out
