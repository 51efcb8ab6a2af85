import math

import numpy as np
import pytest
import torch

from domains.dna.data import DNAPretrainDataModule, DNATaskDataModule, label_token, task_token
from domains.dna.inference import classify_split, label_logprobs, score_sequences
from domains.dna.metrics import classification_metrics, lm_metrics, macro
from domains.dna.tokenizers import BOS, EOS, SEP, SingleNucleotideTokenizer
from seqmodels.objectives import build_objective

TASKS = [
    {"name": "tata", "synthetic": "tata", "n": 40, "length": 40},
    {"name": "ebox", "synthetic": "ebox", "n": 40, "length": 40},
]


def _omni(**kw):
    dm = DNATaskDataModule(tasks=TASKS, mode="omni", batch_size=8, **kw)
    dm.setup()
    return dm


def test_omni_layout_and_label_only_loss_mask():
    dm = _omni(label_repeat=2)
    v = dm.vocab
    assert v.tokens[:11] == SingleNucleotideTokenizer().tokens  # base ids unchanged
    assert task_token("tata") in v and label_token("1") in v
    ex = dm.splits["train"][0]
    ids, mask = ex["ids"], ex["loss_mask"]
    assert ids[0] == BOS and v.id_to_token(ids[1]).startswith("<task:")
    sep = ids.index(SEP)
    assert sep == len(ids) - 4 and ids[-1] == EOS
    assert [v.id_to_token(i).startswith("<label:") for i in ids[sep + 1 : -1]] == [True, True]
    assert [i for i, m in enumerate(mask) if m] == [sep + 1, sep + 2]
    # The core's next-token objective then weights exactly the label targets.
    batch = dm.collate(dm.splits["train"][:4])
    out = build_objective("next_token")(batch)[0]
    targets = out.targets[out.weights > 0]
    assert all(v.id_to_token(int(t)).startswith("<label:") for t in targets)
    assert int((out.weights > 0).sum()) == 2 * 4


def test_task_splits_are_seeded_and_disjoint():
    a, b = _omni(), _omni()
    assert [e["ids"] for e in a.splits["test"]] == [e["ids"] for e in b.splits["test"]]
    for t in a.tasks:
        train, test = set(t.subset("train")[0]), set(t.subset("test")[0])
        assert train and test and not train & test


def test_head_mode_and_single_task_filter():
    dm = DNATaskDataModule(tasks=TASKS, mode="head", only=["ebox"], batch_size=8)
    dm.setup()
    assert [t.name for t in dm.tasks] == ["ebox"]
    ex = dm.splits["train"][0]
    assert ex["task"] == 0 and ex["label"] in (0, 1) and "loss_mask" not in ex
    assert dm.head_tasks() == [{"name": "ebox", "kind": "classification", "n_outputs": 2}]
    with pytest.raises(ValueError, match="unknown task"):
        DNATaskDataModule(tasks=TASKS, only=["nope"]).setup()


def test_pretrain_excludes_task_eval_sequences_and_adds_rc():
    dm = DNAPretrainDataModule(tasks=TASKS, window=40, batch_size=8, val_fraction=0.1)
    dm.setup()
    tok = dm.tokenizer
    held = {s for t in _omni().tasks for s, sp in zip(t.seqs, t.split) if sp != "train"}
    seen = {tok.decode(e["ids"]) for split in dm.splits.values() for e in split}
    assert not seen & held
    train = [tuple(e["ids"]) for e in dm.splits["train"]]
    first = np.array(train[0][1:-1])
    assert (BOS, *tok.reverse_complement_ids(first).tolist(), EOS) in set(train)


class FixedLogits(torch.nn.Module):
    """logits[v] = bias[v] at every position: a model whose predictions we know."""

    def __init__(self, bias):
        super().__init__()
        self.bias = torch.as_tensor(bias, dtype=torch.float32)
        self.hparams = {"max_len": 8}

    def forward(self, ids, **kw):
        return self.bias.expand(*ids.shape, len(self.bias)).clone()


def test_constrained_label_scoring():
    bias = torch.zeros(20)
    bias[7] = 10.0  # a base token, far likelier than any label: must not be predicted
    bias[12], bias[13] = 0.0, 2.0  # label tokens
    lp = label_logprobs(FixedLogits(bias), [[BOS, 6, 7, SEP], [BOS, 6, SEP]], [12, 13])
    assert lp.shape == (2, 2)
    np.testing.assert_allclose(np.exp(lp).sum(1), 1.0, rtol=1e-6)
    assert (lp.argmax(1) == 1).all()
    np.testing.assert_allclose(lp[0], np.log(np.exp([0, 2]) / np.exp([0, 2]).sum()), rtol=1e-5)


