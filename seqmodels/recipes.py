"""The multi-stage recipe runner behind `seqmodels run RECIPE --out DIR`.

A recipe is YAML: `stages: [{name, command, config?, args?, env?}]` (`env`, also at the top
level, sets environment variables of the stage processes). Stages run in order, each
as its own `python -m seqmodels COMMAND ...` process writing to `<out>/<stage>/` (a
subprocess keeps stages independent, and lets Lightning's DDP launcher re-run exactly the
stage's command in its worker processes). A stage that finishes writes `<stage>/.done`;
a rerun skips it. A fit stage interrupted before that resumes from its `last.ckpt`. The
run ends with `<out>/metrics.json` and `<out>/report.md`.

With `jobs` > 1 independent stages run at once: a stage waits for the stages its
`${stages.NAME}` references name (a `${out}` reference: for every earlier stage), each
concurrent stage gets threads // jobs torch threads (unless its own env sets them), and
its output goes to `<out>/<stage>/log.txt`. After a failure no new stage starts; the
running ones finish and keep their results.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seqmodels.commands import LIGHTNING_COMMANDS, RESULT_ENV, build_parser, find_command
from seqmodels.report import StageResult, write_report

FIT_LIKE = LIGHTNING_COMMANDS  # the commands that take a `config:` and LightningCLI flags
RECIPE_KEYS = {"stages", "name", "description", "env"}
STAGE_KEYS = {"name", "command", "config", "args", "env", "description"}
DONE = ".done"
RESULT = ".result.json"
_REF = re.compile(r"\$\{([^}]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class RecipeError(ValueError):
    """A malformed recipe; the message names the file and the offending key."""


class StageFailed(RuntimeError):
    """A stage's command exited with an error (its own output says why)."""


@dataclass
class Stage:
    name: str
    command: list[str]
    config: dict | None = None
    args: dict = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    deps: set[str] = field(default_factory=set)  # stages that must finish first

    @property
    def fit_like(self) -> bool:
        return self.command[0] in FIT_LIKE


def _substitute(
    value: Any, refs: dict[str, str], where: str, path: Path, used: set[str] | None = None
) -> Any:
    """Replace `${out}`, `${stage}`, `${stages.NAME}` in every string of a config/args tree;
    the references met are added to `used`."""
    used = set() if used is None else used
    if isinstance(value, dict):
        return {k: _substitute(v, refs, f"{where}.{k}", path, used) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, refs, f"{where}[{i}]", path, used) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def repl(match: re.Match) -> str:
        key = match.group(1).strip()
        if key not in refs:
            known = ", ".join(f"${{{k}}}" for k in refs)
            raise RecipeError(
                f"{path}: {where}: unknown reference ${{{key}}} (known here: {known}; "
                "${stages.NAME} must name an earlier stage)"
            )
        used.add(key)
        return refs[key]

    return _REF.sub(repl, value)


