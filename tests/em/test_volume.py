"""Readers (HDF5, TIFF, Zarr, PNG folder), checks and normalisation."""

import numpy as np
import pytest

from domains.em.volume import (
    VolumeError,
    check_volume,
    instances_from_membranes,
    load_labels,
    load_volume,
    normalise,
    read_array,
)

VOL = (np.arange(3 * 5 * 7) % 251).astype(np.uint8).reshape(3, 5, 7)


def test_hdf5_with_key(tmp_path):
    import h5py

    p = tmp_path / "v.h5"
    with h5py.File(p, "w") as f:
        f["raw"] = VOL
        f["other"] = VOL[:1]
    np.testing.assert_array_equal(read_array(p, "raw"), VOL)
    with pytest.raises(VolumeError, match="pass a dataset key"):
        read_array(p)
    with pytest.raises(VolumeError, match="no dataset 'nope'"):
        read_array(p, "nope")


def test_tiff_stack(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "v.tif", VOL, photometric="minisblack")
    np.testing.assert_array_equal(read_array(tmp_path / "v.tif"), VOL)


def test_zarr_array_and_group(tmp_path):
    import zarr

    z = zarr.open(str(tmp_path / "a.zarr"), mode="w", shape=VOL.shape, dtype=VOL.dtype)
    z[...] = VOL
    np.testing.assert_array_equal(read_array(tmp_path / "a.zarr"), VOL)
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("raw", shape=VOL.shape, dtype=VOL.dtype)[...] = VOL
    np.testing.assert_array_equal(read_array(tmp_path / "g.zarr", "raw"), VOL)
    with pytest.raises(VolumeError, match="pass the array key"):
        read_array(tmp_path / "g.zarr")


def test_png_folder_in_numeric_order(tmp_path):
    from skimage.io import imsave

    slices = [np.full((4, 6), 10 * i, dtype=np.uint8) for i in range(12)]
    for i, s in enumerate(slices):
        imsave(tmp_path / f"{i}.png", s, check_contrast=False)
    vol = read_array(tmp_path)
    assert vol.shape == (12, 4, 6)
    assert [int(v) for v in vol[:, 0, 0]] == [10 * i for i in range(12)]  # 0,1,2,..,10,11


def test_bad_input_messages(tmp_path):
    with pytest.raises(VolumeError, match="expected a 3D"):
        check_volume(np.zeros((2, 3, 4, 5)), "four.tif")
    with pytest.raises(VolumeError, match="empty volume"):
        check_volume(np.zeros((0, 4, 4)), "empty.tif")
    nan = np.zeros((2, 3, 3), dtype=np.float32)
    nan[1, 2, 0] = np.nan
    with pytest.raises(VolumeError, match=r"nan.tif: 1 NaN/inf voxels, the first at \(z=1, y=2"):
        check_volume(nan, "nan.tif")
    with pytest.raises(VolumeError, match="no such file"):
        read_array(tmp_path / "missing.h5")
    with pytest.raises(VolumeError, match="unknown volume format"):
        (tmp_path / "v.txt").write_text("x")
        read_array(tmp_path / "v.txt")
    import tifffile

    tifffile.imwrite(
        tmp_path / "lab.tif", np.zeros((3, 5, 6), dtype=np.uint16), photometric="minisblack"
    )
    with pytest.raises(VolumeError, match=r"labels of shape \(3, 5, 6\) for a volume of"):
        load_labels(tmp_path / "lab.tif", VOL.shape)


def test_load_volume_normalises_and_keeps_voxel_size(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "v.tif", VOL, photometric="minisblack")
    v = load_volume(tmp_path / "v.tif", voxel_size=(50, 4, 4))
    assert v.data.dtype == np.float32 and v.voxel_size == (50.0, 4.0, 4.0)
    assert v.data.min() >= 0 and v.data.max() <= 1
    with pytest.raises(VolumeError, match="voxel_size"):
        load_volume(tmp_path / "v.tif", voxel_size=(0, 1, 1))


def test_normalise_modes():
    x = np.array([[[0, 50, 100, 255]]], dtype=np.uint8)
    np.testing.assert_allclose(normalise(x, "uint8")[0, 0], [0, 50 / 255, 100 / 255, 1])
    np.testing.assert_allclose(normalise(x, "minmax")[0, 0], [0, 50 / 255, 100 / 255, 1])
    assert normalise(np.full((1, 2, 2), 7), "percentile").max() == 0  # constant: no contrast


def test_instances_from_membranes_per_section():
    m = np.full((2, 5, 5), 255, dtype=np.uint8)
    m[:, :, 2] = 0  # a vertical membrane splits each section in two
    inst = instances_from_membranes(m)
    assert (inst[:, :, 2] == 0).all()
    assert len(np.unique(inst[0])) == 3 and len(np.unique(inst[1])) == 3
    assert set(np.unique(inst[0])) & set(np.unique(inst[1])) == {0}  # unique across sections
