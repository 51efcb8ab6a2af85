"""Bond graphs of crystals: EconNN (default) or CrystalNN, plus contacts that make them 3-periodic.

EconNN is re-implemented here vectorised over pymatgen's neighbour list because calling
`pymatgen.analysis.local_env.EconNN` site by site costs ~0.02 s per MP-20 structure, the
whole encode budget; tests check both give the same bonds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pymatgen.core import Structure

from domains.crystals.slices import periodicity, unique_edges

ECON_BAND = 0.03  # relative distance around EconNN's cut within which a wider gap wins
CONTACT_BAND = 0.3  # A beyond the shortest sufficient contact within which a gap may close


@dataclass
class BondInfo:
    """Edges (E, 5) int64 as (i, j, tx, ty, tz), plus what the encoder had to add or change."""

    edges: np.ndarray
    n_contacts: int = 0  # edges added to make the graph connected and 3-periodic
    contact: np.ndarray | None = None  # (E,) bool: which rows of edges are those contacts


def _neighbor_list(structure: Structure, r: float):
    ci, pi, images, dist = structure.get_neighbor_list(r, exclude_self=True)
    return ci.astype(np.int64), pi.astype(np.int64), np.rint(images).astype(np.int64), dist


def _mefir(d: np.ndarray) -> float:
    """Hoppe's mean fictive ionic radius from bond distances (iterated to convergence)."""
    m = float(d.min())
    prev = np.inf
    while abs(prev - m) > 1e-4:
        prev = m
        w = np.exp(1.0 - (d / m) ** 6)
        m = float((d * w).sum() / w.sum())
    return m


def _gap_cut(x: np.ndarray, at: float, band: float) -> int:
    """How many of the sorted values x fall below the cut near `at`.

    band == 0: a plain threshold (x < at). Otherwise the cut goes into the gap between
    consecutive values whose width, weighted by max(0, 1 - distance to `at` / band), is
    largest. Symmetry-equivalent copies of one neighbour differ only by noise, so the cut
    never falls between them, and a value that lies at the threshold no longer decides by
    which side the noise put it: what decides is which neighbouring gap is wider, a
    difference far larger than coordinate noise in all but exact ties."""
    if band == 0.0:
        return int(np.searchsorted(x, at, side="left"))
    lo, hi = x[:-1], x[1:]
    dist = np.where((lo <= at) & (at <= hi), 0.0, np.minimum(np.abs(lo - at), np.abs(hi - at)))
    score = (hi - lo) * np.maximum(0.0, 1.0 - dist / band)
    return int(np.argmax(score)) + 1


def econ_pairs(
    structure: Structure, tol: float = 0.2, cutoff: float = 6.0, band: float = ECON_BAND
) -> np.ndarray:
    """Directed EconNN bonds (i, j, image): weight exp(1 - (d / MEFIR)^6) > tol, i.e. d below
    MEFIR * (1 - ln tol)^(1/6). band = 0 is pymatgen's EconNN exactly; band > 0 (a relative
    distance, in log units) moves the cut into the widest nearby gap of the site's sorted
    neighbour distances (`_gap_cut`), so that noise cannot split a shell of equal bonds."""
    n = len(structure)
    ci, pi, img, dist = _neighbor_list(structure, cutoff)
    lonely = np.setdiff1d(np.arange(n), ci)
    if lonely.size:  # a site with no neighbour within the cutoff: look further for it
        return econ_pairs(structure, tol, cutoff * 2, band) if cutoff < 24 else _empty()
    order = np.lexsort((dist, ci))
    ci, pi, img, dist = ci[order], pi[order], img[order], dist[order]
    starts = np.searchsorted(ci, np.arange(n + 1))
    keep = np.zeros(len(ci), dtype=bool)
    root = (1.0 - np.log(tol)) ** (1 / 6)
    for s in range(n):
        a, b = starts[s], starts[s + 1]
        d = dist[a:b]
        # the cutoff closes the list: a cut after the farthest neighbour is a gap too
        logs = np.log(np.append(d, cutoff))
        keep[a : a + min(_gap_cut(logs, np.log(_mefir(d) * root), band), b - a)] = True
    return np.concatenate([ci[keep, None], pi[keep, None], img[keep]], axis=1)


def crystalnn_pairs(structure: Structure) -> np.ndarray:
    """Directed CrystalNN bonds (i, j, image)."""
    from pymatgen.analysis.local_env import CrystalNN

    rows = []
    for i, infos in enumerate(CrystalNN().get_all_nn_info(structure)):
        for info in infos:
            rows.append((i, info["site_index"], *np.rint(info["image"]).astype(int)))
    return np.array(rows, dtype=np.int64).reshape(-1, 5)


def _empty() -> np.ndarray:
    return np.zeros((0, 5), dtype=np.int64)


def undirected(pairs: np.ndarray) -> np.ndarray:
    """One row per undirected edge (slices.unique_edges), from directed pairs."""
    return unique_edges(pairs) if len(pairs) else _empty()


