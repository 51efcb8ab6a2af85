import pytest
import torch

from seqmodels.blocks import (
    CrossAttention,
    FourierFeatures,
    NestedDropout,
    PatchEmbed,
    QueryDecoder,
    QueryEncoder,
    SelfAttentionStack,
    register_attention,
)


def test_register_mask_matrix():
    spec = register_attention(n_patches=3, n_registers=2)
    assert spec.kind == "custom"
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(spec.allowed, expected)


def test_registers_causal_patches_bidirectional_in_a_stack():
    torch.manual_seed(0)
    embed = PatchEmbed(image_size=8, patch_size=4, in_channels=1, d_model=32, n_registers=4)
    stack = SelfAttentionStack(32, 4, n_layers=2, rope=True)
    images = torch.randn(2, 1, 8, 8)
    h = embed(images)
    assert h.shape == (2, 4 + 4, 32) and embed.n_patches == 4
    out = stack(h, embed.mask)
    # Changing register 2 leaves the patches and registers 0, 1 untouched, changes 2 and 3.
    h2 = h.clone()
    h2[:, 4 + 2] += 1.0
    out2 = stack(h2, embed.mask)
    assert torch.allclose(out[:, : 4 + 2], out2[:, : 4 + 2], atol=1e-6)
    assert not torch.allclose(out[:, 4 + 2 :], out2[:, 4 + 2 :], atol=1e-4)
    # Changing one patch changes every patch state (bidirectional) and every register.
    h3 = h.clone()
    h3[:, 0] += 1.0
    out3 = stack(h3, embed.mask)
    assert ((out3 - out).abs().amax(-1) > 1e-4).all()
    with pytest.raises(ValueError, match="divisible"):
        PatchEmbed(image_size=10, patch_size=4, in_channels=1, d_model=8)


def test_cross_attention_ignores_padded_keys():
    torch.manual_seed(0)
    attn = CrossAttention(16, 2, d_context=8)
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 5, 8)
    pad = torch.tensor([[True] * 5, [True, True, False, False, False]])
    out = attn(x, ctx, pad)
    ctx2 = ctx.clone()
    ctx2[1, 2:] = 100.0
    assert torch.allclose(attn(x, ctx2, pad), out, atol=1e-6)
    assert not torch.allclose(attn(x, ctx2), attn(x, ctx), atol=1e-3)


def test_query_encoder_is_a_set_function():
    torch.manual_seed(0)
    enc = QueryEncoder(d_model=32, n_queries=6, d_input=3, n_heads=4, n_layers=2)
    points = torch.randn(2, 50, 3)
    out = enc(points)
    assert out.shape == (2, 6, 32)
    perm = torch.randperm(50)
    assert torch.allclose(enc(points[:, perm]), out, atol=1e-5)
    # Block-causal levels among queries: 1 then 2 then 3 queries.
    level = torch.tensor([0, 1, 1, 2, 2, 2])
    from seqmodels.backbones.attention import AttentionSpec

    spec = AttentionSpec("custom", allowed=level[None, :] <= level[:, None])
    assert enc(points, mask=spec).shape == (2, 6, 32)


def test_query_decoder_queries_are_independent():
    torch.manual_seed(0)
    dec = QueryDecoder(d_model=32, d_pos=2, d_out=1, n_heads=4, n_layers=2, n_freqs=4)
    tokens = torch.randn(2, 7, 32)
    pos = torch.rand(2, 20, 2)
    out = dec(tokens, pos)
    assert out.shape == (2, 20, 1)
    assert torch.allclose(dec(tokens, pos[:, 5:9]), out[:, 5:9], atol=1e-6)
    assert FourierFeatures(3, 4).d_out == 3 * 9


def test_nested_dropout_keeps_prefix():
    torch.manual_seed(0)
    nd = NestedDropout(8, mode="uniform")
    tokens = torch.randn(16, 10, 8)
    out, k = nd(tokens, generator=torch.Generator().manual_seed(1))
    assert out.shape == tokens.shape and k.shape == (16,)
    assert (k >= 1).all() and (k <= 10).all()
    for row in range(16):
        kk = int(k[row])
        assert torch.equal(out[row, :kk], tokens[row, :kk])
        assert torch.equal(out[row, kk:], nd.mask_token.detach().expand(10 - kk, 8))
    out.sum().backward()
    assert nd.mask_token.grad is not None
    # A given k applies to every row; eval mode keeps everything.
    out3, k3 = nd(tokens, k=3)
    assert (k3 == 3).all() and torch.equal(out3[:, :3], tokens[:, :3])
    nd.eval()
    out_eval, k_eval = nd(tokens)
    assert torch.equal(out_eval, tokens) and (k_eval == 10).all()


def test_nested_dropout_choices():
    assert NestedDropout(4, "pow2").choices(16).tolist() == [1, 2, 4, 8, 16]
    assert NestedDropout(4, "pow2").choices(12).tolist() == [1, 2, 4, 8, 12]
    assert NestedDropout(4, "pow2", min_keep=2).choices(8).tolist() == [2, 4, 8]
    assert NestedDropout(4, "uniform", min_keep=3).choices(5).tolist() == [3, 4, 5]
    ks = NestedDropout(4, "pow2").sample_k(2000, 16, torch.Generator().manual_seed(0))
    assert set(ks.tolist()) == {1, 2, 4, 8, 16}
    with pytest.raises(ValueError, match="mode"):
        NestedDropout(4, "exponential")
