"""`seqmodels evaluate`: a checkpoint's test loop on a config's datamodule, and/or a metric
function over samples (read from a file, or drawn from the checkpoint)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from seqmodels.cli.lightning import scalar_metrics
from seqmodels.cli.sample import read_samples, sample_from_args, sample_stats
from seqmodels.commands import CLIError, load_object


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
    return scalar_metrics(results[0]) if results else {}


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
            metrics.update(sample_stats(rows, time.perf_counter() - start))
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
