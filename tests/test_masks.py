"""Every backbone honours every attention spec exactly (measured by which inputs each
output depends on) or refuses it; the KV cache takes the spec's rows."""

import pytest
import torch

from seqmodels.backbones import AttentionSpec, Transformer
from seqmodels.backbones.mamba import MambaBackbone

BLOCK = torch.tensor([0, 1, 1, 2, 2, 2])
BLOCK_CAUSAL = BLOCK[None, :] <= BLOCK[:, None]


def _transformer():
    return Transformer(d_model=32, n_layers=2, n_heads=4, max_len=64)


def _mamba():
    return MambaBackbone(d_model=32, n_layers=2, bidirectional=True)


@pytest.fixture(params=["transformer", "mamba"])
def net(request):
    torch.manual_seed(0)
    return {"transformer": _transformer, "mamba": _mamba}[request.param]().double().eval()


def _dependence(net, h, spec):
    """dep[i, j]: does output i change when input j changes?"""
    L = h.shape[1]
    base = net(h, spec)
    dep = torch.zeros(L, L, dtype=torch.bool)
    for j in range(L):
        h2 = h.clone()
        h2[:, j] += 1.0
        dep[:, j] = (net(h2, spec) - base).abs().amax(-1)[0] > 1e-9
    return dep


def _h(L=6):
    return torch.randn(1, L, 32, dtype=torch.float64)


def test_causal_sees_only_the_past(net):
    dep = _dependence(net, _h(), AttentionSpec("causal"))
    assert torch.equal(dep, torch.tril(torch.ones(6, 6, dtype=torch.bool)))


def test_bidirectional_sees_everything(net):
    dep = _dependence(net, _h(), AttentionSpec("bidirectional"))
    assert dep.all()


def test_prefix_is_bidirectional_then_causal(net):
    spec = AttentionSpec("prefix", prefix_len=torch.tensor([3]))
    dep = _dependence(net, _h(), spec)
    expected = torch.tril(torch.ones(6, 6, dtype=torch.bool))
    expected[:, :3] = True
    assert torch.equal(dep, expected)


def test_block_causal_custom_mask(net):
    dep = _dependence(net, _h(), AttentionSpec("custom", allowed=BLOCK_CAUSAL))
    assert torch.equal(dep, BLOCK_CAUSAL)


def test_padded_keys_are_ignored(net):
    pad = torch.tensor([[True] * 4 + [False] * 2])
    dep = _dependence(net, _h(), AttentionSpec("bidirectional", pad=pad))
    assert not dep[:4, 4:].any() and dep[:4, :4].all()


def test_block_causal_with_padding(net):
    pad = torch.tensor([[True] * 5 + [False]])
    dep = _dependence(net, _h(), AttentionSpec("custom", allowed=BLOCK_CAUSAL, pad=pad))
    assert torch.equal(dep[:5, :5], BLOCK_CAUSAL[:5, :5]) and not dep[:5, 5].any()


def test_mamba_refuses_what_a_scan_cannot_honour():
    torch.manual_seed(0)
    h = torch.randn(1, 6, 32)
    anti = ~torch.eye(6, dtype=torch.bool) | torch.eye(6, dtype=torch.bool).flip(0)
    with pytest.raises(ValueError, match="mamba .* custom .* block-causal"):
        _mamba()(h, AttentionSpec("custom", allowed=anti))
    left_pad = torch.tensor([[False, True, True, True, True, True]])
    with pytest.raises(ValueError, match="mamba .* bidirectional .* end of each row"):
        _mamba()(h, AttentionSpec("bidirectional", pad=left_pad))
    forward_only = MambaBackbone(d_model=32, n_layers=1, bidirectional=False)
    for spec in (
        AttentionSpec("custom", allowed=BLOCK_CAUSAL),
        AttentionSpec("bidirectional"),
        AttentionSpec("prefix", prefix_len=torch.tensor([3])),
    ):
        with pytest.raises(ValueError, match=f"mamba .* {spec.kind} .* own block"):
            forward_only(h, spec)
    # What a forward scan does honour: causal, and a prefix of one position.
    forward_only(h, AttentionSpec("prefix", prefix_len=torch.tensor([1])))
    forward_only(h, AttentionSpec("custom", allowed=torch.tril(torch.ones(6, 6)).bool()))


