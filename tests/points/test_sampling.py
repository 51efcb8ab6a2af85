import pytest
import torch

from domains.points.sampling import farthest_point_sample, spread


def test_farthest_point_sample_is_the_greedy_farthest_subset():
    # on a line 0..10 starting from 0: 10, then 5 (farthest from both), then 2 or 3 ...
    line = torch.tensor([float(i) for i in range(11)])[None, :, None].expand(2, -1, 3)
    got = farthest_point_sample(line.contiguous(), 3)[0, :, 0].tolist()
    assert got == [0.0, 10.0, 5.0]


def test_spread_keeps_points_farther_apart_than_the_decoded_order():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 2048, 3, generator=g)
    kept = spread(x, 256, 8)
    assert kept.shape == (4, 256, 3)
    # every kept point is one of the inputs
    d_in = torch.cdist(kept, x, compute_mode="donot_use_mm_for_euclid_dist").amin(-1)
    assert d_in.max() == 0

    # nearest-neighbour spacing: an even spread beats the first 256 (i.i.d.) points
    def spacing(p):
        d = torch.cdist(p, p) + torch.eye(p.shape[1]) * 9
        return d.amin(-1).mean()

    assert spacing(kept) > 1.3 * spacing(x[:, :256])
    assert spread(x, 2048, 1) is x
    with pytest.raises(ValueError, match="oversample"):
        spread(x, 2048, 0)
