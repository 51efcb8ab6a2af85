"""`seqmodels crystals ...`: encode, decode, check, table, generate, evaluate.

Inputs may be one item or a file of many; batch commands continue past bad records and
report them. Handlers return a metrics dict (the recipe runner collects it).
"""

from __future__ import annotations

import argparse
import os
import re
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
    from seqmodels.commands import CLIError

    return CLIError(msg)


def _input(args: argparse.Namespace) -> str:
    value = args.input or args.input_flag
    if not value:
        raise _err("give an input (positional or --input)")
    return value


_FILE_SUFFIXES = (".tsv", ".csv", ".txt", ".cif", ".json", ".slices")


def _slices_items(value: str) -> list[tuple[str, str]]:
    """(id, SLICES) pairs from a string or a file: a CSV with a `slices` column, or lines
    (TSV: id in the first column, SLICES in the last; a `slices` header line is skipped)."""
    from domains.crystals.slices import ELEMENTS

    p = Path(value)
    if not p.is_file():
        first = value.split()[0] if value.split() else ""
        if first not in ELEMENTS and (os.sep in value or value.lower().endswith(_FILE_SUFFIXES)):
            raise _err(f"{value}: no such file (and not a SLICES string)")
        return [("input", value)]
    if p.suffix.lower() == ".csv":
        return _csv_items(p)
    out = []
    for k, line in enumerate(p.read_text(errors="replace").splitlines()):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cols = line.split("\t")
        if k == 0 and cols[-1].strip().lower() == "slices":
            continue  # header
        out.append((cols[0] if len(cols) > 1 else f"{p.name}:line {k + 1}", cols[-1]))
    return out


def _csv_items(p: Path) -> list[tuple[str, str]]:
    import csv

    csv.field_size_limit(sys.maxsize)
    with open(p, newline="", errors="replace") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip().lower(): c for c in reader.fieldnames or []}
        if "slices" not in cols:
            raise _err(f"{p}: no 'slices' column (columns: {reader.fieldnames})")
        key = next((cols[c] for c in ("id", "material_id") if c in cols), None)
        return [
            (str(row[key]) if key else f"{p.name}:row {k}", row[cols["slices"]] or "")
            for k, row in enumerate(reader)
        ]


def _load_table(args: argparse.Namespace):
    from domains.crystals.geometry import BondTable

    if getattr(args, "table", None):
        p = Path(args.table)
        if not p.is_file():
            raise _err(f"{p}: bond table not found (make one with `seqmodels crystals table`)")
        try:
            return BondTable.load(p)
        except (ValueError, TypeError, OSError) as err:  # JSON errors are ValueErrors
            raise _err(f"{p}: not a bond table written by `crystals table` ({err})") from err
    return BondTable()


