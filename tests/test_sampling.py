import pytest
import torch

from seqmodels.backbones import AttentionSpec
from seqmodels.model import ModelConfig, SeqModel
from seqmodels.sampling import generate, top_k_filter, top_p_filter
from seqmodels.training import SeqLM


@pytest.fixture
def model(toy_vocab):
    torch.manual_seed(0)
    m = SeqLM(vocab_size=len(toy_vocab), d_model=32, n_layers=2, n_heads=4, max_len=64, d_cond=2)
    m.vocab = toy_vocab
    return m


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    out = top_k_filter(logits, 2)
    assert torch.isfinite(out).tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = top_p_filter(probs.log(), 0.75)
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    out = top_p_filter(probs.log(), 0.1)
    assert torch.isfinite(out).tolist() == [[True, False, False, False]]


@pytest.mark.parametrize("kw", [{}, {"top_k": 3}, {"top_p": 0.8, "temperature": 0.7}])
def test_cached_equals_uncached(model, toy_vocab, kw):
    prompts = [[toy_vocab.bos_id]] * 3 + [[toy_vocab.bos_id, 6, 7]]
    cond = torch.randn(4, 2)
    a = generate(model, prompts, cond, max_new_tokens=30, seed=3, num_samples=2, **kw)
    b = generate(
        model, prompts, cond, max_new_tokens=30, seed=3, num_samples=2, use_cache=False, **kw
    )
    assert a == b and len(a) == 8
    assert any(len(s) > 3 for s in a)


def test_processor_is_obeyed_and_eos_stops(model, toy_vocab):
    def only_a_then_eos(ids, logits):
        out = torch.full_like(logits, float("-inf"))
        allowed = toy_vocab.eos_id if ids.shape[1] >= 4 else toy_vocab.token_to_id("a")
        out[:, allowed] = 0
        return out

    res = generate(
        model,
        [[toy_vocab.bos_id]],
        torch.zeros(1, 2),
        max_new_tokens=20,
        logits_processor=only_a_then_eos,
        num_samples=3,
    )
    assert res == [[6, 6, 6]] * 3


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="condition rows"):
        generate(model, [[1], [1]], torch.zeros(3, 2))
    with pytest.raises(ValueError, match="top_p"):
        generate(model, [[1]], torch.zeros(1, 2), top_p=0)


def test_generation_stops_at_the_context_length(model, toy_vocab):
    no_eos = generate(model, [[toy_vocab.bos_id]], torch.zeros(1, 2), max_new_tokens=500, eos_id=-1)
    assert len(no_eos[0]) == model.hparams.max_len - 1
    with pytest.raises(ValueError, match="exceeds max_len"):
        generate(model, [[1] * 65], torch.zeros(1, 2))


# -- cached and uncached logits -------------------------------------------------------------
BLOCK = torch.tensor([0, 1, 1, 2, 2, 2, 2])
BLOCK_CAUSAL = BLOCK[None, :] <= BLOCK[:, None]
BACKBONES = [("transformer", {}), ("mamba", {"bidirectional": True})]


