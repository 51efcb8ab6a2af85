import math

import pytest
import torch

from seqmodels.quantizers import (
    FSQ,
    LFQ,
    InterpolateResampler,
    MultiScaleQuantizer,
    ParentResampler,
    build_quantizer,
    codebook_metrics,
)


def test_fsq_round_trip_and_codebook():
    q = FSQ(levels=[5, 4, 3])
    assert q.codebook_size == 60
    z = torch.randn(4, 9, 3) * 2
    quantized, idx, aux = q(z)
    assert idx.dtype == torch.long and idx.shape == (4, 9)
    assert int(idx.min()) >= 0 and int(idx.max()) < 60
    assert torch.allclose(q.indices_to_codes(idx), quantized)
    assert float(aux) == 0.0
    # Every index decodes to a distinct code, and the code maps back to its index.
    codes = q.indices_to_codes(torch.arange(60)[None])
    assert torch.unique(codes[0], dim=0).shape[0] == 60
    assert torch.equal(q.fsq.codes_to_indices(codes[0]).long(), torch.arange(60))


def test_fsq_straight_through_gradient():
    q = FSQ(levels=[7, 7])
    z = (torch.randn(2, 5, 2) * 0.5).requires_grad_()
    quantized, _, _ = q(z)
    quantized.sum().backward()
    # Rounding has zero gradient; the straight-through estimator passes the bound's
    # (tanh) gradient instead, which is positive everywhere.
    assert z.grad is not None and (z.grad > 0).all()


def test_lfq_round_trip_gradient_and_aux():
    q = LFQ(codebook_size=16, entropy_weight=0.1, commitment_weight=0.25)
    z = torch.randn(3, 8, 4, requires_grad=True)
    quantized, idx, aux = q(z)
    assert torch.equal(quantized.detach().abs(), torch.ones_like(quantized))
    assert torch.allclose(q.indices_to_codes(idx), quantized)
    assert aux.requires_grad and float(aux.detach()) != 0.0
    (quantized.sum() + 0 * aux).backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # identity straight-through
    q.eval()
    _, idx_eval, aux_eval = q(z)
    assert torch.equal(idx_eval, idx) and float(aux_eval) == 0.0
    with pytest.raises(ValueError, match="power of two"):
        LFQ(codebook_size=12)


def test_build_quantizer_specs():
    assert isinstance(build_quantizer({"kind": "fsq", "levels": [3, 3]}), FSQ)
    q = build_quantizer({"kind": "lfq", "codebook_size": 8}, dim=16)
    assert q.dim == 16 and q.codebook_size == 8
    with pytest.raises(ValueError, match="unknown quantizer"):
        build_quantizer({"kind": "vq"})
    with pytest.raises(ValueError, match="expects features"):
        FSQ(levels=[3, 3])(torch.randn(2, 4, 5))


def _msq(**kw):
    return MultiScaleQuantizer({"kind": "fsq", "levels": [15] * 4}, [1, 2, 4, 8], **kw)


def test_multiscale_round_trip_and_coarse_to_fine():
    torch.manual_seed(0)
    m = _msq()
    z = torch.randn(16, 8, 4) * 0.5
    f_hat, idx, _ = m(z)
    assert idx.shape == (16, 15) and m.n_tokens == 15
    assert torch.allclose(m.indices_to_codes(idx), f_hat, atol=1e-6)
    cumulative, idx2, _ = m.quantize_scales(z)
    assert torch.equal(idx, idx2)
    # Each scale codes what the coarser ones left: the error falls scale by scale, and a
    # prefix of the indices decodes to the reconstruction after that many scales.
    errors = []
    for k, c in enumerate(cumulative):
        assert torch.allclose(m.indices_to_codes(idx[:, : m.starts[k + 1]]), c, atol=1e-6)
        errors.append(float((c - z).pow(2).mean()))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.05 * errors[0]
    with pytest.raises(ValueError, match="scale boundary"):
        m.indices_to_codes(idx[:, :2])


def test_multiscale_gradient_reaches_input():
    m = MultiScaleQuantizer({"kind": "lfq", "codebook_size": 16}, [2, 4], dim=6, shared=False)
    z = torch.randn(2, 4, 6, requires_grad=True)
    f_hat, _, aux = m(z)
    (f_hat.pow(2).sum() + aux).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert len(m.quantizers) == 2


def test_next_scale_inputs_are_cumulative_reconstructions():
    m = _msq()
    z = torch.randn(3, 8, 4)
    _, idx, _ = m(z)
    inputs = m.next_scale_inputs(idx)
    assert inputs.shape == (3, 15, 4)
    assert torch.equal(inputs[:, :1], torch.zeros(3, 1, 4))
    for k in range(1, 4):
        a, b = m.starts[k], m.starts[k + 1]
        expected = m.resampler.down(m.indices_to_codes(idx[:, :a]), k)
        assert torch.allclose(inputs[:, a:b], expected, atol=1e-6)
        assert torch.allclose(m.next_scale_input(idx[:, :a]), expected, atol=1e-6)


def test_parent_resampler_and_per_scale_features():
    parents = [[0, 0, 1], [0, 1, 1, 2, 2, 2]]
    r = ParentResampler([2, 3, 6], parents)
    x = torch.randn(2, 3, 5)
    assert torch.allclose(r.down(r.up(x, 1), 1), x)
    assert r.up(torch.arange(2.0).view(1, 2, 1), 0).flatten().tolist() == [0, 0, 0, 1, 1, 1]
    m = MultiScaleQuantizer({"kind": "fsq", "levels": [9, 9]}, [2, 3, 6], resampler=r)
    z = torch.randn(4, 6, 2)
    f_hat, idx, _ = m(z)
    # Per-scale features equal to the finest features' averages give the same codes.
    f2, idx2, _ = m([r.down(z, 0), r.down(z, 1), z])
    assert torch.equal(idx, idx2) and torch.allclose(f_hat, f2)
    with pytest.raises(ValueError, match="no descendant"):
        ParentResampler([2, 2], [[0, 0]])
    with pytest.raises(ValueError, match="parents of scale 1"):
        ParentResampler([2, 2], [[0, 5]])


def test_interpolate_resampler_grids():
    r = InterpolateResampler([(1, 1), (2, 2), (4, 4)])
    assert r.sizes == [1, 4, 16]
    x = torch.randn(2, 16, 3)
    assert torch.allclose(r.down(x, 0)[:, 0], x.mean(1), atol=1e-6)
    assert r.up(r.down(x, 1), 1).shape == (2, 16, 3)
    with pytest.raises(ValueError, match="all be ints"):
        InterpolateResampler([1, (2, 2)])


def test_codebook_metrics():
    uniform = codebook_metrics(torch.arange(8).repeat(3), 8)
    assert float(uniform["usage"]) == 1.0
    assert math.isclose(float(uniform["perplexity"]), 8.0, rel_tol=1e-5)
    one = codebook_metrics(torch.full((10,), 3), 8)
    assert float(one["usage"]) == 1 / 8 and math.isclose(float(one["perplexity"]), 1.0)
