"""How well each decoder bond-target rule predicts the true bond lengths (no fit at all).

python bench/slices_bond_targets.py --data ../shared/data/crystals/mp20_mini.csv \
    --start 150 --limit 300 --holdout 150 --table-from rest --save-table t.json

For each test row the encoder's bond graph (primitive Niggli cell, EconNN, contacts) is
found and every rule of geometry.bond_targets gives each edge a target; the error is
log(target / true length) with its mean over the structure's edges removed, because the
round trip's StructureMatcher scales the volume and only relative lengths matter. Prints,
per rule, the mean and 90% quantile over rows of the per-row RMS error and how many rows
have an edge off by more than 5% and 10%; --rows FILE writes them per row.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from domains.crystals.cell import reduced_cell  # noqa: E402
from domains.crystals.geometry import (  # noqa: E402
    BOND_TARGETS,
    BondTable,
    bond_targets,
    contact_edges,
)
from domains.crystals.io import read_csv  # noqa: E402
from domains.crystals.neighbors import bond_graph  # noqa: E402
from domains.crystals.slices import SlicesGraph  # noqa: E402

RULES = BOND_TARGETS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--limit", type=int, default=150)
    ap.add_argument("--holdout", type=int, default=0, help="rows [0, N) never enter the table")
    ap.add_argument("--table-from", default="rest", help="'rest' or a saved JSON")
    ap.add_argument("--save-table", default="")
    ap.add_argument("--rows", default="")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    records, _ = read_csv(args.data)
    stop = args.start + args.limit
    test = records[args.start : stop]
    if args.table_from == "rest":
        rest = records[max(args.holdout, 0) : args.start] + records[max(stop, args.holdout) :]
        table = BondTable.fit([r.structure for r in rest], progress=True)
    else:
        table = BondTable.load(args.table_from)
    if args.save_table:
        table.save(args.save_table)
    rows = []
    for rec in tqdm(test, desc="targets"):
        s = reduced_cell(rec.structure)
        info = bond_graph(s)
        g = SlicesGraph(tuple(x.specie.symbol for x in s), info.edges)
        f, m = s.frac_coords, s.lattice.matrix
        true = np.linalg.norm((f[g.edges[:, 1]] + g.edges[:, 2:] - f[g.edges[:, 0]]) @ m, axis=1)
        contact = contact_edges(g, table)
        row = {"id": rec.id, "formula": s.composition.reduced_formula}
        for name in RULES:
            err = np.log(bond_targets(g, table, contact, name) / true)
            err -= err.mean()
            row[name] = (float(np.sqrt((err**2).mean())), float(np.abs(err).max()))
        rows.append(row)
    summary = {}
    for name in RULES:
        rms = np.array([r[name][0] for r in rows])
        mx = np.array([r[name][1] for r in rows])
        summary[name] = {
            "rms_mean": round(float(rms.mean()), 4),
            "rms_q90": round(float(np.quantile(rms, 0.9)), 4),
            "rows_max_over_5pct": int((mx > 0.05).sum()),
            "rows_max_over_10pct": int((mx > 0.10).sum()),
        }
        print(name, summary[name])
    if args.rows:
        with open(args.rows, "w") as fh:
            fh.write("id\tformula\t" + "\t".join(f"{k}_rms\t{k}_max" for k in RULES) + "\n")
            for r in rows:
                vals = "\t".join(f"{r[k][0]:.4f}\t{r[k][1]:.4f}" for k in RULES)
                fh.write(f"{r['id']}\t{r['formula']}\t{vals}\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
