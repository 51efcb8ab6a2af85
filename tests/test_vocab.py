import pytest
import torch

from seqmodels.training import SeqLM
from seqmodels.vocab import SPECIALS, Vocab


def test_specials_have_fixed_ids(toy_vocab):
    assert toy_vocab.tokens[: len(SPECIALS)] == list(SPECIALS)
    assert (toy_vocab.pad_id, toy_vocab.bos_id, toy_vocab.eos_id) == (0, 1, 2)
    assert (toy_vocab.mask_id, toy_vocab.sep_id, toy_vocab.unk_id) == (3, 4, 5)
    assert len(toy_vocab) == 10


def test_add_tokens_is_idempotent_and_keeps_ids(toy_vocab):
    before = toy_vocab.encode(list("abcd"))
    ids = toy_vocab.add_tokens(["<task:x>", "<task:y>"])
    assert ids == [10, 11]
    assert toy_vocab.add_tokens(["<task:x>"]) == [10]
    assert toy_vocab.encode(list("abcd")) == before


def test_encode_unknown_and_strict(toy_vocab):
    assert toy_vocab.encode(["a", "z"]) == [6, toy_vocab.unk_id]
    with pytest.raises(KeyError, match="'z'"):
        toy_vocab.encode(["z"], strict=True)
    assert toy_vocab.decode(toy_vocab.encode(list("ab"), add_bos=True, add_eos=True)) == ["a", "b"]


def test_save_load_roundtrip(tmp_path, toy_vocab):
    toy_vocab.add_tokens(["<t>"])
    toy_vocab.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json") == toy_vocab
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        Vocab.load(tmp_path / "bad.json")


@pytest.mark.parametrize("tie", [True, False])
def test_resize_keeps_existing_rows(tie):
    m = SeqLM(vocab_size=10, d_model=16, n_layers=1, n_heads=2, max_len=16, tie_embeddings=tie)
    emb, head = m.embed.weight.detach().clone(), m.head.weight.detach().clone()
    m.resize_vocab(13)
    assert m.embed.weight.shape == (13, 16) and m.head.weight.shape == (13, 16)
    assert torch.equal(m.embed.weight[:10], emb)
    assert torch.equal(m.head.weight[:10], head)
    assert m(ids=torch.tensor([[12, 3]])).shape == (1, 2, 13)
