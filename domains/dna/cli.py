"""`seqmodels dna ...`: classify, lm-eval, score, generate, compare, synthetic.

Each handler returns a metrics dict (the recipe runner collects it) and, with --out, writes
metrics.json (and its table / plot / predictions) into that folder.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

EXAMPLES = {
    "classify": "seqmodels dna classify --ckpt runs/d/finetune/checkpoints/last.ckpt "
    "--config runs/d/finetune/config.yaml --rc-average --out runs/d/classify",
    "lm-eval": "seqmodels dna lm-eval --ckpt runs/d/pretrain/checkpoints/last.ckpt "
    "--config runs/d/pretrain/config.yaml --out runs/d/lm",
    "score": "seqmodels dna score seqs.fa --ckpt runs/d/pretrain/checkpoints/last.ckpt "
    "--per-position --out scores.jsonl",
    "generate": "seqmodels dna generate --ckpt CKPT --n 20 --length 100 --prompt TATA "
    "--out samples.fa   |   --task tata --label 1 (kept when the model classifies them so)",
    "compare": "seqmodels dna compare --multitask runs/d/classify_mt --single runs/d/classify_* "
    "--out runs/d/compare",
    "synthetic": "seqmodels dna synthetic --n 400 --length 100 --out synthetic.csv",
}


def _err(msg: str) -> Exception:
    from seqmodels.cli import CLIError

    return CLIError(msg)


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _load_model(path: str):
    from seqmodels.checkpoint import load_module

    return load_module(path)


def _vocab_tokens(model) -> list[str]:
    lm = getattr(model, "lm", model)
    if getattr(lm, "vocab", None) is None:
        raise _err("the checkpoint stores no vocabulary")
    return lm.vocab.tokens


def _tokenizer(model, args: argparse.Namespace):
    from domains.dna.alphabet import BasePolicy
    from domains.dna.tokenizers import tokenizer_from_dict, tokenizer_from_vocab

    try:
        tok = tokenizer_from_vocab(_vocab_tokens(model), args.tokenizer)
    except ValueError as err:
        raise _err(f"{args.ckpt}: {err}") from err
    # Rebuild with the requested policy (char / k-mer bake it into their lookup tables).
    policy = BasePolicy(args.ambiguous, args.lowercase)
    return tokenizer_from_dict({**tok.to_dict(), "policy": vars(policy)})


def _datamodule(config: str):
    """The `data:` datamodule of a fit stage's config.yaml (class_path / init_args)."""
    import yaml
    from jsonargparse import ArgumentParser
    from pytorch_lightning import LightningDataModule

    path = Path(config)
    if not path.is_file():
        raise _err(f"{path}: config file not found")
    data = (yaml.safe_load(path.read_text()) or {}).get("data")
    if not isinstance(data, dict):
        raise _err(f"{path}: missing 'data' section (class_path / init_args)")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    try:
        return parser.instantiate_classes(parser.parse_object({"data": data})).data
    except Exception as err:  # jsonargparse raises many types for a bad config
        raise _err(f"{path}: bad 'data' section: {err}") from err


def _write_metrics(out: str | None, metrics: dict) -> None:
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


# ---------------------------------------------------------------- classify


def cmd_classify(args: argparse.Namespace) -> dict:
    from domains.dna.inference import classify_split
    from domains.dna.metrics import classification_metrics, macro

    _threads(args)
    dm = _datamodule(args.config)
    model = _load_model(args.ckpt)
    results = classify_split(model, dm, args.split, args.rc_average, args.batch_size)
    if not results:
        raise _err(f"{args.config}: the {args.split!r} split is empty")
    per_task = {
        name: classification_metrics(r["y"], r["pred"], len(r["labels"]))
        for name, r in results.items()
    }
    metrics: dict[str, Any] = {**per_task, "macro": macro(per_task)}
    for name, m in per_task.items():
        print(f"{name}: accuracy {m['accuracy']:.4f}  MCC {m['mcc']:.4f}  F1 {m['f1']:.4f}")
    print(f"macro: {metrics['macro']}")
    if args.out:
        _write_metrics(args.out, metrics)
        rows = ["task\tindex\tlabel\tpred\tlogp"]
        for name, r in results.items():
            for i, (y, p, lp) in enumerate(zip(r["y"], r["pred"], r["logp"])):
                logp = ",".join(f"{v:.4f}" for v in lp)
                rows.append(f"{name}\t{i}\t{r['labels'][y]}\t{r['labels'][p]}\t{logp}")
        (Path(args.out) / "predictions.tsv").write_text("\n".join(rows) + "\n")
    return metrics


