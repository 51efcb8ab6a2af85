import json
import signal
import subprocess
import sys
from pathlib import Path

import torch

JOB = Path(__file__).parent / "train_job.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(JOB), *args], capture_output=True, text=True, timeout=300
    )


def _record(root: Path, rank: int = 0) -> dict:
    return json.loads((root / f"run_rank{rank}.json").read_text())


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    full = _run("--root", str(tmp_path / "full"), "--steps", "50")
    assert full.returncode == 0, full.stderr[-2000:]
    # 160 training examples / batch 8 = 20 batches an epoch: step 27 is mid-epoch 2 and the
    # last checkpoint (every 5 steps) is at step 25.
    killed = _run("--root", str(tmp_path / "cut"), "--steps", "50", "--kill-at", "27")
    assert killed.returncode == -signal.SIGKILL
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert last.exists() and not list(last.parent.glob(".*.tmp"))
    assert torch.load(last, weights_only=True)["global_step"] == 25
    resumed = _run("--root", str(tmp_path / "cut"), "--steps", "50", "--resume", str(last))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # The resumed process started at the checkpoint's step and trained only the rest, on
    # the batches the uninterrupted run trained at those steps (the data position) ...
    run, ref = _record(tmp_path / "cut"), _record(tmp_path / "full")
    assert run["start_step"] == 25 and run["steps"] == 25
    assert run["batches"] == ref["batches"][25:]
    # ... and drew the same random numbers (masks, dropout): the same final weights.
    a = torch.load(tmp_path / "full" / "final.pt")
    b = torch.load(tmp_path / "cut" / "final.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
