import random

import pytest
import torch

from domains.crystals.codec import encode
from domains.crystals.data import permuted
from domains.crystals.io import aflow_prototypes
from domains.crystals.slices import SlicesError, parse
from domains.crystals.tokenizer import SlicesGrammar, build_vocab, decode_ids, encode_ids


@pytest.fixture(scope="module")
def vocab():
    return build_vocab(64)


@pytest.fixture(scope="module")
def canonical_strings():
    records, _ = aflow_prototypes(max_atoms=8)
    return [encode(r.structure) for r in records[:15]]


def _accepts(grammar, vocab, ids) -> bool:
    for t in range(1, len(ids)):
        logits = grammar(torch.tensor([ids[:t]]), torch.zeros(1, len(vocab)))
        if not torch.isfinite(logits[0, ids[t]]):
            return False
    return True


def test_round_trip_ids(vocab, canonical_strings):
    for s in canonical_strings:
        ids = encode_ids(s, vocab)
        assert ids[0] == vocab.bos_id and ids[-1] == vocab.eos_id
        assert decode_ids(ids, vocab) == s


def test_unknown_site_index_is_a_clear_error():
    with pytest.raises(SlicesError, match="max_atoms"):
        encode_ids("Na Cl 0 1 ooo 0 1 +oo 0 1 o+o 0 1 oo+", build_vocab(1))


def test_grammar_accepts_canonical_strings(vocab, canonical_strings):
    for s in canonical_strings:
        assert _accepts(SlicesGrammar(vocab), vocab, encode_ids(s, vocab))


def test_canonical_grammar_rejects_permuted_but_syntax_mode_accepts(vocab, canonical_strings):
    s = next(x for x in canonical_strings if len(parse(x).species) > 2)
    p = permuted(s, random.Random(1))
    assert not _accepts(SlicesGrammar(vocab), vocab, encode_ids(p, vocab))
    assert _accepts(SlicesGrammar(vocab, canonical=False), vocab, encode_ids(p, vocab))


@pytest.mark.parametrize("canonical", [True, False])
def test_sampling_under_grammar_always_parses(vocab, canonical):
    gen = torch.Generator().manual_seed(0)
    grammar = SlicesGrammar(vocab, max_atoms=6, canonical=canonical)
    ids = torch.full((16, 1), vocab.bos_id)
    done = torch.zeros(16, dtype=torch.bool)
    for _ in range(600):
        logits = grammar(ids, torch.randn(16, len(vocab), generator=gen))
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]
        nxt = torch.where(done, torch.full_like(nxt, vocab.eos_id), nxt)
        done |= nxt == vocab.eos_id
        ids = torch.cat([ids, nxt[:, None]], 1)
        if done.all():
            break
    assert done.all()
    for row in ids.tolist():
        text = decode_ids(row[: row.index(vocab.eos_id)], vocab)
        g = parse(text)  # raises if the grammar let a malformed string through
        assert g.n_sites <= 6 and (g.degrees() > 0).all()


@pytest.mark.parametrize("canonical", [True, False])
def test_random_logits_under_grammar_always_pass_check(vocab, canonical):
    """Valid by construction: whatever the model says, a finished string is a crystal net."""
    from domains.crystals.slices import check

    gen = torch.Generator().manual_seed(1)
    grammar = SlicesGrammar(vocab, max_atoms=8, canonical=canonical)
    ids = torch.full((48, 1), vocab.bos_id)
    done = torch.zeros(48, dtype=torch.bool)
    for _ in range(2000):
        logits = grammar(ids, 3 * torch.randn(48, len(vocab), generator=gen))
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]
        nxt = torch.where(done, torch.full_like(nxt, vocab.eos_id), nxt)
        done |= nxt == vocab.eos_id
        ids = torch.cat([ids, nxt[:, None]], 1)
        if done.all():
            break
    assert done.all()
    for row in ids.tolist():
        text = decode_ids(row[: row.index(vocab.eos_id)], vocab)
        assert check(text) == (True, "valid"), text
