"""The `seqmodels` command.

`fit / validate / test / predict` are LightningCLI subcommands (YAML configs,
`class_path` / `init_args`); `run`, `generate`, `evaluate` and `export` are argparse
commands, and each installed domain adds its own through the `seqmodels.commands`
entry-point group. Lightning is imported only by the commands that need it, so
`seqmodels --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
CORE_COMMANDS = ("run", "generate", "evaluate", "export")
# The recipe runner sets this so a stage run in a subprocess can hand back its metrics.
RESULT_ENV = "SEQMODELS_RESULT"

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
}

LIGHTNING_HELP = {
    "fit": "train a model (LightningCLI; `seqmodels fit --help` for every option)",
    "validate": "run the validation loop on a checkpoint (LightningCLI)",
    "test": "run the test loop on a checkpoint (LightningCLI)",
    "predict": "run the predict loop on a checkpoint (LightningCLI)",
}


from seqmodels.commands import CLIError, pop_threads, set_threads  # noqa: E402


def _epilog(command: str) -> str:
    return f"example:\n  {EXAMPLES[command]}"


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """Add `--some-option` that also answers to `--some_option` (recipes write either)."""
    names = [f"--{name}"]
    if "-" in name:
        names.append(f"--{name.replace('-', '_')}")
    parser.add_argument(*names, **kwargs)


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


# ---------------------------------------------------------------- Lightning commands


def _lightning_cli_class() -> type:
    """LightningCLI with the project's trainer defaults (built lazily: Lightning is slow to import)."""
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.plugins.io import CheckpointIO
    from pytorch_lightning.strategies import DDPStrategy

    from seqmodels.checkpoint import AtomicCheckpointIO, load_checkpoint

    class ResumableCheckpoint(ModelCheckpoint):
        """`last.ckpt` under `<default_root_dir>/checkpoints/`, every N steps so a run killed
        mid-epoch resumes close to where it stopped, and always at the final step. Only
        last.ckpt by default (overwritten in place); ask for best-k with save_top_k/monitor."""

        def __init__(
            self,
            every_n_train_steps: int | None = 100,
            save_last: bool = True,
            save_top_k: int = 0,
            enable_version_counter: bool = False,
            **kw,
        ):
            super().__init__(
                every_n_train_steps=every_n_train_steps,
                save_last=save_last,
                save_top_k=save_top_k,
                enable_version_counter=enable_version_counter,
                **kw,
            )

        def setup(self, trainer, pl_module, stage: str) -> None:
            if self.dirpath is None:
                self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
            super().setup(trainer, pl_module, stage)

        def on_train_end(self, trainer, pl_module) -> None:
            # Lightning writes last.ckpt only at the save interval; a run whose max_steps is
            # not a multiple of it would otherwise end with a stale last.ckpt.
            if self.save_last and self._last_global_step_saved != trainer.global_step:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            super().on_train_end(trainer, pl_module)

    class SeqCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")

        def _parse_ckpt_path(self) -> None:
            # LightningCLI would torch.load --ckpt_path here and merge its hyperparameters into
            # the model config; that fails for models that record derived values (vocab) and
            # the config is the source of truth anyway. Only check the file, so a missing,
            # corrupt or foreign one is a CheckpointError naming it, not a traceback.
            sub = self.config.get("subcommand")
            path = self.config[sub].get("ckpt_path") if sub else None
            if path and not str(path).startswith(("last", "best", "hpc", "registry")):
                load_checkpoint(path)

        def instantiate_trainer(self, **kwargs: Any):
            config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
            root = config.get("default_root_dir") or os.getcwd()
            if config.get("logger") in (None, True):
                # CSV by default: report.md plots its metrics.csv; TensorBoard on request
                # (--trainer.logger TensorBoardLogger) when it is installed.
                config["logger"] = CSVLogger(save_dir=root, name="lightning_logs")
            plugins = config.get("plugins") or []
            plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
            if not any(isinstance(p, CheckpointIO) for p in plugins):
                plugins.append(AtomicCheckpointIO())
            config["plugins"] = plugins
            if config.get("strategy") == "ddp":
                # Objectives touch different parameters per batch (the mask embedding only
                # under masking objectives, a mixture switches per batch): DDP must look for
                # unused parameters or it stops with an error on the first such batch.
                config["strategy"] = DDPStrategy(find_unused_parameters=True)
            extra = [
                self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys
            ]
            return self._instantiate_trainer(config, extra)

    return SeqCLI