def can_change_periodicity(n: int, bonds: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Which candidate edges could ever change the periodicity of a graph holding `bonds`.

    A candidate joins two bond components, or closes a cycle whose net offset is outside
    the span of its component's cycle offsets (e.g. between two layers of one stack); any
    other (a contact inside a layer) changes nothing whatever else is added. This depends
    on the bond graph alone, not on the order or exact length of the candidates."""
    parent = list(range(n))
    pot = np.zeros((n, 3), dtype=np.int64)  # image offset of a site relative to its root

    def find(i: int) -> tuple[int, np.ndarray]:
        acc = np.zeros(3, dtype=np.int64)
        while parent[i] != i:
            acc = acc + pot[i]
            i = parent[i]
        return i, acc

    cycles: dict[int, list] = {}
    pending = []
    for i, j, *t in bonds.tolist():
        ri, pi = find(i)
        rj, pj = find(j)
        if ri == rj:
            pending.append((ri, pi + np.asarray(t) - pj))
        else:
            parent[rj] = ri
            pot[rj] = pi + np.asarray(t) - pj
    for r, v in pending:
        cycles.setdefault(find(r)[0], []).append(v)
    spans = {}  # root -> orthonormal basis (k, 3) of its cycle offsets
    for r, vs in cycles.items():
        u, sv, vt = np.linalg.svd(np.array(vs, dtype=float), full_matrices=False)
        spans[r] = vt[sv > 1e-8]
    found = [find(i) for i in range(n)]
    root = np.array([r for r, _ in found], dtype=np.int64)
    pos = np.array([p for _, p in found], dtype=np.int64).reshape(n, 3)
    out = root[cand[:, 0]] != root[cand[:, 1]]
    v = (pos[cand[:, 0]] + cand[:, 2:] - pos[cand[:, 1]]).astype(float)
    for r, basis in spans.items():  # a cycle offset outside the component's span
        same = ~out & (root[cand[:, 0]] == r)
        w = v[same]
        v[same] = w - (w @ basis.T) @ basis
    out |= np.linalg.norm(v, axis=1) > 1e-6
    return out


def add_contacts(
    structure: Structure, edges: np.ndarray, r_max: float = 8.0, band: float = CONTACT_BAND
) -> tuple[np.ndarray, int]:
    """Add the shortest non-bonded contacts, a shell at a time, until the graph is connected
    and 3-periodic.

    Only contacts that can still change the periodicity count (`can_change_periodicity`).
    A shell starts at the shortest of them and ends at the widest gap between their lengths
    within `band` A beyond it (`_gap_cut`); the whole shell is added and usefulness is
    recomputed. Shells are thus decided by the geometry, not by site order, and symmetry
    copies of a contact (equal up to noise) always fall in one shell. Raises ValueError when
    the contacts within r_max do not suffice (the caller looks further).
    """
    n = len(structure)
    comps, rank = periodicity(n, edges)
    if comps == 1 and rank == 3:
        return edges, 0
    ci, pi, img, _ = _neighbor_list(structure, r_max)
    cand = undirected(np.concatenate([ci[:, None], pi[:, None], img], axis=1))
    existing = {tuple(e) for e in edges.tolist()}
    cand = cand[np.array([tuple(e) not in existing for e in cand.tolist()], dtype=bool)]
    cand_d = _edge_lengths(structure, cand)
    order = np.argsort(cand_d, kind="stable")
    cand, cand_d = cand[order], cand_d[order]
    added = 0
    while not (comps == 1 and rank == 3):
        keep = can_change_periodicity(n, edges, cand)
        cand, cand_d = cand[keep], cand_d[keep]
        if not len(cand) or cand_d[0] + band + 1.0 > r_max:  # the cut needs what lies beyond
            raise ValueError(f"contacts up to {r_max:.0f} A do not make the graph 3-periodic")
        k = min(_gap_cut(np.append(cand_d, r_max), cand_d[0], band), len(cand))
        edges = np.concatenate([edges, cand[:k]])
        added += k
        cand, cand_d = cand[k:], cand_d[k:]
        comps, rank = periodicity(n, edges)
    return undirected(edges), added


def _edge_lengths(structure: Structure, edges: np.ndarray) -> np.ndarray:
    f = structure.frac_coords
    d = f[edges[:, 1]] + edges[:, 2:] - f[edges[:, 0]]
    return np.linalg.norm(d @ structure.lattice.matrix, axis=1)


def bond_graph(structure: Structure, method: str = "econnn", contacts: bool = True) -> BondInfo:
    """Undirected bond edges of a structure whose sites are wrapped into the unit cell."""
    if method == "econnn":
        pairs = econ_pairs(structure)
    elif method == "crystalnn":
        pairs = crystalnn_pairs(structure)
    else:
        raise ValueError(f"unknown neighbour method {method!r}: use econnn or crystalnn")
    edges = undirected(pairs)
    info = BondInfo(edges, contact=np.zeros(len(edges), dtype=bool))
    if contacts:
        r = 8.0
        while True:  # vacuum gaps (slabs) need long contacts; look further only when needed
            try:
                info.edges, info.n_contacts = add_contacts(structure, edges, r_max=r)
                bonds = {tuple(e) for e in edges.tolist()}
                info.contact = np.array([tuple(e) not in bonds for e in info.edges.tolist()], bool)
                break
            except ValueError:
                if r >= 32.0:
                    raise ValueError(
                        f"bond graph not 3-periodic even with contacts up to {r:.0f} A"
                    ) from None
                r *= 2
    return info
