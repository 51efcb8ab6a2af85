import numpy as np
import pytest

from domains.dna.alphabet import DNAInputError
from domains.dna.splits import random_split
from domains.dna.synthetic import SYNTHETIC_TASKS, synthetic_examples
from domains.dna.tasks import load_task
from seqmodels.paths import data_path


def test_synthetic_plants_motifs_in_positives_only():
    ex = synthetic_examples(n_per_task=50, length=80, tasks=["tata"], mutation_rate=0.0)
    motif = SYNTHETIC_TASKS["tata"][0]
    assert sum(e.label for e in ex) == 25
    for e in ex:
        assert len(e.seq) == 80 and set(e.seq) <= set("ACGT")
        if e.label:
            assert len(e.motif_starts) == 3
            assert all(e.seq[s : s + len(motif)] == motif for s in e.motif_starts)
    assert synthetic_examples(5, 80, ["tata"], seed=3) == synthetic_examples(
        5, 80, ["tata"], seed=3
    )
    with pytest.raises(ValueError, match="unknown synthetic task"):
        synthetic_examples(2, 80, ["nope"])


def test_seeded_stratified_split():
    y = np.array([0] * 80 + [1] * 20)
    a, b = random_split(100, seed=1, y=y), random_split(100, seed=1, y=y)
    assert (a == b).all()
    assert (a == "test").sum() == 10 and ((a == "test") & (y == 1)).sum() == 2


def test_task_from_files_dedups_and_checks_labels(tmp_path):
    (tmp_path / "pos.fa").write_text(">p1\nACGTACGT\n>p2\nACGTACGT\n>p3\nTTTTACGA\n")
    (tmp_path / "neg.fa.gz").write_bytes(__import__("gzip").compress(b">n1\nGGGGCCCC\n"))
    t = load_task({"name": "x", "files": {"1": ["pos.fa"], "0": ["neg.fa.gz"]}}, tmp_path)
    assert t.labels == ["0", "1"] and len(t.seqs) == 3  # the duplicate p2 is dropped
    (tmp_path / "t.csv").write_text("seq,label\nACGT,1\nACGA,7\n")
    t = load_task({"name": "c", "table": "t.csv", "labels": [0, 1]}, tmp_path)
    assert len(t.seqs) == 1 and "label '7' not in" in t.errors[0]
    with pytest.raises(DNAInputError, match="needs one of"):
        load_task({"name": "bad"}, tmp_path)


@pytest.mark.skipif(data_path("dna") is None, reason="shared/data/dna not on this machine")
def test_real_promoter_tasks_load():
    from domains.dna.tasks import PROMOTER_TASKS

    t = load_task(PROMOTER_TASKS[0], data_path("dna"), split="random")
    assert t.name == "human_nontata" and len(t.seqs) == 9034
    assert (t.split == "test").sum() == 903 and not t.errors
