"""seqmodels.commands: the flag helper, the thread setting, and the import layering of the
CLI (no circle between commands, recipes, report and the cli package)."""

import argparse
import ast
import os
import subprocess
import sys
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


# ---------------------------------------------------------------- import layering


def _module_name(path: Path) -> str:
    parts = path.relative_to(SEQMODELS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = SEQMODELS) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere (top level, in functions, under
    TYPE_CHECKING): a lazy import closes a circle just as well as a top-level one."""
    files = {_module_name(p): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_sees_a_lazy_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_core_has_no_import_circle():
    graph = import_graph()
    assert "seqmodels.recipes" in graph and "seqmodels.cli.dispatch" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_commands_and_report_import_nothing_of_the_project_and_recipes_not_the_cli():
    graph = import_graph()
    assert graph["seqmodels.commands"] == set()
    assert graph["seqmodels.report"] == set()
    assert not any(d.startswith("seqmodels.cli") for d in graph["seqmodels.recipes"])


def test_importing_the_cli_recipes_and_report_loads_neither_the_handlers_nor_torch():
    code = (
        "import sys, seqmodels.report, seqmodels.recipes, seqmodels.cli\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('seqmodels', 'torch', "
        "'pytorch_lightning')))\n"
        "print(' '.join(loaded))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert set(out.stdout.split()) == {
        "seqmodels",
        "seqmodels.cli",
        "seqmodels.cli.dispatch",
        "seqmodels.commands",
        "seqmodels.recipes",
        "seqmodels.report",
    }


def _leaf_parsers(parser: argparse.ArgumentParser, path=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaf_parsers(child, (*path, name))


def test_every_domain_flag_answers_to_both_spellings():
    """Recipes write flags as YAML keys in either spelling: every command must take both."""
    from seqmodels.commands import build_parser

    missing = []
    for path, p in _leaf_parsers(build_parser()):
        for action in p._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and "-" in opt[2:]:
                    twin = "--" + opt[2:].replace("-", "_")
                    if twin not in action.option_strings:
                        missing.append(f"{' '.join(path)} {opt}")
    assert not missing, missing
