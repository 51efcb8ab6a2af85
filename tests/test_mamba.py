"""Mamba backbone: the chunked scan against the plain sequential reference (outputs and
gradients), recurrent step mode against the full scan, mamba-ssm parameter names."""

import pytest
import torch

from seqmodels.backbones.attention import AttentionSpec
from seqmodels.backbones.mamba import (
    MambaBackbone,
    MambaMixer,
    selective_scan,
    selective_scan_ref,
)

# float64 throughout: both scans do the same arithmetic in a different order, so they
# agree to rounding (stated tolerance 1e-10); float32 agreement is checked at 1e-4.
TOL64 = 1e-10


def _inputs(dtype, b=2, d=6, n=4, L=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return {
        "u": r(b, d, L),
        "delta": r(b, d, L),
        "A": -torch.rand(d, n, generator=g, dtype=dtype) * 4,
        "B": r(b, n, L),
        "C": r(b, n, L),
        "D": r(d),
        "z": r(b, d, L),
        "delta_bias": r(d),
    }


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_scan_matches_reference_outputs_and_grads(chunk):
    ins = {k: v.requires_grad_() for k, v in _inputs(torch.float64).items()}
    y_ref, h_ref = selective_scan_ref(**ins, delta_softplus=True, return_last_state=True)
    y, h = selective_scan(**ins, delta_softplus=True, return_last_state=True, chunk_size=chunk)
    assert torch.allclose(y, y_ref, atol=TOL64, rtol=0)
    assert torch.allclose(h, h_ref, atol=TOL64, rtol=0)
    go = torch.randn_like(y)
    g_ref = torch.autograd.grad(y_ref, list(ins.values()), go)
    g = torch.autograd.grad(y, list(ins.values()), go)
    for name, a, b in zip(ins, g, g_ref):
        assert torch.allclose(a, b, atol=TOL64, rtol=0), name


def test_scan_float32_close_to_float64_reference():
    ins64 = _inputs(torch.float64, L=200)
    y64 = selective_scan_ref(**ins64, delta_softplus=True)
    y32 = selective_scan(**{k: v.float() for k, v in ins64.items()}, delta_softplus=True)
    assert y32.dtype == torch.float32
    assert torch.allclose(y32.double(), y64, atol=1e-4, rtol=1e-4)


def test_strong_decay_stays_finite():
    """Decays of e^-1000 over a sequence (large dt * A) must not overflow anything."""
    ins = _inputs(torch.float32, L=50)
    ins["delta"] = ins["delta"].abs() * 50
    y = selective_scan(**ins)
    assert torch.isfinite(y).all()
    assert torch.allclose(y, selective_scan_ref(**ins), atol=1e-4, rtol=1e-4)


def test_step_mode_equals_full_scan():
    torch.manual_seed(0)
    m = MambaMixer(16, d_state=8).double()
    h = torch.randn(2, 12, 16, dtype=torch.float64)
    full = m(h)
    # Prefill the first 5 tokens, then one token at a time.
    state: dict = {}
    pre = m(h[:, :5], state)
    steps = [m.step(h[:, t], state) for t in range(5, 12)]
    got = torch.cat([pre, torch.stack(steps, 1)], 1)
    assert torch.allclose(got, full, atol=1e-10)


def test_backbone_cache_matches_full_forward():
    torch.manual_seed(0)
    bb = MambaBackbone(d_model=16, n_layers=2, bidirectional=True).double()
    h = torch.randn(3, 9, 16, dtype=torch.float64)
    full = bb(h, "causal")
    cache = bb.new_cache(3, h.device, h.dtype)
    a = bb(h[:, :4], "causal", cache)
    b = torch.cat([bb(h[:, t : t + 1], "causal", cache) for t in range(4, 9)], 1)
    assert cache.pos == 9
    assert torch.allclose(torch.cat([a, b], 1), full, atol=1e-10)


def test_bidirectional_sees_the_future_only_when_asked():
    torch.manual_seed(0)
    bb = MambaBackbone(d_model=16, n_layers=1, bidirectional=True)
    h = torch.randn(1, 10, 16)
    h2 = h.clone()
    h2[:, -1] += 1.0  # change only the last token
    causal = (bb(h, "causal") - bb(h2, "causal"))[:, :-1].abs().max()
    both = (bb(h, "bidirectional") - bb(h2, "bidirectional"))[:, :-1].abs().max()
    assert causal == 0
    assert both > 1e-4


def test_bidirectional_respects_padding():
    torch.manual_seed(0)
    bb = MambaBackbone(d_model=8, n_layers=1, bidirectional=True).double()
    h = torch.randn(1, 6, 8, dtype=torch.float64)
    padded = torch.cat([h, torch.randn(1, 3, 8, dtype=torch.float64)], 1)
    pad = torch.tensor([[True] * 6 + [False] * 3])
    alone = bb(h, "bidirectional")
    with_pad = bb(padded, AttentionSpec("bidirectional", pad=pad))[:, :6]
    assert torch.allclose(alone, with_pad, atol=1e-10)


def test_parameter_names_match_mamba_ssm():
    m = MambaMixer(32)
    names = {k for k, _ in m.named_parameters()}
    # mamba_ssm.modules.mamba_simple.Mamba with default arguments (bias=False, conv_bias=True)
    expected = {
        "A_log",
        "D",
        "in_proj.weight",
        "conv1d.weight",
        "conv1d.bias",
        "x_proj.weight",
        "dt_proj.weight",
        "dt_proj.bias",
        "out_proj.weight",
    }
    assert names == expected
    assert m.in_proj.weight.shape == (128, 32)
    assert m.conv1d.weight.shape == (64, 1, 4)
    assert m.x_proj.weight.shape == (2 + 32, 64)  # dt_rank = ceil(32 / 16) = 2, d_state 16
    assert m.dt_proj.weight.shape == (64, 2)
    assert m.A_log.shape == (64, 16)
    bb = MambaBackbone(d_model=32, n_layers=2, bidirectional=False)
    keys = set(bb.state_dict())
    assert "layers.1.mixer.in_proj.weight" in keys and "norm_f.weight" in keys


def test_dt_init_survives_generic_linear_init():
    """A generic pass over every nn.Linear (the model's init_normal: normal(0.02) weights,
    zero biases) must leave Mamba's dt bias (softplus^-1 of dt in [1e-3, 0.1]) alone. An
    nn.Linear dt_proj would get bias 0, i.e. dt = softplus(0) = 0.69."""
    from seqmodels.model import init_normal

    torch.manual_seed(0)
    bb = MambaBackbone(d_model=32, n_layers=2)
    bb.apply(init_normal)
    for layer in bb.layers:
        for mixer in (layer.mixer, layer.mixer_bwd):
            dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
            assert dt.min() >= 1e-3 - 1e-7 and dt.max() <= 0.1 + 1e-6
            assert dt.max() / dt.min() > 10  # log-uniform over the range, not one value
            torch.testing.assert_close(mixer.A_log.exp()[0].detach(), torch.arange(1.0, 17.0))


def test_cpu_forward_without_mamba_ssm():
    m = MambaMixer(16)
    x = torch.randn(1, 5, 16, requires_grad=True)
    m(x).sum().backward()  # CPU tensors never take the fused path, installed or not
    assert torch.isfinite(x.grad).all()
