"""Readers: folders (bad files, mixed sizes and modes, empty), arrays (NaN), packaged sets."""

import numpy as np
import pytest
from PIL import Image

from domains.images.io import (
    ImageError,
    load_images,
    read_array,
    read_folder,
    shape_images,
    write_grid,
)


def _png(path, size=(8, 8), mode="L", value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(path)


def test_folder_with_bad_and_mixed_files_continues(tmp_path):
    _png(tmp_path / "0" / "a.png")
    _png(tmp_path / "0" / "b.png", size=(16, 12))  # other size: resized
    _png(tmp_path / "1" / "c.png", mode="RGB")  # other mode: converted
    (tmp_path / "1" / "broken.png").write_bytes(b"not a png at all")
    good = tmp_path / "full.png"
    _png(good)
    trunc = tmp_path / "1" / "trunc.png"
    trunc.write_bytes(good.read_bytes()[:40])  # a truncated file
    good.unlink()
    data = read_folder(tmp_path)
    assert data.images.shape == (3, 1, 8, 8)
    assert data.labels.tolist() == [0, 0, 1]
    notes = "\n".join(data.notes)
    assert "broken.png: unreadable" in notes
    assert "trunc.png: unreadable" in notes
    assert "b.png: size 16x12 resized to 8x8" in notes
    assert "c.png: mode RGB converted to L" in notes
    assert np.allclose(data.images[0], 128 / 255)


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ImageError, match=f"{tmp_path}: no image files"):
        read_folder(tmp_path)
    (tmp_path / "x.png").write_bytes(b"junk")
    with pytest.raises(ImageError, match="none of the 1 image files could be read"):
        read_folder(tmp_path)


def test_npz_with_nan_records_skips_them(tmp_path):
    x = np.random.default_rng(0).random((5, 6, 6)).astype(np.float32)
    x[2, 1, 1] = np.nan
    np.savez(tmp_path / "a.npz", images=x, labels=np.arange(5))
    data = read_array(tmp_path / "a.npz")
    assert data.images.shape == (4, 1, 6, 6)
    assert data.labels.tolist() == [0, 1, 3, 4]
    assert data.notes == [f"{tmp_path / 'a.npz'}[2]: NaN or inf pixels, skipped"]
    np.save(tmp_path / "u8.npy", (x[:2, :, :, None].clip(0, 1) * 255).astype(np.uint8))
    assert read_array(tmp_path / "u8.npy").images.max() <= 1.0


def test_packaged_sources_and_shaping():
    d = load_images("digits", size=16)
    assert d.images.shape == (1797, 1, 16, 16) and d.labels.max() == 9
    cam = load_images("skimage:camera", size=32, mode="RGB")
    assert cam.images.shape == (1, 3, 32, 32)
    assert shape_images(cam.images, crop=16, mode="L").shape == (1, 1, 16, 16)
    with pytest.raises(ImageError, match="no sample image"):
        load_images("skimage:nope")
    with pytest.raises(ImageError, match="no such file"):
        load_images("/nonexistent/dir")


def test_grid_writer(tmp_path):
    x = np.zeros((5, 1, 8, 8), dtype=np.float32)
    x[1] = 1.0
    path = write_grid(x, tmp_path / "g.png", nrow=5)
    im = np.asarray(Image.open(path))
    cell = 28 // 8 + 1  # 8x8 scaled by ceil(28 / 8) = 4
    assert im.shape == (cell * 8 + 2, 5 * (cell * 8 + 1) + 1)
    assert im[5, 1 + 32 + 1 + 5] == 255 and im[5, 5] == 0
