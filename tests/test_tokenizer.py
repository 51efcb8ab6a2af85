import pytest
import pytorch_lightning as pl
import torch

from seqmodels.checkpoint import export, load_exported, load_module
from seqmodels.synthetic_scales import (
    SignalTokenizer,
    SyntheticScalesDataModule,
    make_signals,
    signal_metrics,
)
from seqmodels.tokenizer import (
    CODE_OFFSET,
    TokenizedDataModule,
    Tokenizer,
    codes_to_ids,
    ids_to_codes,
)

TINY = dict(length=16, patch=2, scales=[1, 2, 4, 8], levels=[5, 5], d_model=16, n_layers=1)


def _source(seed=0, n=40):
    return {
        "class_path": "seqmodels.synthetic_scales.SyntheticScalesDataModule",
        "init_args": {"n_examples": n, "length": 16, "n_positions": 4, "seed": seed},
    }


def _train(tmp_path, steps=3, seed=0):
    pl.seed_everything(seed)
    tok = SignalTokenizer(**TINY, warmup_steps=1, max_steps=steps, seed=seed)
    dm = SyntheticScalesDataModule(n_examples=40, length=16, n_positions=4, batch_size=8)
    trainer = pl.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(tok, datamodule=dm)
    path = tmp_path / "tok.ckpt"
    trainer.save_checkpoint(path)
    return tok, path


def test_tokenizer_checkpoint_loads_and_exports(tmp_path):
    tok, path = _train(tmp_path)
    loaded = load_module(path)
    assert isinstance(loaded, Tokenizer) and loaded.codebook_size == 25
    x, _ = make_signals(5, length=16, n_positions=4)
    batch = {"x": x[:, :, None]}
    tok.eval()
    ids = loaded.encode(batch)
    assert ids.shape == (5, 15) and ids.dtype == torch.long
    assert torch.equal(ids, tok.encode(batch))
    assert torch.allclose(loaded.decode(ids), tok.decode(ids), atol=1e-6)
    # A prefix of whole scales decodes (coarse to fine).
    assert loaded.decode(ids[:, :3]).shape == (5, 16)
    out = export(path, tmp_path / "exported")
    assert torch.equal(load_exported(out).encode(batch), ids)


def test_tokenized_datamodule_caches_and_invalidates(tmp_path, monkeypatch):
    _, path = _train(tmp_path)
    calls = []
    original = TokenizedDataModule._encode_all

    def counting(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(TokenizedDataModule, "_encode_all", counting)

    def dm(source=None):
        d = TokenizedDataModule(tokenizer=str(path), source=source or _source(), batch_size=4)
        d.setup("fit")
        return d

    first = dm()
    assert len(calls) == 1 and first.cache_path.is_file()
    assert first.cache_path.parent == tmp_path / "tokenized"
    assert first.vocab is None and first.vocab_size == 25 and first.d_input == 2
    assert first.cond_dim == 4 and first.scales == [1, 2, 4, 8]
    # The source's splits are kept; ids are the tokenizer's, x its next-scale inputs.
    src = SyntheticScalesDataModule(n_examples=40, length=16, n_positions=4)
    src.setup("fit")
    assert {k: len(v) for k, v in first.splits.items()} == {
        k: len(v) for k, v in src.splits.items()
    }
    tok = load_module(path)
    e, s = first.splits["test"][0], src.splits["test"][0]
    ids = tok.encode({"x": s["x"][None]})
    assert e["ids"] == ids[0].tolist() and e["cond"] == s["cond"]
    assert torch.allclose(e["x"], tok.next_scale_inputs(ids)[0])
    batch = next(iter(first.train_dataloader()))
    assert batch["ids"].shape == (4, 15) and batch["x"].shape == (4, 15, 2)

    second = dm()  # same checkpoint, same data: read from the cache
    assert len(calls) == 1 and second.cache_path == first.cache_path
    assert second.splits["test"][0]["ids"] == e["ids"]

    other = dm(_source(seed=1))  # other data: a new key
    assert len(calls) == 2 and other.cache_path != first.cache_path

    _train(tmp_path, steps=4)  # the checkpoint changes (same path): re-encoded
    third = dm()
    assert len(calls) == 3 and third.cache_path != first.cache_path


def test_sequence_layout_and_code_ids(tmp_path):
    _, path = _train(tmp_path)
    d = TokenizedDataModule(tokenizer=str(path), source=_source(), layout="sequence")
    d.setup("fit")
    e = d.splits["train"][0]
    assert e["ids"][0] == d.vocab.bos_id and e["ids"][-1] == d.vocab.eos_id
    assert len(e["ids"]) == 17 and "x" not in e
    assert len(d.vocab) == 25 + CODE_OFFSET and d.vocab_size == 25 + CODE_OFFSET
    codes = torch.tensor(e["ids"][1:-1])
    assert torch.equal(codes_to_ids(ids_to_codes(codes)), codes)
    assert d.vocab.decode(e["ids"]) == [str(int(c)) for c in ids_to_codes(codes)]
    with pytest.raises(ValueError, match="special"):
        ids_to_codes(torch.tensor(e["ids"]))
    with pytest.raises(ValueError, match="layout"):
        TokenizedDataModule(tokenizer=str(path), source=_source(), layout="grid")


def test_missing_checkpoint_and_bad_source(tmp_path):
    d = TokenizedDataModule(tokenizer=str(tmp_path / "nope.ckpt"), source=_source())
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        d.setup("fit")
    with pytest.raises(ValueError, match="cannot be imported"):
        TokenizedDataModule(tokenizer="x", source={"class_path": "no.such.Module"})


def test_signal_metrics_separate_real_from_noise():
    x, c = make_signals(200)
    real = signal_metrics(x, c)
    assert real["valid_fraction"] == 1.0 and real["class_match"] == 1.0
    noise = signal_metrics(torch.randn(200, 32) * 0.3, c)
    assert noise["valid_fraction"] == 0.0
    shuffled = signal_metrics(x, c[torch.randperm(200)])
    assert shuffled["valid_fraction"] == 1.0 and shuffled["class_match"] < 0.5


def test_tokenizer_resumes_exactly(tmp_path):
    """4 steps in one go == resuming those 4 steps from the checkpoint written at step 2."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    def run(root, ckpt_path=None, save=False):
        pl.seed_everything(0)
        tok = SignalTokenizer(**TINY, warmup_steps=1, max_steps=4)
        dm = SyntheticScalesDataModule(n_examples=40, length=16, n_positions=4, batch_size=8)
        callbacks = [ModelCheckpoint(dirpath=root, every_n_train_steps=2, save_top_k=-1)]
        pl.Trainer(
            max_steps=4,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            default_root_dir=root,
            callbacks=callbacks if save else [],
            enable_checkpointing=save,
        ).fit(tok, datamodule=dm, ckpt_path=ckpt_path)
        return tok

    straight = run(tmp_path / "a", save=True).state_dict()
    (half,) = (tmp_path / "a").glob("*step=2.ckpt")
    resumed = run(tmp_path / "b", ckpt_path=half).state_dict()
    for k, v in resumed.items():
        assert torch.equal(v, straight[k]), k
