"""`seqmodels scale`: the width rule, the L(N, D) fit and its self-check, and a real sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from seqmodels import scaling

TRUE = {"E": 1.5, "A": 40.0, "B": 300.0, "alpha": 0.35, "beta": 0.4}


def _synthetic_runs(noise: float, seed: int = 0) -> list[scaling.Run]:
    rng = np.random.default_rng(seed)
    runs = []
    for d, n in zip([32, 48, 64, 96, 160], [3e4, 7e4, 1.2e5, 3e5, 1.2e6]):
        for t in [2e5, 4e5, 8e5]:
            loss = TRUE["E"] + TRUE["A"] * n ** -TRUE["alpha"] + TRUE["B"] * t ** -TRUE["beta"]
            loss *= 1 + rng.normal(0, noise)
            runs.append(scaling.Run(d, 2, 1, int(t), 10, int(n), int(t), float(loss)))
    return runs


def test_width_rule_gives_depth_and_heads_that_divide():
    assert scaling.shape_for_width(32) == (2, 1)
    assert scaling.shape_for_width(128) == (4, 4)
    assert scaling.shape_for_width(160) == (5, 5)
    n_layers, heads = scaling.shape_for_width(48)
    assert 48 % heads == 0 and n_layers == 2
    with pytest.raises(ValueError, match="multiple of 16"):
        scaling.shape_for_width(40)


def test_fit_recovers_a_known_law_and_predicts_the_held_out_size():
    res = scaling.analyse(_synthetic_runs(noise=0.0), rounds=10)
    for k, v in TRUE.items():
        assert res["fit"][k] == pytest.approx(v, rel=0.05), k
    ex = res["extrapolation"]
    assert ex["held_out_size"] == 160 and ex["fitted_sizes"] == [32, 48, 64, 96]
    assert ex["max_rel_error"] < 1e-3
    # beside it, the same-budget copy of the largest fitted size: wrong by the size effect
    assert all(r["baseline_rel_error"] > 0.01 for r in ex["runs"])
    assert (
        min(r["compute_vs_largest_fitted"] for r in ex["runs"])
        < 4
        <= max(r["compute_vs_largest_fitted"] for r in ex["runs"])
    )


def test_bootstrap_intervals_cover_the_truth_under_noise():
    res = scaling.analyse(_synthetic_runs(noise=0.004, seed=0), rounds=20)
    for k in ("E", "alpha", "beta"):
        lo, hi = res["fit_ci95"][k]
        assert lo < TRUE[k] < hi, (k, lo, hi)
        assert hi - lo > 0  # noise makes the intervals real
    assert res["extrapolation"]["max_rel_error"] < 0.03


def test_frontier_keeps_only_runs_no_cheaper_run_beats():
    c = np.array([1.0, 2.0, 3.0, 4.0])
    loss = np.array([3.0, 3.5, 2.0, 2.5])
    assert scaling.frontier(c, loss).tolist() == [0, 2]


def test_sweep_runs_real_fits_and_resumes(tmp_path):
    """Six tiny Dyck runs through the CLI; a second call trains nothing and gives the same fit."""
    cfg = yaml.safe_load(Path("recipes/core/tiny_dyck.yaml").read_text())
    cfg["data"]["init_args"].update(n_examples=600, batch_size=16)
    cfg["trainer"]["limit_val_batches"] = 4
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump({"stages": [{"name": "train", "command": "fit", "config": cfg}]})
    )
    cmd = [sys.executable, "-m", "seqmodels", "--threads", "1", "scale", str(recipe)]
    cmd += ["--stage", "train", "--sizes", "16,32", "--tokens", "2000,4000,8000"]
    cmd += ["--bootstrap", "5", "--out", str(tmp_path / "s")]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads((tmp_path / "s/scale.json").read_text())
    runs = result["runs"]
    assert len(runs) == 6 and all(r["val_loss"] is not None for r in runs)
    by = {(r["d_model"], r["tokens"]): r for r in runs}
    assert by[(32, 8000)]["params"] > by[(16, 8000)]["params"]
    assert by[(16, 8000)]["steps"] > by[(16, 2000)]["steps"]
    # more tokens at a size lowers the measured loss: the runs really trained
    assert by[(32, 8000)]["val_loss"] < by[(32, 2000)]["val_loss"]
    assert (tmp_path / "s/scale.png").stat().st_size > 0
    assert "L(N, D)" in (tmp_path / "s/report.md").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped") == 6
    assert json.loads((tmp_path / "s/scale.json").read_text())["fit"] == result["fit"]
