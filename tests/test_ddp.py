"""DDP on CPU (2 processes, gloo): each rank trains its own shard, and a resumed DDP run
continues exactly (per-rank random states and data positions)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

JOB = Path(__file__).parent / "train_job.py"


def _run(root: Path, *args: str) -> None:
    argv = [sys.executable, str(JOB), "--root", str(root), "--devices", "2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _record(root: Path, rank: int) -> dict:
    return json.loads((root / f"run_rank{rank}.json").read_text())


def test_ranks_see_disjoint_shards_and_ddp_resume_is_exact(tmp_path):
    # 160 training examples, batch 8, 2 ranks: 10 steps an epoch; 14 steps cross into
    # epoch 2. Checkpoints every 3 steps, all kept.
    steps = ["--steps", "14", "--every", "3"]
    _run(tmp_path / "full", *steps, "--keep")
    full = [_record(tmp_path / "full", r) for r in (0, 1)]
    for step in range(14):
        rows = [{tuple(x) for x in f["batches"][step]["rows"]} for f in full]
        assert len(rows[0]) == len(rows[1]) == 8
        assert not rows[0] & rows[1], f"step {step}: both ranks trained the same examples"
    epoch1 = [{tuple(x) for b in f["batches"][:10] for x in b["rows"]} for f in full]
    assert len(epoch1[0] | epoch1[1]) == 160  # together the ranks covered the epoch once

    # Resume from the uninterrupted run's checkpoint at step 6, mid-epoch 1.
    mid = tmp_path / "full" / "checkpoints" / "epoch=0-step=6.ckpt"
    assert torch.load(mid, weights_only=True)["global_step"] == 6
    cut = tmp_path / "cut"
    _run(cut, *steps, "--resume", str(mid))
    for r in (0, 1):
        run = _record(cut, r)
        assert run["start_step"] == 6 and run["steps"] == 8
        assert run["batches"] == full[r]["batches"][6:], f"rank {r} resumed at another batch"
    a, b = torch.load(tmp_path / "full" / "final.pt"), torch.load(cut / "final.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
