"""Canonical-form stability: the fraction of structures whose SLICES string stays identical
when what users vary is varied, one perturbation at a time and all together.

Perturbations of each structure (--trials random draws of each):
  permutation  random order of the sites
  translation  all atoms shifted by a random vector
  noise        fractional coordinates rounded to 4 decimals plus uniform +/-1e-5 (CIF rounding),
               lattice lengths rounded to 4 decimals
  cell         an equivalent non-reduced cell (a random unimodular basis change, entries <= 3)
  supercell    a random diagonal supercell (1-2 along each axis, not 1x1x1)
  conventional the conventional standard cell (one draw; pymatgen/spglib at symprec 0.01 A,
               the encoder's symmetrisation tolerance)
Reported apart, not counted in "every perturbation": conventional_0.1, the conventional cell
at pymatgen's usual symprec 0.1 A. spglib idealises the positions to the symmetry found, which
moves atoms of pseudo-symmetric crystals by up to 0.1 A and can raise the space group (a
P3_221 crystal becomes R-3m with a third of the primitive cell): a distortion beyond the
encoder's 0.05 A primitive tolerance, i.e. another crystal as far as the string goes.
  all          permutation + translation + noise + cell, applied together
Also: random relabelling and edge shuffling of the string itself (`canonical()`).

python bench/slices_canonical.py --data ../shared/data/crystals/mp20_mini.csv --limit 2573
python bench/slices_canonical.py --data ../shared/data/crystals/mp20_mini.csv --ids mp-20347,mp-28688

Each structure's draws come from its own seed (--seed and its row number), so --ids reruns
exactly the draws of a full run. The JSON reports every failing id (per perturbation and
all together); --failures FILE writes one JSON line per failed draw with both strings.
The last line is one JSON object.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from pymatgen.core import Lattice, Structure  # noqa: E402
from tqdm import tqdm  # noqa: E402

from domains.crystals.codec import canonical, encode_info  # noqa: E402
from domains.crystals.data import permuted  # noqa: E402
from domains.crystals.io import read_csv  # noqa: E402


def permutation(s: Structure, rng: np.random.Generator) -> Structure:
    order = rng.permutation(len(s))
    return Structure(s.lattice, [s[i].specie for i in order], s.frac_coords[order])


def translation(s: Structure, rng: np.random.Generator) -> Structure:
    return Structure(s.lattice, s.species, s.frac_coords + rng.random(3))


def noise(s: Structure, rng: np.random.Generator) -> Structure:
    f = np.round(s.frac_coords, 4) + rng.uniform(-1e-5, 1e-5, size=(len(s), 3))
    a, b, c = np.round(s.lattice.abc, 4)
    lat = Lattice.from_parameters(a, b, c, *np.round(s.lattice.angles, 4))
    return Structure(lat, s.species, f)


def random_unimodular(rng: np.random.Generator) -> np.ndarray:
    while True:
        m = np.eye(3, dtype=int)
        for _ in range(3):  # a few random shears: always det 1
            i, j = rng.choice(3, 2, replace=False)
            e = np.eye(3, dtype=int)
            e[i, j] = rng.integers(-2, 3)
            m = m @ e
        if 0 < np.abs(m).max() <= 3 and not (m == np.eye(3)).all():
            return m


def cell(s: Structure, rng: np.random.Generator) -> Structure:
    m = random_unimodular(rng)
    lat = Lattice(m @ s.lattice.matrix)
    return Structure(lat, s.species, s.cart_coords, coords_are_cartesian=True)


def supercell(s: Structure, rng: np.random.Generator) -> Structure:
    while True:
        k = rng.integers(1, 3, size=3)
        if k.prod() > 1:
            return s * k.tolist()


def conventional(s: Structure, rng: np.random.Generator, symprec: float = 0.01) -> Structure:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    return SpacegroupAnalyzer(s, symprec=symprec).get_conventional_standard_structure()


def conventional_idealised(s: Structure, rng: np.random.Generator) -> Structure:
    return conventional(s, rng, symprec=0.1)


def everything(s: Structure, rng: np.random.Generator) -> Structure:
    return permutation(noise(translation(cell(s, rng), rng), rng), rng)


PERTURBATIONS = {
    "permutation": permutation,
    "translation": translation,
    "noise": noise,
    "cell": cell,
    "supercell": supercell,
    "conventional": conventional,
    "all": everything,
    "conventional_0.1": conventional_idealised,
}
APART = {"conventional_0.1"}  # reported, not part of "stable under every perturbation"
ONE_DRAW = {"conventional", "conventional_0.1"}  # deterministic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--trials", type=int, default=3, help="random draws per perturbation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ids", default="", help="comma-separated ids: only these rows")
    ap.add_argument("--failures", default="", help="JSONL file: one line per failed draw")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    wanted = {x for x in args.ids.split(",") if x}
    records, _ = read_csv(args.data, limit=None if wanted else args.limit)
    # ids are "file:material_id"; either form selects a row
    rows = [
        (k, r)
        for k, r in enumerate(records)
        if not wanted or r.id in wanted or r.id.rsplit(":", 1)[-1] in wanted
    ]
    if not rows:
        raise SystemExit(f"no rows of {args.data} selected (--ids {args.ids!r})")
    records = [r for _, r in rows]
    fail_log = open(args.failures, "w") if args.failures else None  # noqa: SIM115
    stable = dict.fromkeys(PERTURBATIONS, 0)
    unstable: dict[str, list[str]] = {k: [] for k in PERTURBATIONS}
    all_ok = string_stable = inexact = supercells = errors = 0
    t = 0.0
    for row, r in tqdm(rows, desc="canonical"):
        s = r.structure
        rng = np.random.default_rng([args.seed, row])  # per row: --ids reproduces a full run
        srng = random.Random(args.seed * 1_000_003 + row)
        t0 = time.process_time()
        try:
            ref = encode_info(s)
        except ValueError:
            errors += 1
            unstable.setdefault("encode_error", []).append(r.id.removeprefix(f"{args.data}:"))
            continue
        t += time.process_time() - t0
        inexact += not ref.exact_canonical
        supercells += ref.supercell != (1, 1, 1)
        ok_all = True
        for name, fn in PERTURBATIONS.items():
            same = True
            for _ in range(1 if name in ONE_DRAW else args.trials):
                try:
                    got = encode_info(fn(s, rng)).slices
                except ValueError as err:
                    got = f"error: {err}"
                if got != ref.slices:
                    same = False
                    if fail_log:
                        rec = {"id": r.id, "perturbation": name, "ref": ref.slices, "got": got}
                        fail_log.write(json.dumps(rec) + "\n")
                        fail_log.flush()
            stable[name] += same
            ok_all &= same or name in APART
            if not same:
                unstable[name].append(r.id.removeprefix(f"{args.data}:"))
        all_ok += ok_all
        string_stable += all(
            canonical(permuted(ref.slices, srng)) == ref.slices for _ in range(args.trials)
        )
    n = len(records)
    out = {
        "data": args.data,
        "structures": n,
        "trials": args.trials,
        "encode_errors": errors,
        **{f"stable/{k}": round(v / n, 4) for k, v in stable.items()},
        "stable_under_every_perturbation": round(all_ok / n, 4),
        "string_relabel_stability": round(string_stable / n, 4),
        "search_cap_reached": inexact,
        "supercell_fallbacks": supercells,
        "encode_cpu_s": round(t / max(n - errors, 1), 4),
        "unstable": {k: v for k, v in unstable.items() if v},
        "failing_ids": sorted({i for k, v in unstable.items() if k not in APART for i in v}),
    }
    if fail_log:
        fail_log.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
