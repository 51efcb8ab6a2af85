"""`seqmodels scales generate`: next-scale generation through a learned tokenizer, decoded
and scored; what a recipe's last stage runs after a tokenizer stage and an AR stage.

Plugged in through the `seqmodels.commands` entry point like a domain's commands; this
module imports only the standard library until a command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from seqmodels.commands import CLIError, add_flag, load_object

EXAMPLE = (
    "seqmodels scales generate --model runs/s/ar/checkpoints/last.ckpt "
    "--tokenizer runs/s/tokenizer/checkpoints/last.ckpt --classes 4 --n 64 --guidance 1 2 "
    "--metric seqmodels.synthetic_scales:signal_metrics --reference runs/s/ar/config.yaml "
    "--baseline-untrained --out runs/s/generate"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    top = subparsers.add_parser("scales", help="next-scale generation through a learned tokenizer")
    sub = top.add_subparsers(title="scales commands", metavar="COMMAND")
    top.set_defaults(func=lambda args: top.print_help())
    p = sub.add_parser(
        "generate",
        help="sample scale by scale, decode with the tokenizer, score with a metric",
        description=(
            "Samples --n sequences per condition with seqmodels.sampling.generate_scales "
            "(the tokenizer's quantiser gives each scale's inputs), decodes them with the "
            "tokenizer, and scores them with --metric module:function(samples, cond) -> "
            "dict, once per --guidance value. --reference scores the tokenizer's own "
            "reconstructions of the test split of an AR stage's config (the ceiling a "
            "perfect AR model reaches); --baseline-untrained scores a freshly initialised "
            "model of the same shape (the floor)."
        ),
        epilog=f"example:\n  {EXAMPLE}",
        formatter_class=raw,
    )
    add_flag(p, "--model", required=True, help="next-scale AR checkpoint (SeqLM, next_scale)")
    add_flag(p, "--tokenizer", required=True, help="Tokenizer checkpoint the AR data came from")
    add_flag(p, "--n", type=int, default=16, help="samples per condition (default 16)")
    add_flag(p, "--classes", type=int, default=None, help="condition on one-hot classes 0..K-1")
    add_flag(p, "--cond", default=None, help="condition vectors as JSON, e.g. '[[1, 0], [0, 1]]'")
    add_flag(p, "--guidance", type=float, nargs="+", default=[1.0], help="CFG scales (1 = off)")
    add_flag(p, "--temperature", type=float, nargs="+", default=[1.0], help="one, or one per scale")
    add_flag(p, "--top-k", type=int, default=None)
    add_flag(p, "--top-p", type=float, default=None)
    add_flag(p, "--metric", default=None, help="module:function(samples, cond) -> dict")
    add_flag(p, "--plot", default=None, help="module:function(samples, cond, path) -> None")
    add_flag(p, "--reference", default=None, help="an AR stage's config.yaml: score its test split")
    add_flag(p, "--baseline-untrained", action="store_true", help="also score an untrained model")
    add_flag(p, "--seed", type=int, default=0)
    add_flag(p, "--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")
    add_flag(p, "--out", required=True, help="folder for samples.pt, metrics.json and plots")
    p.set_defaults(func=cmd_generate)


def _conditions(args: argparse.Namespace):
    import torch

    if args.classes is not None and args.cond:
        raise CLIError("give --classes or --cond, not both")
    if args.classes is not None:
        if args.classes < 1:
            raise CLIError("--classes must be >= 1")
        return torch.eye(args.classes)
    if args.cond:
        try:
            rows = json.loads(args.cond)
        except json.JSONDecodeError as err:
            raise CLIError(f"--cond is not JSON: {err}") from err
        cond = torch.as_tensor(rows, dtype=torch.float32)
        return cond[None] if cond.dim() == 1 else cond
    return None


def _reference_ids(config_path: str):
    """ids and cond of the test split of an AR stage's TokenizedDataModule."""
    import torch
    import yaml

    from seqmodels.tokenizer import _instantiate

    path = Path(config_path)
    if not path.is_file():
        raise CLIError(f"{path}: config file not found")
    config = yaml.safe_load(path.read_text()) or {}
    if "data" not in config:
        raise CLIError(f"{path}: missing key 'data'")
    try:
        dm = _instantiate(config["data"])
    except (TypeError, ValueError) as err:
        raise CLIError(f"{path}: bad 'data' section: {err}") from err
    dm.setup("fit")
    test = dm.splits["test"]
    if not test:
        raise CLIError(f"{path}: the test split is empty")
    ids = torch.tensor([e["ids"] for e in test])
    cond = torch.tensor([e["cond"] for e in test]) if "cond" in test[0] else None
    return ids, cond


def cmd_generate(args: argparse.Namespace) -> dict:
    import time

    import torch

    from seqmodels.checkpoint import load_module
    from seqmodels.sampling import generate_scales
    from seqmodels.tokenizer import Tokenizer

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_module(args.model).to(device)
    tok = load_module(args.tokenizer).to(device)
    if not isinstance(tok, Tokenizer) or not tok.scales:
        raise CLIError(f"{args.tokenizer}: not a multi-scale Tokenizer checkpoint")
    cond = _conditions(args)
    metric = load_object(args.metric) if args.metric else None
    plot = load_object(args.plot) if args.plot else None
    temperature = args.temperature[0] if len(args.temperature) == 1 else args.temperature
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def sample(m, guidance: float):
        try:
            return generate_scales(
                m,
                cond,
                scales=tok.scales,
                next_input=tok.next_scale_input,
                num_samples=args.n,
                temperature=temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                guidance=guidance,
                seed=args.seed,
            )
        except ValueError as err:
            raise CLIError(f"generate_scales from {args.model}: {err}") from err

    rows = None if cond is None else cond.repeat_interleave(args.n, 0)
    metrics: dict[str, float] = {}
    saved = {}
    for g in args.guidance:
        start = time.perf_counter()
        ids = sample(model, g)
        seconds = time.perf_counter() - start
        samples = tok.decode(ids).cpu()
        saved[f"guidance_{g:g}"] = {"ids": ids.cpu(), "samples": samples}
        metrics[f"g{g:g}/samples_per_s"] = len(ids) / max(seconds, 1e-9)
        if metric is not None:
            metrics.update({f"g{g:g}/{k}": v for k, v in metric(samples, rows).items()})
        if plot is not None:
            plot(samples, rows, str(out / f"samples_guidance_{g:g}.png"))
    if args.baseline_untrained:
        torch.manual_seed(args.seed)
        hp = type(model).hparams_for_load({"hyper_parameters": dict(model.hparams)})
        fresh = type(model)(**hp).to(device)
        g = args.guidance[0]
        samples = tok.decode(sample(fresh, g)).cpu()
        if metric is not None:
            metrics.update({f"untrained_g{g:g}/{k}": v for k, v in metric(samples, rows).items()})
    if args.reference:
        ids, ref_cond = _reference_ids(args.reference)
        recon = tok.decode(ids.to(device)).cpu()
        if metric is not None:
            metrics.update(
                {f"tokenizer_reference/{k}": v for k, v in metric(recon, ref_cond).items()}
            )
    torch.save(saved, out / "samples.pt")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for k, v in metrics.items():
        print(f"{k}: {v:.4g}")
    return metrics
