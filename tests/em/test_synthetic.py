"""The synthetic EM-like generator."""

import numpy as np
from scipy import ndimage

from domains.em.synthetic import make_synthetic


def test_shapes_seed_and_contrast():
    raw, inst = make_synthetic((8, 48, 48), n_cells=12, seed=3)
    assert raw.shape == inst.shape == (8, 48, 48) and raw.dtype == np.float32
    again, inst2 = make_synthetic((8, 48, 48), n_cells=12, seed=3)
    assert np.array_equal(raw, again) and np.array_equal(inst, inst2)
    other, _ = make_synthetic((8, 48, 48), n_cells=12, seed=4)
    assert not np.array_equal(raw, other)
    membrane = inst == 0
    assert 0.05 < membrane.mean() < 0.5
    assert raw[membrane].mean() < raw[~membrane].mean() - 0.2  # dark membranes


def test_each_cell_is_one_connected_region():
    _, inst = make_synthetic((8, 48, 48), n_cells=12, seed=0)
    for cell in np.unique(inst[inst > 0]):
        _, n = ndimage.label(inst == cell)
        assert n == 1, cell