def load_recipe(path: str | Path, out: str | Path) -> list[Stage]:
    """Read and check a whole recipe before anything runs, resolving its references."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with a 'stages' list")
    unknown = set(data) - RECIPE_KEYS
    if unknown:
        raise RecipeError(
            f"{path}: unknown key {sorted(unknown)[0]!r} (allowed: {sorted(RECIPE_KEYS)})"
        )
    if "stages" not in data:
        raise RecipeError(f"{path}: missing key 'stages'")
    if not isinstance(data["stages"], list) or not data["stages"]:
        raise RecipeError(f"{path}: 'stages' must be a non-empty list")

    out = Path(out)
    recipe_env = _env(data.get("env"), "env", path)
    parser = build_parser()
    stages: list[Stage] = []
    refs = {"out": str(out)}
    for i, raw in enumerate(data["stages"]):
        where = f"stages[{i}]"
        if not isinstance(raw, dict):
            raise RecipeError(f"{path}: {where} must be a mapping")
        unknown = set(raw) - STAGE_KEYS
        if unknown:
            raise RecipeError(
                f"{path}: {where}: unknown key {sorted(unknown)[0]!r} (allowed: {sorted(STAGE_KEYS)})"
            )
        for key in ("name", "command"):
            if key not in raw:
                raise RecipeError(f"{path}: {where}: missing key {key!r}")
        name = str(raw["name"])
        where = f"stage {name!r}"
        if not _NAME.match(name):
            raise RecipeError(f"{path}: {where}: a name is letters, digits, '_', '.', '-'")
        if any(s.name == name for s in stages):
            raise RecipeError(f"{path}: {where}: duplicate stage name")
        words = str(raw["command"]).split()
        if not words or find_command(words, parser) is None:
            raise RecipeError(
                f"{path}: {where}: unknown command {raw['command']!r} "
                "(see `seqmodels --help` for the commands)"
            )
        refs["stage"] = str(out / name)
        used: set[str] = set()
        config = raw.get("config")
        if config is not None:
            if words[0] not in FIT_LIKE:
                raise RecipeError(f"{path}: {where}: key 'config' is only for {FIT_LIKE}")
            if isinstance(config, str):  # a YAML file beside the recipe
                config_path = path.parent / config
                if not config_path.is_file():
                    raise RecipeError(f"{path}: {where}: config file {config_path} not found")
                config = yaml.safe_load(config_path.read_text())
            if not isinstance(config, dict):
                raise RecipeError(f"{path}: {where}: 'config' must be a mapping or a YAML path")
            config = _substitute(config, refs, f"{where}.config", path, used)
        args = raw.get("args") or {}
        if not isinstance(args, dict):
            raise RecipeError(f"{path}: {where}: 'args' must be a mapping of flag: value")
        args = _substitute(args, refs, f"{where}.args", path, used)
        env = {**recipe_env, **_env(raw.get("env"), f"{where}.env", path)}
        deps = {k.removeprefix("stages.") for k in used if k.startswith("stages.")}
        if "out" in used:  # may read anything under out/: after every earlier stage
            deps = {s.name for s in stages}
        stages.append(Stage(name, words, config, args, env, deps))
        refs[f"stages.{name}"] = str(out / name)
    return stages


def _env(value: Any, where: str, path: Path) -> dict[str, str]:
    """Environment variables for a stage's process (e.g. OMP_NUM_THREADS)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecipeError(f"{path}: {where} must be a mapping of NAME: value")
    return {str(k): str(v) for k, v in value.items()}


def _flags(args: dict, fit_like: bool) -> list[str]:
    """`{key: value}` -> `--key value`. LightningCLI takes every value as text (YAML/JSON);
    argparse commands take booleans as bare switches and lists as several values."""
    flags: list[str] = []
    for key, value in args.items():
        flag = f"--{key}"
        if fit_like:
            text = value if isinstance(value, str) else json.dumps(value)
            flags += [flag, text]
        elif isinstance(value, bool):
            flags += [flag] if value else []
        elif value is None:
            continue
        elif isinstance(value, list):
            flags += [flag, *map(str, value)]
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


def _stage_command(stage: Stage, stage_dir: Path) -> tuple[list[str], bool]:
    cmd = [sys.executable, "-m", "seqmodels", *stage.command]
    resumed = False
    if stage.fit_like:
        if stage.config is not None:
            config_path = stage_dir / "config.yaml"
            config_path.write_text(yaml.safe_dump(stage.config, sort_keys=False))
            cmd += ["--config", str(config_path)]
        cmd += _flags(stage.args, fit_like=True)
        cmd += ["--trainer.default_root_dir", str(stage_dir)]
        last = stage_dir / "checkpoints" / "last.ckpt"
        if stage.command == ["fit"] and last.is_file():
            cmd += ["--ckpt_path", str(last)]
            resumed = True
    else:
        cmd += _flags(stage.args, fit_like=False)
    return cmd, resumed


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        print(f"seqmodels: warning: {path} is not JSON; ignored", file=sys.stderr)
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written marker


# The stage processes running now: a SIGTERM to the runner is passed on to them (a stage
# runs as a child process, so `kill` or a scheduler's stop would otherwise leave it running).
_CHILDREN: set[subprocess.Popen] = set()
_CHILDREN_LOCK = threading.Lock()


def _call(cmd: list[str], env: dict, sink=None) -> int:
    """Run a stage process to its end; its exit code. Interrupted (Ctrl-C, or SIGTERM via
    `_stop_children`), the stage is stopped too and waited for before the error goes on."""
    err = None if sink is None else subprocess.STDOUT
    proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=err)
    with _CHILDREN_LOCK:
        _CHILDREN.add(proc)
    try:
        return proc.wait()
    except BaseException:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    finally:
        with _CHILDREN_LOCK:
            _CHILDREN.discard(proc)


