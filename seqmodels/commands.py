"""The `seqmodels` command tree: the argparse parser, `find_command`, domain plugins, and the
two helpers every command uses (`add_flag`, the thread setting).

This module imports only the standard library, and nothing else of the project imports it
back: the recipe runner checks a recipe's commands against `build_parser()` without
importing the CLI that runs them, and handlers are named as `module:function` strings, so
building the parser imports no handler (and `seqmodels --help` stays fast).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
CORE_COMMANDS = ("run", "generate", "evaluate", "export", "scale", "data")
PLUGIN_GROUP = "seqmodels.commands"
# The recipe runner sets this so a stage run in a subprocess can hand back its metrics.
RESULT_ENV = "SEQMODELS_RESULT"
THREADS_FLAG = "--threads"
# The default never exceeds this. Small models stop gaining from more threads at a few
# (per-op overhead dominates), and a run that takes every core of a shared machine slows
# everyone else's; ask for more with --threads. See README "The command line".
MAX_DEFAULT_THREADS = 4

EXAMPLES = {
    "fit": "seqmodels fit --config recipes/core/tiny_dyck.yaml --trainer.max_steps 100",
    "validate": "seqmodels validate --config recipes/core/tiny_dyck.yaml --ckpt_path CKPT",
    "test": "seqmodels test --config recipes/core/tiny_dyck.yaml --ckpt_path CKPT",
    "predict": "seqmodels predict --config recipes/core/tiny_dyck.yaml --ckpt_path CKPT",
    "run": "seqmodels run recipes/core/quickstart.yaml --out runs/q",
    "generate": (
        "seqmodels generate --ckpt runs/q/train/checkpoints/last.ckpt --n 100 "
        "--top-p 0.95 --out samples.txt"
    ),
    "evaluate": (
        "seqmodels evaluate --samples samples.txt --metric seqmodels.synthetic:dyck_metrics"
        "   |   seqmodels evaluate --ckpt CKPT --config runs/q/train/config.yaml"
    ),
    "export": "seqmodels export --ckpt runs/q/train/checkpoints/last.ckpt --out exported/",
    "scale": (
        "seqmodels scale recipes/core/quickstart.yaml --stage train --sizes 32,48,64,96,160 "
        "--tokens 2e5,4e5,8e5 --out runs/scale-dyck"
    ),
    "data list": "seqmodels data list",
    "data fetch": "seqmodels data fetch mnist --to ~/seqmodels-data",
}

LIGHTNING_HELP = {
    "fit": "train a model (LightningCLI; `seqmodels fit --help` for every option)",
    "validate": "run the validation loop on a checkpoint (LightningCLI)",
    "test": "run the test loop on a checkpoint (LightningCLI)",
    "predict": "run the predict loop on a checkpoint (LightningCLI)",
}


class CLIError(Exception):
    """Bad input to a command: reported as one line, exit code 2, no traceback."""


# ---------------------------------------------------------------- helpers for every command


def add_flag(parser: argparse.ArgumentParser, *names: str, **kwargs: Any) -> argparse.Action:
    """`add_argument` where each `--some-option` also answers to `--some_option` (one dest).

    Recipes write flags as YAML keys, and people write either spelling there.
    """
    spelled: list[str] = []
    for name in names:
        spelled.append(name)
        if name.startswith("--") and "-" in name[2:]:
            spelled.append("--" + name[2:].replace("-", "_"))
    return parser.add_argument(*spelled, **kwargs)


def pop_threads(argv: Sequence[str]) -> tuple[int | None, list[str]]:
    """Take `--threads N` / `--threads=N` out of `argv`, wherever it stands.

    Every command (Lightning ones included, whose parser is not ours) accepts the flag this
    way, so a recipe stage's `args: {threads: 2}` works for any command.
    """
    rest: list[str] = []
    value: str | None = None
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        if word == THREADS_FLAG:
            if i + 1 >= len(words):
                raise CLIError(f"{THREADS_FLAG} needs a number")
            value, i = words[i + 1], i + 2
            continue
        if word.startswith(THREADS_FLAG + "="):
            value = word.split("=", 1)[1]
        else:
            rest.append(word)
        i += 1
    if value is None:
        return None, rest
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise CLIError(f"{THREADS_FLAG} takes a positive whole number, got {value!r}")
    return threads, rest


def _physical_cores(cpus: set[int]) -> int:
    """Distinct (package, core) pairs among `cpus`: SMT siblings share a core's matmul units."""
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text(), (topo / "core_id").read_text()))
        except OSError:
            return len(cpus)  # no sysfs (macOS, some containers): count logical CPUs
    return len(cores) or len(cpus)


