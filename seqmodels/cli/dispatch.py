"""`main`: run one `seqmodels` command line and turn its outcome into an exit code.

`fit / validate / test / predict` go to LightningCLI (seqmodels.cli.lightning); every other
command is parsed by the argparse tree of seqmodels.commands and runs the handler it names.
The thread setting is applied first, before any command imports torch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seqmodels.commands import (
    CORE_COMMANDS,
    LIGHTNING_COMMANDS,
    RESULT_ENV,
    CLIError,
    build_parser,
    handler,
    pop_threads,
    set_threads,
)
from seqmodels.recipes import RecipeError, StageFailed, run_recipe


def cmd_run(args: argparse.Namespace) -> dict:
    """`seqmodels run RECIPE --out DIR [--jobs N]`: every stage, then metrics.json and
    report.md."""
    return run_recipe(args.recipe, args.out, args.jobs)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: one line on stderr and exit code 2, no traceback."""
    errors: list[type[BaseException]] = [CLIError, RecipeError]
    try:
        from seqmodels.checkpoint import CheckpointError

        errors.append(CheckpointError)
    except ImportError:  # torch missing or broken: the command itself will say so
        pass
    return tuple(errors)


def _write_result(metrics: Any) -> None:
    path = os.environ.get(RESULT_ENV)
    if path and isinstance(metrics, dict):
        clean = {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
        Path(path).write_text(json.dumps(clean, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run `seqmodels ARGV...` (default: sys.argv); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        threads, argv = pop_threads(argv)
        set_threads(threads)
        if argv and argv[0] in LIGHTNING_COMMANDS:
            from seqmodels.cli.lightning import run_lightning

            metrics: Any = run_lightning(argv)
        else:
            # A core command needs no domain plugins: skip importing them.
            parser = build_parser(domains=not argv or argv[0] not in CORE_COMMANDS)
            args = parser.parse_args(argv)
            func = handler(args)
            if func is None:
                parser.print_help()
                return 0 if not argv else 2
            metrics = func(args)
    except StageFailed as err:
        print(f"seqmodels: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("seqmodels: interrupted (a recipe rerun resumes where it stopped)", file=sys.stderr)
        return 130
    except _user_errors() as err:
        print(f"seqmodels: error: {err}", file=sys.stderr)
        return 2
    _write_result(metrics)
    return 0
