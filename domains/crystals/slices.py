"""The SLICES string format: parse, format and check a labelled quotient graph.

A SLICES string lists the element symbols of the sites, then one edge per bond written
`i j XYZ` with one of `-`, `o`, `+` per lattice axis for the periodic image of site j.
Strings of the older format (no space-group prefix) and of ours are the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pymatgen.core.periodic_table import Element

OFFSET_SYMBOLS = {"-": -1, "o": 0, "+": 1}
SYMBOL_OF = {v: k for k, v in OFFSET_SYMBOLS.items()}
ELEMENTS = tuple(e.symbol for e in Element if e.Z <= 103)
_ELEMENT_SET = frozenset(ELEMENTS)


class SlicesError(ValueError):
    """A SLICES string that does not parse or does not describe a decodable crystal."""


@dataclass(frozen=True)
class SlicesGraph:
    """Sites (element symbols) and undirected edges (i, j, tx, ty, tz) of a periodic net."""

    species: tuple[str, ...]
    edges: np.ndarray  # (E, 5) int64

    @property
    def n_sites(self) -> int:
        return len(self.species)

    def to_string(self) -> str:
        parts = list(self.species)
        for i, j, *t in self.edges.tolist():
            parts += [str(i), str(j), "".join(SYMBOL_OF[x] for x in t)]
        return " ".join(parts)

    def degrees(self) -> np.ndarray:
        deg = np.zeros(self.n_sites, dtype=np.int64)
        np.add.at(deg, self.edges[:, 0], 1)
        np.add.at(deg, self.edges[:, 1], 1)
        return deg


def orient(edges: np.ndarray) -> np.ndarray:
    """The same undirected edges written i <= j, a self-edge with its first non-zero offset
    positive (edge (i, j, t) and (j, i, -t) are one bond)."""
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 5).copy()
    t = e[:, 2:]
    nz = t != 0
    first = np.where(nz.any(axis=1), nz.argmax(axis=1), 0)
    sign = np.sign(t[np.arange(len(t)), first])
    flip = (e[:, 0] > e[:, 1]) | ((e[:, 0] == e[:, 1]) & (sign < 0))
    e[flip] = np.concatenate([e[flip][:, [1, 0]], -t[flip]], axis=1)
    return e


def unique_edges(edges: np.ndarray) -> np.ndarray:
    """Oriented, sorted, without duplicates."""
    e = orient(edges)
    return np.unique(e, axis=0) if len(e) else e


def adjacency(n: int, edges: np.ndarray) -> list[list[tuple[int, tuple[int, int, int]]]]:
    """For each site, (neighbour, offset of the neighbour's image) over both edge directions."""
    adj: list[list] = [[] for _ in range(n)]
    for i, j, *t in np.asarray(edges).tolist():
        adj[i].append((j, tuple(t)))
        adj[j].append((i, (-t[0], -t[1], -t[2])))
    return adj


def offset_token(t) -> str:
    return "".join(SYMBOL_OF[int(x)] for x in t)


def parse(text: str) -> SlicesGraph:
    """Parse a SLICES string; raises SlicesError saying what is wrong and where."""
    toks = text.split()
    if not toks:
        raise SlicesError("empty SLICES string")
    n = 0
    while n < len(toks) and toks[n] in _ELEMENT_SET:
        n += 1
    if n == 0:
        raise SlicesError(f"does not parse: first token {toks[0]!r} is not an element symbol")
    rest = toks[n:]
    if len(rest) % 3:
        raise SlicesError(
            f"does not parse: {len(rest)} tokens after the {n} element symbols, "
            "not a whole number of 'i j XYZ' edges"
        )
    edges = np.zeros((len(rest) // 3, 5), dtype=np.int64)
    for e in range(len(rest) // 3):
        a, b, off = rest[3 * e : 3 * e + 3]
        if not (a.isascii() and a.isdigit() and b.isascii() and b.isdigit()):
            raise SlicesError(f"does not parse: edge {e} has site indices {a!r} {b!r}")
        i, j = int(a), int(b)
        if i >= n or j >= n:
            raise SlicesError(f"does not parse: edge {e} names site {max(i, j)} of {n}")
        if len(off) != 3 or any(c not in OFFSET_SYMBOLS for c in off):
            raise SlicesError(f"does not parse: edge {e} has offset {off!r}, not 3 of '-o+'")
        if i == j and off == "ooo":
            raise SlicesError(f"does not parse: edge {e} bonds site {i} to itself")
        edges[e] = (i, j, *(OFFSET_SYMBOLS[c] for c in off))
    return SlicesGraph(tuple(toks[:n]), edges)


def periodicity(n: int, edges: np.ndarray) -> tuple[int, int]:
    """(number of connected components, rank of the cycle-offset lattice) of a quotient graph.

    A union-find that keeps each site's image offset relative to its root: an edge closing a
    cycle contributes its net offset, and the rank of those offsets is the periodicity.
    """
    parent = list(range(n))
    pot = np.zeros((n, 3), dtype=np.int64)  # offset of site relative to its parent

    def find(i: int) -> tuple[int, np.ndarray]:
        acc = np.zeros(3, dtype=np.int64)
        while parent[i] != i:
            acc += pot[i]
            i = parent[i]
        return i, acc

    cycles = []
    for i, j, *t in edges.tolist():
        ri, pi = find(i)
        rj, pj = find(j)
        # position(j image) = position(i) + (x_j + t - x_i): net offset along the cycle
        if ri == rj:
            v = pi + np.asarray(t) - pj
            if v.any():
                cycles.append(v)
        else:
            parent[rj] = ri
            pot[rj] = pi + np.asarray(t) - pj
    comps = sum(1 for i in range(n) if parent[i] == i)
    rank = int(np.linalg.matrix_rank(np.array(cycles, dtype=float))) if cycles else 0
    return comps, rank


def check(text: str | SlicesGraph) -> tuple[bool, str]:
    """(True, "valid") or (False, the reason the string is not a decodable crystal net)."""
    try:
        g = parse(text) if isinstance(text, str) else text
    except SlicesError as err:
        return False, str(err)
    n_unique = len(unique_edges(g.edges))
    if n_unique < len(g.edges):
        return False, f"duplicate edges ({len(g.edges) - n_unique} listed twice)"
    deg = g.degrees()
    if (deg == 0).any():
        return (
            False,
            f"atom without bonds: site {int(np.argmin(deg))} ({g.species[np.argmin(deg)]})",
        )
    if not g.edges[:, 2:].any(axis=0).all():
        return False, "offsets do not span the 3 axes"
    comps, rank = periodicity(g.n_sites, g.edges)
    if comps > 1:
        return False, f"quotient graph is not connected ({comps} components)"
    if rank < 3:
        return False, f"quotient graph does not span 3 dimensions (periodic in {rank})"
    return True, "valid"