def run_lightning(argv: Sequence[str]) -> dict[str, float]:
    """Run a LightningCLI subcommand; returns the trainer's final logged metrics."""
    cli_class = _lightning_cli_class()
    kwargs = {
        c: {"epilog": f"example: {EXAMPLES[c]}", "description": LIGHTNING_HELP[c]}
        for c in LIGHTNING_COMMANDS
    }
    cli = cli_class(
        model_class=None,
        datamodule_class=None,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        # TokenDataModule's resumable sampler shards batches by rank itself; Lightning's
        # DistributedSampler replacement would break it (a plain datamodule may set it true).
        trainer_defaults={"use_distributed_sampler": False},
        save_config_kwargs={"overwrite": True},
        # Checkpoints load through seqmodels.checkpoint.load_module; Lightning's own support
        # would put `_class_path` / `_instantiator` into the model's hyperparameters.
        load_from_checkpoint_support=False,
        parser_kwargs={**kwargs, "prog": "seqmodels"},
        # None: LightningCLI reads sys.argv itself (and warns when handed a copy of it).
        args=None if list(argv) == sys.argv[1:] else list(argv),
    )
    if not cli.trainer.is_global_zero:
        return {}
    return _scalars(cli.trainer.callback_metrics)


def _scalars(metrics: dict) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError, RuntimeError):
            continue  # not a scalar: nothing a metrics table can show
    return out


# ---------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> dict:
    from seqmodels.recipes import run_recipe

    return run_recipe(args.recipe, args.out)


# ---------------------------------------------------------------- generate


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    _flag(p, "ckpt", help="checkpoint (.ckpt) to sample from")
    _flag(p, "n", type=int, default=10, help="samples per condition / prompt (default 10)")
    _flag(p, "max-new-tokens", type=int, default=64, help="longest sample (default 64)")
    _flag(p, "temperature", type=float, default=1.0)
    _flag(p, "top-k", type=int, default=None, help="keep the k most likely tokens")
    _flag(p, "top-p", type=float, default=None, help="nucleus sampling: smallest set with mass p")
    _flag(p, "processor", default=None, help="module:factory; factory(vocab) -> logits processor")
    _flag(p, "prompt", action="append", default=None, help="space-separated tokens (repeatable)")
    _flag(p, "cond", default=None, help="condition vectors as JSON, e.g. '[[0.1, 2.0], [1.5, 0]]'")
    _flag(p, "cond-file", default=None, help="condition vectors: a JSON list or one per line")
    _flag(p, "batch-size", type=int, default=64, help="sequences decoded at once (default 64)")
    _flag(p, "seed", type=int, default=0)
    _flag(p, "device", default="auto", help="cpu, cuda, ... (default: cuda when available)")


def _read_conditions(args: argparse.Namespace) -> list[list[float]] | None:
    if args.cond and args.cond_file:
        raise CLIError("give --cond or --cond-file, not both")
    if args.cond:
        try:
            rows = json.loads(args.cond)
        except json.JSONDecodeError as err:
            raise CLIError(f"--cond is not JSON: {err}") from err
        source = "--cond"
    elif args.cond_file:
        path = Path(args.cond_file)
        if not path.is_file():
            raise CLIError(f"{path}: condition file not found")
        text = path.read_text()
        try:
            rows = json.loads(text)
        except json.JSONDecodeError:
            rows = []
            for lineno, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append([float(v) for v in line.replace(",", " ").split()])
                except ValueError as err:
                    raise CLIError(f"{path}:{lineno}: not a row of numbers: {line!r}") from err
        source = str(path)
    else:
        return None
    if rows and not isinstance(rows[0], list):
        rows = [rows]  # one condition vector
    if not rows or any(not isinstance(r, list) or len(r) != len(rows[0]) for r in rows):
        raise CLIError(f"{source}: expected a list of equal-length condition vectors")
    return [[float(v) for v in r] for r in rows]


def _load_for_sampling(args: argparse.Namespace):
    import torch

    from seqmodels.checkpoint import load_module

    if not args.ckpt:
        raise CLIError("--ckpt is required")
    model = load_module(args.ckpt)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    vocab = getattr(model, "vocab", None)
    if vocab is None:
        raise CLIError(f"{args.ckpt}: the checkpoint stores no vocabulary; cannot sample tokens")
    return model, vocab


