"""Canonical labelling of a SLICES graph (sites labelled by element, edges by image offset).

Colour refinement (Weisfeiler-Lehman) over element + offset-labelled edges, then
individualisation-refinement: every branch of the search over the first ambiguous colour
class is followed to a discrete labelling and the lexicographically smallest edge list
wins. Colours are ranks of sorted signatures, never hashes, so the result is exact: it
does not depend on the input order of sites or edges nor on edge orientation.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
from pymatgen.core.periodic_table import Element

from domains.crystals.slices import SlicesGraph, adjacency, orient, unique_edges

MAX_LEAVES = 4096  # search cap; beyond it the string is still valid but may not be canonical


@functools.cache
def element_key(symbol: str) -> tuple[float, int]:
    """Cations first, as in chemical formulas: by electronegativity, then atomic number."""
    el = Element(symbol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # noble gases have no Pauling electronegativity
        x = el.X
    x = x if np.isfinite(x) else 10.0
    return (x, el.Z)


def _rank(sigs: list) -> list[int]:
    table = {s: r for r, s in enumerate(sorted(set(sigs)))}
    return [table[s] for s in sigs]


def _refine(colours: list[int], adj) -> list[int]:
    n_classes = len(set(colours))
    while True:
        sigs = [
            (colours[v], tuple(sorted((colours[u], t) for u, t in adj[v])))
            for v in range(len(colours))
        ]
        new = _rank(sigs)
        k = len(set(new))
        if k == n_classes:
            return new
        colours, n_classes = new, k


def _relabel(edges: np.ndarray, new_index: np.ndarray) -> tuple:
    e = edges.copy()
    e[:, 0] = new_index[edges[:, 0]]
    e[:, 1] = new_index[edges[:, 1]]
    e = orient(e)
    order = np.lexsort(e.T[::-1])
    return tuple(map(tuple, e[order].tolist()))


def canonicalize(graph: SlicesGraph) -> tuple[SlicesGraph, bool]:
    """(canonical graph, exact) where exact is False only if the search cap was reached.

    Duplicate edges are dropped: the canonical form of a graph with a bond listed twice is
    that of the graph with the bond once."""
    graph = SlicesGraph(graph.species, unique_edges(graph.edges))  # a bond listed twice is one
    n = graph.n_sites
    adj = adjacency(n, graph.edges)
    colours = _refine(_rank([element_key(s) for s in graph.species]), adj)
    best: list = [None, None]  # (edge tuple, colours)
    leaves = [0]

    def search(col: list[int]) -> None:
        if leaves[0] >= MAX_LEAVES:
            return
        counts = np.bincount(col, minlength=n)
        if (counts <= 1).all():
            leaves[0] += 1
            cand = _relabel(graph.edges, np.asarray(col))
            if best[0] is None or cand < best[0]:
                best[0], best[1] = cand, col
            return
        target = int(np.flatnonzero(counts > 1)[0])  # first ambiguous class, a label-free choice
        for v in (v for v in range(n) if col[v] == target):
            ind = _rank([(c, 0 if u == v else 1) for u, c in enumerate(col)])
            search(_refine(ind, adj))

    search(colours)
    col = np.asarray(best[1])
    species = [None] * n
    for v in range(n):
        species[col[v]] = graph.species[v]
    edges = np.array(best[0], dtype=np.int64).reshape(-1, 5)
    return SlicesGraph(tuple(species), edges), leaves[0] < MAX_LEAVES
