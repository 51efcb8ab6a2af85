"""`seqmodels crystals ...`: encode, decode, check, table, generate, evaluate.

Inputs may be one item or a file of many; batch commands continue past bad records and
report them. Handlers return a metrics dict (the recipe runner collects it).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections import Counter
from pathlib import Path

EXAMPLES = {
    "encode": "seqmodels crystals encode FILE.cif | folder/ | data.csv -o slices.tsv",
    "decode": 'seqmodels crystals decode "Na Cl 0 1 ooo ..." -o out.cif   |   '
    "seqmodels crystals decode slices.tsv -o cifs/ --table table.json",
    "check": 'seqmodels crystals check "Na Cl 0 1 ooo"   |   seqmodels crystals check slices.tsv',
    "table": "seqmodels crystals table ../shared/data/crystals/mp20_mini.csv -o table.json",
    "generate": "seqmodels crystals generate --ckpt runs/c/train/checkpoints/last.ckpt "
    "--config runs/c/train/config.yaml --n 100 --out runs/c/generate/samples.tsv",
    "evaluate": "seqmodels crystals evaluate --samples runs/c/generate/samples.tsv "
    "--config runs/c/train/config.yaml --predictor runs/c/predictor/checkpoints/last.ckpt "
    "--out runs/c/evaluate",
}


def _err(msg: str) -> Exception:
    from seqmodels.cli import CLIError

    return CLIError(msg)


def _input(args: argparse.Namespace) -> str:
    value = args.input or args.input_flag
    if not value:
        raise _err("give an input (positional or --input)")
    return value


def _slices_lines(value: str) -> list[tuple[str, str]]:
    """(id, SLICES) pairs from a string or a file (one per line; TSV: SLICES in last column)."""
    p = Path(value)
    if not p.is_file():
        return [("input", value)]
    out = []
    for k, line in enumerate(p.read_text().splitlines()):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cols = line.split("\t")
        if k == 0 and cols[-1].lower() == "slices":
            continue  # header
        out.append((cols[0] if len(cols) > 1 else f"line {k + 1}", cols[-1]))
    return out


def _load_table(args: argparse.Namespace):
    from domains.crystals.geometry import BondTable

    if getattr(args, "table", None):
        p = Path(args.table)
        if not p.is_file():
            raise _err(f"{p}: bond table not found (make one with `seqmodels crystals table`)")
        return BondTable.load(p)
    return BondTable()


# ------------------------------------------------------------------ codec commands


def cmd_encode(args: argparse.Namespace) -> dict:
    from domains.crystals.codec import encode_info
    from domains.crystals.io import read_any, write_skip_log

    warnings.filterwarnings("ignore")
    src = _input(args)
    try:
        records, skipped = read_any(src, max_atoms=args.max_atoms)
    except (FileNotFoundError, ValueError) as err:
        raise _err(str(err)) from err
    rows, extended, failed = [], 0, []
    for r in records:
        try:
            info = encode_info(r.structure, args.method)
        except ValueError as err:
            failed.append((r.id, str(err)))
            continue
        extended += info.n_contacts > 0
        rows.append(f"{r.id}\t{info.slices}")
    text = "id\tslices\n" + "\n".join(rows) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    from domains.crystals.io import Skipped

    skipped += [Skipped(i, f"cannot encode: {why}") for i, why in failed]
    for s in skipped:
        print(f"skipped {s.id}: {s.reason}", file=sys.stderr)
    if args.skip_log:
        write_skip_log(skipped, args.skip_log)
    return {"encoded": len(rows), "skipped": len(skipped), "extended_non_3_periodic": extended}


def cmd_decode(args: argparse.Namespace) -> dict:
    from domains.crystals.codec import decode

    warnings.filterwarnings("ignore")
    items = _slices_lines(_input(args))
    table = _load_table(args)
    many = len(items) > 1 or Path(_input(args)).is_file()
    out = Path(args.output) if args.output else None
    if out and many:
        out.mkdir(parents=True, exist_ok=True)
    ok, reasons = 0, Counter()
    for k, (rid, s) in enumerate(items):
        res = decode(s, table, args.time_limit, relax=args.relax)
        if not res.ok:
            reasons[res.reason.split(":")[0]] += 1
            print(f"{rid}: cannot decode: {res.reason}", file=sys.stderr)
            continue
        ok += 1
        if out is None:
            sys.stdout.write(res.structure.to(fmt="cif"))
        else:
            res.structure.to(filename=str(out / f"{k:05d}.cif" if many else out))
    return {
        "decoded": ok,
        "failed": sum(reasons.values()),
        **{f"fail/{r}": n for r, n in reasons.items()},
    }


def cmd_check(args: argparse.Namespace) -> dict:
    from domains.crystals.slices import check

    items = _slices_lines(_input(args))
    n_ok, reasons = 0, Counter()
    for rid, s in items:
        ok, why = check(s)
        n_ok += ok
        if not ok:
            reasons[why.split(":")[0]] += 1
        print(f"{rid}\t{why}")
    return {"valid": n_ok, "invalid": len(items) - n_ok, "validity": n_ok / max(len(items), 1)}


def cmd_table(args: argparse.Namespace) -> dict:
    from domains.crystals.geometry import BondTable
    from domains.crystals.io import read_any

    warnings.filterwarnings("ignore")
    try:
        records, skipped = read_any(_input(args), max_atoms=args.max_atoms)
    except (FileNotFoundError, ValueError) as err:
        raise _err(str(err)) from err
    table = BondTable.fit([r.structure for r in records], args.method, progress=True)
    table.save(args.output)
    return {"structures": len(records), "skipped": len(skipped), "pairs": len(table.bond)}


# ------------------------------------------------------------------ model commands


def _datamodule(config: str):
    """The CrystalsDataModule of a training stage's config.yaml."""
    import yaml

    from domains.crystals.data import CrystalsDataModule

    path = Path(config)
    if not path.is_file():
        raise _err(f"{path}: config file not found")
    data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    if not str(data.get("class_path", "")).endswith("CrystalsDataModule"):
        raise _err(f"{path}: data is not a CrystalsDataModule")
    dm = CrystalsDataModule(**(data.get("init_args") or {}))
    dm.setup("fit")
    return dm


