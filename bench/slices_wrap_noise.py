"""Wrap-only noise proxy: perturb the symmetrised reduced cell's positions inside their own
symmetry (group-averaged noise, so symmetry stays exact and the bonds are kept), rewrite the
graph in every frame under each wrap rule, and count how often the minimum string changes.
Amplified noise makes the rare wrap flips frequent enough to compare rules.

python bench/slices_wrap_noise.py START STOP NOISE_A DRAWS OUT.jsonl
(rows START..STOP of ../shared/data/crystals/mp20_mini.csv; one JSON line per row: for each
rule [strings changed over the draws, no frame kept offsets within +/-1])
"""

import json
import sys
import warnings

import numpy as np
import spglib

from domains.crystals.canonical import canonicalize
from domains.crystals.cell import equivalent_bases, origin_sites, reduced_cell
from domains.crystals.io import read_csv
from domains.crystals.neighbors import bond_graph
from domains.crystals.slices import SlicesGraph

warnings.filterwarnings("ignore")
TAU = 1e-6


def maxmin(c):
    c = np.asarray(c)

    def rule(g):
        x = g[:, None, :] + c[None, :, None]
        d = np.abs(x - np.rint(x)).min(0)
        idx = np.argmax(d >= d.max(0) - TAU, axis=0)
        return c[idx]

    return rule


def midgap(g):
    out = np.empty(3)
    for a in range(3):
        x = np.sort(np.mod(g[:, a], 1.0))
        gaps = np.diff(np.concatenate([x, [x[0] + 1]]))
        mids = np.mod(x + gaps / 2, 1.0)
        top = gaps.max()
        cand = np.flatnonzero(gaps >= top - TAU)
        dd = np.abs(mids[cand] - (1 - 0.0379))
        dd = np.minimum(dd, 1 - dd)
        m = mids[cand[np.argmin(dd)]]
        out[a] = np.mod(-m, 1.0)
    return out


RULES = {
    "fixed": lambda g: np.full(3, 0.0379),
    "K2": maxmin([0.0379, 0.5343]),
    "K3": maxmin([0.0379, 0.3594, 0.6991]),
    "K4": maxmin([0.0379, 0.2686, 0.508, 0.7796]),
    "K6": maxmin([0.0379, 0.2139, 0.3811, 0.527, 0.6981, 0.8665]),
    "midgap": midgap,
}


def projector(s):
    cell = (s.lattice.matrix, s.frac_coords, [x.specie.Z for x in s])
    sym = spglib.get_symmetry(cell, symprec=1e-4)
    f = s.frac_coords
    maps = []
    for R, t in zip(sym["rotations"], sym["translations"]):
        img = f @ R.T + t
        d = img[:, None, :] - f[None, :, :]
        d -= np.rint(d)
        perm = np.argmin((d**2).sum(-1), axis=1)
        maps.append((R, perm))

    def project(delta):
        out = np.zeros_like(delta)
        for R, perm in maps:
            np.add.at(out, perm, delta @ R.T)
        return out / len(maps)

    return project, len(maps)


cache = {}


def key_of(species, e):
    b = (species, e.tobytes())
    if b not in cache:
        gr, _ = canonicalize(SlicesGraph(species, e))
        cache[b] = tuple(map(tuple, gr.edges.tolist()))
    return cache[b]


def encode_min(f, lat, edges, species, rule):
    best = None
    for m in equivalent_bases(lat):
        minv = np.rint(np.linalg.inv(m.astype(float))).astype(np.int64)
        t = edges[:, 2:] @ minv
        for k in origin_sites(list(species)):
            g = (f - f[k]) @ minv
            sh = np.floor(g + rule(g)).astype(np.int64)
            off = t + sh[edges[:, 1]] - sh[edges[:, 0]]
            if np.abs(off).max(initial=0) > 1:
                continue
            key = key_of(species, np.concatenate([edges[:, :2], off], 1))
            if best is None or key < best:
                best = key
    return best


def main() -> None:
    start, stop, amp = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    draws = int(sys.argv[4])
    recs, _ = read_csv("../shared/data/crystals/mp20_mini.csv", limit=stop)
    with open(sys.argv[5], "w") as out:
        for row in range(start, min(stop, len(recs))):
            r = recs[row]
            cache.clear()
            s = reduced_cell(r.structure)
            edges = bond_graph(s).edges
            species = tuple(x.specie.symbol for x in s)
            project, nops = projector(s)
            rng = np.random.default_rng([7, row])
            inv = np.linalg.inv(s.lattice.matrix)
            deltas = [project(rng.normal(0, amp, (len(s), 3)) @ inv) for _ in range(draws)]
            res = {"id": r.id.rsplit(":", 1)[-1], "n": len(s), "ops": nops}
            for name, rule in RULES.items():
                ref = encode_min(s.frac_coords, s.lattice, edges, species, rule)
                fails = 0
                for d in deltas:
                    got = encode_min(s.frac_coords + d, s.lattice, edges, species, rule)
                    fails += got != ref
                res[name] = [fails, ref is None]
            out.write(json.dumps(res) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
