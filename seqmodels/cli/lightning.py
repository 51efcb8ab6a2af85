"""`seqmodels fit / validate / test / predict`: LightningCLI with the project's defaults.

Defaults: `last.ckpt` under `<default_root_dir>/checkpoints/` every 100 steps and at the
final step, CSV logs, atomic checkpoint writes, DDP that tolerates unused parameters, and
`--ckpt_path` checked by `seqmodels.checkpoint` (a bad file is one clear error). Lightning
is imported inside the functions: it is slow to import and most commands never need it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from seqmodels.commands import EXAMPLES, LIGHTNING_COMMANDS, LIGHTNING_HELP

# Checkpoint paths LightningCLI resolves itself (not files): "last", "best", "hpc", "registry".
_SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The entries of a metrics dict that are numbers (tensors included), as floats."""
    out = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError, RuntimeError):
            continue  # not a scalar: nothing a metrics table can show
    return out


def lightning_cli_class() -> type:
    """The LightningCLI subclass (built on call: Lightning is slow to import)."""
    from jsonargparse import ActionYesNo
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.plugins.io import CheckpointIO

    from seqmodels.checkpoint import AtomicCheckpointIO, load_checkpoint
    from seqmodels.precision import AutoPrecision, take_auto_precision

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
            self.saved_at_step: int | None = None

        def setup(self, trainer, pl_module, stage: str) -> None:
            if self.dirpath is None:
                self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
            super().setup(trainer, pl_module, stage)

        def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
            # Every trainer.save_checkpoint calls this on every rank; with save_last, each
            # save of this callback writes last.ckpt too.
            self.saved_at_step = trainer.global_step
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

        def on_train_end(self, trainer, pl_module) -> None:
            super().on_train_end(trainer, pl_module)
            # Lightning writes last.ckpt only at the save interval (and at the end only when
            # nothing was saved): a run whose max_steps is not a multiple of the interval
            # would end with a stale last.ckpt. Written through the trainer (all ranks call).
            if self.save_last and self.saved_at_step != trainer.global_step:
                path = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
                trainer.save_checkpoint(path, self.save_weights_only)
                self.last_model_path = path

    class SeqCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
            parser.add_argument(
                "--compile",
                action=ActionYesNo,
                default=False,
                help="torch.compile the loss (a SeqLM: embedding to cross-entropy) or else the "
                "backbone (compile seconds are logged as "
                "compile/seconds; pays off on runs of a few thousand steps, see README)",
            )

        def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
            # main() hands over the command line less the global options (--threads), while
            # sys.argv still holds them; LightningCLI's version warns about exactly that.
            # `--trainer.precision auto` is ours (Lightning has no such value): the trainer
            # is built in fp32 and AutoPrecision measures and switches on the first batch.
            self.auto_precision = False
            if isinstance(args, list | tuple):
                args, self.auto_precision = take_auto_precision(args)
            self.config = parser.parse_args(args)

        def _parse_ckpt_path(self) -> None:
            # The one private hook we override: Lightning has no public way (its
            # adapt_checkpoint_hparams hook, PR #21408, is not released) to stop LightningCLI
            # from torch.loading --ckpt_path here and merging the checkpoint's hyperparameters
            # into the model config. That merge fails for models that record derived values
            # (vocab), and the config is the source of truth anyway. Only check the file, so a
            # missing, corrupt or foreign one is a CheckpointError naming it, not a traceback.
            # tests/test_cli.py fails if Lightning renames the hook.
            sub = self.config.get("subcommand")
            path = self.config[sub].get("ckpt_path") if sub else None
            if path and not str(path).startswith(_SPECIAL_CKPT_PATHS):
                load_checkpoint(path)

        def instantiate_trainer(self, **kwargs: Any):
            config = self.config_init.get(str(self.subcommand), self.config_init)
            trainer = {**(config.get("trainer") or {}), **kwargs}
            overrides: dict[str, Any] = {}
            if trainer.get("logger") in (None, True):
                # CSV by default: report.md plots its metrics.csv; TensorBoard on request
                # (--trainer.logger TensorBoardLogger) when it is installed.
                root = trainer.get("default_root_dir") or os.getcwd()
                overrides["logger"] = CSVLogger(save_dir=root, name="lightning_logs")
            plugins = trainer.get("plugins") or []
            plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
            if not any(isinstance(p, CheckpointIO) for p in plugins):
                overrides["plugins"] = [*plugins, AtomicCheckpointIO()]
            if trainer.get("strategy") == "ddp":
                # Objectives touch different parameters per batch (the mask embedding only
                # under masking objectives, a mixture switches per batch): DDP must look for
                # unused parameters or it stops with an error on the first such batch.
                overrides["strategy"] = "ddp_find_unused_parameters_true"
            built = super().instantiate_trainer(**{**kwargs, **overrides})
            if config.get("compile"):
                from seqmodels.training import CompileBackbone

                built.callbacks.append(CompileBackbone())
            if self.auto_precision:
                built.callbacks.append(AutoPrecision())
            return built

    return SeqCLI


def run_lightning(argv: Sequence[str]) -> dict[str, float]:
    """Run a LightningCLI subcommand; returns the trainer's final logged metrics."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    cli_class = lightning_cli_class()
    kwargs = {
        c: {"epilog": f"example: {EXAMPLES[c]}", "description": LIGHTNING_HELP[c]}
        for c in LIGHTNING_COMMANDS
    }
    try:
        cli = cli_class(
            model_class=None,
            datamodule_class=None,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            # TokenDataModule's resumable sampler shards batches by rank itself; Lightning's
            # DistributedSampler replacement would break it (a plain datamodule may set it).
            trainer_defaults={"use_distributed_sampler": False},
            save_config_kwargs={"overwrite": True},
            # Checkpoints load through seqmodels.checkpoint.load_module; Lightning's own
            # support would put `_class_path` / `_instantiator` into the hyperparameters.
            load_from_checkpoint_support=False,
            parser_kwargs={**kwargs, "prog": "seqmodels"},
            args=list(argv),
        )
    except SIGTERMException as err:
        # Lightning stops on SIGTERM with a bare SystemExit (exit code 0): a recipe would
        # take the unfinished stage for done. 128 + 15, as for a process the signal killed.
        print("seqmodels: stopped by SIGTERM (a recipe rerun resumes from the last checkpoint)",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(143) from err
    if not cli.trainer.is_global_zero:
        return {}
    return scalar_metrics(cli.trainer.callback_metrics)
