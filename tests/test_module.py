import pytest
import pytorch_lightning as pl
import torch

from seqmodels.checkpoint import load_module
from seqmodels.data import ExamplesDataModule, ResumableBatchSampler
from seqmodels.sampling import generate
from seqmodels.training import FinetuneModule, SeqLM
from seqmodels.vocab import Vocab
from tests.conftest import cyclic_examples


def _trainer(steps: int, **kw) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kw,
    )


def test_conditioned_lm_learns_the_toy_language(toy_vocab):
    pl.seed_everything(0)
    dm = ExamplesDataModule(cyclic_examples(toy_vocab, 300, cond=True), toy_vocab, batch_size=16)
    model = SeqLM(d_model=32, n_layers=2, n_heads=4, max_len=32, warmup_steps=10, lr=3e-3)
    trainer = _trainer(120)
    trainer.fit(model, dm)
    assert model.hparams.vocab_size == len(toy_vocab) and model.hparams.d_cond == 1
    assert trainer.callback_metrics["val/loss"] < 0.9  # uniform over 10 tokens is 2.3
    starts = [[0.0], [1.0], [2.0], [3.0]]
    out = generate(model, [[toy_vocab.bos_id]] * 4, starts, max_new_tokens=12, temperature=0)
    assert [toy_vocab.decode(o)[0] for o in out] == list("abcd")


def test_finetune_several_tasks_with_metrics(toy_vocab, tmp_path):
    pl.seed_everything(0)
    ex = cyclic_examples(toy_vocab, 200)
    for i, e in enumerate(ex):  # task 0: start letter parity; task 1: length regression
        e["task"] = i % 2
        e["label"] = float(i % 4 % 2) if i % 2 == 0 else float(len(e["ids"])) / 10
    ex = [dict(e, label=int(e["label"]) if e["task"] == 0 else e["label"]) for e in ex]
    dm = ExamplesDataModule(ex, toy_vocab, batch_size=16)
    tasks = [
        {"name": "parity", "kind": "classification", "n_outputs": 2},
        {"name": "length", "kind": "regression", "n_outputs": 1},
    ]
    ft = FinetuneModule(
        tasks=tasks, backbone_config={"d_model": 32, "n_layers": 1, "n_heads": 4, "max_len": 32}
    )
    trainer = _trainer(60)
    trainer.fit(ft, dm)
    m = trainer.callback_metrics
    for key in ("val/parity/acc", "val/parity/mcc", "val/parity/f1", "val/length/mae"):
        assert key in m
    trainer.save_checkpoint(tmp_path / "ft.ckpt")
    again = load_module(tmp_path / "ft.ckpt")
    batch = dm.collate(dm.splits["val"][:4])
    ft.eval()
    for name, (_rows, out) in ft(batch).items():
        torch.testing.assert_close(again(batch)[name][1], out)


def test_init_from_grows_vocab_and_keeps_rows(toy_vocab, tmp_path):
    pl.seed_everything(0)
    base = SeqLM(d_model=16, n_layers=1, n_heads=2, max_len=32)
    trainer = _trainer(5)
    trainer.fit(base, ExamplesDataModule(cyclic_examples(toy_vocab, 50), toy_vocab, batch_size=8))
    trainer.save_checkpoint(tmp_path / "base.ckpt")
    grown = Vocab(toy_vocab.tokens[6:])
    grown.add_tokens(["<task:parity>"])
    ex = cyclic_examples(grown, 50)
    model = SeqLM(
        d_model=16, n_layers=1, n_heads=2, max_len=32, init_from=str(tmp_path / "base.ckpt")
    )
    _trainer(1).fit(model, ExamplesDataModule(ex, grown, batch_size=8))
    assert model.embed.num_embeddings == len(grown) == len(toy_vocab) + 1
    # One step of training moved the rows a little, but they started from the pretrained ones.
    assert torch.allclose(model.embed.weight[:10], base.embed.weight[:10], atol=1e-2)
    wrong = Vocab(list("xyz"))
    bad = SeqLM(
        d_model=16, n_layers=1, n_heads=2, max_len=32, init_from=str(tmp_path / "base.ckpt")
    )
    with pytest.raises(ValueError, match="not a prefix"):
        _trainer(1).fit(bad, ExamplesDataModule(cyclic_examples(wrong, 20), wrong, batch_size=8))


def test_sampler_shards_resumes_and_buckets():
    s = ResumableBatchSampler(100, 10, seed=1)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first
    s.set_epoch(0)
    s.skip = 3
    assert list(s) == first[3:]
    ranks = [list(ResumableBatchSampler(100, 10, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 5
    assert not {i for b in ranks[0] for i in b} & {i for b in ranks[1] for i in b}
    lengths = list(range(100))
    spread = [
        max(lengths[i] for i in b) - min(lengths[i] for i in b)
        for b in ResumableBatchSampler(100, 10, lengths=lengths)
    ]
    assert max(spread) == 9  # sorted within the window: each batch is 10 consecutive lengths