def _targets(args: argparse.Namespace, dm) -> list[list[float]]:
    import numpy as np

    lo, hi = np.array(dm.stats["min"]), np.array(dm.stats["max"])
    if args.target:
        rows = []
        for t in args.target:
            try:
                v = [float(x) for x in t.split(",")]
            except ValueError as err:
                raise _err(f"--target {t!r}: give {len(lo)} comma-separated numbers") from err
            if len(v) != len(lo):
                raise _err(f"--target {t!r}: {len(lo)} values needed ({dm.properties})")
            out = [p for p, x, a, b in zip(dm.properties, v, lo, hi) if not a <= x <= b]
            if out and not args.allow_extrapolation:
                raise _err(
                    f"--target {t!r}: {out} outside the training range "
                    f"{dict(zip(dm.properties, zip(lo.round(3).tolist(), hi.round(3).tolist())))}"
                    " (pass --allow-extrapolation to sample anyway)"
                )
            rows.append(v)
        return [rows[k % len(rows)] for k in range(args.n)]
    # default: the property vectors of held-out test crystals, cycled
    test = [r["props"] for r, s in zip(dm.records, dm.record_split) if s == "test"]
    test = test or [r["props"] for r in dm.records]
    return [list(test[k % len(test)]) for k in range(args.n)]


def cmd_generate(args: argparse.Namespace) -> dict:
    import time

    import torch

    from domains.crystals.tokenizer import SlicesGrammar, decode_ids
    from seqmodels.checkpoint import load_module
    from seqmodels.sampling import generate

    if args.threads:
        torch.set_num_threads(args.threads)
    dm = _datamodule(args.config)
    model = load_module(args.ckpt).to(args.device)
    targets = _targets(args, dm)
    cond = [dm.normalise(t) for t in targets]
    grammar = SlicesGrammar(dm.vocab, max_atoms=dm.max_atoms, canonical=dm.augment == 0)
    t0 = time.perf_counter()
    ids = generate(
        model,
        [[dm.vocab.bos_id]] * len(cond),
        cond=cond,
        # never past the model's positions; a cut sample counts as invalid
        max_new_tokens=min(args.max_new_tokens, model.hparams.get("max_len", 10**9) - 1),
        temperature=args.temperature,
        top_k=args.top_k,
        logits_processor=None if args.no_grammar else grammar,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=True,
    )
    secs = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fh:
        fh.write("\t".join(dm.properties + ["slices"]) + "\n")
        for t, row in zip(targets, ids):
            fh.write("\t".join([*(f"{x:.6g}" for x in t), decode_ids(row, dm.vocab)]) + "\n")
    from domains.crystals.metrics import slices_validity

    strings = [decode_ids(r, dm.vocab) for r in ids]
    return {"samples": len(ids), "slices_validity": slices_validity(strings), "seconds": secs}


