"""The FlexTok-style tokenizer: prefix-causal encoding, nested-dropout decoding, the grid
comparison, the flow decoder, and a few training steps beating the mean image."""

import pytest
import torch

from domains.images.splits import load_split
from domains.images.tokenizer import ImageTokenizer, unpatchify


def _tok(**kw):
    torch.manual_seed(0)
    args = dict(
        image_size=8,
        patch_size=2,
        n_tokens=16,
        levels=(5, 5, 5),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        n_heads=2,
    )
    return ImageTokenizer(**{**args, **kw}).eval()


def test_register_i_sees_only_earlier_registers():
    tok = _tok()
    x = torch.rand(4, 1, 8, 8)
    ids = tok.encode({"image": x})
    assert ids.shape == (4, 16) and ids.min() >= 0 and ids.max() < tok.codebook_size
    with torch.no_grad():
        tok.embed.registers[8:] += 5.0  # change registers after the 8th
    after = tok.encode({"image": x})
    assert torch.equal(after[:, :8], ids[:, :8])
    assert not torch.equal(after[:, 8:], ids[:, 8:])


def test_decode_uses_only_the_first_k_ids():
    tok = _tok()
    ids = tok.encode({"image": torch.rand(3, 1, 8, 8)})
    a = tok.decode(ids[:, :4])
    other = ids.clone()
    other[:, 4:] = (other[:, 4:] + 7) % tok.codebook_size
    assert a.shape == (3, 1, 8, 8) and a.min() >= 0 and a.max() <= 1
    assert torch.allclose(a, tok.decode(other[:, :4]))
    assert not torch.allclose(a, tok.decode(ids[:, :5]))
    with pytest.raises(ValueError, match="1..16 ids"):
        tok.decode(ids[:, :0])


def test_grid_prefix_describes_only_the_first_patches():
    tok = _tok(layout="grid")
    x = torch.rand(2, 1, 8, 8)
    ids = tok.encode({"image": x})
    assert ids.shape == (2, 16)  # one token per 2x2 patch
    y = x.clone()
    y[:, :, 4:] = torch.rand(2, 1, 4, 8)  # new bottom half: patches 8..15
    with torch.no_grad():  # continuous features: a change too small to flip a code shows
        a, b = tok._features(x), tok._features(y)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)
    assert not torch.allclose(a[:, 8:], b[:, 8:], atol=1e-3)
    with pytest.raises(ValueError, match="n_tokens must be 16"):
        _tok(layout="grid", n_tokens=8)


def test_flow_decoder_is_seeded_and_bounded():
    tok = _tok(decoder="flow", flow_steps=3)
    ids = tok.encode({"image": torch.rand(2, 1, 8, 8)})
    a = tok.decode(ids, generator=torch.Generator().manual_seed(1))
    b = tok.decode(ids, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    loss, logs, _ = tok.train().loss({"image": torch.rand(4, 1, 8, 8)})
    assert "flow_mse" in logs and loss.requires_grad


def test_x_prediction_lands_on_its_clean_image():
    """flow_predict "x": the last Euler step (t = 1 - dt) ends exactly on the decoder's
    clean-image prediction, whatever the noise it started from."""
    tok = _tok(decoder="flow", flow_predict="x", flow_steps=1)
    ids = tok.encode({"image": torch.rand(2, 1, 8, 8)})
    tokens = tok.from_code(tok.quantizer.indices_to_codes(ids))
    with torch.no_grad():
        got = tok.decode_tokens(tokens, 16, torch.Generator().manual_seed(1))
        x0 = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        patches = tok._decode_patches(tokens, 16, x0, torch.zeros(2))
    assert torch.allclose(got, unpatchify(patches, 2, (8, 8)), atol=1e-5)
    loss, _, _ = tok.train().loss({"image": torch.rand(4, 1, 8, 8)})
    assert torch.isfinite(loss) and loss.requires_grad
    with pytest.raises(ValueError, match="flow_predict"):
        _tok(decoder="flow", flow_predict="eps")


def test_frozen_encoder_remembers_each_images_codes():
    """A frozen encoder's codes are remembered per image (by content, in any batch order)
    and equal the encoder's own; the loss is the same from memory as from the encoder."""
    tok = _tok(decoder="flow", freeze_encoder=True).train()
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        codes, ids = tok._codes(x)
    calls, encoder = [], tok._codes
    tok._codes = lambda images: calls.append(len(images)) or encoder(images)
    got = tok._remembered_codes(x)
    assert calls == [6] and torch.equal(got[0], codes) and torch.equal(got[1], ids)
    perm = torch.tensor([5, 0, 3])
    got = tok._remembered_codes(x[perm])
    assert calls == [6]  # every image seen: the encoder did not run
    assert torch.equal(got[0], codes[perm]) and torch.equal(got[1], ids[perm])
    tok._remembered_codes(torch.cat([x[:2], torch.rand(1, 1, 8, 8)]))
    assert calls == [6, 3]  # one new image: the batch goes through the encoder
    batch = {"image": x[perm]}
    a = tok.loss(batch, torch.Generator().manual_seed(2))[0]
    tok._frozen_codes.clear()
    b = tok.loss(batch, torch.Generator().manual_seed(2))[0]
    assert calls == [6, 3, 3] and torch.equal(a, b)


def test_training_beats_the_mean_image_and_uses_the_codebook():
    x = torch.from_numpy(load_split("digits", "train").images)
    tok = _tok().train()
    opt = torch.optim.Adam(tok.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(len(x), (64,), generator=g)
        loss, _, ids = tok.loss({"image": x[idx]}, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    mean_mse = ((x - x.mean(0)) ** 2).mean()
    tok.eval()
    full = ((tok.reconstruct(x[:256], 16) - x[:256]) ** 2).mean()
    assert full < 0.8 * mean_mse
    assert ids.unique().numel() > 20
