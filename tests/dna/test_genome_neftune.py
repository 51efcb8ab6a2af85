"""Genome pretraining windows (bgzipped FASTA, soft-mask policy, N runs, shifts, block
hold-out) and NEFTune's noisy embeddings."""

import numpy as np
import pytest
import torch

from domains.dna.genome import genome_windows, read_genome
from domains.dna.neftune import NEFTune
from seqmodels.paths import data_path

RNG = np.random.default_rng(0)


def _rand(n: int) -> str:
    return "".join(RNG.choice(list("ACGT"), n))


@pytest.fixture()
def genome_file(tmp_path):
    from Bio import bgzf

    seq = "N" * 50 + _rand(300) + _rand(200).lower() + "NNNN" + _rand(500)
    path = tmp_path / "g.fa.gz"
    with bgzf.open(path, "wt") as fh:
        fh.write(">chrT\n" + "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60)) + "\n")
    return path, seq


def test_bgzipped_genome_windows_respect_n_runs_and_soft_mask(genome_file):
    path, seq = genome_file
    g = read_genome(path)
    assert g == {"chrT": seq}
    wins = genome_windows(g, window=100, stride=50, block=10_000, fractions=(0, 0))
    for w in wins:
        chrom, span = w.where.split(":")
        s, e = map(int, span.split("-"))
        assert "N" not in seq[s:e].upper() and w.seq == seq[s:e].upper() and w.split == "train"
    dropped = genome_windows(
        g, 100, 50, soft_mask="drop", max_masked=0.5, block=10_000, fractions=(0, 0)
    )
    assert len(dropped) < len(wins)
    assert all(w.seq.count("N") == 0 for w in dropped)
    n_masked = genome_windows(g, 100, 50, soft_mask="n", block=10_000, fractions=(0, 0))
    assert any("N" in w.seq for w in n_masked)


def test_shifts_and_block_holdout_never_overlap(genome_file):
    path, _ = genome_file
    g = read_genome(path)
    wins = genome_windows(g, 100, 100, shifts=2, block=200, fractions=(0.3, 0.3), seed=1)
    starts = {int(w.where.split(":")[1].split("-")[0]) % 100 for w in wins}
    assert len(starts) > 1  # shifted grids
    spans = {
        sp: [tuple(map(int, w.where.split(":")[1].split("-"))) for w in wins if w.split == sp]
        for sp in ("train", "val", "test")
    }
    assert spans["val"] or spans["test"]
    for a in spans["train"]:
        for b in spans["val"] + spans["test"]:
            assert a[1] <= b[0] or b[1] <= a[0]


@pytest.mark.skipif(data_path("dna") is None, reason="shared/data/dna not on this machine")
def test_real_chr2_slice_reads_with_its_index():
    g = read_genome(data_path("dna") / "genome" / "chr2_1-2333275.fa.gz")
    assert len(g["chr2"]) == 2_333_275 and g["chr2"][:10] == "N" * 10


def test_neftune_noise_only_in_training_and_of_the_right_scale():
    from seqmodels.training import SeqLM

    torch.manual_seed(0)
    model = SeqLM(vocab_size=12, d_model=16, n_layers=1, n_heads=2, max_len=32)
    cb = NEFTune(alpha=5.0)
    cb.on_train_start(None, model)
    ids = torch.randint(6, 12, (2, 10))
    emb = model.model.embed
    clean = torch.nn.functional.embedding(ids, emb.weight)
    model.train()
    noisy = emb(ids)
    scale = 5.0 / np.sqrt(10 * 16)
    assert 0 < (noisy - clean).abs().max() <= scale + 1e-6
    model.eval()
    assert torch.equal(emb(ids), clean)
    cb.on_train_end(None, model)
    model.train()
    assert torch.equal(emb(ids), clean)


def test_pretrain_datamodule_takes_genome_windows_with_their_split(genome_file):
    from domains.dna.data import DNAPretrainDataModule

    path, _ = genome_file
    dm = DNAPretrainDataModule(
        genome=[str(path)], window=100, stride=50, shifts=1, holdout_block=300,
        val_fraction=0.3, test_fraction=0.3, rc_augment=True, tokenizer="kmer", k=3,
    )  # fmt: skip
    dm.setup("fit")
    n = {k: len(v) for k, v in dm.splits.items()}
    assert n["train"] > 0 and n["train"] % 2 == 0  # each training window and its RC