def _stop_children(signum: int, _frame) -> None:
    """SIGTERM handler: pass the signal on to every running stage, then exit 128 + signum
    (stages in worker threads of a parallel run end before the pool does). Finished stages
    keep their `.done`; an interrupted fit resumes from its last checkpoint."""
    with _CHILDREN_LOCK:
        children = list(_CHILDREN)
    for proc in children:
        if proc.poll() is None:
            proc.send_signal(signum)
    print(f"stopped by signal {signum}; rerun the recipe to continue", file=sys.stderr)
    raise SystemExit(128 + signum)


def run_stage(
    stage: Stage, out: Path, threads: int | None = None, log: bool = False
) -> StageResult:
    """Run one stage (skipped when done before). `threads`: its torch threads unless its
    env sets OMP_NUM_THREADS; `log`: its output to `<stage>/log.txt`, not the terminal."""
    stage_dir = out / stage.name
    done = stage_dir / DONE
    command = " ".join(stage.command)
    if done.is_file():
        record = _read_json(done)
        print(f"[{stage.name}] done before; skipped (delete {done} to run it again)")
        return StageResult(
            stage.name, command, "skipped", record.get("wall_s", 0.0), record.get("metrics", {})
        )
    stage_dir.mkdir(parents=True, exist_ok=True)
    cmd, resumed = _stage_command(stage, stage_dir)
    result_file = stage_dir / RESULT
    result_file.unlink(missing_ok=True)
    print(f"[{stage.name}] {'resuming ' if resumed else ''}seqmodels {command}", flush=True)
    start = time.perf_counter()
    # os.environ carries the run's thread setting (OMP_NUM_THREADS, exported by
    # seqmodels.commands.set_threads); a stage's own env or `threads:` arg overrides it.
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env.update({**stage.env, RESULT_ENV: str(result_file)})
    if log:
        with open(stage_dir / "log.txt", "a") as sink:
            code = _call(cmd, env, sink)
    else:
        code = _call(cmd, env)
    wall = time.perf_counter() - start
    if log:
        state = "done" if code == 0 else f"failed (exit code {code})"
        print(f"[{stage.name}] {state} in {wall:.0f} s; output in {stage_dir / 'log.txt'}")
    if code != 0:
        raise StageFailed(
            f"stage {stage.name!r} (seqmodels {command}) failed with exit code {code}; "
            "fix it and rerun the recipe: finished stages are skipped, fit stages resume"
        )
    metrics = {**_read_json(stage_dir / "metrics.json"), **_read_json(result_file)}
    _write_json(done, {"command": cmd[3:], "wall_s": wall, "metrics": metrics})
    return StageResult(stage.name, command, "resumed" if resumed else "ran", wall, metrics)


def _run_parallel(stages: list[Stage], out: Path, jobs: int) -> list[StageResult]:
    """Run stages `jobs` at a time, each once its dependencies have finished."""
    total = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or (os.cpu_count() or 1)
    threads = max(1, total // jobs)
    print(f"running up to {jobs} stages at once, {threads} torch thread(s) each", flush=True)
    results: dict[str, StageResult] = {}
    pending, running = list(stages), {}
    failures: list[str] = []
    with ThreadPoolExecutor(jobs) as pool:
        while pending or running:
            while not failures and len(running) < jobs:
                ready = next((s for s in pending if s.deps <= results.keys()), None)
                if ready is None:
                    break
                pending.remove(ready)
                running[pool.submit(run_stage, ready, out, threads, True)] = ready
            if not running:
                break  # a failure stopped the launches
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                stage = running.pop(future)
                try:
                    results[stage.name] = future.result()
                except StageFailed as err:
                    failures.append(str(err))
    if failures:
        skipped = [s.name for s in pending]
        later = f"; not started: {', '.join(skipped)}" if skipped else ""
        raise StageFailed("; ".join(failures) + later)
    return [results[s.name] for s in stages]


def run_recipe(recipe: str | Path, out: str | Path, jobs: int = 1) -> dict:
    """Run every stage of `recipe` under `out` (up to `jobs` at once); returns
    `{stage: metrics}`."""
    if jobs < 1:
        raise RecipeError(f"jobs must be at least 1, got {jobs}")
    out = Path(out)
    stages = load_recipe(recipe, out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop_children) if main else None
    try:
        if jobs == 1:
            results = [run_stage(stage, out) for stage in stages]
        else:
            results = _run_parallel(stages, out, jobs)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    metrics = {r.name: r.metrics for r in results if r.metrics}
    _write_json(out / "metrics.json", metrics)
    report = write_report(out, Path(recipe), results, time.perf_counter() - start)
    print(f"wrote {out / 'metrics.json'} and {report}")
    return metrics
