"""Canonical-form stability: the fraction of structures whose SLICES string stays identical
when what users vary is varied, one perturbation at a time and all together.

Perturbations of each structure (--trials random draws of each):
  permutation  random order of the sites
  translation  all atoms shifted by a random vector
  noise        fractional coordinates rounded to 4 decimals plus uniform +/-1e-5 (CIF rounding),
               lattice lengths rounded to 4 decimals
  cell         an equivalent non-reduced cell (a random unimodular basis change, entries <= 3)
  supercell    a random diagonal supercell (1-2 along each axis, not 1x1x1)
  conventional the conventional standard cell (one draw; spglib, symprec 0.1)
  all          permutation + translation + noise + cell, applied together
Also: random relabelling and edge shuffling of the string itself (`canonical()`).

python bench/slices_canonical.py --data ../shared/data/crystals/mp20_mini.csv --limit 2573
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


def conventional(s: Structure, rng: np.random.Generator) -> Structure:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    return SpacegroupAnalyzer(s, symprec=0.1).get_conventional_standard_structure()


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
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--trials", type=int, default=3, help="random draws per perturbation")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    records, _ = read_csv(args.data, limit=args.limit)
    rng = np.random.default_rng(args.seed)
    srng = random.Random(args.seed)
    stable = dict.fromkeys(PERTURBATIONS, 0)
    unstable: dict[str, list[str]] = {k: [] for k in PERTURBATIONS}
    all_ok = string_stable = inexact = supercells = errors = 0
    t = 0.0
    for r in tqdm(records, desc="canonical"):
        s = r.structure
        t0 = time.process_time()
        try:
            ref = encode_info(s)
        except ValueError:
            errors += 1
            continue
        t += time.process_time() - t0
        inexact += not ref.exact_canonical
        supercells += ref.supercell != (1, 1, 1)
        ok_all = True
        for name, fn in PERTURBATIONS.items():
            same = True
            for _ in range(1 if name == "conventional" else args.trials):
                try:
                    same &= encode_info(fn(s, rng)).slices == ref.slices
                except ValueError:
                    same = False
            stable[name] += same
            ok_all &= same
            if not same:
                unstable[name].append(r.id)
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
        "unstable": {k: v[:5] for k, v in unstable.items() if v},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
