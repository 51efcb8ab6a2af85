"""Chamfer (kdtree and torch paths against a pairwise loop), EMD, PointFlow MMD/COV/1-NNA."""

import numpy as np
import pytest
import torch

from domains.points.metrics import (
    chamfer_distance,
    chamfer_matrix,
    chamfer_matrix_torch,
    emd_exact,
    mmd_cov,
    one_nna,
    pointflow_metrics,
    train_copy_oracle,
)


def _naive(a, b):
    out = torch.empty(len(a), len(b))
    for i in range(len(a)):
        for j in range(len(b)):
            d = torch.cdist(a[i], b[j]).square()
            out[i, j] = d.min(1).values.mean() + d.min(0).values.mean()
    return out


def test_chamfer_definition_on_a_hand_example():
    x = torch.tensor([[[0.0, 0, 0], [1, 0, 0]]])
    y = torch.tensor([[[0.0, 0, 0], [0, 2, 0], [0, 0, 3]]])
    # x->y: 0, 1 -> mean 0.5; y->x: 0, 4, 9 -> mean 13/3
    assert chamfer_distance(x, y).item() == pytest.approx(0.5 + 13 / 3)


def test_chamfer_distance_value_and_gradient_match_the_full_matrix_min():
    """Matched pairs give the full matrix's value and (sub)gradient, both directions."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 50, 3, generator=g, requires_grad=True)
    y = torch.rand(3, 70, 3, generator=g, requires_grad=True)
    d = torch.cdist(x, y).square()
    ref = d.min(dim=2).values.mean(dim=1) + d.min(dim=1).values.mean(dim=1)
    got = chamfer_distance(x, y)
    torch.testing.assert_close(got, ref)
    weights = torch.tensor([1.0, 2.0, 3.0])
    for a, b in zip(
        torch.autograd.grad(got @ weights, [x, y]), torch.autograd.grad(ref @ weights, [x, y])
    ):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("path", [chamfer_matrix, chamfer_matrix_torch])
def test_chamfer_matrix_equals_the_pairwise_loop(path):
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(5, 40, 3, generator=g), torch.rand(4, 30, 3, generator=g)
    torch.testing.assert_close(path(a, b), _naive(a, b), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(path(a, a), _naive(a, a), atol=1e-6, rtol=1e-5)


def test_emd_exact_is_the_optimal_matching():
    x = np.array([[0.0, 0, 0], [1, 0, 0]])
    y = np.array([[1.0, 0, 1], [0, 0, 1]])  # best: each point straight up, cost 1
    assert emd_exact(x, y) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        emd_exact(x, y[:1])


def test_mmd_cov_and_1nna_by_hand():
    # 3 references x 2 samples: both samples nearest to reference 0
    m_rs = torch.tensor([[0.1, 0.2], [0.5, 0.9], [0.7, 0.3]])
    r = mmd_cov(m_rs)
    assert r["MMD"] == pytest.approx((0.1 + 0.5 + 0.3) / 3)
    assert r["COV"] == pytest.approx(1 / 3)
    # references close to each other, samples close to each other: separable -> 100%
    m_rr = torch.tensor([[0.0, 0.1, 0.1], [0.1, 0, 0.1], [0.1, 0.1, 0]])
    m_ss = torch.tensor([[0.0, 0.05], [0.05, 0]])
    assert one_nna(m_rr, m_rs, m_ss) == pytest.approx(1.0)
    # every sample's nearest is a reference and vice versa: 0%
    m_rs2 = torch.full((3, 2), 0.01)
    assert one_nna(m_rr, m_rs2, torch.full((2, 2), 1.0)) == pytest.approx(0.0)


def test_protocol_separates_a_good_from_a_bad_generator():
    rng = np.random.default_rng(0)

    def family(n, shift):
        base = rng.normal(size=(n, 1, 3)) * 0.3 + shift
        return (base + rng.normal(size=(n, 64, 3)) * 0.1).astype(np.float32)

    refs, same, off = family(30, 0.0), family(30, 0.0), family(30, 1.5)
    good, bad = pointflow_metrics(same, refs, emd=True, emd_points=32), pointflow_metrics(off, refs)
    assert good["1-NNA-CD"] < 0.75 < bad["1-NNA-CD"]
    assert good["COV-CD"] > bad["COV-CD"] and good["MMD-CD"] < bad["MMD-CD"]
    assert {"MMD-EMD", "COV-EMD", "1-NNA-EMD"} <= set(good)
    oracle = train_copy_oracle(np.concatenate([same, off]), refs, n=30)
    assert oracle["COV-CD"] > 0 and 0 <= oracle["1-NNA-CD"] <= 1


def test_one_shape_repeated_scores_as_the_full_matrices_do():
    rng = np.random.default_rng(0)
    refs = rng.random((6, 32, 3)).astype(np.float32)
    one = np.repeat(rng.random((1, 32, 3)).astype(np.float32), 5, 0)
    a, b = torch.from_numpy(refs), torch.from_numpy(one)
    m_rr, m_rs, m_ss = _naive(a, a), _naive(a, b), _naive(b, b)
    want = {**mmd_cov(m_rs), "1-NNA": one_nna(m_rr, m_rs, m_ss)}
    got = pointflow_metrics(one, refs)
    assert got["MMD-CD"] == pytest.approx(want["MMD"], rel=1e-5)
    assert got["COV-CD"] == want["COV"] and got["1-NNA-CD"] == want["1-NNA"]