def _parent(path: str | Path) -> Path:
    """The output path, its folder created."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _all_failed(n_ok: int, n: int, what: str) -> None:
    if n and not n_ok:
        raise _err(f"all {n} {what} failed (reasons above)")


def _file_stem(rid: str) -> str:
    """A file name from a record id (`data.csv:mp-123` -> `mp-123`, `x/a.cif` -> `a`)."""
    stem = rid.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
    stem = re.sub(r"\.cif$", "", stem)
    return re.sub(r"[^A-Za-z0-9._#-]+", "_", stem).strip("._") or "item"


# ------------------------------------------------------------------ codec commands


def cmd_encode(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from domains.crystals.codec import encode_info
    from domains.crystals.io import Skipped, read_any, write_skip_log

    warnings.filterwarnings("ignore")
    src = _input(args)
    try:
        records, skipped = read_any(src, max_atoms=args.max_atoms)
    except (FileNotFoundError, ValueError) as err:
        raise _err(str(err)) from err
    rows, extended = [], 0
    for r in tqdm(records, desc="encode", disable=len(records) < 2):
        try:
            info = encode_info(r.structure, args.method)
        except ValueError as err:
            skipped.append(Skipped(r.id, f"cannot encode: {err}"))
            continue
        extended += info.n_contacts > 0
        rows.append(f"{r.id}\t{info.slices}")
    text = "id\tslices\n" + "".join(row + "\n" for row in rows)
    if args.output:
        _parent(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    for s in skipped:
        print(f"skipped {s.id}: {s.reason}", file=sys.stderr)
    if args.skip_log:
        write_skip_log(skipped, _parent(args.skip_log))
    _all_failed(len(rows), len(rows) + len(skipped), "records")
    return {"encoded": len(rows), "skipped": len(skipped), "extended_non_3_periodic": extended}


def cmd_decode(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from domains.crystals.codec import decode

    warnings.filterwarnings("ignore")
    value = _input(args)
    items = _slices_items(value)
    table = _load_table(args)
    many = len(items) > 1 or Path(value).is_file()
    out = Path(args.output) if args.output else None
    if out and many:
        out.mkdir(parents=True, exist_ok=True)
    elif out:
        _parent(out)
    ok, reasons, used = 0, Counter(), Counter()
    for rid, s in tqdm(items, desc="decode", disable=not many):
        res = decode(s, table, args.time_limit, relax=args.relax)
        if not res.ok:
            reasons[re.split(r"[:(]", res.reason)[0].strip()] += 1
            print(f"{rid}: cannot decode: {res.reason}", file=sys.stderr)
            continue
        ok += 1
        if out is None:
            sys.stdout.write(res.structure.to(fmt="cif"))
        elif many:
            stem = _file_stem(rid)
            used[stem] += 1
            name = stem if used[stem] == 1 else f"{stem}_{used[stem]}"
            res.structure.to(filename=str(out / f"{name}.cif"))
        else:
            res.structure.to(filename=str(out))
    _all_failed(ok, len(items), "decodes")
    return {
        "decoded": ok,
        "failed": sum(reasons.values()),
        **{f"fail/{r}": n for r, n in reasons.items()},
    }


def cmd_check(args: argparse.Namespace) -> dict:
    from domains.crystals.slices import check

    items = _slices_items(_input(args))
    n_ok, reasons = 0, Counter()
    for rid, s in items:
        ok, why = check(s)
        n_ok += ok
        if not ok:
            reasons[why.split(":")[0]] += 1
        print(f"{rid}\t{why}")
    _all_failed(n_ok, len(items), "strings")  # every one invalid: exit non-zero
    return {"valid": n_ok, "invalid": len(items) - n_ok, "validity": n_ok / max(len(items), 1)}


def cmd_table(args: argparse.Namespace) -> dict:
    from domains.crystals.geometry import BondTable
    from domains.crystals.io import read_any

    warnings.filterwarnings("ignore")
    try:
        records, skipped = read_any(_input(args), max_atoms=args.max_atoms)
    except (FileNotFoundError, ValueError) as err:
        raise _err(str(err)) from err
    left_out: list = []
    table = BondTable.fit([r.structure for r in records], args.method, True, left_out)
    for k, why in left_out:
        print(f"left out {records[k].id}: {why}", file=sys.stderr)
    for s in skipped:
        print(f"skipped {s.id}: {s.reason}", file=sys.stderr)
    _all_failed(len(records) - len(left_out), len(records) + len(skipped), "structures")
    table.save(_parent(args.output))
    return {
        "structures": len(records) - len(left_out),
        "skipped": len(skipped) + len(left_out),
        "pairs": len(table.bond),
    }


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
    """Sample under the grammar; rows that still fail check() (cut by the length budget) are
    resampled up to --resample times; strings are written in canonical form."""
    import time

    from domains.crystals.codec import canonical
    from domains.crystals.evaluate import string_uniqueness
    from domains.crystals.slices import check
    from domains.crystals.tokenizer import SlicesGrammar, decode_ids
    from seqmodels.checkpoint import load_module
    from seqmodels.sampling import generate

    dm = _datamodule(args.config)
    model = load_module(args.ckpt).to(args.device)
    targets = _targets(args, dm)
    cond = [dm.normalise(t) for t in targets]
    grammar = SlicesGrammar(dm.vocab, max_atoms=dm.max_atoms, canonical=dm.augment == 0)

    def sample(rows: list[list[float]], seed: int) -> list[str]:
        ids = generate(
            model,
            [[dm.vocab.bos_id]] * len(rows),
            cond=rows,
            # never past the model's positions; a cut sample fails check() and is resampled
            max_new_tokens=min(args.max_new_tokens, model.hparams.get("max_len", 10**9) - 1),
            temperature=args.temperature,
            top_k=args.top_k,
            logits_processor=None if args.no_grammar else grammar,
            seed=seed,
            batch_size=args.batch_size,
            progress=True,
        )
        return [decode_ids(r, dm.vocab) for r in ids]

    t0 = time.perf_counter()
    strings = sample(cond, args.seed)
    raw_valid = [check(s)[0] for s in strings]
    resampled = 0
    for round_ in range(1, args.resample + 1):
        bad = [k for k, s in enumerate(strings) if not check(s)[0]]
        if not bad:
            break
        resampled += len(bad)
        for k, s in zip(bad, sample([cond[k] for k in bad], args.seed + round_)):
            strings[k] = s
    secs = time.perf_counter() - t0
    valid = [check(s)[0] for s in strings]
    # one spelling per crystal graph: duplicates become visible as equal strings
    strings = [canonical(s) if ok else s for s, ok in zip(strings, valid)]
    with open(_parent(args.out), "w") as fh:
        fh.write("\t".join(dm.properties + ["slices"]) + "\n")
        for t, s in zip(targets, strings):
            fh.write("\t".join([*(f"{x:.6g}" for x in t), s]) + "\n")
    return {
        "samples": len(strings),
        "raw_slices_validity": sum(raw_valid) / max(len(strings), 1),
        "slices_validity": sum(valid) / max(len(strings), 1),
        "resampled": resampled,
        "string_uniqueness": string_uniqueness(strings),
        "seconds": secs,
    }


def cmd_evaluate(args: argparse.Namespace) -> dict:
    from domains.crystals.evaluate import SamplesError, evaluate_samples

    warnings.filterwarnings("ignore")
    dm = _datamodule(args.config)
    try:
        metrics = evaluate_samples(
            args.samples,
            dm,
            Path(args.out),
            predictor=args.predictor,
            relax=args.relax,
            time_limit=args.time_limit,
            reference_n=args.reference_n,
            coverage=not args.no_coverage,
            formation=args.formation_energy,
        )
    except SamplesError as err:
        raise _err(str(err)) from err
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}


# ------------------------------------------------------------------ parser


def register(subparsers: argparse._SubParsersAction) -> None:
    from seqmodels.commands import add_flag

    raw = argparse.RawDescriptionHelpFormatter
    top = subparsers.add_parser(
        "crystals",
        help="crystals: SLICES codec and MatterGPT",
        description="Crystal structures <-> SLICES strings, and a property-conditioned GPT "
        "over them (domains/crystals/README.md).",
    )
    sub = top.add_subparsers(title="crystals commands", metavar="COMMAND")
    top.set_defaults(func=lambda _args: top.print_help() or {})

    def leaf(name: str, help_: str, with_input: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, help=help_, epilog=f"example:\n  {EXAMPLES[name]}", formatter_class=raw
        )
        if with_input:
            p.add_argument("input", nargs="?", help="an item, or a file of many")
            p.add_argument("--input", dest="input_flag", default=None, help="the same, as a flag")
        return p

    method_help = (
        "bond finder: econnn (Hoppe's effective coordination, default) or crystalnn (slower)"
    )
    atoms_help = "skip structures with more sites than this (default 64, the vocabulary's limit)"

    p = leaf("encode", "CIF / POSCAR / folder of CIFs / MP-20-style CSV / 'aflow' -> SLICES (TSV)")
    add_flag(p, "-o", "--output", default=None, help="TSV file (default stdout)")
    add_flag(p, "--method", choices=("econnn", "crystalnn"), default="econnn", help=method_help)
    add_flag(p, "--max-atoms", type=int, default=64, help=atoms_help)
    add_flag(p, "--skip-log", default=None, help="JSON lines of skipped records")
    p.set_defaults(func=cmd_encode)

    p = leaf("decode", "SLICES (string, TSV or CSV) -> CIF (file, or folder for many)")
    add_flag(p, "-o", "--output", default=None, help="CIF file, or a folder for a file of many "
             "(one CIF per id); default stdout")  # fmt: skip
    add_flag(p, "--table", default=None, help="bond table JSON (`crystals table`)")
    add_flag(p, "--relax", choices=("none", "chgnet"), default="none",
             help="CHGNet relaxation after the fit (extra `relax`)")  # fmt: skip
    add_flag(p, "--time-limit", type=float, default=10.0, help="seconds per structure (default 10)")
    p.set_defaults(func=cmd_decode)

    p = leaf("check", "is a SLICES string (or each line of a TSV / row of a CSV) a crystal net?")
    p.set_defaults(func=cmd_check)

    p = leaf("table", "learn the decoder's bond lengths / angles from structures")
    add_flag(p, "-o", "--output", required=True, help="bond table JSON")
    add_flag(p, "--method", choices=("econnn", "crystalnn"), default="econnn", help=method_help)
    add_flag(p, "--max-atoms", type=int, default=64, help=atoms_help)
    p.set_defaults(func=cmd_table)

    p = leaf("generate", "sample SLICES for target properties (grammar-constrained)", False)
    add_flag(p, "--ckpt", required=True, help="the LM checkpoint (.ckpt)")
    add_flag(p, "--config", required=True, help="the training stage's config.yaml")
    add_flag(p, "--n", type=int, default=100, help="samples (default 100)")
    add_flag(p, "--target", action="append", help="raw property values 'a,b' (repeatable)")
    add_flag(p, "--allow-extrapolation", action="store_true",
             help="sample for targets outside the training range")  # fmt: skip
    add_flag(p, "--temperature", type=float, default=0.9)
    add_flag(p, "--top-k", type=int, default=50)
    add_flag(p, "--max-new-tokens", type=int, default=512)
    add_flag(p, "--batch-size", type=int, default=100)
    add_flag(p, "--resample", type=int, default=3,
             help="rounds of resampling rows that fail check() (default 3)")  # fmt: skip
    add_flag(p, "--no-grammar", action="store_true", help="sample without the grammar")
    add_flag(p, "--seed", type=int, default=0)
    add_flag(p, "--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    add_flag(p, "--out", required=True, help="samples TSV")
    p.set_defaults(func=cmd_generate)

    p = leaf("evaluate", "decode samples, write CIFs, metrics.json and a property plot", False)
    add_flag(p, "--samples", required=True, help="samples TSV from `crystals generate`")
    add_flag(p, "--config", required=True, help="the training stage's config.yaml")
    add_flag(p, "--predictor", default=None,
             help="property predictor checkpoint (a string-reading proxy)")  # fmt: skip
    add_flag(p, "--relax", choices=("none", "chgnet"), default="none")
    add_flag(p, "--time-limit", type=float, default=5.0, help="seconds per decode (default 5)")
    add_flag(p, "--reference-n", type=int, default=100, help="held-out test crystals (default 100)")
    add_flag(p, "--no-coverage", action="store_true",
             help="skip COV-R / COV-P (CrystalNN fingerprints cost ~0.5 s per structure)")  # fmt: skip
    add_flag(p, "--formation-energy", action="store_true",
             help="CHGNet formation energy of every structurally valid decode, relaxation "
                  "bounded by --time-limit, CHGNet elemental references (keys chgnet/..., a "
                  "CHGNet-model figure; extra `relax`)")  # fmt: skip
    add_flag(p, "--out", required=True, help="output folder")
    p.set_defaults(func=cmd_evaluate)
