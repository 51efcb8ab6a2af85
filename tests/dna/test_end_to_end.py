"""A tiny pretrain -> Omni-DNA finetune -> classify / score / generate run through the CLI."""

import json
import warnings

import pytest
import pytorch_lightning as pl
import yaml

from domains.dna.data import DNAPretrainDataModule, DNATaskDataModule
from domains.dna.readers import read_records
from seqmodels.cli import main
from seqmodels.training import SeqLM

TASKS = [
    {"name": "tata", "synthetic": "tata", "n": 40, "length": 40},
    {"name": "ebox", "synthetic": "ebox", "n": 40, "length": 40},
]
MODEL = {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_len": 64, "warmup_steps": 2}


def _fit(model, dm, root, steps=8):
    trainer = pl.Trainer(
        max_steps=steps,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, dm)
    path = root / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dna_e2e")
    pl.seed_everything(0)
    pre = _fit(SeqLM(**MODEL), DNAPretrainDataModule(tasks=TASKS, window=40, batch_size=16), root)
    data = {"tasks": TASKS, "mode": "omni", "pretrained": str(pre), "batch_size": 16}
    ft_root = root / "ft"
    ft = _fit(SeqLM(**MODEL, init_from=str(pre)), DNATaskDataModule(**data), ft_root)
    config = root / "ft_config.yaml"
    config.write_text(
        yaml.safe_dump(
            {"data": {"class_path": "domains.dna.data.DNATaskDataModule", "init_args": data}}
        )
    )
    return root, pre, ft, config


def test_classify_writes_per_task_and_macro(run):
    root, _, ft, config = run
    out = root / "classify"
    assert (
        main(
            [
                "dna",
                "classify",
                "--ckpt",
                str(ft),
                "--config",
                str(config),
                "--rc-average",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert set(m) == {"tata", "ebox", "macro"}
    assert 0 <= m["tata"]["accuracy"] <= 1 and m["tata"]["n"] == 4
    assert (out / "predictions.tsv").read_text().count("\n") == 1 + 8


def test_score_skips_bad_records(run, tmp_path, capsys):
    _, pre, _, _ = run
    fa = tmp_path / "v.fa"
    fa.write_text(">ref\nACGTACGTTATAAAAG\n>alt\nACGTACGTTATCAAAG\n>bad\nAC!T\n")
    out = tmp_path / "s.jsonl"
    assert (
        main(["dna", "score", str(fa), "--ckpt", str(pre), "--per-position", "--out", str(out)])
        == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["name"] for r in rows] == ["ref", "alt"]
    assert rows[0]["n_tokens"] == len(rows[0]["per_position"]) == 16  # one per base
    assert "v.fa record 'bad': non-DNA character '!'" in capsys.readouterr().err


def test_generate_fasta_and_task_errors(run, tmp_path):
    _, _, ft, _ = run
    out = tmp_path / "g.fa"
    assert (
        main(
            [
                "dna",
                "generate",
                "--ckpt",
                str(ft),
                "--n",
                "4",
                "--length",
                "30",
                "--prompt",
                "TATA",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    recs = read_records(out)
    assert len(recs) == 4 and all(len(r.seq) == 30 and r.seq.startswith("TATA") for r in recs)
    assert set("".join(r.seq for r in recs)) <= set("ACGT")
    assert (
        main(
            [
                "dna",
                "generate",
                "--ckpt",
                str(ft),
                "--task",
                "nope",
                "--label",
                "1",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "dna",
                "generate",
                "--ckpt",
                str(ft),
                "--task",
                "tata",
                "--label",
                "1",
                "--n",
                "3",
                "--length",
                "30",
                "--out",
                str(out),
            ]
        )
        == 0
    )
