"""`seqmodels dna ...`: audit, baselines, classify, lm-eval, score, generate, compare,
synthetic.

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

from seqmodels.commands import CLIError, add_flag

EXAMPLES = {
    "audit": "seqmodels dna audit --train train.fa:1 train_neg.fa:0 --test test.fa:1 test_neg.fa:0 "
    "--out audit/   |   --tasks promoters --only human_nontata --split random --out audit/",
    "baselines": "seqmodels dna baselines --tasks promoters --only human_nontata "
    "--split overlap random --out runs/d/baselines",
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
    return CLIError(msg)


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

    dm = _datamodule(args.config)
    model = _load_model(args.ckpt)
    results = classify_split(model, dm, args.split, args.rc_average, args.batch_size, args.decoding)
    if not results:
        raise _err(f"{args.config}: the {args.split!r} split is empty")
    per_task = {
        name: {
            **classification_metrics(r["y"], r["pred"], len(r["labels"])),
            "invalid": float(r["invalid"].mean()),
            "split_method": next(t.split_method for t in dm.tasks if t.name == name),
        }
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

    dm = _datamodule(args.config)
    dm.setup("fit")
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
    if args.baselines:
        # Baselines on the split the models were scored on (classify records its method).
        methods = {m.get("split_method", "overlap") for g in groups.values() for m in g.values()}
        if len(methods) > 1:
            raise _err(f"the classify folders mix split methods {sorted(methods)}")
        base = _read_classify(args.baselines).get(methods.pop())
        if base is None:
            raise _err(f"{args.baselines}: no baselines on the models' split method")
        for name in ("memorisation", "kmer_lr", "gb_cnn"):
            rows = {t: base[t][name] for t in tasks if name in base.get(t, {})}
            if rows:
                groups[name] = rows
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

    try:
        ex = synthetic_examples(args.n, args.length, args.tasks, args.mutation_rate, args.seed)
    except ValueError as err:  # e.g. a length too short for a task's motifs
        raise CLIError(f"dna synthetic: {err}") from None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t" if out.suffix == ".tsv" else ",")
        w.writerow(["task", "seq", "label", "motif_starts"])
        for e in ex:
            w.writerow([e.task, e.seq, e.label, " ".join(map(str, e.motif_starts))])
    print(f"wrote {len(ex)} synthetic examples to {out}")
    return {"n_examples": len(ex)}


# ---------------------------------------------------------------- audit / baselines


def _tasks_from_args(args: argparse.Namespace, split: str):
    """Labelled tasks from --config (a fit stage's data section) or --tasks/--only."""
    from domains.dna.alphabet import DNAInputError
    from domains.dna.data import load_tasks

    init: dict[str, Any] = {}
    if args.config:
        import yaml

        path = Path(args.config)
        if not path.is_file():
            raise _err(f"{path}: config file not found")
        init = ((yaml.safe_load(path.read_text()) or {}).get("data") or {}).get("init_args") or {}
        if "tasks" not in init:
            raise _err(f"{path}: its data section names no tasks")
    tasks = init.get("tasks", args.tasks)
    if isinstance(tasks, str) and tasks.endswith((".yaml", ".yml")):
        import yaml

        tasks = yaml.safe_load(Path(tasks).read_text())
    try:
        return load_tasks(
            tasks,
            init.get("data_dir", args.data_dir),
            None,
            init.get("split_seed", args.seed),
            init.get("max_per_label", args.max_per_label),
            args.only or init.get("only"),
            split,
            init.get("split_k", args.split_k),
            init.get("split_strand", args.strand),
        )
    except (DNAInputError, ValueError, OSError) as err:
        raise _err(str(err)) from err


def _labelled_files(specs: list[str], args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """`FILE[:LABEL]` arguments -> sequences and labels (a table's label column otherwise)."""
    from domains.dna.alphabet import DNAInputError
    from domains.dna.readers import ReadReport, read_records

    seqs, labels = [], []
    for spec in specs:
        path, _, label = spec.rpartition(":") if ":" in spec else (spec, "", "")
        report = ReadReport()
        try:
            recs = read_records(
                path, label_col=args.label_col, on_error="skip", report=report, seq_col=args.seq_col
            )
        except DNAInputError as err:
            raise _err(str(err)) from err
        for e in report.errors:
            print(f"skipped: {e}", file=sys.stderr)
        seqs += [r.seq for r in recs]
        labels += [label or (r.label or "") for r in recs]
    return seqs, labels


def cmd_audit(args: argparse.Namespace) -> dict:
    import numpy as np

    from domains.dna.alphabet import DNAInputError
    from domains.dna.audit import (
        audit_pair,
        audit_plot,
        audit_table,
        interval_audit,
        interval_table,
        read_intervals,
    )

    pairs: dict[str, dict[str, Any]] = {}
    if args.train or args.test:
        if not (args.train and args.test):
            raise _err("--train and --test go together")
        tr, ytr = _labelled_files(args.train, args)
        te, yte = _labelled_files(args.test, args)
        if not tr or not te:
            raise _err("no usable training or test records")
        labelled = all(ytr) and all(yte)
        names = sorted(set(ytr) | set(yte)) if labelled else None
        pairs["files"] = dict(
            train_seqs=tr,
            test_seqs=te,
            train_y=np.array([names.index(y) for y in ytr]) if names else None,
            test_y=np.array([names.index(y) for y in yte]) if names else None,
            labels=names,
        )
    elif args.tasks or args.config:
        for split in args.split:
            for t in _tasks_from_args(args, split):
                (tr, ytr), (te, yte) = t.subset("train"), t.subset(args.against)
                pairs[f"{t.name} ({split} split, {args.against} vs train)"] = dict(
                    train_seqs=tr, test_seqs=te, train_y=ytr, test_y=yte, labels=t.labels
                )
    elif not (args.train_intervals and args.test_intervals):
        raise _err("give --train/--test files, --tasks/--config, or interval files")
    intervals = None
    if args.train_intervals or args.test_intervals:
        if not (args.train_intervals and args.test_intervals):
            raise _err("--train-intervals and --test-intervals go together")
        try:
            intervals = interval_audit(
                {Path(f).name.split(".")[0]: read_intervals(f) for f in args.train_intervals},
                {Path(f).name.split(".")[0]: read_intervals(f) for f in args.test_intervals},
            )
        except DNAInputError as err:
            raise _err(str(err)) from err
    audits = {name: audit_pair(**p, k=args.k, strand=args.strand) for name, p in pairs.items()}
    metrics: dict[str, Any] = {}
    for name, a in audits.items():
        if intervals is not None:
            a["intervals"] = intervals
        print(f"## {name}\n\n{audit_table(a)}")
        metrics[name] = {
            k: v for k, v in a.items() if k not in ("frac_kmers_in_train", "test_labels")
        }
    if not audits and intervals is not None:
        metrics["intervals"] = intervals
        print(interval_table(intervals))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        _write_metrics(args.out, metrics)
        tables = [f"## {n}\n\n{audit_table(a)}" for n, a in audits.items()]
        if not audits and intervals is not None:
            tables = [interval_table(intervals)]
        (out / "audit.md").write_text("\n".join(tables))
        if audits:
            audit_plot(audits, out / "audit.png")
    return metrics


def cmd_baselines(args: argparse.Namespace) -> dict:
    from domains.dna.baselines import run_baselines

    metrics: dict[str, Any] = {}
    rows = ["| split | task | baseline | accuracy | MCC | F1 |", "|---|---|---|---|---|---|"]
    for split in args.split:
        per_task = {}
        for t in _tasks_from_args(args, split):
            res = run_baselines(t, args.baselines, args.lr_k, args.k, args.cnn_epochs, args.seeds)
            per_task[t.name] = res
            for b, m in res.items():
                sd = f" ± {m['mcc_sd']:.3f}" if "mcc_sd" in m else ""
                rows.append(
                    f"| {split} | {t.name} | {b} | {m['accuracy']:.3f} | {m['mcc']:.3f}{sd} "
                    f"| {m['f1']:.3f} |"
                )
                print(rows[-1], flush=True)
        metrics[split] = per_task
    table = "\n".join(rows) + "\n"
    print(table)
    if args.out:
        _write_metrics(args.out, metrics)
        (Path(args.out) / "table.md").write_text(table)
    return metrics


# ---------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser, ckpt: bool = True) -> None:
    if ckpt:
        add_flag(p, "--ckpt", required=True, help="checkpoint (.ckpt)")
    add_flag(p, "--batch-size", type=int, default=64)


def _policy_flags(p: argparse.ArgumentParser) -> None:
    add_flag(p, "--tokenizer", default=None, help="tokenizer.json (needed for BPE models)")
    add_flag(
        p,
        "--ambiguous",
        choices=("n", "reject"),
        default="n",
        help="IUPAC codes: map to N (default) or reject the record",
    )
    add_flag(
        p,
        "--lowercase",
        choices=("upper", "n", "reject"),
        default="upper",
        help="soft-masked bases: keep (default), map to N, or reject the record",
    )


def _task_flags(p: argparse.ArgumentParser, splits_default: list[str]) -> None:
    add_flag(p, "--tasks", default=None, help="task preset (promoters, synthetic) or a YAML list")
    add_flag(p, "--config", default=None, help="a fit stage's config.yaml: its data's tasks/split")
    add_flag(p, "--only", nargs="+", default=None, help="only these task names")
    add_flag(p, "--data-dir", default=None, help="folder task paths are relative to")
    add_flag(
        p,
        "--split",
        nargs="+",
        choices=("overlap", "random"),
        default=splits_default,
        help=f"split method(s) of the tasks (default: {' '.join(splits_default)})",
    )
    add_flag(p, "--split-k", type=int, default=32, help="k-mer length of overlap-aware splits")
    add_flag(p, "--seed", type=int, default=0, help="split seed")
    add_flag(p, "--max-per-label", type=int, default=None)
    add_flag(p, "--k", type=int, default=32, help="k-mer length of the audit / memorisation rule")
    add_flag(p, "--strand", choices=("both", "forward"), default="both")


def register(subparsers: argparse._SubParsersAction) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    dna = subparsers.add_parser("dna", help="DNA: Omni-DNA multitask finetuning, scoring, sampling")
    sub = dna.add_subparsers(title="dna commands", metavar="COMMAND")
    dna.set_defaults(func=lambda args: dna.print_help())

    def leaf(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_, epilog=f"example:\n  {EXAMPLES[name]}", formatter_class=raw
        )

    p = leaf("audit", "leakage audit of a train / test pair: shared k-mers, memorisation rule")
    add_flag(p, "--train", nargs="+", default=None, help="FILE[:LABEL] ... (tables: --label-col)")
    add_flag(p, "--test", nargs="+", default=None, help="FILE[:LABEL] ...")
    add_flag(p, "--seq-col", default="seq", help="sequence column of CSV/TSV inputs")
    add_flag(p, "--label-col", default=None, help="label column of CSV/TSV inputs")
    add_flag(p, "--train-intervals", nargs="+", default=None, help="BED / GB coordinate CSVs")
    add_flag(p, "--test-intervals", nargs="+", default=None, help="BED / GB coordinate CSVs")
    add_flag(
        p,
        "--against",
        choices=("test", "val"),
        default="test",
        help="with --tasks: audit this split against train",
    )
    _task_flags(p, ["overlap", "random"])
    add_flag(p, "--out", default=None, help="folder for metrics.json, audit.md, audit.png")
    p.set_defaults(func=cmd_audit)

    p = leaf("baselines", "majority, memorisation, k-mer LR and GB CNN on the tasks' splits")
    _task_flags(p, ["overlap", "random"])
    add_flag(
        p,
        "--baselines",
        nargs="+",
        default=["majority", "memorisation", "kmer_lr", "gb_cnn"],
        choices=("majority", "memorisation", "kmer_lr", "gb_cnn"),
    )
    add_flag(p, "--lr-k", type=int, default=6, help="k of the k-mer logistic regression")
    add_flag(p, "--cnn-epochs", type=int, default=10)
    add_flag(p, "--seeds", type=int, nargs="+", default=[0], help="CNN seeds (mean and sd)")
    add_flag(p, "--out", default=None, help="folder for metrics.json and table.md")
    p.set_defaults(func=cmd_baselines)

    p = leaf("classify", "per-task accuracy / MCC / F1 of a finetuned model on a split")
    _common(p)
    add_flag(p, "--config", required=True, help="the finetune stage's config.yaml (data:)")
    add_flag(p, "--split", default="test", choices=("train", "val", "test"))
    add_flag(
        p,
        "--rc-average",
        action="store_true",
        help="average label log-probs over the sequence and its reverse complement",
    )
    add_flag(
        p,
        "--decoding",
        choices=("constrained", "greedy"),
        default="constrained",
        help="constrained: best of the task's labels; greedy: argmax over the whole "
        "vocabulary (a non-label token counts as wrong)",
    )
    add_flag(p, "--out", default=None, help="folder for metrics.json and predictions.tsv")
    p.set_defaults(func=cmd_classify)

    p = leaf("lm-eval", "perplexity and bits per base of a pretrained model on a split")
    _common(p)
    add_flag(p, "--config", required=True, help="the pretrain stage's config.yaml (data:)")
    add_flag(p, "--split", default="test", choices=("train", "val", "test"))
    add_flag(p, "--max-sequences", type=int, default=None)
    add_flag(p, "--out", default=None)
    p.set_defaults(func=cmd_lm_eval)

    p = leaf("score", "log-likelihood per sequence (and per position) of a sequence file")
    p.add_argument("file", nargs="?", help="FASTA / FASTQ / GenBank / CSV (.gz ok)")
    p.add_argument("--file", dest="file_flag", default=None, help="the same, as a flag (recipes)")
    _common(p)
    _policy_flags(p)
    add_flag(
        p,
        "--per-position",
        action="store_true",
        help="also per-token log-probabilities (needs --out FILE.jsonl)",
    )
    add_flag(p, "--out", default=None, help=".tsv (per sequence) or .jsonl")
    p.set_defaults(func=cmd_score)

    p = leaf("generate", "sample DNA sequences to FASTA, from a prompt or for a task label")
    _common(p)
    _policy_flags(p)
    add_flag(p, "--n", type=int, default=10)
    add_flag(p, "--length", type=int, default=100, help="bases per sequence")
    add_flag(p, "--prompt", default="", help="bases every sample starts with")
    add_flag(p, "--task", default=None, help="task name of an Omni-DNA finetuned model")
    add_flag(p, "--label", default=None, help="keep samples the model gives this label")
    add_flag(p, "--labels", nargs="+", default=None, help="the task's label set")
    add_flag(
        p,
        "--max-draws",
        type=int,
        default=None,
        help="with --task: most samples drawn to find --n of that label (20 n)",
    )
    add_flag(p, "--temperature", type=float, default=1.0)
    add_flag(p, "--top-k", type=int, default=None)
    add_flag(p, "--seed", type=int, default=0)
    add_flag(p, "--out", required=True, help="FASTA file")
    p.set_defaults(func=cmd_generate)

    p = leaf("compare", "multitask vs single-task table, plot and metrics.json")
    add_flag(p, "--multitask", nargs="+", required=True, help="classify output folder(s)")
    add_flag(p, "--single", nargs="+", required=True, help="single-task classify folders")
    add_flag(p, "--heads", nargs="+", default=None, help="classification-head folders")
    add_flag(p, "--baselines", default=None, help="a `dna baselines` folder: rows beside them")
    add_flag(p, "--out", required=True)
    p.set_defaults(func=cmd_compare)

    p = leaf("synthetic", "write the planted-motif synthetic dataset (CSV/TSV)")
    add_flag(p, "--n", type=int, default=400, help="examples per task")
    add_flag(p, "--length", type=int, default=100)
    add_flag(p, "--tasks", nargs="+", default=None)
    add_flag(p, "--mutation-rate", type=float, default=0.1)
    add_flag(p, "--seed", type=int, default=0)
    add_flag(p, "--out", required=True)
    p.set_defaults(func=cmd_synthetic)