# ---------------------------------------------------------------- lm-eval


def cmd_lm_eval(args: argparse.Namespace) -> dict:
    from domains.dna.inference import score_sequences
    from domains.dna.metrics import lm_metrics

    _threads(args)
    dm = _datamodule(args.config)
    dm._ensure()
    model = _load_model(args.ckpt)
    seqs = [dm.tokenizer.decode(e["ids"]) for e in dm.splits[args.split]]
    if args.max_sequences:
        seqs = seqs[: args.max_sequences]
    if not seqs:
        raise _err(f"{args.config}: the {args.split!r} split is empty")
    scores = score_sequences(model, dm.tokenizer, seqs, args.batch_size, progress=True)
    nll = -sum(s["loglik"] for s in scores)
    metrics = lm_metrics(nll, sum(s["n_tokens"] for s in scores), sum(map(len, seqs)))
    metrics["n_sequences"] = len(seqs)
    print(json.dumps(metrics))
    _write_metrics(args.out, metrics)
    return metrics


# ---------------------------------------------------------------- score


def cmd_score(args: argparse.Namespace) -> dict:
    from domains.dna.alphabet import BasePolicy, DNAInputError
    from domains.dna.inference import score_sequences
    from domains.dna.readers import ReadReport, read_records

    args.file = args.file or args.file_flag
    if not args.file:
        raise _err("dna score needs a sequence file")
    _threads(args)
    model = _load_model(args.ckpt)
    lm = getattr(model, "lm", model)
    tok = _tokenizer(model, args)
    report = ReadReport()
    try:
        recs = read_records(
            args.file,
            policy=BasePolicy(args.ambiguous, args.lowercase),
            on_error="skip",
            report=report,
        )
    except DNAInputError as err:
        raise _err(str(err)) from err
    for e in report.errors:
        print(f"skipped: {e}", file=sys.stderr)
    if not recs:
        raise _err(f"{args.file}: no record could be scored ({len(report.errors)} bad)")
    scores = score_sequences(
        lm, tok, [r.seq for r in recs], args.batch_size, args.per_position, progress=True
    )
    out = Path(args.out) if args.out else None
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".jsonl":
            text = "".join(json.dumps({"name": r.name, **s}) + "\n" for r, s in zip(recs, scores))
        else:
            text = "name\tn_bases\tn_tokens\tloglik\tbits_per_base\n" + "".join(
                f"{r.name}\t{s['n_bases']}\t{s['n_tokens']}\t{s['loglik']:.4f}\t"
                f"{s['bits_per_base']:.4f}\n"
                for r, s in zip(recs, scores)
            )
        out.write_text(text)
    n_bases = sum(s["n_bases"] for s in scores)
    nll = -sum(s["loglik"] for s in scores)
    metrics = {
        "n_scored": len(scores),
        "n_skipped": len(report.errors),
        "mean_loglik": -nll / len(scores),
        "bits_per_base": nll / math.log(2) / max(n_bases, 1),
    }
    if not out:
        for r, s in zip(recs, scores):
            print(f"{r.name}\t{s['loglik']:.4f}\t{s['bits_per_base']:.4f}")
    print(json.dumps(metrics))
    return metrics


# ---------------------------------------------------------------- generate


