"""Hashed k-mers, the leakage audit, overlap-aware splits and the pretraining hold-out."""

import numpy as np
import pytest

from domains.dna.alphabet import reverse_complement
from domains.dna.audit import audit_pair, interval_audit, max_overlap_fraction, read_intervals
from domains.dna.kmers import kmer_sets, shared_kmer_groups, shares_kmer
from domains.dna.splits import group_split, make_split
from seqmodels.paths import data_path

RNG = np.random.default_rng(0)


def _rand(n: int) -> str:
    return "".join(RNG.choice(list("ACGT"), n))


def test_kmer_sets_are_strand_symmetric_and_skip_n():
    s = _rand(60)
    a, b = kmer_sets([s, reverse_complement(s)], k=12)
    assert len(a) == 49 and (a == b).all()
    fw, rc = kmer_sets([s, reverse_complement(s)], k=12, strand="forward")
    assert len(np.intersect1d(fw, rc)) < 5  # forward-only: the two strands differ
    with_n = s[:30] + "N" + s[31:]
    assert len(kmer_sets([with_n], k=12)[0]) == 49 - 12  # 12 windows cover the N
    assert len(kmer_sets(["ACGT"], k=12)[0]) == 0


def test_groups_follow_chains_of_shared_kmers():
    a = _rand(80)
    b = a[40:] + _rand(40)  # shares 40 bases with a
    c = reverse_complement(b[20:]) + _rand(20)  # shares b's tail on the other strand
    d = _rand(80)
    g = shared_kmer_groups(kmer_sets([a, b, c, d], k=16))
    assert g[0] == g[1] == g[2] != g[3]
    g = shared_kmer_groups(kmer_sets([a, b, c, d], k=16, strand="forward"))
    assert g[0] == g[1] != g[2]


def test_audit_measures_sharing_and_memorisation():
    base = [_rand(100) for _ in range(40)]
    train = base
    y_train = np.array([i % 2 for i in range(40)])
    # 20 test sequences overlap a training sequence (its label), 20 are new.
    test = [s[50:] + _rand(50) for s in base[:20]] + [_rand(100) for _ in range(20)]
    y_test = np.r_[y_train[:20], RNG.integers(0, 2, 20)]
    a = audit_pair(train, test, y_train, y_test, ["0", "1"], k=20)
    assert a["test_sharing_kmer_with_train"] == pytest.approx(0.5)
    assert a["test_mostly_in_train"] == 0.0  # 31 of 81 20-mers shared
    assert a["groups_spanning_train_and_test"] == 20
    assert a["memorisation"]["coverage"] == pytest.approx(0.5)
    assert a["memorisation"]["accuracy"] >= 0.5 + 0.5 * (y_test[20:] == 0).mean() - 1e-9


def test_interval_overlap(tmp_path):
    train = [("chr1", 0, 100), ("chr1", 1000, 1100), ("chr2", 0, 100)]
    test = [("chr1", 40, 140), ("chr1", 60, 160), ("chr1", 5000, 5100), ("chr3", 0, 100)]
    assert max_overlap_fraction(test, train).tolist() == [0.6, 0.4, 0.0, 0.0]
    r = interval_audit({"all": train}, {"a": test[:2], "b": test[2:]})
    assert r["test_overlapping_train_gt_half"] == 0.25
    assert r["test_overlapping_test_gt_half"] == 0.5  # 40-140 and 60-160 overlap by 80
    (tmp_path / "x.csv").write_text("\ufeffid,region,start,end,strand\n1,chr1,5,9,+\n")
    (tmp_path / "x.bed").write_text("chr1\t5\t9\n")
    assert read_intervals(tmp_path / "x.csv") == read_intervals(tmp_path / "x.bed")


def test_overlap_split_keeps_groups_whole_and_is_seeded():
    families = [_rand(120) for _ in range(60)]
    seqs, fam = [], []
    for f, s in enumerate(families):  # 3 overlapping windows per family
        for off in (0, 10, 20):
            seqs.append(s[off : off + 100])
            fam.append(f)
    y = np.array([f % 2 for f in fam])
    split = make_split(seqs, y, "overlap", seed=3)
    for f in range(60):
        assert len({split[i] for i in np.flatnonzero(np.array(fam) == f)}) == 1
    assert (split == make_split(seqs, y, "overlap", seed=3)).all()
    assert not (split == make_split(seqs, y, "overlap", seed=4)).all()
    assert 12 <= (split == "test").sum() <= 24
    rnd = make_split(seqs, y, "random", seed=3)
    assert any(len({rnd[i] for i in np.flatnonzero(np.array(fam) == f)}) > 1 for f in range(60))


def test_group_split_puts_an_oversized_group_in_train():
    groups = np.r_[np.zeros(50, int), np.arange(1, 51)]
    where = group_split(groups, np.zeros(100, int), seed=0)
    assert (where[:50] == "train").all() and (where == "test").sum() == 10


def test_pretraining_drops_windows_sharing_a_kmer_with_finetuning_tests(tmp_path):
    from domains.dna.data import DNAPretrainDataModule, load_tasks

    tasks = [{"name": "t", "synthetic": "tata", "n": 60, "length": 80}]
    (task,) = load_tasks(tasks)
    test_seqs, _ = task.subset("test")
    # An extra corpus file holding a test sequence inside a longer record.
    (tmp_path / "extra.fa").write_text(f">leak\n{_rand(30)}{test_seqs[0]}{_rand(30)}\n")
    dm = DNAPretrainDataModule(
        tasks=tasks, sources=[str(tmp_path / "extra.fa")], window=80, stride=40, rc_augment=False
    )
    dm.setup("fit")
    assert dm.n_dropped_overlap >= 2
    pre = [dm.tokenizer.decode(e["ids"]) for s in dm.splits.values() for e in s]
    held = [s for s, sp in zip(task.seqs, task.split) if sp != "train"]
    assert not shares_kmer(pre, held).any()


@pytest.mark.skipif(data_path("dna") is None, reason="shared/data/dna not on this machine")
def test_human_nontata_overlap_split_defeats_the_memorisation_rule():
    from domains.dna.data import load_tasks

    (t,) = load_tasks("promoters", only=["human_nontata"])
    assert t.split_method == "overlap" and 800 <= (t.split == "test").sum() <= 1000
    train, ytr = t.subset("train")
    test, yte = t.subset("test")
    a = audit_pair(train, test, ytr, yte, t.labels)
    assert a["test_sharing_kmer_with_train"] == 0.0
    assert a["memorisation"]["accuracy"] == pytest.approx(a["majority"]["accuracy"])
