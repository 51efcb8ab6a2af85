import os

import pytest
import torch

from seqmodels.vocab import Vocab


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Caches (e.g. encoded crystals) go to a per-session folder, not the user's ~/.cache."""
    os.environ["SEQMODELS_CACHE"] = str(tmp_path_factory.mktemp("seqmodels-cache"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def toy_vocab() -> Vocab:
    return Vocab(list("abcd"))


def cyclic_examples(vocab: Vocab, n: int = 200, seed: int = 0, cond: bool = False) -> list[dict]:
    """Strings that cycle a->b->c->d from a start letter: a learnable toy language."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(3, 12, (1,), generator=g))
        start = i % 4
        s = ["abcd"[(start + j) % 4] for j in range(length)]
        e = {"ids": vocab.encode(s, add_bos=True, add_eos=True), "task": 0, "label": i % 2}
        if cond:
            e["cond"] = [float(start)]
        out.append(e)
    return out