def _read_samples(path: str, n_props: int) -> tuple[list[list[float]], list[str]]:
    p = Path(path)
    if not p.is_file():
        raise _err(f"{p}: samples file not found")
    targets, strings = [], []
    for k, line in enumerate(p.read_text().splitlines()[1:]):
        cols = line.split("\t")
        if len(cols) != n_props + 1:
            raise _err(f"{p}: line {k + 2} has {len(cols)} columns, expected {n_props + 1}")
        targets.append([float(x) for x in cols[:n_props]])
        strings.append(cols[-1])
    return targets, strings


def _predict(ckpt: str, strings: list[str], dm) -> list[list[float] | None]:
    """Properties from the SLICES tokens by the finetuned predictor (None where it cannot parse)."""
    import torch

    from domains.crystals.slices import SlicesError
    from domains.crystals.tokenizer import encode_ids
    from seqmodels.checkpoint import load_module
    from seqmodels.data import collate

    model = load_module(ckpt)
    out: list = [None] * len(strings)
    rows = []
    for k, s in enumerate(strings):
        try:
            rows.append((k, encode_ids(s, dm.vocab)))
        except SlicesError:
            continue
    with torch.no_grad():
        for b in range(0, len(rows), 64):
            chunk = rows[b : b + 64]
            batch = collate([{"ids": ids} for _, ids in chunk], dm.vocab.pad_id)
            (_, pred), *_ = model(batch).values()
            for (k, _), z in zip(chunk, dm.denormalise(pred.numpy()).tolist()):
                out[k] = z
    return out


def _sample_metrics(strings, structures, train, dm, predictor, targets) -> dict:
    import numpy as np

    from domains.crystals import metrics as M

    m = {
        "n": len(strings),
        "slices_validity": M.slices_validity(strings),
        "reconstruction_rate": M.reconstruction_rate(structures),
        "structural_validity": M.structural_validity(structures),
        "compositional_validity": M.compositional_validity(structures),
        "uniqueness": M.uniqueness(structures),
        "novelty": M.novelty(structures, train),
        "element_tv_distance": M.element_distance(structures, train),
        "spacegroup_tv_distance": M.spacegroup_distance(structures, train),
    }
    if predictor:
        pred = _predict(predictor, strings, dm)
        keep = [k for k, (p, s) in enumerate(zip(pred, structures)) if p is not None and s]
        if keep:
            m.update(
                M.property_errors(
                    np.array([pred[k] for k in keep]),
                    np.array([targets[k] for k in keep]),
                    dm.properties,
                )
            )
        m["_pred"] = pred
    return m


def cmd_evaluate(args: argparse.Namespace) -> dict:
    from domains.crystals.codec import decode
    from domains.crystals.geometry import BondTable

    warnings.filterwarnings("ignore")
    dm = _datamodule(args.config)
    out = Path(args.out)
    (out / "cifs").mkdir(parents=True, exist_ok=True)
    train = dm.train_structures()
    table = BondTable.fit(train, dm.method) if train else BondTable()
    table.save(out / "bond_table.json")
    targets, strings = _read_samples(args.samples, len(dm.properties))

    def decode_all(items, tag, write):
        from tqdm import tqdm

        structs, reasons = [], Counter()
        for k, s in enumerate(tqdm(items, desc=f"decode {tag}")):
            res = decode(s, table, args.time_limit, relax=args.relax)
            structs.append(res.structure)
            if not res.ok:
                reasons[res.reason.split(":")[0]] += 1
            elif write:
                res.structure.to(filename=str(out / "cifs" / f"{k:05d}.cif"))
        return structs, reasons

    structures, reasons = decode_all(strings, "samples", True)
    gen = _sample_metrics(strings, structures, train, dm, args.predictor, targets)
    pred = gen.pop("_pred", None)
    # reference: held-out test crystals through the same pipeline
    test = [(r["slices"], r["props"]) for r, s in zip(dm.records, dm.record_split) if s == "test"]
    test = test[: args.reference_n]
    ref_structs, _ = decode_all([s for s, _ in test], "reference", False)
    ref = _sample_metrics(
        [s for s, _ in test], ref_structs, train, dm, args.predictor, [p for _, p in test]
    )
    ref.pop("_pred", None)
    metrics = {**gen, **{f"reference/{k}": v for k, v in ref.items()}}
    metrics.update({f"decode_fail/{r}": n for r, n in reasons.items()})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    if pred is not None:
        _plot(targets, pred, dm.properties, out / "generated_vs_target.png")
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}


