"""Patch tokens: round trip, raster order, crops, quantisation."""

import numpy as np
import pytest
import torch

from domains.em.tokens import (
    check_crop,
    dequantise,
    patchify,
    quantise,
    tiles,
    unpatchify,
)
from domains.em.volume import VolumeError


def test_round_trip_numpy_and_torch():
    rng = np.random.default_rng(0)
    v = rng.random((16, 160, 160)).astype(np.float32)
    tok = patchify(v, (4, 16, 16))
    assert tok.shape == (400, 1024)  # TokenUnify's default: 4 x 10 x 10 patches
    np.testing.assert_array_equal(unpatchify(tok, (16, 160, 160), (4, 16, 16)), v)
    t = torch.from_numpy(v[None].repeat(2, 0))
    assert torch.equal(unpatchify(patchify(t, (4, 16, 16)), (16, 160, 160), (4, 16, 16)), t)


def test_raster_order_z_y_x():
    v = np.zeros((4, 4, 4))
    v[0, 0, 2:] = 1  # patch (0, 0, 1) in a 2x2x2 grid of 2x2x2 patches
    v[2:, 0:2, 0:2] = 2  # patch (1, 0, 0)
    tok = patchify(v, (2, 2, 2))
    assert tok[1].max() == 1 and tok[0].max() == 0  # x varies fastest
    assert (tok[4] == 2).all()  # then y, then z: index 4 = (1, 0, 0)


def test_bad_crops():
    with pytest.raises(VolumeError, match="larger than the volume"):
        check_crop((8, 100, 100), (16, 160, 160), (4, 16, 16), "isbi")
    with pytest.raises(VolumeError, match="not a multiple of the patch"):
        check_crop((16, 200, 200), (16, 150, 160), (4, 16, 16))
    with pytest.raises(VolumeError, match="not a multiple"):
        patchify(np.zeros((5, 16, 16)), (4, 16, 16))


def test_tiles_cover_volume():
    origins = tiles((8, 512, 512), (8, 128, 128), (0, 32, 32))
    covered = np.zeros((8, 512, 512), bool)
    for z, y, x in origins:
        covered[z : z + 8, y : y + 128, x : x + 128] = True
    assert covered.all()


def test_quantise_round_trip_within_half_bin():
    rng = np.random.default_rng(1)
    tok = rng.random((50, 64)).astype(np.float32)
    ids = quantise(tok, 32)
    assert ids.min() >= 0 and ids.max() < 32
    assert np.abs(dequantise(ids, 32) - tok.mean(-1)).max() <= 0.5 / 32 + 1e-6
