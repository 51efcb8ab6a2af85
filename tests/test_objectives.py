import pytest
import torch

from seqmodels.model import ModelConfig, SeqModel
from seqmodels.objectives import Mixture, NextScale, _interp, build_objective, grid_parents
from seqmodels.training import SeqLM


def _batch(B=4, L=10, V=12, pad_last=3):
    ids = torch.randint(6, V, (B, L))
    pad = torch.ones(B, L, dtype=torch.bool)
    pad[0, L - pad_last :] = False
    ids[~pad] = 0
    return {"ids": ids, "pad": pad}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_next_token_shifts_and_ignores_pads():
    b = _batch()
    (o,) = build_objective("next_token")(b, gen())
    assert torch.equal(o.inputs, b["ids"][:, :-1]) and torch.equal(o.targets, b["ids"][:, 1:])
    assert torch.equal(o.weights.bool(), b["pad"][:, 1:])
    assert o.mask.kind == "causal" and o.blank is None


def test_random_token_blanks_ratio_and_weights_only_blanks():
    b = _batch(B=64, L=50, pad_last=10)
    (o,) = build_objective({"name": "random_token", "ratio": 0.4})(b, gen())
    assert o.mask.kind == "bidirectional"
    assert not (o.blank & ~b["pad"]).any()
    frac = o.blank.sum() / b["pad"].sum()
    assert 0.35 < frac < 0.45
    assert torch.equal(o.weights.bool(), o.blank) and torch.equal(o.targets, b["ids"])


def test_next_all_causal_predicts_every_next_token_from_the_last_visible_one():
    b = _batch(B=32, L=12, pad_last=4)
    (o,) = build_objective("next_all")(b, gen())
    assert o.mask.kind == "causal" and torch.equal(o.targets, b["ids"][:, 1:])
    lengths = b["pad"].sum(1)
    for r in range(32):
        n = int(lengths[r])
        k = int((~o.blank[r, : n - 1]).sum())  # the visible prefix
        assert 1 <= k < n
        assert not o.blank[r, :k].any() and o.blank[r, k : n - 1].all()
        # Positions k-1 .. n-2 predict tokens k .. n-1: the first from the last visible one.
        assert o.weights[r].nonzero().flatten().tolist() == list(range(k - 1, n - 1))


def test_next_all_bidirectional_predicts_the_blanked_suffix_itself():
    b = _batch(B=16, L=12, pad_last=4)
    (o,) = build_objective({"name": "next_all", "attention": "bidirectional"})(b, gen())
    assert o.mask.kind == "bidirectional" and torch.equal(o.targets, b["ids"])
    assert torch.equal(o.weights.bool(), o.blank) and not o.blank[:, 0].any()
    with pytest.raises(ValueError, match="causal or bidirectional"):
        build_objective({"name": "next_all", "attention": "prefix"})


def test_meap_blanks_inputs_but_keeps_next_token_loss():
    b = _batch(B=32, L=40, pad_last=0)
    (o,) = build_objective({"name": "meap", "ratio": 0.15})(b, gen())
    assert torch.equal(o.targets, b["ids"][:, 1:]) and o.weights.all()
    assert 0.08 < o.blank.float().mean() < 0.22 and not o.blank[:, 0].any()


def test_next_scale_inputs_and_block_causal_mask():
    obj = NextScale(shapes=[1, 2, 4])  # 1-D scales, declared as such
    ids = torch.arange(7)[None] + 6
    (o,) = obj({"ids": ids}, gen())
    # Block 1 reads scale 0 at its parents, block 2 reads scale 1.
    assert o.inputs[0, 1:].tolist() == [6, 6, 7, 7, 8, 8]
    assert o.blank[0].tolist() == [True] + [False] * 6
    allowed = o.mask.allowed
    assert allowed[1, 2] and not allowed[2, 3] and allowed[6, 0] and allowed[3, 6]
    with pytest.raises(ValueError, match="expects 7 tokens"):
        obj({"ids": torch.zeros(1, 5, dtype=torch.long)}, gen())


def test_grid_parents_on_2d_and_3d_grids():
    p = grid_parents([(1, 1), (2, 2), (4, 4)])
    assert p[0] == [0, 0, 0, 0]
    # 4x4 cell (y, x) -> 2x2 cell (y // 2, x // 2), raster order.
    assert p[1] == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]
    p3 = grid_parents([(1, 2, 2), (2, 4, 4)])[0]
    assert len(p3) == 32 and p3[0] == 0 and p3[2] == 1 and p3[8] == 2 and p3[16] == 0
    assert p3[31] == 3  # (1, 3, 3) -> (0, 1, 1)
    with pytest.raises(ValueError, match="one dimensionality"):
        grid_parents([(1, 1), (2, 2, 2)])


