import pytest
import torch

from seqmodels.training import SeqLM
from seqmodels.objectives import Mixture, NextScale, _interp, build_objective


def _batch(B=4, L=10, V=12, pad_last=3):
    ids = torch.randint(6, V, (B, L))
    pad = torch.ones(B, L, dtype=torch.bool)
    pad[0, L - pad_last :] = False
    ids[~pad] = 0
    return {"ids": ids, "pad": pad}


def gen():
    return torch.Generator().manual_seed(0)


def test_next_token_shifts_and_ignores_pads():
    b = _batch()
    (o,) = build_objective("next_token")(b, gen())
    assert torch.equal(o.inputs, b["ids"][:, :-1]) and torch.equal(o.targets, b["ids"][:, 1:])
    assert torch.equal(o.weights.bool(), b["pad"][:, 1:])
    assert o.mask.kind == "causal" and o.blank is None


def test_next_token_respects_loss_mask():
    b = _batch(pad_last=0)
    b["loss_mask"] = torch.zeros_like(b["pad"])
    b["loss_mask"][:, -2:] = True
    (o,) = build_objective("next_token")(b, gen())
    assert o.weights.sum() == 2 * 4 and o.weights[:, -2:].all()


def test_random_token_blanks_ratio_and_weights_only_blanks():
    b = _batch(B=64, L=50, pad_last=10)
    (o,) = build_objective({"name": "random_token", "ratio": 0.4})(b, gen())
    assert o.mask.kind == "bidirectional"
    assert not (o.blank & ~b["pad"]).any()
    frac = o.blank.sum() / b["pad"].sum()
    assert 0.35 < frac < 0.45
    assert torch.equal(o.weights.bool(), o.blank) and torch.equal(o.targets, b["ids"])


def test_next_all_keeps_a_nonempty_prefix_and_predicts_the_rest():
    b = _batch(B=32, L=12, pad_last=4)
    (o,) = build_objective("next_all")(b, gen())
    lengths = b["pad"].sum(1)
    for r in range(32):
        k = int((~o.blank[r, : lengths[r]]).sum())
        assert 1 <= k < lengths[r]
        assert not o.blank[r, :k].any() and o.blank[r, k : lengths[r]].all()
    assert torch.equal(o.weights.bool(), o.blank)


def test_meap_blanks_inputs_but_keeps_next_token_loss():
    b = _batch(B=32, L=40, pad_last=0)
    (o,) = build_objective({"name": "meap", "ratio": 0.15})(b, gen())
    assert torch.equal(o.targets, b["ids"][:, 1:]) and o.weights.all()
    assert 0.08 < o.blank.float().mean() < 0.22 and not o.blank[:, 0].any()


def test_next_scale_inputs_and_block_causal_mask():
    obj = NextScale([1, 2, 4])
    ids = torch.arange(7)[None] + 6
    (o,) = obj({"ids": ids}, gen())
    # Block 1 reads scale 0 at its parents, block 2 reads scale 1.
    assert o.inputs[0, 1:].tolist() == [6, 6, 7, 7, 8, 8]
    assert o.blank[0].tolist() == [True] + [False] * 6
    allowed = o.mask.allowed
    assert allowed[1, 2] and not allowed[2, 3] and allowed[6, 0] and allowed[3, 6]
    with pytest.raises(ValueError, match="expects 7 tokens"):
        obj({"ids": torch.zeros(1, 5, dtype=torch.long)}, gen())


def test_next_scale_prediction_does_not_see_its_own_scale():
    torch.manual_seed(0)
    m = SeqLM(vocab_size=20, d_model=32, n_layers=2, n_heads=4, max_len=16).eval()
    obj = NextScale([1, 2, 4])
    ids = torch.randint(6, 20, (1, 7))
    (o,) = obj({"ids": ids}, gen())
    base = m(ids=o.inputs, mask=o.mask, blank=o.blank)
    ids2 = ids.clone()
    ids2[0, 3:] = (ids2[0, 3:] + 1 - 6) % 14 + 6  # change the finest scale only
    (o2,) = obj({"ids": ids2}, gen())
    out2 = m(ids=o2.inputs, mask=o2.mask, blank=o2.blank)
    torch.testing.assert_close(base, out2)  # nothing may depend on the finest tokens


def test_mixture_modes_and_schedule():
    b = _batch(B=16, L=10, pad_last=0)
    mix = Mixture({"next_token": 1.0, "next_all": 1.0}, mode="sum")
    outs = mix(b, gen())
    assert [o.name for o in outs] == ["next_token", "next_all"]
    assert [o.scale for o in outs] == [0.5, 0.5]
    mix = Mixture(
        [{"name": "random_token", "ratio": 0.2, "weight": 1}, {"name": "next_all"}], mode="sample"
    )
    outs = mix(b, gen())
    assert sum(o.inputs.shape[0] for o in outs) == 16
    assert sum(o.scale for o in outs) == pytest.approx(1.0)
    sched = Mixture({"random_token": [[0, 1], [1, 0]], "next_token": [[0, 0], [1, 1]]})
    assert sched.weights(0.0).tolist() == [1.0, 0.0]
    assert sched.weights(1.0).tolist() == [0.0, 1.0]
    assert _interp([[0, 0], [1, 2]], 0.25) == 0.5


def test_loss_ignores_zero_weight_positions():
    torch.manual_seed(0)
    m = SeqLM(vocab_size=12, d_model=16, n_layers=1, n_heads=2, max_len=16)
    b = _batch()
    (o,) = build_objective("next_token")(b, gen())
    loss = m.part_loss(o)
    o.targets = torch.where(o.weights.bool(), o.targets, torch.full_like(o.targets, 7))
    assert torch.equal(m.part_loss(o), loss)


def test_continuous_tokens_use_mse():
    torch.manual_seed(0)
    m = SeqLM(d_input=5, d_model=16, n_layers=1, n_heads=2, max_len=16)
    x = torch.randn(2, 8, 5)
    (o,) = build_objective("random_token")({"x": x}, gen())
    loss = m.part_loss(o)
    assert loss > 0 and m(x=x).shape == (2, 8, 5)


def test_unknown_objective_is_named():
    with pytest.raises(ValueError, match="unknown objective 'nope'"):
        build_objective("nope")
    with pytest.raises(ValueError, match="random_token"):
        build_objective({"name": "random_token", "bogus": 1})