def test_condition_prefix_visible_and_not_attending():
    spec = AttentionSpec("custom", allowed=torch.ones(4, 4, dtype=torch.bool)).with_prefix(2)
    m = spec.dense(6, torch.device("cpu"))[0, 0]
    assert m[:, :2].all() and not m[:2, 2:].any()


def _scaled(net, std=0.5):
    """Weights large enough that attention is far from uniform, so RoPE positions and
    masks change the outputs well above the comparison tolerance."""
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() >= 2:
                p.normal_(0, std)
    return net


def _cached(net, h, calls):
    """Run h through a cache in chunks [a, b) with spec(b) for each chunk."""
    cache = net.new_cache(h.shape[0], h.device, h.dtype)
    return torch.cat([net(h[:, a:b], spec, cache) for a, b, spec in calls], 1)


def test_kv_cache_matches_full_pass_and_positions_matter():
    torch.manual_seed(0)
    net = _scaled(_transformer().double().eval())
    h = torch.randn(2, 9, 32, dtype=torch.float64)
    full = net(h)
    got = _cached(net, h, [(0, 5, "causal")] + [(i, i + 1, "causal") for i in range(5, 9)])
    torch.testing.assert_close(got, full, atol=1e-9, rtol=0)
    # The comparison can see a position error: shifted RoPE tables move the outputs.
    net.cos, net.sin = net.cos.roll(1, 0), net.sin.roll(1, 0)
    assert (net(h) - full).abs().max() > 1e-2


def test_kv_cache_honours_block_causal_prefix_and_pad_masks():
    torch.manual_seed(0)
    net = _scaled(_transformer().double().eval())
    h = torch.randn(2, 6, 32, dtype=torch.float64)
    # Block-causal, one block per call (next-scale generation): absolute-position specs.
    full = net(h, AttentionSpec("custom", allowed=BLOCK_CAUSAL))
    calls = [
        (a, b, AttentionSpec("custom", allowed=BLOCK_CAUSAL[:b, :b]))
        for a, b in [(0, 1), (1, 3), (3, 6)]
    ]
    torch.testing.assert_close(_cached(net, h, calls), full, atol=1e-9, rtol=0)
    # A prefix prefilled at once, then causal steps; row 1 padded at the end.
    P = torch.tensor([3, 3])
    pad = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    full = net(h, AttentionSpec("prefix", prefix_len=P, pad=pad))
    calls = [(0, 3, AttentionSpec("prefix", prefix_len=P, pad=pad[:, :3]))] + [
        (i, i + 1, AttentionSpec("prefix", prefix_len=P, pad=pad[:, : i + 1])) for i in range(3, 6)
    ]
    got = _cached(net, h, calls)
    torch.testing.assert_close(got[0], full[0], atol=1e-9, rtol=0)
    torch.testing.assert_close(got[1, :4], full[1, :4], atol=1e-9, rtol=0)


def test_kv_cache_refuses_masks_it_cannot_honour():
    net = _transformer().eval()
    h = torch.randn(1, 6, 32)
    cache = net.new_cache(1, h.device, h.dtype)
    net(h[:, :3], "bidirectional", cache)
    with pytest.raises(ValueError, match="bidirectional mask lets cached positions"):
        net(h[:, 3:], "bidirectional", cache)
    with pytest.raises(ValueError, match="custom mask is"):
        net(h[:, 3:], AttentionSpec("custom", allowed=BLOCK_CAUSAL[:3, :3]), cache)


def test_mamba_cache_honours_blocks_inside_a_call():
    torch.manual_seed(0)
    net = _mamba().double().eval()
    h = torch.randn(2, 6, 32, dtype=torch.float64)
    full = net(h, AttentionSpec("custom", allowed=BLOCK_CAUSAL))
    calls = [
        (a, b, AttentionSpec("custom", allowed=BLOCK_CAUSAL[:b, :b]))
        for a, b in [(0, 1), (1, 3), (3, 6)]
    ]
    torch.testing.assert_close(_cached(net, h, calls), full, atol=1e-10, rtol=0)
    cache = net.new_cache(2, h.device, h.dtype)
    net(h[:, :2], "causal", cache)
    with pytest.raises(ValueError, match="spans the cached positions"):
        net(h[:, 2:4], AttentionSpec("custom", allowed=BLOCK_CAUSAL[:4, :4]), cache)


def test_too_long_raises():
    with pytest.raises(ValueError, match="max_len"):
        _transformer()(torch.randn(1, 65, 32))
