"""Readers and writers of 3-D shape files: every shape becomes N surface points.

- point clouds: PLY, PCD (ascii / binary), XYZ / TXT, NPY (one (P, 3) cloud or a (B, P, 3) batch)
- meshes: OBJ, OFF, PLY (with faces), STL through trimesh, sampled uniformly on the surface
- voxel grids: NPY / .npy.gz of shape (D, H, W) or (B, [1,] D, H, W) (e.g. ModelNet's 32^3
  grids); the surface is extracted with scikit-image's marching cubes, then sampled

Bad input (a missing file, an empty or zero-area mesh, NaN coordinates, fewer points than
requested, a voxel grid with no occupied cell) raises `ShapeError` naming the file and the
shape; `read_shapes` collects those messages and goes on with the next shape.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CLOUD_SUFFIXES = {".pcd", ".xyz", ".txt"}
MESH_SUFFIXES = {".obj", ".off", ".stl"}
SUFFIXES = CLOUD_SUFFIXES | MESH_SUFFIXES | {".ply", ".npy", ".npy.gz"}


class ShapeError(ValueError):
    """A shape that cannot become a point cloud; the message names the file and shape."""


@dataclass
class Shape:
    name: str  # "file" or "file[index]" for a shape inside a batch file
    points: np.ndarray  # float32 (N, 3)
    label: str | None = None


@dataclass
class ReadResult:
    shapes: list[Shape] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def shape_bbox(points: np.ndarray) -> np.ndarray:
    """Centre on the bounding-box midpoint, divide by half the largest extent (so the
    shape fits [-1, 1]^3 touching it on its longest axis). This is the `shape_bbox` mode
    of the PVD / LION evaluation code; works on (P, 3) or (B, P, 3)."""
    lo, hi = points.min(axis=-2, keepdims=True), points.max(axis=-2, keepdims=True)
    centre = (lo + hi) / 2
    half = (hi - lo).max(axis=-1, keepdims=True) / 2
    return ((points - centre) / np.maximum(half, 1e-12)).astype(np.float32)


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return ".npy.gz" if name.endswith(".npy.gz") else path.suffix.lower()


def label_of(path: Path) -> str:
    """A class label from the file's folder (`chair_train/` -> chair) or a batch file's stem."""
    stem = path.name.split(".")[0]
    folder = path.parent.name
    if folder and folder not in (".", ""):
        base = folder.split("_")[0]
        if stem.startswith(base):
            return base
    return stem.split("_")[0]


# ---------------------------------------------------------------------------- readers


def read_pcd(path: Path) -> np.ndarray:
    """x, y, z of a PCD file (ascii or binary). Hand-written: trimesh has no PCD reader and
    open3d is a several-hundred-MB dependency for a 20-line header format."""
    raw = path.read_bytes()
    header: dict[str, list[str]] = {}
    offset = 0
    while True:
        end = raw.find(b"\n", offset)
        if end < 0:
            raise ShapeError(f"{path}: PCD header has no DATA line")
        line = raw[offset:end].decode("ascii", "replace").strip()
        offset = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        header[key.upper()] = values
        if key.upper() == "DATA":
            break
    fields = header.get("FIELDS", [])
    if not {"x", "y", "z"} <= set(fields):
        raise ShapeError(f"{path}: PCD has no x y z fields (FIELDS {' '.join(fields)})")
    n = int(header.get("POINTS", ["0"])[0])
    sizes = [int(s) for s in header.get("SIZE", [])]
    types = header.get("TYPE", [])
    counts = [int(c) for c in header.get("COUNT", ["1"] * len(fields))]
    mode = header["DATA"][0].lower()
    cols = [fields.index(c) for c in ("x", "y", "z")]
    if mode == "ascii":
        text = raw[offset:].decode("ascii", "replace")
        table = np.loadtxt(text.splitlines(), dtype=np.float64, ndmin=2)
        starts = np.cumsum([0] + counts)[:-1]
        return table[:n, [starts[c] for c in cols]]
    if mode == "binary":
        kinds = {"F": "f", "I": "i", "U": "u"}
        dtype = np.dtype(
            [
                (f, f"<{kinds[t]}{s}", (c,) if c > 1 else ())
                for f, s, t, c in zip(fields, sizes, types, counts)
            ]
        )
        body = raw[offset : offset + n * dtype.itemsize]
        if len(body) < n * dtype.itemsize:
            raise ShapeError(f"{path}: PCD binary body is truncated ({len(body)} bytes)")
        rec = np.frombuffer(body, dtype=dtype, count=n)
        return np.stack([rec["x"], rec["y"], rec["z"]], axis=1).astype(np.float64)
    raise ShapeError(f"{path}: PCD DATA {mode} is not supported (ascii and binary are)")


def _load_npy(path: Path) -> np.ndarray:
    if suffix_of(path) == ".npy.gz":
        with gzip.open(path, "rb") as f:
            return np.load(f, allow_pickle=False)
    return np.load(path, allow_pickle=False)


def _sample_cloud(points: np.ndarray, n: int, rng: np.random.Generator, where: str) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64).reshape(-1, points.shape[-1])[:, :3]
    if len(points) == 0:
        raise ShapeError(f"{where}: empty point cloud")
    if not np.isfinite(points).all():
        bad = int((~np.isfinite(points)).any(axis=1).sum())
        raise ShapeError(f"{where}: {bad} points with NaN or infinite coordinates")
    if len(points) < n:
        raise ShapeError(f"{where}: {len(points)} points, fewer than the {n} requested")
    if len(points) > n:
        points = points[rng.choice(len(points), n, replace=False)]
    return points.astype(np.float32)


def _sample_mesh(mesh, n: int, rng: np.random.Generator, where: str) -> np.ndarray:
    import trimesh

    if isinstance(mesh, trimesh.Scene):
        mesh = mesh.to_geometry() if hasattr(mesh, "to_geometry") else mesh.dump(concatenate=True)
    if len(getattr(mesh, "faces", [])) == 0:
        raise ShapeError(f"{where}: mesh has no faces")
    if not np.isfinite(mesh.vertices).all():
        raise ShapeError(f"{where}: mesh has NaN or infinite vertex coordinates")
    if not mesh.area > 0:
        raise ShapeError(f"{where}: degenerate mesh (zero surface area)")
    points, _ = trimesh.sample.sample_surface(mesh, n, seed=rng)
    return np.asarray(points, dtype=np.float32)


def voxel_surface_points(grid: np.ndarray, n: int, rng: np.random.Generator, where: str):
    """N points on the marching-cubes surface of an occupancy grid (voxel centres at
    integer coordinates; padding closes shapes that touch the border)."""
    import trimesh
    from skimage.measure import marching_cubes

    grid = np.asarray(grid, dtype=np.float32)
    if not np.isfinite(grid).all():
        raise ShapeError(f"{where}: voxel grid has NaN values")
    if not (grid > 0.5).any():
        raise ShapeError(f"{where}: voxel grid has no occupied cell")
    verts, faces, _, _ = marching_cubes(np.pad(grid, 1), level=0.5)
    mesh = trimesh.Trimesh(verts - 1.0, faces, process=False)
    return _sample_mesh(mesh, n, rng, where)


def _grids(array: np.ndarray, path: Path) -> np.ndarray | None:
    """(B, D, H, W) when `array` is a voxel grid or batch of them, else None."""
    if array.ndim == 3 and array.shape[-1] != 3 and min(array.shape) > 3:
        return array[None]
    if array.ndim == 5 and array.shape[1] == 1:
        return array[:, 0]
    if array.ndim == 4 and array.shape[-1] != 3:
        return array
    return None


def iter_file(path: Path, n: int, rng: np.random.Generator) -> Iterable[Shape | ShapeError]:
    """Every shape of one file, or a ShapeError per shape that failed."""
    import trimesh

    suffix, label = suffix_of(path), label_of(path)
    try:
        if not path.is_file():
            raise ShapeError(f"{path}: no such file")
        if suffix not in SUFFIXES:
            raise ShapeError(f"{path}: unknown shape format {suffix!r} (known: {sorted(SUFFIXES)})")
        if suffix in (".npy", ".npy.gz"):
            array = _load_npy(path)
            grids = _grids(array, path)
            if grids is not None:
                for i, grid in enumerate(grids):
                    where = f"{path}[{i}]"
                    try:
                        yield Shape(where, voxel_surface_points(grid, n, rng, where), label)
                    except ShapeError as err:
                        yield err
                return
            clouds = array[None] if array.ndim == 2 else array
            if clouds.ndim != 3 or clouds.shape[-1] < 3:
                raise ShapeError(
                    f"{path}: array of shape {array.shape} is neither clouds nor grids"
                )
            for i, cloud in enumerate(clouds):
                where = f"{path}[{i}]" if len(clouds) > 1 or array.ndim == 3 else str(path)
                try:
                    yield Shape(where, _sample_cloud(cloud, n, rng, where), label)
                except ShapeError as err:
                    yield err
            return
        if suffix == ".pcd":
            yield Shape(str(path), _sample_cloud(read_pcd(path), n, rng, str(path)), label)
            return
        if suffix in (".xyz", ".txt"):
            table = np.loadtxt(path, dtype=np.float64, ndmin=2, delimiter=None)
            if table.shape[1] < 3:
                raise ShapeError(f"{path}: {table.shape[1]} columns, need x y z")
            yield Shape(str(path), _sample_cloud(table, n, rng, str(path)), label)
            return
        loaded = trimesh.load(path, force=None, process=False)
        if isinstance(loaded, trimesh.PointCloud):
            yield Shape(str(path), _sample_cloud(loaded.vertices, n, rng, str(path)), label)
        else:
            yield Shape(str(path), _sample_mesh(loaded, n, rng, str(path)), label)
    except ShapeError as err:
        yield err
    except Exception as err:  # a library's parse error: report it with the file, go on
        yield ShapeError(f"{path}: cannot read ({type(err).__name__}: {err})")


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders replaced by the shape files inside them (sorted, recursive)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and suffix_of(f) in SUFFIXES)
        else:
            out.append(p)
    return out


def read_shapes(
    paths: Iterable[str | Path],
    n_points: int = 1024,
    normalise: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> ReadResult:
    """Read every shape of every file (folders expanded) as `n_points` points, each
    `shape_bbox`-normalised unless `normalise=False`. Failures are collected in
    `.errors` (one message per shape) and the rest is read."""
    rng = np.random.default_rng(seed)
    files = expand_paths(paths)
    result = ReadResult()
    if progress:
        from tqdm import tqdm

        files = tqdm(files, desc="reading shapes", unit="file")
    for path in files:
        for item in iter_file(path, n_points, rng):
            if isinstance(item, ShapeError):
                result.errors.append(str(item))
                continue
            if normalise:
                item.points = shape_bbox(item.points)
            result.shapes.append(item)
    return result


# ---------------------------------------------------------------------------- writer


def write_ply(path: str | Path, points: np.ndarray) -> Path:
    """One point cloud as a binary PLY (trimesh); the parent folder is created."""
    import trimesh

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.PointCloud(np.asarray(points, dtype=np.float64)).export(path)
    return path
