import pytest
import torch

from seqmodels.backbones import AttentionSpec, Transformer


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Transformer(d_model=32, n_layers=2, n_heads=4, max_len=64).eval()


def _dependence(net, h, spec):
    """dep[i, j]: does output i change when input j changes?"""
    L = h.shape[1]
    base = net(h, spec)
    dep = torch.zeros(L, L, dtype=torch.bool)
    for j in range(L):
        h2 = h.clone()
        h2[:, j] += 1.0
        dep[:, j] = (net(h2, spec) - base).abs().amax(-1)[0] > 1e-6
    return dep


def test_causal_sees_only_the_past(net):
    dep = _dependence(net, torch.randn(1, 6, 32), AttentionSpec("causal"))
    assert torch.equal(dep, torch.tril(torch.ones(6, 6, dtype=torch.bool)))


def test_bidirectional_sees_everything(net):
    dep = _dependence(net, torch.randn(1, 6, 32), AttentionSpec("bidirectional"))
    assert dep.all()


def test_prefix_is_bidirectional_then_causal(net):
    spec = AttentionSpec("prefix", prefix_len=torch.tensor([3]))
    dep = _dependence(net, torch.randn(1, 6, 32), spec)
    expected = torch.tril(torch.ones(6, 6, dtype=torch.bool))
    expected[:, :3] = True
    assert torch.equal(dep, expected)


def test_block_causal_custom_mask(net):
    block = torch.tensor([0, 1, 1, 2, 2, 2])
    allowed = block[None, :] <= block[:, None]
    dep = _dependence(net, torch.randn(1, 6, 32), AttentionSpec("custom", allowed=allowed))
    assert torch.equal(dep, allowed)


def test_padded_keys_are_ignored(net):
    h = torch.randn(1, 6, 32)
    pad = torch.tensor([[True] * 4 + [False] * 2])
    dep = _dependence(net, h, AttentionSpec("bidirectional", pad=pad))
    assert not dep[:4, 4:].any() and dep[:4, :4].all()


def test_condition_prefix_visible_and_not_attending(net):
    spec = AttentionSpec("custom", allowed=torch.ones(4, 4, dtype=torch.bool)).with_prefix(2)
    m = spec.dense(6, torch.device("cpu"))[0, 0]
    assert m[:, :2].all() and not m[:2, 2:].any()


def test_kv_cache_matches_full_pass(net):
    h = torch.randn(2, 9, 32)
    full = net(h)
    cache = net.new_cache(2, h.device, h.dtype)
    parts = [net(h[:, :5], cache=cache)] + [net(h[:, i : i + 1], cache=cache) for i in range(5, 9)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_too_long_raises(net):
    with pytest.raises(ValueError, match="max_len"):
        net(torch.randn(1, 65, 32))