def sample_from_args(args: argparse.Namespace) -> list[dict]:
    """Sample `args.n` continuations per prompt/condition; one dict per sample."""
    from tqdm.auto import tqdm

    from seqmodels.sampling import generate

    model, vocab = _load_for_sampling(args)
    conds = _read_conditions(args)
    try:
        prompts = [vocab.encode(p.split(), add_bos=True, strict=True) for p in args.prompt or [""]]
    except KeyError as err:
        raise CLIError(f"--prompt: {err.args[0]}") from err
    if conds is not None and len(prompts) not in (1, len(conds)):
        raise CLIError(f"{len(prompts)} prompts for {len(conds)} conditions; give 1 or one each")
    d_cond = int(getattr(model.hparams, "d_cond", 0) or 0)
    if conds is not None and len(conds[0]) != d_cond:
        raise CLIError(
            f"{args.ckpt}: the model takes condition vectors of size {d_cond}, got {len(conds[0])}"
        )
    n_rows = len(conds) if conds is not None else len(prompts)
    processor = load_object(args.processor)(vocab) if args.processor else None

    rows: list[dict] = []
    calls = 0
    with tqdm(total=n_rows * args.n, desc="generate", unit="sample") as bar:
        for i in range(n_rows):
            prompt = prompts[i if len(prompts) > 1 else 0]
            cond = conds[i] if conds is not None else None
            done = 0
            while done < args.n:
                k = min(args.batch_size, args.n - done)
                try:
                    outs = generate(
                        model,
                        [prompt],
                        cond=None if cond is None else [cond],
                        max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature,
                        top_k=args.top_k,
                        top_p=args.top_p,
                        logits_processor=processor,
                        eos_id=vocab.eos_id,
                        num_samples=k,
                        seed=args.seed + calls,
                        batch_size=args.batch_size,
                    )
                except ValueError as err:  # bad sampling settings or conditions
                    raise CLIError(f"generate from {args.ckpt}: {err}") from err
                calls += 1
                for j, ids in enumerate(outs):
                    rows.append(
                        {
                            "index": i,
                            "sample": done + j,
                            "cond": cond,
                            "prompt": vocab.decode(prompt),
                            "tokens": vocab.decode(ids),
                        }
                    )
                done += k
                bar.update(k)
    return rows


