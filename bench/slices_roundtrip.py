"""SLICES round trip: encode -> decode -> StructureMatcher against the input.

python bench/slices_roundtrip.py --data ../shared/data/crystals/mp20_mini.csv --limit 150

The first --limit rows are the test rows (from row --start); bond-length statistics are
learned from the other rows of the same CSV (--table-from rest; rows below --holdout are
left out of it too, so that a dev set, e.g. --start 150 --limit 300 --holdout 150, learns
from rows no test set uses), from a saved table, or not at all (radii).
Prints strict (ltol 0.2, stol 0.3, angle_tol 5) and loose (0.3, 0.5, 10) match rates over
all test rows (a failure counts as a non-match), mean encode / decode seconds per structure
on one thread, failures by reason; the last line is one JSON object. --rows FILE writes one
TSV line per test row (id, sites, strict, loose, contacts, reason, SLICES) for comparing runs.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # single thread, as the figures are quoted

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402

import numpy as np  # noqa: E402
from pymatgen.analysis.structure_matcher import StructureMatcher  # noqa: E402
from tqdm import tqdm  # noqa: E402

from domains.crystals.codec import decode, encode_info  # noqa: E402
from domains.crystals.geometry import BOND_TARGETS, BondTable, FitOptions  # noqa: E402
from domains.crystals.io import read_csv  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="MP-20-style CSV with a cif column")
    ap.add_argument("--limit", type=int, default=150, help="test rows (N from --start)")
    ap.add_argument("--start", type=int, default=0, help="first test row")
    ap.add_argument(
        "--holdout", type=int, default=0, help="rows [0, N) never enter the learned table"
    )
    ap.add_argument("--relax", choices=["none", "chgnet"], default="none")
    ap.add_argument("--method", choices=["econnn", "crystalnn"], default="econnn")
    ap.add_argument(
        "--table-from", default="rest", help="'rest' (other rows), 'none' (radii) or a JSON"
    )
    ap.add_argument(
        "--time-limit", type=float, default=10.0, help="seconds per decode, relaxation included"
    )
    ap.add_argument("--rows", default="", help="TSV file: one line per test row")
    ap.add_argument("--restarts", type=int, default=None, help="fit starts (FitOptions)")
    ap.add_argument("--jitter", type=float, default=None, help="start jitter (FitOptions)")
    ap.add_argument("--fit-seed", type=int, default=None, help="jitter seed (FitOptions)")
    ap.add_argument("--save-table", default="", help="write the bond table used to this JSON")
    ap.add_argument(
        "--bond-targets", choices=BOND_TARGETS, default=None, help="FitOptions.bond_targets"
    )
    ap.add_argument(
        "--nonbond-quantile", type=float, default=0.05, help="repulsion minima (table fit)"
    )
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    records, skipped = read_csv(args.data)
    stop = args.start + args.limit
    test = records[args.start : stop]
    rest = records[max(args.holdout, 0) : args.start] + records[max(stop, args.holdout) :]
    if args.table_from == "rest":
        table = BondTable.fit(
            [r.structure for r in rest],
            args.method,
            progress=True,
            nonbond_quantile=args.nonbond_quantile,
        )
    elif args.table_from == "none":
        table = BondTable()
    else:
        table = BondTable.load(args.table_from)

    options = FitOptions()
    if args.restarts is not None:
        options.restarts = args.restarts
    if args.jitter is not None:
        options.jitter = args.jitter
    if args.fit_seed is not None:
        options.seed = args.fit_seed
    if args.bond_targets is not None:
        options.bond_targets = args.bond_targets
    if args.save_table:
        table.save(args.save_table)
    strict = StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5)
    loose = StructureMatcher(ltol=0.3, stol=0.5, angle_tol=10)
    n_strict = n_loose = 0
    t_enc = t_dec = t_relax = 0.0
    cpu_enc = cpu_dec = 0.0  # CPU seconds: what one thread costs, whatever the machine's load
    failures: Counter[str] = Counter()
    extended = supercells = 0
    relax_times: list[float] = []
    relax_stopped = relax_skipped = 0
    per_row: list[tuple] = []
    for rec in tqdm(test, desc="round trip"):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            info = encode_info(rec.structure, args.method)
        except ValueError as err:
            t_enc += time.perf_counter() - t0
            failures[f"encode: {err}"] += 1
            per_row.append((rec.id, len(rec.structure), 0, 0, 0, f"encode: {err}", ""))
            continue
        t_enc += time.perf_counter() - t0
        cpu_enc += time.process_time() - c0
        extended += info.n_contacts > 0
        supercells += info.supercell != (1, 1, 1)
        c0 = time.process_time()
        res = decode(info.slices, table, args.time_limit, relax=args.relax, options=options)
        cpu_dec += time.process_time() - c0
        t_dec += res.seconds - res.info.get("relax_seconds", 0.0)
        t_relax += res.info.get("relax_seconds", 0.0)
        if "relax_seconds" in res.info:
            relax_times.append(res.info["relax_seconds"])
        relax_stopped += "relax_stopped" in res.info
        relax_skipped += "relax_skipped" in res.info
        row = (rec.id, len(rec.structure))
        if not res.ok:
            failures[res.reason.split(":")[0]] += 1
            per_row.append((*row, 0, 0, info.n_contacts, res.reason, info.slices))
            continue
        ok_strict = bool(strict.fit(rec.structure, res.structure))
        ok_loose = bool(loose.fit(rec.structure, res.structure))
        n_strict += ok_strict
        n_loose += ok_loose
        per_row.append((*row, int(ok_strict), int(ok_loose), info.n_contacts, "ok", info.slices))
    n = len(test)
    if args.rows:
        with open(args.rows, "w") as fh:
            fh.write("id\tsites\tstrict\tloose\tcontacts\treason\tslices\n")
            fh.writelines("\t".join(map(str, r)) + "\n" for r in per_row)
    out = {
        "data": str(args.data),
        "rows": n,
        "start": args.start,
        "holdout": args.holdout,
        "table_rows": len(rest) if args.table_from == "rest" else None,
        "skipped_rows": len(skipped),
        "method": args.method,
        "relax": args.relax,
        "table_from": args.table_from,
        "nonbond_quantile": args.nonbond_quantile if args.table_from == "rest" else None,
        "fit_options": options.__dict__,
        "strict_match": round(n_strict / n, 4),
        "loose_match": round(n_loose / n, 4),
        "encode_s": round(t_enc / n, 4),
        "decode_s": round(t_dec / n, 4),
        "relax_s": round(t_relax / n, 4),
        "relax_s_median": round(float(np.median(relax_times)), 3) if relax_times else None,
        "relax_s_max": round(max(relax_times), 3) if relax_times else None,
        "relax_stopped_by_time_limit": relax_stopped,
        "relax_skipped_isolated_atoms": relax_skipped,
        "encode_cpu_s": round(cpu_enc / n, 4),
        "decode_cpu_s": round(cpu_dec / n, 4),
        "failures": dict(failures),
        "extended_non_3_periodic": extended,
        "supercell_for_long_bonds": supercells,
    }
    print(
        f"strict {out['strict_match']:.1%}  loose {out['loose_match']:.1%}  "
        f"encode {out['encode_s']} s  decode {out['decode_s']} s  failures {dict(failures)}"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
