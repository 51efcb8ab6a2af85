"""`seqmodels dna audit` and `seqmodels dna baselines` from the command line, and the
baselines themselves on data where the answer is known."""

import json

import numpy as np
import pytest

from domains.dna.baselines import gb_cnn_predict, kmer_lr_predict, run_baselines
from domains.dna.data import load_tasks
from seqmodels.cli import main

RNG = np.random.default_rng(1)


def _rand(n: int) -> str:
    return "".join(RNG.choice(list("ACGT"), n))


def test_audit_of_files_finds_the_leaked_record(tmp_path, capsys):
    train = [_rand(100) for _ in range(10)]
    (tmp_path / "tr1.fa").write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(train[:5])))
    (tmp_path / "tr0.fa").write_text("".join(f">n{i}\n{s}\n" for i, s in enumerate(train[5:])))
    leaked = train[0][20:80] + _rand(40)  # a positive's window
    (tmp_path / "te1.fa").write_text(f">a\n{leaked}\n>c\nACGT-ACGT\n")
    (tmp_path / "te0.fa").write_text(f">b\n{_rand(100)}\n")
    (tmp_path / "tr.bed").write_text("chr1\t0\t100\nchr1\t500\t600\n")
    (tmp_path / "te.bed").write_text("chr1\t20\t120\nchr2\t0\t100\n")
    out = tmp_path / "audit"
    main(
        [
            "dna", "audit", "--train", f"{tmp_path}/tr1.fa:1", f"{tmp_path}/tr0.fa:0",
            "--test", f"{tmp_path}/te1.fa:1", f"{tmp_path}/te0.fa:0", "--k", "24",
            "--train-intervals", str(tmp_path / "tr.bed"), "--test-intervals", str(tmp_path / "te.bed"),
            "--out", str(out),
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert "skipped:" in captured.err and "record 'c'" in captured.err
    m = json.loads((out / "metrics.json").read_text())["files"]
    assert m["test_sharing_kmer_with_train"] == 0.5 and m["n_test"] == 2
    assert m["memorisation"]["accuracy"] == 1.0  # 'a' gets its source's label, 'b' the tie
    assert m["intervals"]["test_overlapping_train_gt_half"] == 0.5
    assert (out / "audit.png").stat().st_size > 1000 and "memorisation" in captured.out


def test_audit_cli_errors_are_one_line(tmp_path):
    assert main(["dna", "audit", "--train", str(tmp_path / "missing.fa")]) == 2
    assert main(["dna", "audit", "--train", str(tmp_path / "no.fa"), "--test", "x.fa"]) == 2


def test_kmer_lr_and_cnn_learn_a_motif():
    motif = "TATAAAAGGC"

    def make(n):
        seqs, y = [], []
        for i in range(n):
            s = _rand(60)
            if i % 2:
                p = RNG.integers(0, 50)
                s = s[:p] + motif + s[p + 10 :]
            seqs.append(s)
            y.append(i % 2)
        return seqs, np.array(y)

    train, val, (test, y_test) = make(600), make(100), make(100)
    pred, info = kmer_lr_predict(train, val, test, k=4)
    assert (pred == y_test).mean() > 0.8 and info["C"] > 0
    pred, info = gb_cnn_predict(train, val, test, 2, epochs=5, seed=0)
    assert (pred == y_test).mean() > 0.65 and 1 <= info["best_epoch"] <= 5


def test_baselines_cli_reports_both_splits(tmp_path):
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text("- {name: tata, synthetic: tata, n: 120, length: 60}\n")
    out = tmp_path / "b"
    main(
        [
            "dna", "baselines", "--tasks", str(tasks), "--baselines", "majority", "memorisation",
            "kmer_lr", "--lr-k", "3", "--out", str(out),
        ]
    )  # fmt: skip
    m = json.loads((out / "metrics.json").read_text())
    assert set(m) == {"overlap", "random"}
    assert m["overlap"]["tata"]["majority"]["mcc"] == 0.0  # sklearn: constant predictor
    assert m["random"]["tata"]["kmer_lr"]["n"] == 12
    (task,) = load_tasks([{"name": "t", "synthetic": "tata", "n": 60, "length": 60}])
    with pytest.raises(ValueError, match="unknown baseline"):
        run_baselines(task, ["nope"])


def test_compare_puts_baselines_of_the_models_split_beside_them(tmp_path):
    def write(folder, metrics):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "metrics.json").write_text(json.dumps(metrics))

    def m(acc, mcc):
        return {"accuracy": acc, "mcc": mcc, "f1": acc, "n": 10, "split_method": "overlap"}

    write("mt", {"a": m(0.9, 0.8), "macro": {}})
    write("st", {"a": m(0.8, 0.6), "macro": {}})
    write(
        "bl",
        {"overlap": {"a": {"kmer_lr": m(0.7, 0.4)}}, "random": {"a": {"kmer_lr": m(0.99, 0.98)}}},
    )
    out = tmp_path / "cmp"
    args = ["dna", "compare", "--multitask", str(tmp_path / "mt"), "--single", str(tmp_path / "st")]
    assert main([*args, "--baselines", str(tmp_path / "bl"), "--out", str(out)]) in (0, None)
    got = json.loads((out / "metrics.json").read_text())
    assert got["kmer_lr"]["a"]["accuracy"] == 0.7  # the overlap split's, not the random one
    assert "kmer_lr" in (out / "table.md").read_text()


def test_synthetic_too_short_is_a_clear_error(tmp_path, capsys):
    assert main(["dna", "synthetic", "--length", "20", "--out", str(tmp_path / "s.csv")]) == 2
    assert "too short" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()