def write_samples(rows: list[dict], path: Path, sep: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        text = "".join(sep.join(r["tokens"]) + "\n" for r in rows)
    path.write_text(text)


def read_samples(path: Path, sep: str) -> list[list[str]]:
    if not path.is_file():
        raise CLIError(f"{path}: samples file not found")
    samples = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if path.suffix == ".jsonl":
            if not line.strip():
                continue
            try:
                samples.append([str(t) for t in json.loads(line)["tokens"]])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CLIError(f"{path}:{lineno}: not a sample record ({err})") from err
        else:
            samples.append(line.split(sep) if sep else list(line))
    return samples


def _sample_stats(rows: list[dict], seconds: float) -> dict[str, float]:
    n_tokens = sum(len(r["tokens"]) for r in rows)
    return {
        "n_samples": float(len(rows)),
        "mean_new_tokens": n_tokens / max(len(rows), 1),
        "sample_tokens_per_s": n_tokens / max(seconds, 1e-9),
    }


def cmd_generate(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    rows = sample_from_args(args)
    stats = _sample_stats(rows, time.perf_counter() - start)
    write_samples(rows, Path(args.out), args.sep)
    print(f"wrote {len(rows)} samples to {args.out}")
    return stats


# ---------------------------------------------------------------- evaluate


def _datamodule_from_config(path: Path):
    import yaml
    from jsonargparse import ArgumentParser
    from pytorch_lightning import LightningDataModule

    if not path.is_file():
        raise CLIError(f"{path}: config file not found")
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict) or "data" not in config:
        raise CLIError(f"{path}: missing key 'data' (a class_path / init_args datamodule)")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    try:
        parsed = parser.parse_object({"data": config["data"]})
    except Exception as err:  # jsonargparse reports bad configs with many exception types
        raise CLIError(f"{path}: bad 'data' section: {err}") from err
    instantiate = getattr(parser, "instantiate", parser.instantiate_classes)  # renamed in 4.49
    return instantiate(parsed).data


def _test_split(args: argparse.Namespace) -> dict[str, float]:
    from pytorch_lightning import Trainer

    from seqmodels.checkpoint import load_module

    datamodule = _datamodule_from_config(Path(args.config))
    model = load_module(args.ckpt)
    trainer = Trainer(accelerator="auto", devices=1, logger=False, enable_checkpointing=False)
    results = trainer.test(model, datamodule=datamodule)
    return _scalars(results[0]) if results else {}


def cmd_evaluate(args: argparse.Namespace) -> dict:
    metrics: dict[str, float] = {}
    if args.config:
        if not args.ckpt:
            raise CLIError("--config (test split) needs --ckpt")
        metrics.update(_test_split(args))
    if args.metric:
        fn = load_object(args.metric)
        if args.samples:
            samples = read_samples(Path(args.samples), args.sep)
        elif args.ckpt:
            start = time.perf_counter()
            rows = sample_from_args(args)
            metrics.update(_sample_stats(rows, time.perf_counter() - start))
            samples = [r["tokens"] for r in rows]
        else:
            raise CLIError("--metric needs --samples FILE or --ckpt to sample from")
        scored = fn(samples)
        if not isinstance(scored, dict):
            raise CLIError(f"{args.metric} returned {type(scored).__name__}, not a dict")
        metrics.update(scored)
    elif args.samples:
        raise CLIError("--samples needs --metric module:function to score them")
    if not metrics:
        raise CLIError("nothing to evaluate: give --ckpt with --config, or --metric")
    for key, value in metrics.items():
        print(f"{key}: {value:.6g}" if isinstance(value, float) else f"{key}: {value}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


# ---------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace) -> dict:
    from seqmodels.checkpoint import export, load_exported

    out = export(args.ckpt, args.out)
    # Reload what was written: an export that cannot be loaded fails here, not at inference.
    n_params = sum(p.numel() for p in load_exported(out).parameters())
    print(f"exported {n_params:,} parameters to {out}")
    return {"n_parameters": float(n_params)}


# ---------------------------------------------------------------- parser and main


def _add_domain_commands(subparsers: argparse._SubParsersAction) -> None:
    """Each `seqmodels.commands` entry point is `register(subparsers)`. A plugin that fails to
    load is reported and skipped, so one broken domain never breaks the others or the core."""
    for ep in entry_points(group="seqmodels.commands"):
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
    parser = argparse.ArgumentParser(
        prog="seqmodels",
        description="Train, sample and evaluate sequence models on non-text tokens.",
        epilog=f"example:\n  {EXAMPLES['run']}\n  {EXAMPLES['fit']}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    for name in LIGHTNING_COMMANDS:
        # Parsed by LightningCLI in main(); listed here so `seqmodels --help` shows them.
        sub.add_parser(name, help=LIGHTNING_HELP[name], add_help=False)

    p = sub.add_parser(
        "run", help="run a multi-stage recipe", epilog=_epilog("run"), formatter_class=raw
    )
    p.add_argument("recipe", help="recipe YAML (stages: [{name, command, config?, args?}])")
    _flag(p, "out", required=True, help="output folder; each stage writes to OUT/<stage>/")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "generate",
        help="sample token sequences from a checkpoint",
        epilog=_epilog("generate"),
        formatter_class=raw,
    )
    _add_sampling_flags(p)
    _flag(p, "out", required=True, help="samples: .jsonl (records) or text (one per line)")
    _flag(p, "sep", default=" ", help="token separator in text output (default: space)")
    p.set_defaults(func=cmd_generate)

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
    _add_sampling_flags(p)
    _flag(p, "config", default=None, help="YAML with a `data:` datamodule section")
    _flag(p, "metric", default=None, help="module:function(samples) -> dict of metrics")
    _flag(p, "samples", default=None, help="samples file written by `seqmodels generate`")
    _flag(p, "sep", default=" ", help="token separator in text samples (default: space)")
    _flag(p, "out", default=None, help="folder for metrics.json")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "export",
        help="export a checkpoint's weights (safetensors) and config.json",
        epilog=_epilog("export"),
        formatter_class=raw,
    )
    _flag(p, "ckpt", required=True, help="checkpoint (.ckpt)")
    _flag(p, "out", required=True, help="output folder")
    p.set_defaults(func=cmd_export)

    if domains:
        _add_domain_commands(sub)
    return parser


def find_command(
    words: Sequence[str], parser: argparse.ArgumentParser | None = None
) -> argparse.ArgumentParser | None:
    """The parser of `seqmodels WORD...`, or None when no such command exists."""
    parser = parser or build_parser()
    for word in words:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            return None
        parser = subs[0].choices[word]
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from seqmodels.recipes import RecipeError

    errors: list[type[BaseException]] = [CLIError, RecipeError]
    try:
        from seqmodels.checkpoint import CheckpointError

        errors.append(CheckpointError)
    except ImportError:
        pass
    return tuple(errors)


def _write_result(metrics: Any) -> None:
    path = os.environ.get(RESULT_ENV)
    if path and isinstance(metrics, dict):
        clean = {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
        Path(path).write_text(json.dumps(clean, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    from seqmodels.recipes import StageFailed

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        threads, argv = pop_threads(argv)
        set_threads(threads)
        if argv and argv[0] in LIGHTNING_COMMANDS:
            metrics: Any = run_lightning(argv)
        else:
            # A core command needs no domain plugins: skip importing them.
            parser = build_parser(domains=not argv or argv[0] not in CORE_COMMANDS)
            args = parser.parse_args(argv)
            handler: Callable | None = getattr(args, "func", None)
            if handler is None:
                parser.print_help()
                return 0 if not argv else 2
            metrics = handler(args)
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


if __name__ == "__main__":  # `python -m seqmodels.cli`: run as `python -m seqmodels` does
    import runpy

    runpy.run_module("seqmodels", run_name="__main__")
