"""A synthetic language the project makes: Dyck words (balanced, correctly nested brackets).

The quickstart trains on it because validity is a crisp, checkable rule: a sample is valid
when every closing bracket matches the most recent unclosed opening bracket, nothing is
left open, and nesting never exceeds `max_depth`. An untrained model almost never
produces a valid word; a trained one mostly does, so the valid fraction measures learning.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from seqmodels.data import TokenDataModule
from seqmodels.vocab import Vocab

PAIRS = {"(": ")", "[": "]", "{": "}", "<": ">"}


def _pairs(n_types: int) -> dict[str, str]:
    if not 1 <= n_types <= len(PAIRS):
        raise ValueError(f"n_types must be in 1..{len(PAIRS)}, got {n_types}")
    return dict(list(PAIRS.items())[:n_types])


def dyck_vocab(n_types: int = 2) -> Vocab:
    pairs = _pairs(n_types)
    return Vocab([t for pair in pairs.items() for t in pair])


def sample_dyck(rng: random.Random, length: int, n_types: int = 2, max_depth: int = 4) -> list[str]:
    """A random walk (open or close with equal odds where both are allowed) that yields a valid
    Dyck word of exactly `length` (even) tokens."""
    if length < 2 or length % 2:
        raise ValueError(f"a Dyck word has a positive even length, got {length}")
    opens = list(_pairs(n_types))
    stack: list[str] = []
    word: list[str] = []
    for i in range(length):
        left = length - i
        must_close = len(stack) == left or len(stack) == max_depth
        if stack and (must_close or rng.random() < 0.5):
            word.append(PAIRS[stack.pop()])
        else:
            stack.append(rng.choice(opens))
            word.append(stack[-1])
    return word


def is_valid(tokens: Sequence[str], n_types: int = 2, max_depth: int = 4) -> bool:
    """True when `tokens` is a non-empty Dyck word over `n_types` bracket kinds, depth <= max_depth."""
    pairs = _pairs(n_types)
    closing = {c: o for o, c in pairs.items()}
    stack: list[str] = []
    for tok in tokens:
        if tok in pairs:
            stack.append(tok)
            if len(stack) > max_depth:
                return False
        elif tok in closing:
            if not stack or stack.pop() != closing[tok]:
                return False
        else:
            return False
    return bool(tokens) and not stack


def dyck_metrics(samples: Sequence[Sequence[str]]) -> dict[str, float]:
    """The quickstart's score: the fraction of samples that are valid Dyck words (defaults:
    two bracket kinds, depth <= 4), the fraction of distinct samples and their mean length."""
    n = len(samples)
    if n == 0:
        raise ValueError("no samples to score")
    valid = sum(is_valid(s) for s in samples)
    return {
        "valid_fraction": valid / n,
        "distinct_fraction": len({tuple(s) for s in samples}) / n,
        "mean_length": sum(len(s) for s in samples) / n,
        "n_samples": float(n),
    }


def dyck_processor(
    vocab: Vocab, n_types: int = 2, max_depth: int = 4, max_len: int = 24
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A logits processor that only allows continuations that can still end as a valid word
    of at most `max_len` tokens (the datamodule's default word_len): it forbids a mismatched
    close, an open beyond `max_depth` or past the length budget, and eos while brackets are
    open, so every sample with max_new_tokens > max_len is valid. Rows whose prefix is
    already invalid (or that have finished) are left untouched."""
    pairs = _pairs(n_types)
    open_ids = {vocab.token_to_id(o): vocab.token_to_id(c) for o, c in pairs.items()}
    close_ids = set(open_ids.values())
    closing_of = {c: o for o, c in open_ids.items()}
    specials = vocab.special_ids

    def process(ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        out = logits.clone()
        for row, seq in enumerate(ids.tolist()):
            stack: list[int] = []
            length, ok = 0, True
            for tok in seq:
                if tok == vocab.eos_id:
                    ok = False  # finished: the sampler ignores this row
                    break
                if tok in specials:
                    continue
                length += 1
                if tok in open_ids:
                    stack.append(tok)
                elif tok in close_ids and stack and stack[-1] == closing_of[tok]:
                    stack.pop()
                else:
                    ok = False
                    break
            if not ok:
                continue
            allowed = set()
            if stack:
                allowed.add(open_ids[stack[-1]])
            elif length > 0:
                allowed.add(vocab.eos_id)
            if len(stack) < max_depth and length + len(stack) + 2 <= max_len:
                allowed.update(open_ids)
            keep = torch.full_like(out[row], float("-inf"))
            idx = torch.tensor(sorted(allowed), dtype=torch.long)
            keep[idx] = out[row, idx]
            out[row] = keep
        return out

    return process


class DyckDataModule(TokenDataModule):
    """Random Dyck words with lengths uniform over the even numbers in [2, word_len], made
    from `seed` (which also seeds the split), so the dataset is the same on every run.

    Args:
        n_examples: how many words to make (split into train/val/test by the base class).
        n_types: bracket kinds, 1 to 4: () [] {} <>.
        max_depth: deepest nesting.
        word_len: longest word, in tokens (bos and eos come on top).
        **kwargs: TokenDataModule's (batch_size, seed, val_fraction, ...).
    """

    def __init__(
        self,
        n_examples: int = 4000,
        n_types: int = 2,
        max_depth: int = 4,
        word_len: int = 24,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.n_examples = n_examples
        self.n_types = n_types
        self.max_depth = max_depth
        self.word_len = word_len
        self.vocab = dyck_vocab(n_types)

    def build(self) -> list[dict]:
        rng = random.Random(self.seed)
        examples = []
        for _ in range(self.n_examples):
            length = 2 * rng.randint(1, self.word_len // 2)
            word = sample_dyck(rng, length, self.n_types, self.max_depth)
            examples.append({"ids": self.vocab.encode(word, add_bos=True, add_eos=True)})
        return examples