def test_next_scale_needs_shapes_or_parents():
    with pytest.raises(ValueError, match="grid shapes"):
        NextScale([1, 4, 16])  # 1-D or 2-D? The parents differ: refuse to guess.
    obj = NextScale(shapes=[[1, 1], [2, 2], [4, 4]])
    assert obj.sizes == [1, 4, 16] and obj.src[4:12].tolist() == [1, 1, 2, 2] * 2
    explicit = NextScale([1, 2], parents=[[0, 0]])
    assert explicit.src.tolist() == [0, 0]
    with pytest.raises(ValueError, match="must index scale 0"):
        NextScale([1, 2], parents=[[0, 1]])
    with pytest.raises(ValueError, match="do not match"):
        NextScale([1, 3], shapes=[1, 2])


# -- the alignment rule -------------------------------------------------------------------
ALL = [
    "next_token",
    {"name": "meap", "ratio": 0.5},
    {"name": "random_token", "ratio": 0.5},
    "next_all",
    {"name": "next_all", "attention": "bidirectional"},
]


def _distinct_batch(B, L, seed=0):
    """Every token of a row distinct, so a token names the position it came from."""
    g = gen(seed)
    ids = torch.stack([torch.randperm(40, generator=g)[:L] + 6 for _ in range(B)])
    pad = torch.ones(B, L, dtype=torch.bool)
    pad[: B // 4, L - 2 :] = False
    loss_mask = torch.rand(B, L, generator=g) < 0.8
    return {"ids": ids, "pad": pad, "loss_mask": loss_mask}


def _outputs(batch):
    """(output, scored positions of the batch it saw) for every objective and a mixture."""
    scored = batch["pad"] & batch["loss_mask"]
    outs = [(o, scored) for i, s in enumerate(ALL) for o in build_objective(s)(batch, gen(i))]
    mix = Mixture([{**(s if isinstance(s, dict) else {"name": s}), "weight": 1} for s in ALL])
    mix.mode = "sum"
    outs += [(o, scored) for o in mix(batch, gen(9))]
    L = batch["ids"].shape[1]
    unpadded = {**batch, "pad": torch.ones_like(batch["pad"])}  # next-scale has no padding
    ns = NextScale(shapes=[1, 2, L - 3])(unpadded, gen(7))
    return outs + [(o, batch["loss_mask"]) for o in ns]


@pytest.mark.parametrize("seed", [0, 1])
def test_every_objective_follows_the_alignment_rule(seed):
    """Causal: position i predicts token i+1; bidirectional / custom: position i predicts
    its own token. Either way no visible input carries the target, and the target counts
    only where pad and loss_mask allow."""
    b = _distinct_batch(32, 8, seed)
    t = b["ids"]
    for o, scored in _outputs(b):
        L = o.inputs.shape[1]
        shift = 1 if o.mask.kind in ("causal", "prefix") else 0
        p = torch.arange(L) + shift  # the position each state must predict
        assert L + shift <= t.shape[1], f"{o.name}: a causal state at the last token"
        assert torch.equal(o.targets, t[:, p]), f"{o.name} predicts another position"
        w = o.weights.bool()
        assert not (w & ~scored[:, p]).any(), f"{o.name} scores a pad / loss_mask-off token"
        vis = o.mask.matrix(L, torch.device("cpu")).expand(t.shape[0], L, L)
        shown = o.inputs if o.blank is None else torch.where(o.blank, -1, o.inputs)
        carries = (shown[:, None, :] == o.targets[:, :, None]) & vis  # (B, query, key)
        assert not carries[w].any(), f"{o.name}: a scored position sees its own target"
        assert w.any(), o.name


def test_no_two_objectives_disagree_on_the_same_input():
    """Key = (row, position, attention kind, what the position sees: each visible key's
    index and token, blank = -1). Equal keys must get equal targets across objectives."""
    b = _distinct_batch(256, 5, seed=3)
    seen: dict = {}
    shared = 0
    for o, _ in _outputs(b):
        L = o.inputs.shape[1]
        kind = "causal" if o.mask.kind in ("causal", "prefix") else "own"
        vis = o.mask.matrix(L, torch.device("cpu")).expand(o.inputs.shape[0], L, L)
        shown = o.inputs if o.blank is None else torch.where(o.blank, -1, o.inputs)
        for r, i in o.weights.nonzero().tolist():
            cols = vis[r, i].nonzero().flatten().tolist()
            key = (r, i, kind, tuple((j, int(shown[r, j])) for j in cols))
            target = int(o.targets[r, i])
            if key in seen and seen[key][0] != o.name:
                shared += 1
                assert seen[key][1] == target, f"{o.name} vs {seen[key][0]} at {key}"
            seen.setdefault(key, (o.name, target))
    assert shared > 100  # the comparison really happens (meap / next_all / next_token meet)


def test_every_objective_honours_loss_mask():
    b = _batch(B=8, L=10, pad_last=2)
    lm = torch.rand(8, 10, generator=gen(5)) < 0.5
    for i, spec in enumerate(ALL):
        (free,) = build_objective(spec)(b, gen(i))
        (masked,) = build_objective(spec)({**b, "loss_mask": lm}, gen(i))
        shift = 1 if free.mask.kind == "causal" else 0
        expected = free.weights * lm[:, shift:][:, : free.weights.shape[1]]
        assert torch.equal(masked.weights, expected), spec
    ns = NextScale(shapes=[2, 3])
    b5 = {"ids": torch.randint(6, 12, (3, 5)), "loss_mask": lm[:3, :5]}
    (o,) = ns(b5, gen())
    assert torch.equal(o.weights.bool(), lm[:3, :5])


# -- next-scale: no block sees its own scale, on every backbone ---------------------------
SCALES = [[1, 1], [2, 2], [3, 3]]  # 1 + 4 + 9 = 14 tokens


def _model(backbone, **backbone_args):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=20,
        d_model=32,
        n_layers=2,
        n_heads=4,
        max_len=16,
        backbone=backbone,
        backbone_args=backbone_args,
    )
    return SeqModel(cfg).double().eval()