def _plot(targets, pred, names, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4))
    axes = [axes] if len(names) == 1 else axes
    for k, (ax, name) in enumerate(zip(axes, names)):
        pts = [(t[k], p[k]) for t, p in zip(targets, pred) if p is not None]
        if pts:
            x, y = zip(*pts)
            ax.scatter(x, y, s=10, alpha=0.6)
            lo, hi = min(x + y), max(x + y)
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"target {name}")
        ax.set_ylabel(f"predicted {name} of generated")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------ parser


def register(subparsers: argparse._SubParsersAction) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    top = subparsers.add_parser("crystals", help="crystals: SLICES codec and MatterGPT")
    sub = top.add_subparsers(title="crystals commands", metavar="COMMAND")

    def leaf(name: str, help_: str, with_input: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, help=help_, epilog=f"example:\n  {EXAMPLES[name]}", formatter_class=raw
        )
        if with_input:
            p.add_argument("input", nargs="?", help="an item, or a file of many")
            p.add_argument("--input", dest="input_flag", default=None, help="the same, as a flag")
        return p

    p = leaf("encode", "CIF / folder of CIFs / MP-20-style CSV / 'aflow' -> SLICES (TSV)")
    p.add_argument("-o", "--output", default=None, help="TSV file (default stdout)")
    p.add_argument("--method", choices=("econnn", "crystalnn"), default="econnn")
    p.add_argument("--max-atoms", "--max_atoms", type=int, default=64)
    p.add_argument("--skip-log", "--skip_log", default=None, help="JSON lines of skipped records")
    p.set_defaults(func=cmd_encode)

    p = leaf("decode", "SLICES (string or file) -> CIF (file, or folder for many)")
    p.add_argument("-o", "--output", default=None)
    p.add_argument("--table", default=None, help="bond table JSON (`crystals table`)")
    p.add_argument("--relax", choices=("none", "chgnet"), default="none")
    p.add_argument("--time-limit", "--time_limit", type=float, default=10.0)
    p.set_defaults(func=cmd_decode)

    p = leaf("check", "is a SLICES string (or each line of a file) a decodable crystal net?")
    p.set_defaults(func=cmd_check)

    p = leaf("table", "learn the decoder's bond lengths / angles from structures")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--method", choices=("econnn", "crystalnn"), default="econnn")
    p.add_argument("--max-atoms", "--max_atoms", type=int, default=64)
    p.set_defaults(func=cmd_table)

    p = leaf("generate", "sample SLICES for target properties (grammar-constrained)", False)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--config", required=True, help="the training stage's config.yaml")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--target", action="append", help="raw property values 'a,b' (repeatable)")
    p.add_argument("--allow-extrapolation", "--allow_extrapolation", action="store_true")
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--top-k", "--top_k", type=int, default=50)
    p.add_argument("--max-new-tokens", "--max_new_tokens", type=int, default=512)
    p.add_argument("--batch-size", "--batch_size", type=int, default=100)
    p.add_argument("--no-grammar", "--no_grammar", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--out", required=True, help="samples TSV")
    p.set_defaults(func=cmd_generate)

    p = leaf("evaluate", "decode samples, write CIFs, metrics.json and a property plot", False)
    p.add_argument("--samples", required=True)
    p.add_argument("--config", required=True, help="the training stage's config.yaml")
    p.add_argument("--predictor", default=None, help="property predictor checkpoint")
    p.add_argument("--relax", choices=("none", "chgnet"), default="none")
    p.add_argument("--time-limit", "--time_limit", type=float, default=5.0)
    p.add_argument("--reference-n", "--reference_n", type=int, default=100)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_evaluate)
