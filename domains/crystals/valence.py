"""Bond valences from the bond graph alone: Brown's network equations.

Given oxidation states (guessed from the composition, the only chemistry a SLICES string
carries) the valence-sum rule asks that the bond valences s around every site add up to its
oxidation state (cations positive, anions negative, each cation-anion bond oriented from
the cation); the equal-valence (loop) rule asks that they add up to zero around every loop
of the net. Together these are Kirchhoff's laws of a network of equal capacitors: the
solution is the minimum-norm solution of B s = q (B the cation-anion incidence matrix of the
quotient graph, q the oxidation states), s = B^T phi. A loop of the periodic net is a cycle
of the quotient graph (its offset does not enter B), so the quotient solution is the
periodic net's. Bond lengths then follow the bond-valence law r = R0 - b ln s (Brown and
Altermatt 1985, b = 0.37 A).
"""

from __future__ import annotations

import functools
import warnings
from collections import Counter

import numpy as np

B_BV = 0.37  # A; the bond-valence softness, the same for every pair (Brown's convention)
MIN_VALENCE = 0.03  # a network valence below this is no bond the law describes
MAX_GUESS_COST = 1e9  # pymatgen's guess enumerates every sum of states per element and
# every product of those sums: Fe13Co11Ni7Mn5Cr3S40 (estimate 8e14) ran for minutes; the
# costliest MP-20 formulas (estimates up to 2e7) take under 0.3 s


def _guess_cost(comp) -> float:
    """Rough size of pymatgen's search: the product over elements of the number of distinct
    oxidation-state sums (n * (max - min) + 1) times the combinations behind them."""
    from math import comb

    from pymatgen.core import Element

    cost = 1.0
    for el, n in comp.items():
        e = Element(el.symbol)
        states = e.icsd_oxidation_states or e.common_oxidation_states or (0,)
        n = int(round(n))
        cost *= (n * (max(states) - min(states)) + 1) + comb(n + len(states) - 1, n)
    return cost


@functools.lru_cache(maxsize=8192)
def _guess(formula: str) -> tuple[tuple[str, float], ...] | None:
    from pymatgen.core import Composition

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            guesses = Composition(formula).oxi_state_guesses()
        except (ValueError, KeyError):
            return None
    if not guesses:
        return None
    return tuple(sorted((el, float(v)) for el, v in guesses[0].items()))


def oxidation_states(species) -> dict[str, float] | None:
    """The most probable charge-balanced oxidation state per element (pymatgen's guess from
    the reduced composition, mixed valence averaged over an element's sites); None when
    pymatgen finds none (intermetallics, unusual charges) or its search would be too long
    (MAX_GUESS_COST; then the decoder keeps its learned lengths)."""
    from pymatgen.core import Composition

    comp = Composition(Counter(species)).reduced_composition
    if _guess_cost(comp) > MAX_GUESS_COST:
        return None
    got = _guess(comp.formula)
    return None if got is None else dict(got)


def network_valences(
    n: int, species, edges: np.ndarray, oxi: dict[str, float] | None, skip=None
) -> np.ndarray:
    """(E,) network bond valence of each edge (i, j, t); nan where the law does not apply
    (no oxidation states, both ends of one sign or neutral, an edge in `skip`, a valence
    under MIN_VALENCE)."""
    s = np.full(len(edges), np.nan)
    if oxi is None or len(edges) == 0:
        return s
    q = np.array([oxi.get(el, 0.0) for el in species], dtype=float)
    i, j = edges[:, 0], edges[:, 1]
    ionic = q[i] * q[j] < 0
    if skip is not None:
        ionic &= ~np.asarray(skip, bool)
    idx = np.flatnonzero(ionic)
    if len(idx) == 0:
        return s
    cat = np.where(q[i[idx]] > 0, i[idx], j[idx])
    an = np.where(q[i[idx]] > 0, j[idx], i[idx])
    b = np.zeros((n, len(idx)))
    b[cat, np.arange(len(idx))] = 1.0
    b[an, np.arange(len(idx))] = -1.0
    # only the sites that take part; the others' charge cannot be carried by these bonds
    sol = np.linalg.lstsq(b, q, rcond=None)[0]
    sol = np.where(sol >= MIN_VALENCE, sol, np.nan)
    s[idx] = sol
    return s
