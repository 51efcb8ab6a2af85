"""Readers of every supported format, shape_bbox, and bad input that names file and shape."""

import gzip

import numpy as np
import pytest
import trimesh

from domains.points.io import read_pcd, read_shapes, shape_bbox, write_ply

N = 64


def _cloud(n=200, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3)) * [1.0, 2.0, 3.0] + [5.0, -1.0, 0.5]


def _write_pcd(path, pts, binary):
    head = (
        "# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
        f"WIDTH {len(pts)}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {len(pts)}\n"
    )
    if binary:
        path.write_bytes((head + "DATA binary\n").encode() + pts.astype("<f4").tobytes())
    else:
        body = "\n".join(" ".join(f"{v:.6f}" for v in p) for p in pts)
        path.write_text(head + "DATA ascii\n" + body + "\n")


@pytest.mark.parametrize("binary", [False, True])
def test_pcd_ascii_and_binary(tmp_path, binary):
    pts = _cloud()
    _write_pcd(tmp_path / "a.pcd", pts, binary)
    np.testing.assert_allclose(read_pcd(tmp_path / "a.pcd"), pts, atol=1e-5)


def test_pcd_with_extra_fields(tmp_path):
    pts = _cloud(10)
    rec = np.zeros(10, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")])
    rec["x"], rec["y"], rec["z"] = pts.T
    head = "FIELDS x y z rgb\nSIZE 4 4 4 4\nTYPE F F F U\nCOUNT 1 1 1 1\nPOINTS 10\nDATA binary\n"
    (tmp_path / "c.pcd").write_bytes(head.encode() + rec.tobytes())
    np.testing.assert_allclose(read_pcd(tmp_path / "c.pcd"), pts, atol=1e-5)


def test_every_format_gives_n_normalised_points(tmp_path):
    pts = _cloud()
    _write_pcd(tmp_path / "cloud.pcd", pts, True)
    np.savetxt(tmp_path / "cloud.xyz", pts)
    np.save(tmp_path / "cloud.npy", pts)
    write_ply(tmp_path / "cloud.ply", pts)
    mesh = trimesh.creation.box(extents=[1.0, 2.0, 4.0])
    for ext in ("obj", "off", "stl", "ply"):
        mesh.export(tmp_path / f"mesh_{ext}.{ext}")
    grid = np.zeros((12, 12, 12))
    grid[3:9, 4:8, 2:10] = 1
    np.save(tmp_path / "grid.npy", grid)
    result = read_shapes([tmp_path], n_points=N)
    assert result.errors == []
    assert len(result.shapes) == 9
    for s in result.shapes:
        assert s.points.shape == (N, 3) and s.points.dtype == np.float32
        extent = s.points.max(0) - s.points.min(0)
        assert extent.max() == pytest.approx(2.0, abs=1e-5), s.name
        mid = (s.points.max(0) + s.points.min(0)) / 2
        np.testing.assert_allclose(mid, 0, atol=1e-5)
    box = next(s for s in result.shapes if s.name.endswith("mesh_obj.obj"))
    # sampled on the surface: every point on a face of the 1 x 2 x 4 box (scaled by 1/2)
    half = np.array([0.25, 0.5, 1.0])
    on_face = np.isclose(np.abs(box.points), half, atol=1e-4).any(axis=1)
    assert on_face.all()


def test_shape_bbox_matches_definition():
    pts = _cloud()
    out = shape_bbox(pts)
    lo, hi = pts.min(0), pts.max(0)
    np.testing.assert_allclose(out, (pts - (lo + hi) / 2) / ((hi - lo).max() / 2), rtol=1e-5)
    batch = shape_bbox(np.stack([pts, pts * 3]))
    np.testing.assert_allclose(batch[0], batch[1], atol=1e-5)


def test_voxel_batch_gz_reports_the_empty_grid_and_keeps_the_rest(tmp_path):
    grids = np.zeros((3, 1, 10, 10, 10))
    grids[1, 0, 2:7, 2:7, 2:7] = 1
    grids[2, 0, 1:9, 4:6, 1:9] = 1
    with gzip.open(tmp_path / "chair.npy.gz", "wb") as f:
        np.save(f, grids)
    result = read_shapes([tmp_path / "chair.npy.gz"], n_points=N)
    assert [s.name.endswith(f"[{i}]") for i, s in zip((1, 2), result.shapes)] == [True, True]
    assert all(s.label == "chair" for s in result.shapes)
    assert len(result.errors) == 1
    assert "chair.npy.gz[0]" in result.errors[0] and "no occupied cell" in result.errors[0]


def test_bad_inputs_are_named_and_the_batch_continues(tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, _cloud())
    few = tmp_path / "few.xyz"
    np.savetxt(few, _cloud(10))
    nan = tmp_path / "nan.npy"
    bad = _cloud()
    bad[3, 1] = np.nan
    np.save(nan, bad)
    flat = tmp_path / "flat.obj"
    flat.write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")
    empty = tmp_path / "empty.off"
    empty.write_text("OFF\n0 0 0\n")
    junk = tmp_path / "junk.pcd"
    junk.write_text("not a pcd\n")
    missing = tmp_path / "missing.ply"
    result = read_shapes([few, nan, good, flat, empty, junk, missing], n_points=N)
    assert [s.name for s in result.shapes] == [str(good)]
    msgs = "\n".join(result.errors)
    assert len(result.errors) == 6, msgs
    assert f"{few}: 10 points, fewer than the {N} requested" in msgs
    assert f"{nan}: 1 points with NaN" in msgs
    assert f"{flat}: degenerate mesh" in msgs
    for p in (empty, junk, missing):
        assert str(p) in msgs


def test_ply_writer_round_trip(tmp_path):
    pts = _cloud(50).astype(np.float32)
    path = write_ply(tmp_path / "sub" / "x.ply", pts)
    np.testing.assert_allclose(np.asarray(trimesh.load(path).vertices), pts, atol=1e-6)