def default_threads() -> int:
    """The torch thread count a command uses without `--threads`.

    `OMP_NUM_THREADS` when set (the user's, or inherited from a parent `seqmodels` command);
    otherwise the physical cores this process may use, at most MAX_DEFAULT_THREADS, less the
    cores other processes keep busy (the 1-minute load average): on a machine already running
    as many jobs as it has cores, 1. Oversubscribed OpenMP threads wait on each other at
    every op, which made steps many times slower than one thread (README, The command line).
    """
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    cpus = cpus or set(range(os.cpu_count() or 1))
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        load = 0.0
    free = math.floor(len(cpus) - load + 0.5)
    return max(1, min(MAX_DEFAULT_THREADS, _physical_cores(cpus), free))


def set_threads(threads: int | None = None) -> int:
    """Use `threads` (None: `default_threads()`) torch CPU threads here and in child processes.

    Call it before torch does any work. OMP_NUM_THREADS is exported so that recipe stages,
    DDP workers and data-loader workers inherit the setting (Lightning's DDP launcher keeps
    an OMP_NUM_THREADS it finds), and so that a torch imported later starts with it.
    """
    n = default_threads() if threads is None else int(threads)
    os.environ["OMP_NUM_THREADS"] = str(n)
    # A torch imported later starts with the variable, but caps it at the CPU count (measured,
    # torch 2.13): above that, or once torch is imported, only set_num_threads does it.
    # Importing torch only then keeps `seqmodels --help` and torch-free commands quick.
    if "torch" in sys.modules or n > (os.cpu_count() or 1):
        import torch

        torch.set_num_threads(n)
    return n


def load_object(path: str) -> Any:
    """Import `package.module:attr` (or `package.module.attr`)."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise CLIError(f"{path!r} is not a dotted path of the form module:name")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise CLIError(f"cannot import {path!r}: {err}") from err
    return obj


def handler(args: argparse.Namespace) -> Callable[[argparse.Namespace], Any] | None:
    """The function a parsed command runs: its `func` default, a callable or `module:name`."""
    func = getattr(args, "func", None)
    return load_object(func) if isinstance(func, str) else func


# ---------------------------------------------------------------- the parser


def _epilog(command: str) -> str:
    return f"example:\n  {EXAMPLES[command]}"


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by `generate` and `evaluate` (which samples when given --ckpt --metric)."""
    add_flag(p, "--ckpt", help="checkpoint (.ckpt) to sample from")
    add_flag(p, "--n", type=int, default=10, help="samples per condition / prompt (default 10)")
    add_flag(p, "--max-new-tokens", type=int, default=64, help="longest sample (default 64)")
    add_flag(p, "--temperature", type=float, default=1.0)
    add_flag(p, "--top-k", type=int, default=None, help="keep the k most likely tokens")
    add_flag(
        p, "--top-p", type=float, default=None, help="nucleus sampling: smallest set with mass p"
    )
    add_flag(
        p, "--processor", default=None, help="module:factory; factory(vocab) -> logits processor"
    )
    add_flag(
        p, "--prompt", action="append", default=None, help="space-separated tokens (repeatable)"
    )
    add_flag(
        p, "--cond", default=None, help="condition vectors as JSON, e.g. '[[0.1, 2.0], [1.5, 0]]'"
    )
    add_flag(p, "--cond-file", default=None, help="condition vectors: a JSON list or one per line")
    add_flag(p, "--batch-size", type=int, default=64, help="sequences decoded at once (default 64)")
    add_flag(p, "--seed", type=int, default=0)
    add_flag(p, "--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")
    add_flag(
        p,
        "--compile",
        action="store_true",
        help="torch.compile decoding: a transformer's one-token step with static shapes (one "
        "graph per batch size), else the backbone; the first batch pays the compile (seconds "
        "on a CPU; worth it for many samples, see README)",
    )


