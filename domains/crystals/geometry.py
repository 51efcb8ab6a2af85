"""From a SLICES graph to coordinates: barycentric placement, metric fit, scipy refinement.

Edge offsets are in the crystal's own lattice basis, so the barycentric placement is solved
directly in fractional coordinates (a Laplacian system with one site fixed), every bond
length is then linear in the metric tensor G (d^2 = D^T G D), which gives the lattice by
linear least squares, and a L-BFGS fit of bond lengths, non-bonded repulsion and bond
angles (all targets learned per element pair / centre from training structures, with
element radii as the fallback) finishes the geometry.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure
from pymatgen.core.periodic_table import Element
from scipy.optimize import minimize

from domains.crystals.cell import wrapped
from domains.crystals.neighbors import bond_graph, can_change_periodicity
from domains.crystals.slices import SlicesGraph, adjacency, periodicity
from domains.crystals.valence import B_BV, network_valences, oxidation_states


class DecodeTimeout(RuntimeError):
    """The per-structure time limit was reached."""


def _radius(symbol: str) -> float:
    el = Element(symbol)
    r = el.atomic_radius or el.atomic_radius_calculated or 1.5
    return float(r)


def _pair(a: str, b: str) -> str:
    return "-".join(sorted((a, b)))


@dataclass
class BondTable:
    """Geometry targets learned from training structures; element radii where unseen."""

    bond: dict[str, float] = field(default_factory=dict)  # "A-B" -> median bond length
    bond_cn: dict[str, float] = field(default_factory=dict)  # "A:cn-B:cn" -> median
    nonbond: dict[str, float] = field(default_factory=dict)  # "A-B" -> low quantile of contacts
    angles: dict[str, list[float]] = field(default_factory=dict)  # "C:cn" / "*:cn" -> cos modes
    # the contacts the encoder adds to a bond graph that is not 3-periodic (layers, chains,
    # molecules), learned apart from the bonds: their length per "A:cn-B:cn" key and per
    # element pair, and which share of a key's / pair's edges are such contacts
    contact: dict[str, float] = field(default_factory=dict)
    contact_cn: dict[str, float] = field(default_factory=dict)
    contact_share: dict[str, float] = field(default_factory=dict)
    contact_share_pair: dict[str, float] = field(default_factory=dict)
    # bond valences (valence.py): per cation-anion pair the R0 of r = R0 - b ln s fitted to
    # the training bonds' lengths and network valences s
    bv_r0: dict[str, float] = field(default_factory=dict)

    def bond_length(self, a: str, cna: int, b: str, cnb: int) -> float:
        key = _cn_key(a, cna, b, cnb)
        if key in self.bond_cn:
            return self.bond_cn[key]
        return self.bond.get(_pair(a, b), _radius(a) + _radius(b))

    def contact_length(self, a: str, cna: int, b: str, cnb: int) -> float:
        key = _cn_key(a, cna, b, cnb)
        if key in self.contact_cn:
            return self.contact_cn[key]
        if _pair(a, b) in self.contact:
            return self.contact[_pair(a, b)]
        return max(self.min_distance(a, b), self.bond_length(a, cna, b, cnb))

    def contact_probability(self, a: str, cna: int, b: str, cnb: int) -> float:
        key = _cn_key(a, cna, b, cnb)
        if key in self.contact_share:
            return self.contact_share[key]
        return self.contact_share_pair.get(_pair(a, b), 0.0)

    def min_distance(self, a: str, b: str) -> float:
        if _pair(a, b) in self.nonbond:
            return self.nonbond[_pair(a, b)]
        return 1.1 * self.bond.get(_pair(a, b), _radius(a) + _radius(b))

    def angle_modes(self, centre: str, cn: int, a: str, b: str) -> list[float]:
        a, b = sorted((a, b))
        for key in (f"{centre}:{cn}:{a}:{b}", f"{centre}:{cn}", f"*:{cn}"):
            if key in self.angles:
                return self.angles[key]
        return []

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.__dict__, indent=0, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> BondTable:
        return cls(**json.loads(Path(path).read_text()))

    @classmethod
    def fit(
        cls,
        structures,
        method: str = "econnn",
        progress: bool = False,
        skipped: list | None = None,
        nonbond_quantile: float = 0.05,
    ) -> BondTable:
        """Learn bond lengths, contact distances and angle modes from structures' bond graphs.

        A structure whose bond graph cannot be made 3-periodic is left out; its index and the
        reason are appended to `skipped` when given."""
        bond, bond_cn, nonbond = defaultdict(list), defaultdict(list), defaultdict(list)
        contact, contact_cn = defaultdict(list), defaultdict(list)
        n_key, n_pair = defaultdict(int), defaultdict(int)
        ang, ang_cn, ang_pair = defaultdict(list), defaultdict(list), defaultdict(list)
        bv_r0 = defaultdict(list)
        it = structures
        if progress:
            from tqdm import tqdm

            it = tqdm(structures, desc="learning bond table")
        for k, s in enumerate(it):
            s = wrapped(s)
            try:
                info = bond_graph(s, method)
            except ValueError as err:
                if skipped is not None:
                    skipped.append((k, str(err)))
                continue
            edges, is_contact = info.edges, info.contact
            if len(edges) == 0:
                continue
            sp = [site.specie.symbol for site in s]
            deg = np.bincount(edges[:, :2].ravel(), minlength=len(s))
            f, m = s.frac_coords, s.lattice.matrix
            vec = (f[edges[:, 1]] + edges[:, 2:] - f[edges[:, 0]]) @ m
            lengths = np.linalg.norm(vec, axis=1)
            for (i, j), d, c in zip(edges[:, :2].tolist(), lengths.tolist(), is_contact):
                key, pair = _cn_key(sp[i], deg[i], sp[j], deg[j]), _pair(sp[i], sp[j])
                n_key[key] += 1
                n_pair[pair] += 1
                (contact if c else bond)[pair].append(d)
                (contact_cn if c else bond_cn)[key].append(d)
            oxi = oxidation_states(sp)
            sv = network_valences(len(s), sp, edges, oxi, skip=is_contact)
            for (i, j), d, v in zip(edges[:, :2].tolist(), lengths.tolist(), sv.tolist()):
                if np.isfinite(v):
                    bv_r0[_pair(sp[i], sp[j])].append(d + B_BV * np.log(v))
            _collect_contacts(s, edges, sp, nonbond)
            for k, a, b, cos in _angles(len(s), edges, vec):
                ang[f"{sp[k]}:{deg[k]}"].append(cos)
                a, b = sorted((sp[a], sp[b]))
                ang_pair[f"{sp[k]}:{deg[k]}:{a}:{b}"].append(cos)
                ang_cn[f"*:{deg[k]}"].append(cos)
        table = cls(
            bond={k: float(np.median(v)) for k, v in bond.items()},
            bond_cn={k: float(np.median(v)) for k, v in bond_cn.items() if len(v) >= 3},
            nonbond={
                k: float(np.quantile(v, nonbond_quantile))
                for k, v in nonbond.items()
                if len(v) >= 3
            },
            contact={k: float(np.median(v)) for k, v in contact.items()},
            contact_cn={k: float(np.median(v)) for k, v in contact_cn.items() if len(v) >= 3},
            contact_share={k: len(contact_cn.get(k, ())) / c for k, c in n_key.items() if c >= 3},
            contact_share_pair={
                k: len(contact.get(k, ())) / c for k, c in n_pair.items() if c >= 3
            },
            bv_r0={k: float(np.median(v)) for k, v in bv_r0.items() if len(v) >= 3},
        )
        for src in (ang, ang_cn, ang_pair):
            for k, v in src.items():
                if len(v) >= 6:
                    table.angles[k] = _modes(np.asarray(v))
        return table


def _cn_key(a: str, cna: int, b: str, cnb: int) -> str:
    return "-".join(sorted((f"{a}:{int(cna)}", f"{b}:{int(cnb)}")))


def contact_edges(g: SlicesGraph, table: BondTable) -> np.ndarray:
    """(E,) bool: the edges of a string taken for the encoder's contacts, not bonds.

    The string does not mark them, so the decoder guesses from the training rows (an edge
    whose "A:cn-B:cn" key, else element pair, was a contact more often than a bond) and keeps
    only a guess the encoder could have made: each contact must still change the periodicity
    of the bonds left (`neighbors.can_change_periodicity`, the encoder's own rule), and those
    bonds must not be connected and 3-periodic already (or the encoder adds no contact)."""
    deg, sp, e = g.degrees(), g.species, g.edges
    prob = np.array(
        [table.contact_probability(sp[i], deg[i], sp[j], deg[j]) for i, j in e[:, :2].tolist()]
    )
    cand = prob > 0.5
    while cand.any():
        useful = can_change_periodicity(g.n_sites, e[~cand], e[cand])
        if useful.all():
            break
        cand[np.flatnonzero(cand)[~useful]] = False
    if not cand.any() or periodicity(g.n_sites, e[~cand]) == (1, 3):
        return np.zeros(len(e), dtype=bool)
    return cand


BOND_TARGETS = ("table", "bv_r0")


def bond_targets(
    g: SlicesGraph,
    table: BondTable,
    contact: np.ndarray | None = None,
    mode: str = "bv_r0",
) -> np.ndarray:
    """(E,) target length of each edge of a string.

    "table": the learned median per "A:cn-B:cn" key (else element pair, else radii);
    contacts (`contact`) get the contact lengths. "bv_r0" puts the cation-anion bonds whose
    network valence s exists (valence.py) at R0(pair) - b ln s instead, R0 fitted on the
    training bonds. (Measured and dropped, README "Round trip": R0 per pair of oxidation
    states, a valence correction of the key's median, half the change.)"""
    if mode not in BOND_TARGETS:
        raise ValueError(f"unknown bond targets {mode!r}: use one of {BOND_TARGETS}")
    deg, sp, e = g.degrees(), g.species, g.edges
    if contact is None:
        contact = np.zeros(len(e), dtype=bool)
    out = np.array(
        [
            (table.contact_length if c else table.bond_length)(sp[i], deg[i], sp[j], deg[j])
            for (i, j), c in zip(e[:, :2].tolist(), contact)
        ]
    )
    if mode == "table" or len(e) == 0:
        return out
    oxi = oxidation_states(sp)
    sv = network_valences(g.n_sites, sp, e, oxi, skip=contact)
    for k, ((i, j), v) in enumerate(zip(e[:, :2].tolist(), sv.tolist())):
        r0 = table.bv_r0.get(_pair(sp[i], sp[j]))
        if np.isfinite(v) and r0 is not None:
            out[k] = r0 - B_BV * np.log(v)
    return out


def _collect_contacts(s: Structure, edges: np.ndarray, sp: list[str], out) -> None:
    """Shortest non-bonded distance per element pair and site pair in one structure."""
    ci, pi, img, dist = s.get_neighbor_list(5.0, exclude_self=True)
    bonded = {(i, j, *t) for i, j, *t in edges.tolist()}
    bonded |= {(j, i, -t[0], -t[1], -t[2]) for i, j, *t in edges.tolist()}
    img = np.rint(img).astype(int)
    best: dict[tuple[int, int], float] = {}
    for i, j, t, d in zip(ci.tolist(), pi.tolist(), img.tolist(), dist.tolist()):
        if (i, j, *t) in bonded or i > j:
            continue
        if d < best.get((i, j), np.inf):
            best[(i, j)] = d
    for (i, j), d in best.items():
        out[_pair(sp[i], sp[j])].append(d)


def _angles(n: int, edges: np.ndarray, vec: np.ndarray):
    """(centre, end a, end b, cos) for every pair of bonds at each site (cartesian vec)."""
    inc: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(n)]
    for e, (i, j) in enumerate(edges[:, :2].tolist()):
        inc[i].append((j, vec[e]))
        inc[j].append((i, -vec[e]))
    for k in range(n):
        if len(inc[k]) < 2:
            continue
        ends = [a for a, _ in inc[k]]
        u = np.asarray([v for _, v in inc[k]])
        u = u / np.linalg.norm(u, axis=1, keepdims=True)
        c = u @ u.T
        for p, q in zip(*np.triu_indices(len(u), 1)):
            yield k, ends[p], ends[q], float(c[p, q])


def _modes(cos: np.ndarray, bin_deg: float = 2.0, sigma_deg: float = 4.0) -> list[float]:
    """Peaks of the smoothed angle histogram holding >= 5% of the angles, as cosines."""
    ang = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    edges = np.arange(0, 180 + bin_deg, bin_deg)
    h, _ = np.histogram(ang, edges)
    centres = 0.5 * (edges[1:] + edges[:-1])
    kern = np.exp(-0.5 * ((centres[:, None] - centres[None, :]) / sigma_deg) ** 2)
    sm = kern @ h
    peaks = [
        k
        for k in range(len(sm))
        if sm[k] > 0 and sm[k] >= sm[max(k - 1, 0)] and sm[k] >= sm[min(k + 1, len(sm) - 1)]
    ]
    out = []
    for k in peaks:
        mass = h[np.abs(centres - centres[k]) <= 2 * sigma_deg].sum() / len(ang)
        if mass >= 0.05:
            out.append(float(np.cos(np.radians(centres[k]))))
    return out


# ---------------------------------------------------------------- placement and fitting


def barycentric(g: SlicesGraph) -> np.ndarray:
    """Fractional coordinates minimising sum |x_j + t_ij - x_i|^2 with site 0 at the origin."""
    n = g.n_sites
    lap = np.zeros((n, n))
    rhs = np.zeros((n, 3))
    i, j, t = g.edges[:, 0], g.edges[:, 1], g.edges[:, 2:].astype(float)
    np.add.at(lap, (i, i), 1.0)
    np.add.at(lap, (j, j), 1.0)
    np.add.at(lap, (i, j), -1.0)
    np.add.at(lap, (j, i), -1.0)
    # setting d/dx_j of sum |x_j + t - x_i|^2 to zero: (L x)_j = sum (x_j - x_i) = -sum t, so
    # b_j -= t and b_i += t (the signs were the other way round until 2026-12-02, which put
    # every start at x_j - x_i = +mean(t), bond vectors of up to 2 cells, for the fit to undo)
    np.add.at(rhs, i, t)
    np.add.at(rhs, j, -t)
    x = np.zeros((n, 3))
    if n > 1:
        x[1:] = np.linalg.solve(lap[1:, 1:], rhs[1:])
    return x


def metric_lattice(x: np.ndarray, g: SlicesGraph, targets: np.ndarray) -> np.ndarray:
    """Lattice rows from the metric tensor fitted by linear least squares to bond lengths."""
    d = x[g.edges[:, 1]] + g.edges[:, 2:] - x[g.edges[:, 0]]
    a = np.stack(
        [d[:, 0] ** 2, d[:, 1] ** 2, d[:, 2] ** 2, 2 * d[:, 0] * d[:, 1],
         2 * d[:, 0] * d[:, 2], 2 * d[:, 1] * d[:, 2]],
        axis=1,
    )  # fmt: skip
    w = 1.0 / targets**2  # relative errors
    sol = np.linalg.lstsq(a * w[:, None], targets**2 * w, rcond=None)[0]
    gmat = np.array([[sol[0], sol[3], sol[4]], [sol[3], sol[1], sol[5]], [sol[4], sol[5], sol[2]]])
    vals, vecs = np.linalg.eigh(gmat)
    floor = max(vals.max(), np.mean(targets) ** 2) * 0.05  # keep G positive definite
    vals = np.maximum(vals, floor)
    gmat = (vecs * vals) @ vecs.T
    return np.linalg.cholesky(gmat)


def _scatter(idx: np.ndarray, vals: np.ndarray, n: int) -> np.ndarray:
    return np.stack([np.bincount(idx, vals[:, k], minlength=n) for k in range(3)], axis=1)


@dataclass
class _Terms:
    n: int
    pi: np.ndarray  # pair terms: i, j, offsets, target, weight, one-sided flag
    pj: np.ndarray
    pt: np.ndarray
    target: np.ndarray
    weight: np.ndarray
    one_sided: np.ndarray
    ak: np.ndarray  # angle terms: centre, ends and their offsets, candidate cosines
    aa: np.ndarray
    ta: np.ndarray
    ab: np.ndarray
    tb: np.ndarray
    modes: np.ndarray  # (A, K) with nan padding
    w_angle: float
    deadline: float


def _energy(p: np.ndarray, tm: _Terms) -> tuple[float, np.ndarray]:
    if time.perf_counter() > tm.deadline:
        raise DecodeTimeout("decode time limit reached")
    n = tm.n
    x = p[: 3 * n].reshape(n, 3)
    m = p[3 * n :].reshape(3, 3)
    gx = np.zeros((n, 3))
    d_pair = x[tm.pj] + tm.pt - x[tm.pi]
    v = d_pair @ m
    dist = np.sqrt((v * v).sum(1) + 1e-12)
    r = (dist - tm.target) / tm.target
    r = np.where(tm.one_sided, np.minimum(r, 0.0), r)
    e = float((tm.weight * r * r).sum())
    gv = (2 * tm.weight * r / tm.target / dist)[:, None] * v
    gd = gv @ m.T
    gx += _scatter(tm.pj, gd, n) - _scatter(tm.pi, gd, n)
    gm = d_pair.T @ gv
    if len(tm.ak):
        d1 = x[tm.aa] + tm.ta - x[tm.ak]
        d2 = x[tm.ab] + tm.tb - x[tm.ak]
        u, w = d1 @ m, d2 @ m
        nu = np.sqrt((u * u).sum(1) + 1e-12)
        nw = np.sqrt((w * w).sum(1) + 1e-12)
        cos = (u * w).sum(1) / (nu * nw)
        diff = cos[:, None] - tm.modes
        k = np.nanargmin(np.abs(diff), axis=1)
        r = diff[np.arange(len(cos)), k]
        e += tm.w_angle * float((r * r).sum())
        gc = 2 * tm.w_angle * r
        gu = gc[:, None] * (w / (nu * nw)[:, None] - cos[:, None] * u / (nu * nu)[:, None])
        gw = gc[:, None] * (u / (nu * nw)[:, None] - cos[:, None] * w / (nw * nw)[:, None])
        g1, g2 = gu @ m.T, gw @ m.T
        gx += _scatter(tm.aa, g1, n) + _scatter(tm.ab, g2, n) - _scatter(tm.ak, g1 + g2, n)
        gm += d1.T @ gu + d2.T @ gw
    return e, np.concatenate([gx.ravel(), gm.ravel()])


def _contacts(x, m, g: SlicesGraph, rmin: np.ndarray, scale: float = 1.3):
    """Non-bonded (i, j, image) pairs closer than scale * their minimum distance."""
    n = g.n_sites
    xw = x - np.floor(x)
    shift = x - xw  # keep offsets relative to the unwrapped coordinates
    vol = abs(np.linalg.det(m))
    spacing = vol / np.linalg.norm(np.cross(m[[1, 2, 0]], m[[2, 0, 1]]), axis=1)
    reach = np.minimum(np.ceil(scale * rmin.max() / spacing).astype(int), 3)
    rng = [np.arange(-r, r + 1) for r in reach]
    imgs = np.stack(np.meshgrid(*rng, indexing="ij"), -1).reshape(-1, 3)
    ii, jj = np.triu_indices(n)
    d = xw[jj][:, None, :] + imgs[None] - xw[ii][:, None, :]
    dist = np.linalg.norm(d @ m, axis=2)
    cut = scale * rmin[ii, jj][:, None]
    pi_, ki = np.nonzero(dist < cut)
    i, j, t = ii[pi_], jj[pi_], imgs[ki]
    # back to the unwrapped frame: x_j + t' - x_i == xw_j + t - xw_i
    t = t - shift[j] + shift[i]
    keep = ~((i == j) & ~t.any(1))
    i, j, t = i[keep], j[keep], t[keep]
    bonded = {(a, b, *o) for a, b, *o in g.edges.tolist()}
    bonded |= {(b, a, -o[0], -o[1], -o[2]) for a, b, *o in g.edges.tolist()}
    mask = np.array([(a, b, *o) not in bonded for a, b, o in zip(i, j, t.tolist())], bool)
    # a self pair (i, i, t) also appears as (i, i, -t): keep one orientation
    self_dup = (i == j) & (np.array([tuple(o) < (0, 0, 0) for o in t.tolist()], bool))
    mask &= ~self_dup
    return i[mask], j[mask], t[mask].astype(float), rmin[i[mask], j[mask]]


def _angle_terms(g: SlicesGraph, table: BondTable, deg: np.ndarray):
    inc = adjacency(g.n_sites, g.edges)
    rows, modes = [], []
    sp = g.species
    for k, nb in enumerate(inc):
        for p in range(len(nb)):
            for q in range(p + 1, len(nb)):
                mk = table.angle_modes(sp[k], int(deg[k]), sp[nb[p][0]], sp[nb[q][0]])
                if mk:
                    rows.append((k, nb[p][0], *nb[p][1], nb[q][0], *nb[q][1]))
                    modes.append(mk)
    if not rows:
        z = np.zeros(0, dtype=np.int64)
        return z, z, np.zeros((0, 3)), z, np.zeros((0, 3)), np.zeros((0, 1))
    r = np.array(rows, dtype=np.int64)
    k = max(len(mm) for mm in modes)
    mat = np.full((len(modes), k), np.nan)
    for a, mm in enumerate(modes):
        mat[a, : len(mm)] = mm
    return r[:, 0], r[:, 1], r[:, 2:5].astype(float), r[:, 5], r[:, 6:9].astype(float), mat


@dataclass
class FitOptions:
    w_repulsion: float = 1.0
    w_angle: float = 0.01
    rounds: int = 3
    maxiter: int = 150
    jitter: float = 0.05
    seed: int = 0
    # starts from differently jittered barycentric placements, the lowest final energy wins:
    # one start's minimum depends on the string's site labels and basis (3 of 9 round-trip
    # rows lost to the canonical frame matched under most relabellings). Round-trip bench
    # after the barycentric sign fix, strict / loose over 3 jitter seeds: 4 starts 86.5 /
    # 94.2%, 1 start 85.8 / 94.2% (domains/crystals/README.md). 4x the fit.
    restarts: int = 4
    # bond_targets(): "bv_r0" (bond valences where they apply, else the learned table) won
    # on the dev rows 150-449 (table learned from rows 450+): strict 87.3 / 86.7% ->
    # 88.0 / 87.7%, loose 92.7 / 92.7% -> 94.0 / 94.0% at jitter seeds 0 / 1; on the first
    # 150 rows 86.0 / 86.0% strict, 93.3 / 93.3% loose against 86.0 / 86.7, 94.7 / 94.0%
    # for "table" (domains/crystals/README.md)
    bond_targets: str = "bv_r0"


class _Problem:
    """The fit of one graph: fixed bond and angle terms, contacts refreshed per round."""

    def __init__(self, g: SlicesGraph, table: BondTable, opt: FitOptions, deadline: float):
        self.g, self.opt, self.deadline = g, opt, deadline
        deg = g.degrees()
        sp = g.species
        self.contact = contact_edges(g, table)
        self.targets = bond_targets(g, table, self.contact, opt.bond_targets)
        self.rmin = np.array([[table.min_distance(a, b) for b in sp] for a in sp])
        self.angles = _angle_terms(g, table, deg)

    def terms(self, x: np.ndarray, m: np.ndarray, w_angle: float) -> _Terms:
        g, opt = self.g, self.opt
        ci, cj, ct, cr = _contacts(x, m, g, self.rmin)
        nb = len(self.targets)
        ak, aa, ta, ab, tb, modes = self.angles
        return _Terms(
            n=g.n_sites,
            pi=np.concatenate([g.edges[:, 0], ci]),
            pj=np.concatenate([g.edges[:, 1], cj]),
            pt=np.concatenate([g.edges[:, 2:].astype(float), ct]),
            target=np.concatenate([self.targets, cr]),
            weight=np.concatenate([np.ones(nb), np.full(len(cr), opt.w_repulsion)]),
            one_sided=np.concatenate([np.zeros(nb, bool), np.ones(len(cr), bool)]),
            ak=ak, aa=aa, ta=ta, ab=ab, tb=tb, modes=modes,
            w_angle=w_angle, deadline=self.deadline,
        )  # fmt: skip

    def fit(self, x: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        n = self.g.n_sites
        p = np.concatenate([x.ravel(), m.ravel()])
        e = np.inf
        for rnd in range(self.opt.rounds):
            tm = self.terms(x, m, self.opt.w_angle if rnd > 0 else 0.0)
            res = minimize(
                _energy, p, args=(tm,), jac=True, method="L-BFGS-B",
                options={"maxiter": self.opt.maxiter, "gtol": 1e-7},
            )  # fmt: skip
            p, e = res.x, float(res.fun)
            x, m = p[: 3 * n].reshape(n, 3), p[3 * n :].reshape(3, 3)
        return x, m, e


def embed(
    g: SlicesGraph,
    table: BondTable,
    time_limit: float = 10.0,
    options: FitOptions | None = None,
) -> Structure:
    """Coordinates and lattice for a valid SLICES graph (check() it first)."""
    opt = options or FitOptions()
    prob = _Problem(g, table, opt, time.perf_counter() + time_limit)
    x0 = barycentric(g)
    m0 = metric_lattice(x0, g, prob.targets)
    rng = np.random.default_rng(opt.seed)
    best = None
    for _ in range(opt.restarts):
        x = x0 + rng.normal(scale=opt.jitter, size=x0.shape)  # breaks coincident placements
        try:
            x, m, e = prob.fit(x, m0)
        except DecodeTimeout:
            if best is None:
                raise
            break  # the time limit ends the restarts, not the decode: keep the best so far
        if best is None or e < best[2]:
            best = (x, m, e)
    x, m, _ = best
    if abs(np.linalg.det(m)) < 1e-3 or not np.isfinite(m).all() or not np.isfinite(x).all():
        raise ValueError("geometry fit collapsed the cell")
    # an LLL-reduced cell: the same crystal, and later Niggli reductions stay fast
    return Structure(Lattice(m), list(g.species), x - np.floor(x)).get_reduced_structure("LLL")