def test_classify_split_with_rc_average_uses_label_set():
    dm = _omni()
    lab0 = dm.vocab.token_to_id(label_token("0"))
    bias = torch.zeros(len(dm.vocab))
    bias[lab0] = 3.0
    res = classify_split(FixedLogits(bias), dm, "test", rc_average=True)
    assert set(res) == {"tata", "ebox"}
    assert all((r["pred"] == 0).all() for r in res.values())


def test_scoring_uniform_model_and_chunking():
    tok = SingleNucleotideTokenizer()
    model = FixedLogits(torch.zeros(11))  # uniform over 11 tokens, context 8
    seqs = ["ACGT", "ACGTACGTACGTACGTACG"]  # the second is scored in 3 chunks of <= 7
    out = score_sequences(model, tok, seqs, per_position=True)
    for s, r in zip(seqs, out):
        assert r["n_tokens"] == len(s) == len(r["per_position"])
        assert r["loglik"] == pytest.approx(-len(s) * math.log(11), rel=1e-5)
        assert r["bits_per_base"] == pytest.approx(math.log2(11), rel=1e-5)


def test_metrics():
    m = classification_metrics([0, 1, 1, 0], [0, 1, 0, 0], 2)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["mcc"] == pytest.approx(1 / math.sqrt(3), rel=1e-5)
    assert macro({"a": m, "b": {**m, "accuracy": 0.25}})["accuracy"] == pytest.approx(0.5)
    lm = lm_metrics(total_nll=100 * math.log(4), n_tokens=100, n_bases=100)
    assert lm["bits_per_base"] == pytest.approx(2.0) and lm["perplexity"] == pytest.approx(4.0)


def test_pretrain_batches_work_with_core_mixed_objectives():
    from seqmodels.training import SeqLM

    dm = DNAPretrainDataModule(tasks=TASKS, window=40, batch_size=8, tokenizer="kmer", k=3)
    dm.setup()
    model = SeqLM(vocab_size=len(dm.vocab), d_model=16, n_layers=1, n_heads=2, max_len=64)
    spec = {
        "name": "mixture",
        "mode": "sum",
        "components": [
            {"name": "next_token", "weight": 1.0},
            {"name": "random_token", "ratio": 0.3, "weight": 1.0},
        ],
    }
    parts = build_objective(spec)(next(iter(dm.train_dataloader())), torch.Generator())
    assert {p.name for p in parts} == {"next_token", "random_token"}
    assert all(torch.isfinite(model.part_loss(p)) for p in parts)


def test_bad_records_are_skipped_and_reported(tmp_path, capsys):
    (tmp_path / "pos.fa").write_text(">p1\nACGTACGTAC\n>p2\nACGT-CGTAC\n>p3\nTTGACGTACA\n")
    (tmp_path / "neg.fa").write_text(">n1\nGGGGCCCCAA\n>n2\nCCCCGGGGTT\n")
    spec = [{"name": "x", "files": {"1": ["pos.fa"], "0": ["neg.fa"]}}]
    dm = DNATaskDataModule(tasks=spec, data_dir=str(tmp_path), val_fraction=0.0)
    dm.setup()
    assert sum(len(t.seqs) for t in dm.tasks) == 4
    err = capsys.readouterr().err
    assert "task 'x': skipped 1 bad record" in err and "pos.fa record 'p2'" in err


def test_mcc_of_a_constant_predictor_is_zero():
    assert classification_metrics([0, 1, 1, 0, 1], [1, 1, 1, 1, 1], 2)["mcc"] == 0.0


def test_greedy_decoding_counts_non_label_tokens_as_wrong():
    dm = _omni()
    lab0 = dm.vocab.token_to_id(label_token("0"))
    bias = torch.zeros(len(dm.vocab))
    bias[lab0], bias[7] = 3.0, 5.0  # a base token beats every label
    res = classify_split(FixedLogits(bias), dm, "test", decoding="greedy")
    assert all(r["invalid"].all() and (r["pred"] != r["y"]).all() for r in res.values())
    res = classify_split(FixedLogits(bias), dm, "test")  # constrained: label 0 everywhere
    assert all((r["pred"] == 0).all() and not r["invalid"].any() for r in res.values())


def test_task_token_after_the_sequence():
    dm = _omni(task_position="after")
    ex = dm.splits["train"][0]
    tid = dm.vocab.token_to_id(task_token(dm.tasks[ex["task"]].name))
    assert ex["ids"][1] != tid and ex["ids"][ex["ids"].index(SEP) - 1] == tid


def test_generated_samples_start_with_the_prompt_the_model_saw():
    from domains.dna.inference import sample_sequences
    from seqmodels.training import SeqLM

    torch.manual_seed(0)
    tok = SingleNucleotideTokenizer()
    model = SeqLM(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, max_len=64)
    out = sample_sequences(model.eval(), tok, 3, 20, prompt="taRa")
    assert all(len(s) == 20 and s.startswith("TANA") for s in out)