@pytest.mark.parametrize("backbone,args", [("transformer", {}), ("mamba", {"bidirectional": True})])
def test_next_scale_block_s_does_not_see_scale_s(backbone, args):
    m = _model(backbone, **args)
    obj = NextScale(shapes=SCALES)
    ids = torch.randint(6, 20, (2, 14), generator=gen())
    (o,) = obj({"ids": ids}, gen())
    base = m(ids=o.inputs, mask=o.mask, blank=o.blank)
    starts = obj.starts
    for s in range(len(SCALES) - 1):  # the finest scale is never an input
        ids2 = ids.clone()
        ids2[:, starts[s] : starts[s + 1]] = (ids2[:, starts[s] : starts[s + 1]] - 5) % 14 + 6
        (o2,) = obj({"ids": ids2}, gen())
        out = m(ids=o2.inputs, mask=o2.mask, blank=o2.blank)
        upto = starts[s + 1]
        torch.testing.assert_close(out[:, :upto], base[:, :upto], atol=1e-12, rtol=0)
        assert (out[:, upto:] - base[:, upto:]).abs().max() > 1e-6  # block s+1 reads it


def test_next_scale_on_a_forward_only_mamba_is_refused():
    m = _model("mamba", bidirectional=False)
    (o,) = NextScale(shapes=SCALES)({"ids": torch.randint(6, 20, (1, 14))}, gen())
    with pytest.raises(ValueError, match="mamba .* custom .* own block"):
        m(ids=o.inputs, mask=o.mask, blank=o.blank)


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


def test_continuous_tokens_use_mse_on_the_blanked_positions():
    torch.manual_seed(0)
    m = SeqLM(d_input=5, d_model=16, n_layers=1, n_heads=2, max_len=16)
    x = torch.randn(2, 8, 5)
    (o,) = build_objective("random_token")({"x": x}, gen())
    pred = m(x=o.inputs, mask=o.mask, blank=o.blank)
    assert pred.shape == (2, 8, 5)
    expected = (pred - x).pow(2).mean(-1)[o.blank].mean()
    torch.testing.assert_close(m.part_loss(o), expected)


def test_unknown_objective_is_named():
    with pytest.raises(ValueError, match="unknown objective 'nope'"):
        build_objective("nope")
    with pytest.raises(ValueError, match="random_token"):
        build_objective({"name": "random_token", "bogus": 1})
    with pytest.raises(ValueError, match="loss_on"):  # dropped: it scored visible copies
        build_objective({"name": "random_token", "loss_on": "all"})


def test_attention_pad_only_where_the_batch_has_padding():
    padded = _batch()
    full = {**_batch(pad_last=0)}
    bare = {"ids": full["ids"]}  # no pad key: nothing to check (no wait on a device)
    for name in ("random_token", {"name": "next_all", "attention": "bidirectional"}):
        obj = build_objective(name)
        assert obj(padded, gen())[0].mask.pad is not None
        assert obj(full, gen())[0].mask.pad is None
        assert obj(bare, gen())[0].mask.pad is None
    # causal: right padding needs no mask (queries see only earlier, real keys); padding
    # anywhere else keeps it
    causal = build_objective("next_token")
    assert causal(padded, gen())[0].mask.pad is None
    assert causal(full, gen())[0].mask.pad is None and causal(bare, gen())[0].mask.pad is None
    left = {**padded, "pad": padded["pad"].flip(1), "ids": padded["ids"].flip(1)}
    assert causal(left, gen())[0].mask.pad is not None


def test_right_padded_causal_loss_is_the_masked_loss():
    """The fast path's loss equals the one computed with the explicit padding mask."""
    from dataclasses import replace

    torch.manual_seed(0)
    m = SeqLM(vocab_size=12, d_model=16, n_layers=2, n_heads=2, max_len=16)
    b = _batch(B=6, L=12, pad_last=5)
    b["pad"][3, 9:] = False
    (o,) = build_objective("next_token")(b, gen())
    assert o.mask.pad is None
    masked = replace(o, mask=replace(o.mask, pad=b["pad"][:, :-1]))
    torch.testing.assert_close(m.part_loss(o), m.part_loss(masked))
