"""The recipe runner: checking and substitution, stage order, resume of a killed fit stage,
skip on rerun, metrics.json and report.md; and report.md on its own."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from seqmodels import cli
from seqmodels.recipes import RecipeError, StageResult, _flags, load_recipe
from seqmodels.report import write_report

TESTS = Path(__file__).resolve().parent
KILL_ENV = "SEQMODELS_TEST_KILL_AT"


class KillAt(pl.Callback):
    """A crash on demand: SIGKILL once training reaches the step in $SEQMODELS_TEST_KILL_AT."""

    def on_train_batch_end(self, trainer, *args) -> None:
        at = os.environ.get(KILL_ENV)
        if at and trainer.global_step >= int(at):
            os.kill(os.getpid(), signal.SIGKILL)


def _write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_references_are_substituted(tmp_path):
    recipe = _write(
        tmp_path / "r.yaml",
        {
            "stages": [
                {
                    "name": "a",
                    "command": "fit",
                    "config": {"trainer": {"default_root_dir": "${stage}/x"}},
                },
                {
                    "name": "b",
                    "command": "generate",
                    "args": {"ckpt": "${stages.a}/checkpoints/last.ckpt", "out": "${out}/s.txt"},
                },
            ]
        },
    )
    a, b = load_recipe(recipe, tmp_path / "out")
    assert a.config == {"trainer": {"default_root_dir": f"{tmp_path}/out/a/x"}}
    assert b.args == {
        "ckpt": f"{tmp_path}/out/a/checkpoints/last.ckpt",
        "out": f"{tmp_path}/out/s.txt",
    }
    assert a.fit_like and not b.fit_like


@pytest.mark.parametrize(
    "stages,needle",
    [
        ([{"name": "a", "command": "fitt"}], "unknown command 'fitt'"),
        ([{"name": "a", "command": "generate nothing"}], "unknown command 'generate nothing'"),
        ([{"name": "a"}], "missing key 'command'"),
        ([{"command": "fit"}], "missing key 'name'"),
        ([{"name": "a", "command": "fit", "arg": {}}], "unknown key 'arg'"),
        (
            [{"name": "a", "command": "export", "args": {"ckpt": "${stages.b}/x"}}],
            "unknown reference ${stages.b}",
        ),
        ([{"name": "a", "command": "export", "config": {}}], "key 'config' is only for"),
        ([{"name": "a", "command": "fit"}, {"name": "a", "command": "fit"}], "duplicate stage"),
    ],
)
def test_bad_recipes_name_the_key_and_the_file(tmp_path, stages, needle):
    recipe = _write(tmp_path / "bad.yaml", {"stages": stages})
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe, tmp_path / "out")
    assert str(recipe) in str(err.value) and needle in str(err.value)


def test_recipe_without_stages_and_with_unknown_top_level_key(tmp_path):
    with pytest.raises(RecipeError, match="missing key 'stages'"):
        load_recipe(_write(tmp_path / "a.yaml", {"description": "x"}), tmp_path)
    with pytest.raises(RecipeError, match="unknown key 'stage'"):
        load_recipe(_write(tmp_path / "b.yaml", {"stage": []}), tmp_path)


def test_bad_recipe_through_the_cli_is_one_line_and_exit_2(tmp_path, capsys):
    recipe = _write(tmp_path / "bad.yaml", {"stages": [{"name": "a", "command": "nope"}]})
    assert cli.main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"seqmodels: error: {recipe}: stage 'a': unknown command 'nope'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing runs before the whole recipe checks out


def test_flags_for_lightning_and_argparse_commands():
    args = {"trainer.max_steps": 5, "flag": True, "off": False, "xs": [1, 2], "none": None}
    assert _flags(args, fit_like=True) == [
        "--trainer.max_steps", "5", "--flag", "true", "--off", "false",
        "--xs", "[1, 2]", "--none", "null",
    ]  # fmt: skip
    assert _flags(args, fit_like=False) == ["--trainer.max_steps", "5", "--flag", "--xs", "1", "2"]


def _recipe(tmp_path: Path) -> Path:
    tiny = {
        "seed_everything": 0,
        "model": {
            "class_path": "seqmodels.training.SeqLM",
            "init_args": {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_len": 32},
        },
        "data": {
            "class_path": "seqmodels.synthetic.DyckDataModule",
            "init_args": {"n_examples": 300, "batch_size": 16},
        },
        "trainer": {
            "max_steps": 8,
            "log_every_n_steps": 2,
            "enable_model_summary": False,
            "accelerator": "cpu",
            "devices": 1,
            "callbacks": [{"class_path": "test_recipes.KillAt"}],
        },
        "checkpoint": {"every_n_train_steps": 3},
    }
    return _write(
        tmp_path / "recipe.yaml",
        {
            "stages": [
                {
                    "name": "train",
                    "command": "fit",
                    "config": tiny,
                    "args": {"model.init_args.warmup_steps": 2, "trainer.limit_val_batches": 2},
                },
                {
                    "name": "score",
                    "command": "evaluate",
                    "args": {
                        "ckpt": "${stages.train}/checkpoints/last.ckpt",
                        "metric": "seqmodels.synthetic:dyck_metrics",
                        "processor": "seqmodels.synthetic:dyck_processor",
                        "n": 8,
                        "max-new-tokens": 26,
                        "out": "${stage}",
                    },
                },
            ]
        },
    )


def _run(recipe: Path, out: Path, **env) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])  # for KillAt
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **env}
    cmd = [sys.executable, "-m", "seqmodels", "run", str(recipe), "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


def test_killed_fit_resumes_then_rerun_skips_everything(tmp_path):
    recipe, out = _recipe(tmp_path), tmp_path / "out"
    last = out / "train" / "checkpoints" / "last.ckpt"

    killed = _run(recipe, out, **{KILL_ENV: "5"})
    assert killed.returncode == 1
    assert "stage 'train' (seqmodels fit) failed" in killed.stderr
    assert not (out / "train" / ".done").exists() and not (out / "score").exists()
    assert torch.load(last, weights_only=True)["global_step"] == 3  # saved every 3 steps

    resumed = _run(recipe, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[train] resuming seqmodels fit" in resumed.stdout
    assert resumed.stdout.index("[train]") < resumed.stdout.index("[score]")
    assert torch.load(last, weights_only=True)["global_step"] == 8
    assert yaml.safe_load((out / "train" / "config.yaml").read_text())["trainer"]["max_steps"] == 8
    # The resumed run logged from step 3 on, in a second CSV version.
    logs = sorted((out / "train" / "lightning_logs").glob("version_*/metrics.csv"))
    assert len(logs) == 2
    steps = [int(r["step"]) for r in csv.DictReader(logs[1].open()) if r.get("train/loss")]
    assert steps and min(steps) >= 3

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"train", "score"}
    assert "train/loss" in metrics["train"]
    assert metrics["score"]["valid_fraction"] == 1.0  # the grammar processor was applied
    assert metrics["score"]["n_samples"] == 8
    report = (out / "report.md").read_text()
    assert "| train | `seqmodels fit` | resumed |" in report
    assert "| score | valid_fraction | 1 |" in report
    assert "![train_loss](plots/train_loss.png)" in report
    assert (out / "plots" / "train_loss.png").stat().st_size > 1000

    # Exact resume through the CLI: the same weights as a run that was never killed.
    clean = _run(recipe, tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr[-3000:]
    resumed_sd = torch.load(last, weights_only=True)["state_dict"]
    clean_last = tmp_path / "clean" / "train" / "checkpoints" / "last.ckpt"
    clean_sd = torch.load(clean_last, weights_only=True)["state_dict"]
    for key, value in clean_sd.items():
        assert torch.equal(resumed_sd[key], value), key

    again = _run(recipe, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[train] done before; skipped" in again.stdout
    assert "[score] done before; skipped" in again.stdout
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert torch.load(last, weights_only=True)["global_step"] == 8


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("target", ["runner", "stage"])
def test_sigterm_stops_the_run_and_the_stage_is_not_done(tmp_path, target):
    """`kill` of `seqmodels run` (or a scheduler's stop) reaches the stage process too: the
    runner exits 143 soon after and its fit child is gone. `kill` of the fit alone: Lightning
    stops it cleanly, but the fit exits 143 (not 0), so the runner fails (exit 1). Either
    way the stage is not marked done."""
    import time

    recipe = yaml.safe_load(_recipe(tmp_path).read_text())
    recipe["stages"][0]["args"]["trainer.max_steps"] = 100_000
    path = _write(tmp_path / "long.yaml", recipe)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "seqmodels", "run", str(path), "--out", str(out)]
    sink = (tmp_path / "runner.log").open("w")  # a file, not a pipe nobody drains
    runner = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)
    children = Path(f"/proc/{runner.pid}/task/{runner.pid}/children")
    deadline, child = time.monotonic() + 120, None
    while time.monotonic() < deadline and runner.poll() is None:
        pids = children.read_text().split() if children.exists() else []
        if pids and (out / "train" / "checkpoints" / "last.ckpt").exists():
            child = int(pids[0])  # the fit stage, training (it has saved a checkpoint)
            break
        time.sleep(0.2)
    assert child is not None, (
        "the fit stage did not start: " + (tmp_path / "runner.log").read_text()
    )
    if target == "runner":
        runner.send_signal(signal.SIGTERM)
    else:
        os.kill(child, signal.SIGTERM)
    try:
        runner.wait(timeout=90)
    except subprocess.TimeoutExpired:
        runner.kill()
        raise
    orphan = Path(f"/proc/{child}").exists()  # the runner reaps its stage: none is left
    if orphan:
        os.kill(child, signal.SIGKILL)
    assert not orphan
    log = (tmp_path / "runner.log").read_text()
    if target == "runner":
        assert runner.returncode == 128 + signal.SIGTERM
        assert "stopped by signal 15; rerun the recipe to continue" in log
    else:
        assert runner.returncode == 1
        assert "stopped by SIGTERM" in log and "failed with exit code 143" in log
    assert not (out / "train" / ".done").exists()


def test_report_plots_csv_losses_and_embeds_stage_pngs(tmp_path):
    stage = tmp_path / "train"
    (stage / "lightning_logs" / "version_0").mkdir(parents=True)
    with (stage / "lightning_logs" / "version_0" / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "train/loss", "val/loss"])
        w.writerows([[0, 1, 2.0, ""], [0, 3, 1.5, ""], [0, 3, "", 1.6], [0, 5, 1.2, ""]])
    (tmp_path / "plot").mkdir()
    (tmp_path / "plot" / "fig.png").write_bytes(b"\x89PNG fake")
    results = [
        StageResult("train", "fit", "ran", 1.0, {"train/loss": 1.2}),
        StageResult("plot", "toy plot", "skipped", 0.5, {"nested": {"a": 0.25}}),
    ]
    path = write_report(tmp_path, Path("r.yaml"), results, 1.5)
    text = path.read_text()
    assert "| train | train/loss | 1.2 |" in text and "| plot | nested.a | 0.25 |" in text
    assert "![train_loss](plots/train_loss.png)" in text and "![fig](plot/fig.png)" in text
    assert (tmp_path / "plots" / "train_loss.png").read_bytes()[:4] == b"\x89PNG"


def _parallel_recipe(tmp_path: Path) -> Path:
    """a and b independent, c reads both, d reads ${out}: after everything before it."""
    stage = lambda name, ref: {"name": name, "command": "data list", "args": {"x": ref}}  # noqa: E731
    return _write(
        tmp_path / "p.yaml",
        {
            "stages": [
                stage("a", "1"),
                stage("b", "2"),
                stage("c", "${stages.a},${stages.b}"),
                stage("e", "3"),
                stage("d", "${out}/f"),
            ]
        },
    )


def test_dependencies_come_from_references(tmp_path):
    a, b, c, e, d = load_recipe(_parallel_recipe(tmp_path), tmp_path / "out")
    assert (a.deps, b.deps, c.deps, e.deps) == (set(), set(), {"a", "b"}, set())
    assert d.deps == {"a", "b", "c", "e"}


def _fake_stages(monkeypatch, fail: str | None = None) -> list:
    """run_stage replaced by a sleep that logs (event, stage, time); `fail` raises."""
    import time

    from seqmodels import recipes

    events, lock = [], __import__("threading").Lock()

    def fake(stage, out, threads=None, log=False):
        with lock:
            events.append(("start", stage.name, threads, log))
        time.sleep(0.3 if stage.name in ("a", "e") else 0.1)
        with lock:
            events.append(("end", stage.name, threads, log))
        if stage.name == fail:
            raise recipes.StageFailed(f"stage {stage.name!r} failed")
        return StageResult(stage.name, "data list", "ran", 0.1, {"n": 1})

    monkeypatch.setattr(recipes, "run_stage", fake)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    return events


def test_parallel_run_overlaps_independent_stages_and_waits_for_dependencies(tmp_path, monkeypatch):
    from seqmodels.recipes import run_recipe

    events = _fake_stages(monkeypatch)
    metrics = run_recipe(_parallel_recipe(tmp_path), tmp_path / "out", jobs=2)
    order = [(kind, name) for kind, name, _, _ in events]
    assert order[:2] == [("start", "a"), ("start", "b")]  # both at once
    for dep in ("a", "b"):
        assert order.index(("end", dep)) < order.index(("start", "c"))
    # e needs nothing: it starts when b frees a slot, before a (and so c) is done
    assert order.index(("start", "e")) < order.index(("start", "c"))
    assert order.index(("start", "d")) == max(order.index(("end", n)) for n in "abce") + 1
    assert {threads for _, _, threads, _ in events} == {2} and all(log for *_, log in events)
    assert list(metrics) == ["a", "b", "c", "e", "d"]  # recipe order, not finishing order
    assert "| c | `seqmodels data list` | ran |" in (tmp_path / "out" / "report.md").read_text()


def test_parallel_failure_stops_new_stages_and_lets_running_ones_finish(tmp_path, monkeypatch):
    from seqmodels.recipes import StageFailed, run_recipe

    events = _fake_stages(monkeypatch, fail="b")
    with pytest.raises(StageFailed, match=r"'b' failed; not started: c, e, d"):
        run_recipe(_parallel_recipe(tmp_path), tmp_path / "out", jobs=2)
    order = [(kind, name) for kind, name, _, _ in events]
    assert ("end", "a") in order  # the running stage finished
    assert ("start", "e") not in order and ("start", "c") not in order


def test_parallel_run_through_the_cli_logs_each_stage(tmp_path):
    recipe = _write(
        tmp_path / "r.yaml",
        {"stages": [{"name": n, "command": "data list"} for n in ("one", "two")]},
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "seqmodels", "run", str(recipe), "--out", str(out), "--jobs", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "running up to 2 stages at once" in done.stdout
    for name in ("one", "two"):
        assert f"[{name}] done in" in done.stdout
        assert (out / name / ".done").is_file()
        assert (out / name / "log.txt").read_text().strip()  # the stage's output, kept