def cmd_generate(args: argparse.Namespace) -> dict:
    import numpy as np

    from domains.dna.data import label_token, task_token
    from domains.dna.inference import label_logprobs, sample_sequences
    from domains.dna.tokenizers import BOS, SEP

    _threads(args)
    model = _load_model(args.ckpt)
    tok = _tokenizer(model, args)
    vocab = model.vocab
    if (args.task is None) != (args.label is None):
        raise _err("--task and --label go together")

    def draw(n: int, seed: int) -> list[str]:
        try:
            return sample_sequences(
                model,
                tok,
                n,
                args.length,
                args.prompt,
                args.temperature,
                args.top_k,
                seed,
                args.batch_size,
            )
        except ValueError as err:
            raise _err(str(err)) from err

    metrics: dict[str, Any] = {}
    if args.task is None:
        seqs = draw(args.n, args.seed)
    else:
        # The Omni layout puts the label after the sequence, so p(seq | task, label) is not
        # modelled: sample from the LM and keep the samples the model gives that label.
        if task_token(args.task) not in vocab:
            known = [t[6:-1] for t in vocab.tokens if t.startswith("<task:")]
            raise _err(f"{args.ckpt}: no task {args.task!r}; tasks: {known}")
        labels = args.labels or [t[7:-1] for t in vocab.tokens if t.startswith("<label:")]
        if args.label not in labels:
            raise _err(f"--label {args.label!r} not in the label set {labels}")
        label_ids = [vocab.token_to_id(label_token(y)) for y in labels]
        tid = vocab.token_to_id(task_token(args.task))
        seqs, drawn = [], 0
        max_draws = args.max_draws or 20 * args.n
        while len(seqs) < args.n and drawn < max_draws:
            batch = draw(min(args.batch_size, max_draws - drawn), args.seed + drawn)
            drawn += len(batch)
            prompts = [[BOS, tid, *tok.encode(x).tolist(), SEP] for x in batch]
            pred = np.asarray(label_logprobs(model, prompts, label_ids)).argmax(-1)
            seqs += [x for x, p in zip(batch, pred) if labels[p] == args.label]
        metrics.update({"acceptance": len(seqs) / max(drawn, 1), "n_drawn": drawn})
        seqs = seqs[: args.n]
        if len(seqs) < args.n:
            print(f"only {len(seqs)} of {drawn} samples got label {args.label!r}", file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = f" task={args.task} label={args.label}" if args.task else ""
    out.write_text("".join(f">sample_{i}{tag}\n{s}\n" for i, s in enumerate(seqs)))
    counts = {b: sum(s.count(b) for s in seqs) for b in "ACGT"}
    total = max(sum(counts.values()), 1)
    metrics.update({"n_generated": len(seqs), "gc": (counts["G"] + counts["C"]) / total})
    print(f"wrote {len(seqs)} sequences to {out}")
    print(json.dumps(metrics))
    return metrics


# ---------------------------------------------------------------- compare


def _read_classify(folder: str) -> dict:
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        raise _err(f"{path}: not found (run `seqmodels dna classify --out {folder}` first)")
    return json.loads(path.read_text())


def cmd_compare(args: argparse.Namespace) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from domains.dna.metrics import macro

    groups: dict[str, dict[str, dict]] = {}
    for label, folders in (
        ("multitask", args.multitask),
        ("single_task", args.single),
        ("heads", args.heads or []),
    ):
        per_task: dict[str, dict] = {}
        for f in folders:
            per_task.update({k: v for k, v in _read_classify(f).items() if k != "macro"})
        if per_task:
            groups[label] = per_task
    tasks = sorted({t for g in groups.values() for t in g})
    metrics: dict[str, Any] = {}
    for label, per_task in groups.items():
        missing = set(tasks) - set(per_task)
        if missing:
            raise _err(f"{label}: no metrics for task(s) {sorted(missing)}")
        metrics[label] = {
            **{t: {k: per_task[t][k] for k in ("accuracy", "mcc", "f1")} for t in tasks},
            "mean": macro(per_task),
        }
    lines = [
        "| task | " + " | ".join(f"{g} acc | {g} MCC" for g in groups) + " |",
        "|---|" + "---|---|" * len(groups),
    ]
    for t in [*tasks, "mean"]:
        cells = [f"{metrics[g][t]['accuracy']:.3f} | {metrics[g][t]['mcc']:.3f}" for g in groups]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    _write_metrics(args.out, metrics)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    x = np.arange(len(tasks) + 1)
    w = 0.8 / len(groups)
    for ax, key in zip(axes, ("accuracy", "mcc")):
        for i, g in enumerate(groups):
            vals = [metrics[g][t][key] for t in [*tasks, "mean"]]
            ax.bar(x + i * w, vals, w, label=g)
        ax.set_xticks(x + w * (len(groups) - 1) / 2, [*tasks, "mean"], rotation=30, ha="right")
        ax.set_title(f"test {key}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="lower left", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(out / "multitask_vs_single.png", dpi=100)
    plt.close(fig)
    mt, st = metrics.get("multitask"), metrics.get("single_task")
    if mt and st:
        metrics["multitask_minus_single_mean_mcc"] = mt["mean"]["mcc"] - st["mean"]["mcc"]
        _write_metrics(args.out, metrics)
    return metrics


# ---------------------------------------------------------------- synthetic


def cmd_synthetic(args: argparse.Namespace) -> dict:
    import csv

    from domains.dna.synthetic import synthetic_examples

    ex = synthetic_examples(args.n, args.length, args.tasks, args.mutation_rate, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t" if out.suffix == ".tsv" else ",")
        w.writerow(["task", "seq", "label", "motif_starts"])
        for e in ex:
            w.writerow([e.task, e.seq, e.label, " ".join(map(str, e.motif_starts))])
    print(f"wrote {len(ex)} synthetic examples to {out}")
    return {"n_examples": len(ex)}


# ---------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser, ckpt: bool = True) -> None:
    if ckpt:
        p.add_argument("--ckpt", required=True, help="checkpoint (.ckpt)")
    p.add_argument("--batch-size", "--batch_size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _policy_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (needed for BPE models)")
    p.add_argument(
        "--ambiguous",
        choices=("n", "reject"),
        default="n",
        help="IUPAC codes: map to N (default) or reject the record",
    )
    p.add_argument(
        "--lowercase",
        choices=("upper", "n", "reject"),
        default="upper",
        help="soft-masked bases: keep (default), map to N, or reject the record",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    dna = subparsers.add_parser("dna", help="DNA: Omni-DNA multitask finetuning, scoring, sampling")
    sub = dna.add_subparsers(title="dna commands", metavar="COMMAND")
    dna.set_defaults(func=lambda args: dna.print_help())

    def leaf(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_, epilog=f"example:\n  {EXAMPLES[name]}", formatter_class=raw
        )

    p = leaf("classify", "per-task accuracy / MCC / F1 of a finetuned model on a split")
    _common(p)
    p.add_argument("--config", required=True, help="the finetune stage's config.yaml (data:)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument(
        "--rc-average",
        "--rc_average",
        action="store_true",
        help="average label log-probs over the sequence and its reverse complement",
    )
    p.add_argument("--out", default=None, help="folder for metrics.json and predictions.tsv")
    p.set_defaults(func=cmd_classify)

    p = leaf("lm-eval", "perplexity and bits per base of a pretrained model on a split")
    _common(p)
    p.add_argument("--config", required=True, help="the pretrain stage's config.yaml (data:)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--max-sequences", "--max_sequences", type=int, default=None)
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_lm_eval)

    p = leaf("score", "log-likelihood per sequence (and per position) of a sequence file")
    p.add_argument("file", nargs="?", help="FASTA / FASTQ / GenBank / CSV (.gz ok)")
    p.add_argument("--file", dest="file_flag", default=None, help="the same, as a flag (recipes)")
    _common(p)
    _policy_flags(p)
    p.add_argument(
        "--per-position",
        "--per_position",
        action="store_true",
        help="also per-token log-probabilities (needs --out FILE.jsonl)",
    )
    p.add_argument("--out", default=None, help=".tsv (per sequence) or .jsonl")
    p.set_defaults(func=cmd_score)

    p = leaf("generate", "sample DNA sequences to FASTA, from a prompt or for a task label")
    _common(p)
    _policy_flags(p)
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--length", type=int, default=100, help="bases per sequence")
    p.add_argument("--prompt", default="", help="bases every sample starts with")
    p.add_argument("--task", default=None, help="task name of an Omni-DNA finetuned model")
    p.add_argument("--label", default=None, help="keep samples the model gives this label")
    p.add_argument("--labels", nargs="+", default=None, help="the task's label set")
    p.add_argument(
        "--max-draws",
        "--max_draws",
        type=int,
        default=None,
        help="with --task: most samples drawn to find --n of that label (20 n)",
    )
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", "--top_k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="FASTA file")
    p.set_defaults(func=cmd_generate)

    p = leaf("compare", "multitask vs single-task table, plot and metrics.json")
    p.add_argument("--multitask", nargs="+", required=True, help="classify output folder(s)")
    p.add_argument("--single", nargs="+", required=True, help="single-task classify folders")
    p.add_argument("--heads", nargs="+", default=None, help="classification-head folders")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_compare)

    p = leaf("synthetic", "write the planted-motif synthetic dataset (CSV/TSV)")
    p.add_argument("--n", type=int, default=400, help="examples per task")
    p.add_argument("--length", type=int, default=100)
    p.add_argument("--tasks", nargs="+", default=None)
    p.add_argument("--mutation-rate", "--mutation_rate", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_synthetic)
