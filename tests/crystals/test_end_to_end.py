"""A tiny MatterGPT: datamodule -> SeqLM fit -> grammar-constrained generation -> decode."""

import pytorch_lightning as pl
import torch

from domains.crystals.codec import decode
from domains.crystals.data import CrystalsDataModule
from domains.crystals.slices import parse
from domains.crystals.tokenizer import SlicesGrammar, decode_ids
from seqmodels.sampling import generate
from seqmodels.training import SeqLM


def test_tiny_mattergpt_generates_parseable_slices(tmp_path):
    torch.manual_seed(0)
    dm = CrystalsDataModule(source="aflow", max_atoms=4, batch_size=8, augment=1, seed=0)
    dm.setup("fit")
    assert dm.cond_dim == 2 and dm.vocab_size == len(dm.vocab)
    # augmented copies stay in their crystal's split
    assert len(dm.splits["train"]) == 2 * sum(s == "train" for s in dm.record_split)
    model = SeqLM(d_model=32, n_layers=1, n_heads=2, max_len=160, lr=3e-3, warmup_steps=2)
    trainer = pl.Trainer(
        max_steps=8,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=dm)
    cond = [dm.normalise(r["props"]) for r in dm.records[:3]]
    ids = generate(
        model,
        [[dm.vocab.bos_id]] * 3,
        cond=cond,
        max_new_tokens=150,
        temperature=1.0,
        logits_processor=SlicesGrammar(dm.vocab, max_atoms=4, canonical=False),
        num_samples=2,
        seed=0,
    )
    assert len(ids) == 6
    finished = [decode_ids(r, dm.vocab) for r in ids if len(r) < 150]
    for text in finished:
        parse(text)  # every finished sample parses
    for r in dm.records[:3]:  # the training strings themselves decode
        assert decode(r["slices"]).ok

    # the CLI: grammar in syntax mode (augment=1), a tight length budget so that some rows
    # are cut and resampled; what it writes is canonical and every row is accounted for
    import json

    import yaml

    from domains.crystals.codec import canonical
    from domains.crystals.slices import check
    from seqmodels.cli import main

    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    config = tmp_path / "config.yaml"
    init = {"source": "aflow", "max_atoms": 4, "batch_size": 8, "augment": 1, "seed": 0}
    config.write_text(
        yaml.safe_dump({"data": {"class_path": "domains.crystals.data.CrystalsDataModule",
                                 "init_args": init}})
    )  # fmt: skip
    result = tmp_path / "result.json"
    import os

    os.environ["SEQMODELS_RESULT"] = str(result)
    try:
        out = tmp_path / "s.tsv"
        args = ["crystals", "generate", "--ckpt", str(ckpt), "--config", str(config), "--n", "4"]
        assert main([*args, "--max-new-tokens", "60", "--resample", "2", "--out", str(out)]) == 0
    finally:
        del os.environ["SEQMODELS_RESULT"]
    metrics = json.loads(result.read_text())
    assert metrics["samples"] == 4 and metrics["raw_slices_validity"] <= metrics["slices_validity"]
    assert metrics["raw_slices_validity"] == 1.0 or metrics["resampled"] > 0  # (here: 0.75, 1)
    rows = out.read_text().splitlines()[1:]
    assert len(rows) == 4
    for row in rows:
        s = row.split("\t")[-1]
        if check(s)[0]:
            assert canonical(s) == s
