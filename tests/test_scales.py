"""Next-scale generation (generate_scales), classifier-free guidance, and the model pieces
they need: continuous parent inputs with discrete targets, scale embeddings, a learned
null condition."""

import pytest
import torch

from seqmodels.objectives import build_objective
from seqmodels.quantizers import MultiScaleQuantizer
from seqmodels.sampling import generate, generate_scales
from seqmodels.training import SeqLM

SHAPES = [1, 2, 4]


def _quantizer():
    return MultiScaleQuantizer({"kind": "fsq", "levels": [5, 5]}, SHAPES)


def _continuous_model(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(
        vocab_size=25,
        d_input=2,
        d_cond=3,
        cond_dropout=0.2,
        scale_embeddings=True,
        objective={"name": "next_scale", "shapes": SHAPES},
        d_model=32,
        n_layers=2,
        n_heads=4,
        max_len=7,
        seed=seed,
    )
    return SeqLM(**{**args, **kw}).eval()


def _perturb(model):
    # Random (not zero) null condition and scale embeddings, so the tests see them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "null_cond" in name or "scale_embed" in name:
                p.normal_(0, 1)
    return model


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_generate_scales_cached_equals_uncached_logits(guidance):
    model = _perturb(_continuous_model())
    q = _quantizer()
    kw = dict(next_input=q.next_scale_input, num_samples=3, seed=5, guidance=guidance)
    cond = torch.eye(3)
    ids, logits = generate_scales(model, cond, return_logits=True, **kw)
    ids2, logits2 = generate_scales(model, cond, return_logits=True, use_cache=False, **kw)
    assert ids.shape == (9, 7) and torch.equal(ids, ids2)
    assert [tuple(x.shape) for x in logits] == [(9, n, 25) for n in SHAPES]
    for a, b in zip(logits, logits2):
        assert torch.allclose(a, b, atol=1e-5)
    assert int(ids.min()) >= 0 and int(ids.max()) < 25


def test_generate_scales_discrete_parents_cached_equals_uncached():
    torch.manual_seed(0)
    model = SeqLM(
        vocab_size=11,
        objective={"name": "next_scale", "shapes": SHAPES},
        scale_embeddings=True,
        d_model=32,
        n_layers=2,
        n_heads=4,
        max_len=7,
    ).eval()
    _perturb(model)
    a, la = generate_scales(model, num_samples=4, seed=1, return_logits=True)
    b, lb = generate_scales(model, num_samples=4, seed=1, return_logits=True, use_cache=False)
    assert torch.equal(a, b)
    for x, y in zip(la, lb):
        assert torch.allclose(x, y, atol=1e-5)
    # The uncached logits are those of one teacher-forced pass over the sampled sequence.
    (out,) = model.objective({"ids": a})
    full = model(ids=out.inputs, mask=out.mask, blank=out.blank)
    assert torch.allclose(full[:, 3:], lb[2], atol=1e-5)


def test_teacher_forced_pass_matches_generation_logits():
    """Training's view (objective over ids + the quantiser's next_scale_inputs) and
    generation's view of the same sequence give the same logits."""
    model = _perturb(_continuous_model())
    q = _quantizer()
    cond = torch.eye(3)
    ids, logits = generate_scales(model, cond, next_input=q.next_scale_input, return_logits=True)
    batch = {"ids": ids, "x": q.next_scale_inputs(ids), "cond": cond}
    (out,) = model.objective(batch)
    assert out.inputs.is_floating_point() and torch.equal(out.targets, ids)
    assert out.blank[:, :1].all() and not out.blank[:, 1:].any()
    full = model(x=out.inputs, cond=cond, mask=out.mask, blank=out.blank)
    for k, (a, b) in enumerate(zip([0, 1, 3], [1, 3, 7])):
        assert torch.allclose(full[:, a:b], logits[k], atol=1e-5)


def test_guidance_zero_is_unconditional_and_one_conditional():
    model = _perturb(_continuous_model())
    q = _quantizer()
    kw = dict(next_input=q.next_scale_input, num_samples=2, seed=3, temperature=0.0)
    cond_a = torch.eye(3)
    cond_b = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    g0a, la = generate_scales(model, cond_a, guidance=0.0, return_logits=True, **kw)
    g0b, _ = generate_scales(model, cond_b, guidance=0.0, return_logits=True, **kw)
    assert torch.equal(g0a, g0b)  # the condition has no effect at guidance 0
    # ... and the logits are the null-condition model's on the same sequence.
    c = cond_a.repeat_interleave(2, 0)
    x = q.next_scale_inputs(g0a)
    (out,) = model.objective({"ids": g0a, "x": x, "cond": c})
    drop = torch.ones(6, dtype=torch.bool)
    uncond = model(x=out.inputs, cond=c, mask=out.mask, blank=out.blank, drop_cond=drop)
    assert torch.allclose(la[2], uncond[:, 3:], atol=1e-5)
    # Guidance 1 is the conditional model, with or without the null pass.
    g1, l1 = generate_scales(model, cond_a, guidance=1.0, return_logits=True, **kw)
    (out1,) = model.objective({"ids": g1, "x": q.next_scale_inputs(g1), "cond": c})
    condl = model(x=out1.inputs, cond=c, mask=out1.mask, blank=out1.blank)
    assert torch.allclose(l1[2], condl[:, 3:], atol=1e-5)
    with pytest.raises(ValueError, match="needs condition"):
        generate_scales(model, None, guidance=2.0, next_input=q.next_scale_input)


def test_guidance_in_generate_next_token():
    torch.manual_seed(0)
    model = SeqLM(
        vocab_size=12, d_cond=2, cond_dropout=0.1, d_model=32, n_layers=2, n_heads=4, max_len=16
    ).eval()
    _perturb(model)
    prompts = [[1], [1]]
    kw = dict(max_new_tokens=6, temperature=0.0, eos_id=2)
    a = generate(model, prompts, cond=[[1.0, 0.0], [0.0, 1.0]], guidance=0.0, **kw)
    b = generate(model, prompts, cond=[[0.0, 1.0], [5.0, -3.0]], guidance=0.0, **kw)
    assert a == b
    # Greedy decoding of the null-condition model, by hand.
    ids = torch.tensor(prompts)
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    drop = torch.ones(2, dtype=torch.bool)
    for _ in range(6):
        nxt = model(ids=ids, cond=c, drop_cond=drop)[:, -1].argmax(-1)
        ids = torch.cat([ids, nxt[:, None]], 1)
    expected = [row[1:] for row in ids.tolist()]
    expected = [r[: r.index(2)] if 2 in r else r for r in expected]
    assert a == expected
    cached = generate(model, prompts, cond=c, guidance=2.5, **kw)
    uncached = generate(model, prompts, cond=c, guidance=2.5, use_cache=False, **kw)
    assert cached == uncached
    plain = generate(model, prompts, cond=c, **kw)
    assert plain == generate(model, prompts, cond=c, guidance=1.0, use_cache=False, **kw)


def test_cond_dropout_trains_the_null_condition():
    model = _continuous_model(cond_dropout=0.5).train()
    q = _quantizer()
    ids = torch.randint(25, (8, 7))
    batch = {"ids": ids, "x": q.next_scale_inputs(ids), "cond": torch.eye(3)[torch.arange(8) % 3]}
    loss, _ = model.objective_loss(batch, model._gen)
    loss.backward()
    assert model.model.null_cond.grad is not None and model.model.null_cond.grad.abs().sum() > 0
    without = _continuous_model(cond_dropout=0.0)
    assert not hasattr(without.model, "null_cond")
    with pytest.raises(ValueError, match="null condition"):
        without(x=batch["x"], cond=batch["cond"], drop_cond=torch.ones(8, dtype=torch.bool))
    with pytest.raises(ValueError, match="cond_dropout"):
        SeqLM(vocab_size=5, cond_dropout=1.0)


def test_scale_embeddings_and_per_scale_settings():
    model = _continuous_model()
    assert model.model.level.tolist() == [0, 1, 1, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="next_scale"):
        SeqLM(vocab_size=5, scale_embeddings=True)
    q = _quantizer()
    ids, logits = generate_scales(
        model,
        torch.eye(3),
        next_input=q.next_scale_input,
        temperature=[0.0, 0.0, 0.0],
        return_logits=True,
    )
    assert torch.equal(ids, torch.cat([lg.argmax(-1) for lg in logits], 1))
    with pytest.raises(ValueError, match="3 scales"):
        generate_scales(model, torch.eye(3), next_input=q.next_scale_input, top_k=[1, 2])
    # Scales default to the model objective's; a plain next-token model has none.
    assert build_objective({"name": "next_scale", "shapes": SHAPES}).sizes == [1, 2, 4]
    with pytest.raises(ValueError, match="give scales"):
        generate_scales(SeqLM(vocab_size=5, d_model=16, n_heads=2, n_layers=1))
