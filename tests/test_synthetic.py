"""The synthetic Dyck language: generator, validity rule, metric and grammar processor."""

import random

import pytest
import torch

from seqmodels.synthetic import (
    DyckDataModule,
    dyck_metrics,
    dyck_processor,
    dyck_vocab,
    is_valid,
    sample_dyck,
)


def test_sampled_words_are_valid_with_exact_length_and_bounded_depth():
    rng = random.Random(0)
    for _ in range(300):
        length = 2 * rng.randint(1, 15)
        word = sample_dyck(rng, length, n_types=3, max_depth=3)
        assert len(word) == length
        assert is_valid(word, n_types=3, max_depth=3)
    words = {tuple(sample_dyck(rng, 12, 2, 4)) for _ in range(200)}
    assert len(words) > 100  # a real distribution, not a few fixed strings


@pytest.mark.parametrize(
    "text,valid",
    [
        ("()", True),
        ("([])[]", True),
        ("(((())))", True),  # depth 4: the default limit
        ("((((()))))", False),  # depth 5
        ("", False),
        ("(]", False),
        ("([)]", False),
        ("((", False),
        (")(", False),
        ("(x)", False),
        ("{}", False),  # only two bracket kinds by default
    ],
)
def test_validity_rule(text, valid):
    assert is_valid(list(text)) is valid


def test_metrics_count_valid_and_distinct():
    samples = [list("()"), list("()"), list("(]"), list("[()]")]
    m = dyck_metrics(samples)
    assert m["valid_fraction"] == 0.75
    assert m["distinct_fraction"] == 0.75
    assert m["mean_length"] == 2.5
    with pytest.raises(ValueError):
        dyck_metrics([])


def test_processor_forces_valid_words_from_random_logits():
    """Decode from pure noise with the grammar processor: every word must be valid."""
    vocab = dyck_vocab(2)
    process = dyck_processor(vocab, max_depth=3, max_len=10)
    gen = torch.Generator().manual_seed(0)
    ids = torch.full((64, 1), vocab.bos_id)
    finished = torch.zeros(64, dtype=torch.bool)
    for _ in range(12):
        logits = process(ids, torch.randn(64, len(vocab), generator=gen))
        nxt = torch.where(finished, vocab.pad_id, logits.argmax(-1))
        finished |= nxt == vocab.eos_id
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    assert finished.all()
    for row in ids.tolist():
        word = vocab.decode(row)
        assert is_valid(word, max_depth=3) and len(word) <= 10, word


def test_processor_leaves_invalid_prefix_rows_untouched():
    vocab = dyck_vocab(2)
    process = dyck_processor(vocab)
    ids = torch.tensor([vocab.encode(list("(]"), add_bos=True)])
    logits = torch.randn(1, len(vocab))
    assert torch.equal(process(ids, logits), logits)


def test_datamodule_is_deterministic_and_splits():
    a = DyckDataModule(n_examples=200, word_len=12, batch_size=8, seed=3)
    b = DyckDataModule(n_examples=200, word_len=12, batch_size=8, seed=3)
    a.setup("fit")
    b.setup("fit")
    assert a.splits == b.splits
    assert sum(len(v) for v in a.splits.values()) == 200
    assert len(a.splits["val"]) == 20 and len(a.splits["test"]) == 20
    for e in a.splits["train"]:
        ids = e["ids"]
        assert ids[0] == a.vocab.bos_id and ids[-1] == a.vocab.eos_id
        assert is_valid(a.vocab.decode(ids)) and len(ids) <= 14
    batch = next(iter(a.train_dataloader()))
    assert batch["ids"].shape[0] == 8
