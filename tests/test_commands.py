"""seqmodels.commands: the flag helper, the thread setting, and the import layering of the
CLI (no circle between commands, recipes, report and the cli package)."""

import argparse
import os
from pathlib import Path

import pytest
import torch

from seqmodels import commands
from seqmodels.commands import CLIError, add_flag, default_threads, pop_threads, set_threads

SEQMODELS = Path(commands.__file__).resolve().parent


def test_add_flag_takes_both_spellings_into_one_dest():
    p = argparse.ArgumentParser()
    add_flag(p, "--max-atoms", type=int, default=64)
    add_flag(p, "--out", "-o", required=True)
    assert p.parse_args(["--max-atoms", "8", "-o", "x"]).max_atoms == 8
    assert p.parse_args(["--max_atoms", "9", "--out", "y"]).max_atoms == 9
    assert p.parse_args(["--out", "y"]).max_atoms == 64
    # No underscore twin for a name without a dash, and no twin for a short option.
    assert sorted(p._option_string_actions) == [
        "--help", "--max-atoms", "--max_atoms", "--out", "-h", "-o",
    ]  # fmt: skip


def test_add_flag_required_is_met_by_either_spelling():
    p = argparse.ArgumentParser()
    add_flag(p, "--batch-size", type=int, required=True)
    assert p.parse_args(["--batch_size", "3"]).batch_size == 3
    with pytest.raises(SystemExit):
        p.parse_args([])


@pytest.mark.parametrize(
    "argv,threads,rest",
    [
        (["--threads", "2", "fit", "--config", "c.yaml"], 2, ["fit", "--config", "c.yaml"]),
        (["generate", "--ckpt", "x", "--threads=3"], 3, ["generate", "--ckpt", "x"]),
        (["em", "synth", "--out", "o"], None, ["em", "synth", "--out", "o"]),
    ],
)
def test_pop_threads_finds_the_flag_anywhere(argv, threads, rest):
    assert pop_threads(argv) == (threads, rest)


@pytest.mark.parametrize("argv", [["--threads"], ["--threads", "0"], ["--threads=two"]])
def test_pop_threads_rejects_bad_values(argv):
    with pytest.raises(CLIError, match="--threads"):
        pop_threads(argv)


def test_default_threads_follows_omp_num_threads_else_cores_and_load(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(commands, "_physical_cores", lambda cpus: len(cpus))
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert default_threads() == commands.MAX_DEFAULT_THREADS  # quiet 8 cores: the cap
    monkeypatch.setattr(os, "getloadavg", lambda: (5.6, 0.0, 0.0))
    assert default_threads() == 2  # 8 - 5.6 cores left, rounded
    monkeypatch.setattr(os, "getloadavg", lambda: (11.0, 0.0, 0.0))
    assert default_threads() == 1  # overloaded: one thread, never zero
    monkeypatch.setattr(commands, "_physical_cores", lambda cpus: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert default_threads() == 2  # SMT siblings do not count as cores


def test_set_threads_sets_torch_and_the_environment(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert set_threads(1) == 1
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)