def _scaled_model(backbone, args, n_cond_tokens=1, std=0.3):
    """Weights far from the 0.02 init, so attention is sharp and RoPE positions, masks and
    states change the logits well above the comparison tolerance."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=12,
        d_cond=2,
        n_cond_tokens=n_cond_tokens,
        d_model=32,
        n_layers=2,
        n_heads=4,
        max_len=32,
        backbone=backbone,
        backbone_args=args,
    )
    m = SeqModel(cfg).double().eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() >= 2 and "A_log" not in name:  # Mamba's A stays a decay
                p.normal_(0, std)
    return m


@pytest.mark.parametrize("backbone,args", BACKBONES)
def test_cached_logits_equal_uncached(backbone, args):
    m = _scaled_model(backbone, args)
    ids = torch.randint(6, 12, (3, 10), generator=torch.Generator().manual_seed(1))
    cond = torch.randn(3, 2, dtype=torch.float64)
    full = m(ids=ids, cond=cond)
    cache = m.new_cache(3)
    steps = [m(ids=ids[:, :4], cond=cond, cache=cache)]
    steps += [m(ids=ids[:, t : t + 1], cache=cache) for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-9, rtol=0)
    assert full.std() > 0.5  # scaled up: logits are far from uniform


@pytest.mark.parametrize("backbone,args", BACKBONES)
def test_block_causal_mask_through_the_cache_after_a_condition_prefix(backbone, args):
    """Next-scale generation: one block per call, the mask in sequence positions; the
    model shifts it past its condition prefix on every call, not just the first."""
    m = _scaled_model(backbone, args, n_cond_tokens=2)
    ids = torch.randint(6, 12, (2, 7), generator=torch.Generator().manual_seed(2))
    cond = torch.randn(2, 2, dtype=torch.float64)
    full = m(ids=ids, cond=cond, mask=AttentionSpec("custom", allowed=BLOCK_CAUSAL))
    cache = m.new_cache(2)
    got = []
    for a, b in [(0, 1), (1, 3), (3, 7)]:
        spec = AttentionSpec("custom", allowed=BLOCK_CAUSAL[:b, :b])
        got.append(m(ids=ids[:, a:b], cond=cond if a == 0 else None, mask=spec, cache=cache))
    torch.testing.assert_close(torch.cat(got, 1), full, atol=1e-9, rtol=0)


def test_static_cache_is_written_in_place_and_the_processor_sees_the_tokens_so_far(
    model, toy_vocab
):
    """The KV cache is preallocated once (max_len positions) and written in place, and the
    token buffer handed to a logits processor holds exactly the prompt and the tokens drawn
    so far, one more column per step."""
    made = []
    new_cache = model.new_cache

    def tracked(rows):
        cache = new_cache(rows)
        made.append((cache, [k.data_ptr() for k in cache.k + cache.v]))
        return cache

    model.new_cache = tracked
    seen = []

    def record(ids, logits):
        seen.append(ids.clone())
        return logits

    prompt = [toy_vocab.bos_id, 6, 7]
    (out,) = generate(model, [prompt], torch.zeros(1, 2), max_new_tokens=12, eos_id=-1,
                      logits_processor=record, seed=5)  # fmt: skip
    ((cache, ptrs),) = made
    assert all(k.shape[2] == 64 + model.model.n_cond for k in cache.k)  # max_len, preallocated
    assert [k.data_ptr() for k in cache.k + cache.v] == ptrs  # never reallocated
    assert cache.pos == model.model.n_cond + len(prompt) + len(out) - 1
    assert [s.shape[1] for s in seen] == list(range(3, 3 + len(out)))
    assert seen[-1][0].tolist() == prompt + out[:-1]
    model.new_cache = new_cache
    (again,) = generate(model, [prompt], torch.zeros(1, 2), max_new_tokens=12, eos_id=-1,
                        seed=5, use_cache=False)  # fmt: skip
    assert again == out


def test_static_decode_step_equals_the_cached_forward():
    """`decode_step` (the whole preallocated cache read, later keys masked, the position a
    tensor) gives the logits of the cached forward, one position at a time."""
    m = _scaled_model("transformer", {})
    ids = torch.randint(6, 12, (3, 10), generator=torch.Generator().manual_seed(1))
    cond = torch.randn(3, 2, dtype=torch.float64)
    full = m(ids=ids, cond=cond)
    cache = m.new_cache(3)
    m(ids=ids[:, :4], cond=cond, cache=cache)
    steps = []
    for t in range(4, 10):
        steps.append(m.decode_step(ids[:, t : t + 1], torch.tensor(cache.pos), cache))
        cache.pos += 1
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 4:].float(), atol=1e-6, rtol=0)
    assert not _scaled_model(*BACKBONES[1]).has_decode_step()


def test_compiled_decoding_gives_the_eager_tokens(toy_vocab):
    """`generate --compile`: a transformer's static step compiled (one graph for every
    position; guidance doubles the rows) and, above STEP_ROWS rows, the backbone compiled
    with dynamic shapes (a Mamba's always) decode the same tokens as eager."""
    from seqmodels.backbones import compile_backbones
    from seqmodels.sampling import compile_decoding

    torch.manual_seed(0)
    for backbone, want in (("transformer", "step"), ("mamba", "backbone")):
        model = SeqLM(vocab_size=len(toy_vocab), d_model=32, n_layers=2, n_heads=4,
                      max_len=64, d_cond=2, cond_dropout=0.1, backbone=backbone).eval()  # fmt: skip
        with torch.no_grad():  # sharp logits: a wrong step would change the draws
            for name, p in model.named_parameters():
                if p.dim() >= 2 and "A_log" not in name:
                    p.normal_(0, 0.3)
        prompt = [[toy_vocab.bos_id], [toy_vocab.bos_id, 4]]
        kw = dict(max_new_tokens=12, eos_id=-1, cond=[[0.5, 1.0]] * 2, seed=3)
        eager = [generate(model, prompt, **kw), generate(model, prompt, guidance=2.0, **kw)]
        eager.append(generate(model, prompt, num_samples=3, **kw))  # 6 rows: above STEP_ROWS
        assert compile_decoding(model) == want
        assert compile_backbones(model, dynamic=True) == 0  # compiled already
        got = [generate(model, prompt, **kw), generate(model, prompt, guidance=2.0, **kw)]
        got.append(generate(model, prompt, num_samples=3, **kw))
        assert got == eager
        if want == "step":
            assert model.model.compiled_step is not None