def add_domain_commands(subparsers: argparse._SubParsersAction) -> None:
    """Each `seqmodels.commands` entry point is `register(subparsers)`. A plugin that fails to
    load is reported and skipped, so one broken domain never breaks the others or the core."""
    for ep in entry_points(group=PLUGIN_GROUP):
        if ep.name in subparsers.choices:
            print(f"seqmodels: warning: domain {ep.name!r} clashes with a command", file=sys.stderr)
            continue
        try:
            ep.load()(subparsers)
        except Exception as err:  # any plugin bug must leave the core CLI usable
            print(
                f"seqmodels: warning: domain commands {ep.name!r} ({ep.value}) not loaded: "
                f"{type(err).__name__}: {err}",
                file=sys.stderr,
            )


def build_parser(domains: bool = True) -> argparse.ArgumentParser:
    """The argparse tree; `domains=False` skips importing the domain plugins (slow)."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="seqmodels",
        description="Train, sample and evaluate sequence models on non-text tokens.",
        epilog=f"example:\n  {EXAMPLES['run']}\n  {EXAMPLES['fit']}\n"
        f"  seqmodels --threads 1 {EXAMPLES['generate'].removeprefix('seqmodels ')}",
        formatter_class=raw,
    )
    # Taken out of the command line by main() before parsing (see pop_threads); declared
    # here so that --help shows it. Its own dest: a subcommand's defaults cannot clobber it.
    parser.add_argument(
        THREADS_FLAG,
        dest="global_threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads for any command, anywhere on the line (default: "
        f"OMP_NUM_THREADS, else min(physical cores, {MAX_DEFAULT_THREADS}) less the load)",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    for name in LIGHTNING_COMMANDS:
        # Parsed by LightningCLI in main(); listed here so `seqmodels --help` shows them.
        sub.add_parser(name, help=LIGHTNING_HELP[name], add_help=False)

    p = sub.add_parser(
        "run", help="run a multi-stage recipe", epilog=_epilog("run"), formatter_class=raw
    )
    p.add_argument("recipe", help="recipe YAML (stages: [{name, command, config?, args?}])")
    add_flag(p, "--out", required=True, help="output folder; each stage writes to OUT/<stage>/")
    add_flag(
        p,
        "--jobs",
        type=int,
        default=1,
        help="stages run at once when they do not depend on each other (default 1); each "
        "gets threads / jobs torch threads and writes its output to OUT/<stage>/log.txt",
    )
    p.set_defaults(func="seqmodels.cli.dispatch:cmd_run")

    p = sub.add_parser(
        "generate",
        help="sample token sequences from a checkpoint",
        epilog=_epilog("generate"),
        formatter_class=raw,
    )
    add_sampling_flags(p)
    add_flag(p, "--out", required=True, help="samples: .jsonl (records) or text (one per line)")
    add_flag(p, "--sep", default=" ", help="token separator in text output (default: space)")
    p.set_defaults(func="seqmodels.cli.sample:cmd_generate")

    p = sub.add_parser(
        "evaluate",
        help="score a checkpoint on a test split, or samples with a metric function",
        description=(
            "Two modes (combinable): --ckpt with --config runs the test loop on the config's "
            "datamodule (e.g. a fit stage's config.yaml); --metric module:function scores "
            "--samples FILE, or samples drawn from --ckpt, as function(list of token lists) "
            "-> dict."
        ),
        epilog=_epilog("evaluate"),
        formatter_class=raw,
    )
    add_sampling_flags(p)
    add_flag(p, "--config", default=None, help="YAML with a `data:` datamodule section")
    add_flag(p, "--metric", default=None, help="module:function(samples) -> dict of metrics")
    add_flag(p, "--samples", default=None, help="samples file written by `seqmodels generate`")
    add_flag(p, "--sep", default=" ", help="token separator in text samples (default: space)")
    add_flag(p, "--out", default=None, help="folder for metrics.json")
    p.set_defaults(func="seqmodels.cli.evaluate:cmd_evaluate")

    p = sub.add_parser(
        "export",
        help="export a checkpoint's weights (safetensors) and config.json",
        epilog=_epilog("export"),
        formatter_class=raw,
    )
    add_flag(p, "--ckpt", required=True, help="checkpoint (.ckpt)")
    add_flag(p, "--out", required=True, help="output folder")
    p.set_defaults(func="seqmodels.cli.export:cmd_export")

    _add_scale_command(sub)
    _add_data_commands(sub)

    if domains:
        add_domain_commands(sub)
    return parser


def _positive_ints(text: str) -> list[int]:
    """'2e5,4e5' -> [200000, 400000] (sorted, distinct)."""
    try:
        values = [int(float(v)) for v in text.replace(",", " ").split()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas: {text!r}") from err
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers: {text!r}")
    return sorted(set(values))


def _add_scale_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scale",
        help="train a grid of model sizes x token budgets from a recipe's fit stage; fit L(N, D)",
        description=(
            "Each width d_model (depth and heads from the rule in seqmodels/scaling.py) is "
            "trained on each token budget as a normal, resumable fit stage of the recipe "
            "(OUT/runs/d<width>-t<tokens>/); then L(N, D) = E + A N^-alpha + B D^-beta is fitted "
            "(bootstrap CIs), the largest width is predicted from the others, and OUT gets "
            "scale.json, scale.png and report.md. A killed sweep resumes where it stopped."
        ),
        epilog=_epilog("scale"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", nargs="?", help="recipe YAML holding the training stage")
    p.add_argument("--recipe", dest="recipe_flag", help="the same, as a flag (for recipe stages)")
    p.add_argument("--stage", required=True, help="name of the recipe's fit stage to scale")
    p.add_argument("--sizes", type=_positive_ints, required=True, help="widths, e.g. 32,48,64")
    p.add_argument("--tokens", type=_positive_ints, required=True, help="budgets, e.g. 2e5,4e5")
    add_flag(p, "--out", required=True, help="output folder")
    add_flag(p, "--bootstrap", type=int, default=200, help="bootstrap rounds (default 200)")
    p.set_defaults(func="seqmodels.scaling:cmd_scale")


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "data",
        help="dataset manifests (data/*.yaml): list what is known and present; verified fetch",
        description="Every data set a recipe names has a manifest in data/: URLs pinned to a "
        "commit or release, sha256 or git blob hash, size, licence, citation, local layout.",
    )
    data = p.add_subparsers(dest="data_command", required=True, metavar="{list,fetch}")
    ls = data.add_parser(
        "list",
        help="every manifest, and whether its files are under the data root",
        epilog=_epilog("data list"),
        formatter_class=raw,
    )
    ls.add_argument("--root", help="data root to check (default: SEQMODELS_DATA or ../shared/data)")
    ls.set_defaults(func="seqmodels.datasets:cmd_list")
    fe = data.add_parser(
        "fetch",
        help="download (resuming), verify and unpack one data set",
        description="Downloads into TO/.downloads/NAME/ (a rerun resumes with Range requests), "
        "verifies size and checksum, then unpacks to the layout recipes read. A mismatch is "
        "reported by file name and nothing the user already had is replaced.",
        epilog=_epilog("data fetch") + "\n  export SEQMODELS_DATA=~/seqmodels-data",
        formatter_class=raw,
    )
    fe.add_argument("name", help="a name from `seqmodels data list`")
    fe.add_argument("--to", help="data root to fill (default: SEQMODELS_DATA or ../shared/data)")
    fe.add_argument("--quiet", action="store_true", help="no progress bars")
    fe.set_defaults(func="seqmodels.datasets:cmd_fetch")
    for q in (ls, fe):
        q.add_argument("--manifests", help="folder of manifests (default: the repository's data/)")


def find_command(
    words: Sequence[str], parser: argparse.ArgumentParser | None = None
) -> argparse.ArgumentParser | None:
    """The parser of `seqmodels WORD...`, or None when no such command exists."""
    parser = parser or build_parser()
    for word in words:
        # argparse keeps its subcommands in a private action type; there is no public getter.
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            return None
        parser = subs[0].choices[word]
    return parser
