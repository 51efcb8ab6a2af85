"""The `seqmodels` command: help, fit, generate, evaluate, export, bad checkpoints, plugins,
the --threads setting, and 2-process DDP on CPU."""

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from seqmodels import cli, commands
from seqmodels.checkpoint import load_exported, load_module
from seqmodels.synthetic import dyck_metrics, is_valid

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "recipes" / "core" / "tiny_dyck.yaml"
# A few steps on a few hundred words: enough to exercise every path, seconds on CPU.
TINY = [
    "--config",
    str(CONFIG),
    "--data.init_args.n_examples",
    "300",
    "--data.init_args.batch_size",
    "16",
    "--model.init_args.warmup_steps",
    "2",
    "--checkpoint.every_n_train_steps",
    "4",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.log_every_n_steps",
    "2",
]


def _last_step(ckpt: Path) -> int:
    return torch.load(ckpt, weights_only=True)["global_step"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fit")
    argv = ["fit", *TINY, "--trainer.max_steps", "6", "--model.init_args.max_steps", "6"]
    assert cli.main([*argv, "--trainer.default_root_dir", str(root)]) == 0
    return root


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "run", "generate", "evaluate", "export"):
        assert f"    {command}" in out, command
    assert "example:" in out


@pytest.mark.parametrize("command", ["run", "generate", "evaluate", "export"])
def test_command_help_shows_an_example(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert f"example:\n  seqmodels {command}" in out


def test_fit_help_shows_an_example_and_checkpoint_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["fit", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "example: seqmodels fit --config" in out
    assert "--checkpoint.every_n_train_steps" in out and "--ckpt_path" in out


def test_fit_writes_last_checkpoint_and_csv_log(trained):
    last = trained / "checkpoints" / "last.ckpt"
    # 6 steps with a save interval of 4: last.ckpt must still hold the final step.
    assert _last_step(last) == 6
    csvs = list(trained.rglob("metrics.csv"))
    assert csvs and "train/loss" in csvs[0].read_text().splitlines()[0]
    assert load_module(last).vocab is not None


def test_generate_writes_text_and_jsonl_reproducibly(trained, tmp_path):
    ckpt = str(trained / "checkpoints" / "last.ckpt")
    base = ["generate", "--ckpt", ckpt, "--n", "6", "--max-new-tokens", "12", "--seed", "3"]
    assert cli.main([*base, "--out", str(tmp_path / "a.txt")]) == 0
    assert cli.main([*base, "--out", str(tmp_path / "b.txt")]) == 0
    assert cli.main([*base, "--out", str(tmp_path / "c.jsonl")]) == 0
    a = (tmp_path / "a.txt").read_text()
    assert a == (tmp_path / "b.txt").read_text()
    assert len(a.splitlines()) == 6
    records = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert [" ".join(r["tokens"]) for r in records] == a.splitlines()
    assert {r["sample"] for r in records} == set(range(6))


def test_generate_compile_samples_what_eager_samples(trained, tmp_path):
    """`generate --compile` from the command line: 2 rows take the compiled static step."""
    ckpt = str(trained / "checkpoints" / "last.ckpt")
    base = ["generate", "--ckpt", ckpt, "--n", "2", "--max-new-tokens", "10", "--seed", "1"]
    assert cli.main([*base, "--out", str(tmp_path / "eager.txt")]) == 0
    assert cli.main([*base, "--compile", "--out", str(tmp_path / "compiled.txt")]) == 0
    assert (tmp_path / "compiled.txt").read_text() == (tmp_path / "eager.txt").read_text()


def test_generate_with_the_grammar_processor_gives_only_valid_words(trained, tmp_path):
    out = tmp_path / "s.txt"
    argv = ["generate", "--ckpt", str(trained / "checkpoints" / "last.ckpt"), "--n", "24"]
    argv += ["--max-new-tokens", "31", "--processor", "seqmodels.synthetic:dyck_processor"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    words = [line.split() for line in out.read_text().splitlines()]
    assert len(words) == 24 and all(is_valid(w) for w in words)


def test_evaluate_scores_samples_and_the_test_split(trained, tmp_path, capsys):
    samples = tmp_path / "s.txt"
    samples.write_text("( )\n( ]\n[ ( ) ]\n")
    out = tmp_path / "eval"
    argv = ["evaluate", "--samples", str(samples), "--out", str(out)]
    assert cli.main([*argv, "--metric", "seqmodels.synthetic:dyck_metrics"]) == 0
    got = json.loads((out / "metrics.json").read_text())
    assert got == dyck_metrics([["(", ")"], ["(", "]"], ["[", "(", ")", "]"]])

    config = next(trained.rglob("config.yaml"))  # the config LightningCLI saved for the fit
    ckpt = trained / "checkpoints" / "last.ckpt"
    assert cli.main(["evaluate", "--ckpt", str(ckpt), "--config", str(config)]) == 0
    assert "test/loss:" in capsys.readouterr().out


def test_export_output_loads_and_matches_the_checkpoint(trained, tmp_path):
    ckpt = trained / "checkpoints" / "last.ckpt"
    assert cli.main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "x" / "config.json").read_text())["class"].endswith("SeqLM")
    ids = torch.tensor([[1, 6, 7, 8, 9, 2]])
    with torch.no_grad():
        torch.testing.assert_close(load_exported(tmp_path / "x")(ids), load_module(ckpt)(ids))


def _bad_checkpoints(tmp_path: Path) -> list[Path]:
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    pickled = tmp_path / "pickled.ckpt"  # arbitrary Python objects: refused by weights_only
    torch.save({"state_dict": {}, "args": Namespace(lr=1)}, pickled)
    foreign = tmp_path / "foreign.ckpt"  # loads, but is no Lightning checkpoint
    torch.save({"weights": torch.zeros(2)}, foreign)
    return [corrupt, pickled, foreign]


def test_bad_checkpoints_give_a_clear_error_not_a_traceback(tmp_path, capsys):
    for bad in _bad_checkpoints(tmp_path):
        for argv in (
            ["generate", "--ckpt", str(bad), "--out", str(tmp_path / "s.txt")],
            ["export", "--ckpt", str(bad), "--out", str(tmp_path / "x")],
        ):
            assert cli.main(argv) == 2
            err = capsys.readouterr().err
            assert "seqmodels: error:" in err and str(bad) in err, err
            assert "Traceback" not in err


def test_fit_resuming_from_a_corrupt_checkpoint_fails_cleanly(tmp_path):
    bad = _bad_checkpoints(tmp_path)[0]
    proc = subprocess.run(
        [sys.executable, "-m", "seqmodels", "fit", *TINY, "--trainer.max_steps", "2"]
        + ["--trainer.default_root_dir", str(tmp_path / "r"), "--ckpt_path", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2
    assert f"seqmodels: error: {bad}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_dotted_path_is_a_clear_error(trained, tmp_path, capsys):
    argv = ["generate", "--ckpt", str(trained / "checkpoints" / "last.ckpt")]
    argv += ["--processor", "no_such_module:factory", "--out", str(tmp_path / "s.txt")]
    assert cli.main(argv) == 2
    assert "cannot import 'no_such_module:factory'" in capsys.readouterr().err


class _EntryPoint:
    def __init__(self, name, fn):
        self.name, self.value, self._fn = name, f"tests:{name}", fn

    def load(self):
        return self._fn()


def _good_plugin():
    def register(subparsers):
        p = subparsers.add_parser("toy", help="a toy domain")
        p.set_defaults(func=lambda args: {"answer": 42.0})

    return register


def _broken_plugin():
    raise ImportError("domain dependency missing")


def test_a_broken_domain_plugin_does_not_break_the_cli(monkeypatch, capsys, tmp_path):
    plugins = [_EntryPoint("broken", lambda: _broken_plugin()), _EntryPoint("toy", _good_plugin)]
    monkeypatch.setattr(commands, "entry_points", lambda group: plugins)
    result = tmp_path / "result.json"
    monkeypatch.setenv(commands.RESULT_ENV, str(result))
    assert cli.main(["toy"]) == 0
    assert json.loads(result.read_text()) == {"answer": 42.0}
    assert "domain commands 'broken'" in capsys.readouterr().err
    assert commands.find_command(["toy"]) is not None
    assert commands.find_command(["broken"]) is None


def test_ddp_two_cpu_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "seqmodels", "fit", *TINY]
    argv += ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"]
    argv += ["--trainer.max_steps", "3", "--trainer.default_root_dir", str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed_backend=gloo" in proc.stderr + proc.stdout
    assert _last_step(tmp_path / "checkpoints" / "last.ckpt") == 3


def test_generate_n_samples_per_condition(tmp_path, capsys):
    from seqmodels.data import ExamplesDataModule
    from seqmodels.synthetic import dyck_vocab
    from seqmodels.training import SeqLM

    vocab = dyck_vocab(2)
    examples = [
        {
            "ids": vocab.encode(list("()" * (1 + i % 3)), add_bos=True, add_eos=True),
            "cond": [i % 2, 1.0],
        }
        for i in range(40)
    ]
    dm = ExamplesDataModule(examples, vocab, batch_size=8)
    model = SeqLM(d_model=16, n_layers=1, n_heads=2, max_len=16, warmup_steps=1)
    trainer = pl_trainer(tmp_path)
    trainer.fit(model, datamodule=dm)
    ckpt = tmp_path / "cond.ckpt"
    trainer.save_checkpoint(ckpt)

    out = tmp_path / "s.jsonl"
    argv = ["generate", "--ckpt", str(ckpt), "--n", "3", "--max-new-tokens", "8"]
    assert cli.main([*argv, "--cond", "[[0, 1], [1, 1]]", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["cond"] for r in rows] == [[0.0, 1.0]] * 3 + [[1.0, 1.0]] * 3
    # A condition of the wrong size is bad input: one line, exit code 2.
    assert cli.main([*argv, "--cond", "[[0, 1, 2]]", "--out", str(out)]) == 2
    assert "takes condition vectors of size 2, got 3" in capsys.readouterr().err
    # ... and so is no condition for a conditioned model.
    assert cli.main([*argv, "--out", str(out)]) == 2
    assert "this model is conditioned" in capsys.readouterr().err


def pl_trainer(root: Path):
    import pytorch_lightning as pl

    return pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )


# ---------------------------------------------------------------- --threads


def threads_metric(samples: list) -> dict:
    """A `--metric` that reports the torch thread count the command runs with."""
    return {"threads": float(torch.get_num_threads())}


@pytest.fixture
def restore_threads(monkeypatch):
    # main() exports OMP_NUM_THREADS and sets torch's count: put both back afterwards.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("where", ["before", "after"])
def test_threads_flag_sets_torch_threads_inside_the_command(where, tmp_path, restore_threads):
    samples = tmp_path / "s.txt"
    samples.write_text("( )\n")
    argv = ["evaluate", "--samples", str(samples), "--metric", "tests.test_cli:threads_metric"]
    argv += ["--out", str(tmp_path)]
    for n in (1, 2):
        torch.set_num_threads(3)
        line = ["--threads", str(n), *argv] if where == "before" else [*argv, f"--threads={n}"]
        assert cli.main(line) == 0
        assert json.loads((tmp_path / "metrics.json").read_text())["threads"] == n
        assert os.environ["OMP_NUM_THREADS"] == str(n)  # what child processes inherit


def test_threads_flag_is_taken_by_lightning_commands(trained, tmp_path, restore_threads):
    torch.set_num_threads(3)
    argv = ["validate", *TINY, "--ckpt_path", str(trained / "checkpoints" / "last.ckpt")]
    argv += ["--trainer.default_root_dir", str(tmp_path), "--threads", "1"]
    assert cli.main(argv) == 0  # LightningCLI would reject an unknown --threads
    assert torch.get_num_threads() == 1


def test_a_bad_threads_value_is_a_clear_error(capsys):
    assert cli.main(["--threads", "0", "export", "--ckpt", "x", "--out", "y"]) == 2
    assert "--threads takes a positive whole number, got '0'" in capsys.readouterr().err


def test_recipe_stages_inherit_the_run_threads_unless_they_set_their_own(tmp_path):
    samples = tmp_path / "s.txt"
    samples.write_text("( )\n")
    score = {"samples": str(samples), "metric": "tests.test_cli:threads_metric"}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        json.dumps(  # JSON is YAML
            {
                "stages": [
                    {"name": "inherit", "command": "evaluate", "args": score},
                    {"name": "own", "command": "evaluate", "args": {**score, "threads": 1}},
                ]
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    # 5 is above the default's cap (4): only an inherited setting gives it.
    cmd = [sys.executable, "-m", "seqmodels", "--threads", "5", "run", str(recipe)]
    proc = subprocess.run(
        [*cmd, "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["inherit"]["threads"] == 5 and metrics["own"]["threads"] == 1


def test_the_private_lightningcli_hook_we_override_still_exists():
    # seqmodels.cli.lightning overrides LightningCLI._parse_ckpt_path (no public way yet):
    # if Lightning renames it, the override silently stops working; fail here instead.
    from pytorch_lightning.cli import LightningCLI

    from seqmodels.cli.lightning import lightning_cli_class

    assert callable(getattr(LightningCLI, "_parse_ckpt_path", None))
    assert "_parse_ckpt_path" in vars(lightning_cli_class())
