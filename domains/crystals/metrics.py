"""Generation metrics, one function each; run them on training data too as the reference.

Distances between distributions are total-variation distances (0 = identical, 1 = disjoint).
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
from pymatgen.core import Composition, Structure

from domains.crystals.slices import check


def slices_validity(strings: Sequence[str]) -> float:
    """Fraction of strings that parse and describe a connected 3-periodic net."""
    return float(np.mean([check(s)[0] for s in strings])) if strings else 0.0


def reconstruction_rate(structures: Sequence[Structure | None]) -> float:
    """Fraction of decodes that returned a structure."""
    return float(np.mean([s is not None for s in structures])) if structures else 0.0


def is_structurally_valid(s: Structure, min_dist: float = 0.5) -> bool:
    """Every interatomic distance > min_dist A and a finite positive volume."""
    vol = s.volume
    if not np.isfinite(vol) or vol <= 0.1:
        return False
    if len(s) == 1:
        return min(s.lattice.abc) > min_dist
    d = s.distance_matrix + np.eye(len(s)) * 1e9
    # images of a site itself (short lattice vectors) count too
    return float(d.min()) > min_dist and min(s.lattice.abc) > min_dist


def structural_validity(structures: Sequence[Structure | None]) -> float:
    """Fraction of all samples (failed decodes count as invalid) that are structurally valid."""
    ok = [s is not None and is_structurally_valid(s) for s in structures]
    return float(np.mean(ok)) if ok else 0.0


def is_charge_neutral(comp: Composition) -> bool:
    """A charge-neutral assignment of common oxidation states exists (pymatgen's guesses);
    an all-metal composition counts as valid (an alloy), as in the CDVAE protocol."""
    if all(el.is_metal for el in comp.elements):
        return True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return len(comp.oxi_state_guesses(max_sites=-20)) > 0
        except ValueError:
            return False


def compositional_validity(structures_or_comps: Sequence) -> float:
    comps = [
        x.composition if isinstance(x, Structure) else Composition(x)
        for x in structures_or_comps
        if x is not None
    ]
    n = len(structures_or_comps)
    return float(sum(is_charge_neutral(c) for c in comps) / n) if n else 0.0


def _usable(structures) -> list[Structure]:
    """Structurally valid samples in an LLL-reduced cell: a degenerate cell (a failed fit)
    can make pymatgen's Niggli reduction inside StructureMatcher run for minutes."""
    return [
        s.get_reduced_structure("LLL")
        for s in structures
        if s is not None and is_structurally_valid(s)
    ]


def _matcher():
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(ltol=0.3, stol=0.5, angle_tol=10)


def uniqueness(structures: Sequence[Structure | None]) -> float:
    """Distinct structures (StructureMatcher groups) over the structurally valid samples."""
    valid = _usable(structures)
    if not valid:
        return 0.0
    by_formula: dict[str, list[Structure]] = defaultdict(list)
    for s in valid:
        by_formula[s.composition.reduced_formula].append(s)
    sm = _matcher()
    groups = sum(len(sm.group_structures(g)) for g in by_formula.values())
    return groups / len(valid)


def novelty(structures: Sequence[Structure | None], train: Sequence[Structure]) -> float:
    """Fraction of structurally valid samples not matched to any training structure."""
    valid = _usable(structures)
    if not valid:
        return 0.0
    index: dict[str, list[Structure]] = defaultdict(list)
    for t in train:
        index[t.composition.reduced_formula].append(t)
    sm = _matcher()
    novel = 0
    for s in valid:
        cands = index.get(s.composition.reduced_formula, [])
        novel += not any(sm.fit(s, t) for t in cands)
    return novel / len(valid)


def property_errors(pred: np.ndarray, target: np.ndarray, names: Sequence[str]) -> dict:
    """MAE and MAPE (percent, over targets with |value| > 1e-3) per property."""
    pred, target = np.asarray(pred, float), np.asarray(target, float)
    out = {}
    for k, name in enumerate(names):
        err = pred[:, k] - target[:, k]
        out[f"{name}_mae"] = float(np.abs(err).mean())
        nz = np.abs(target[:, k]) > 1e-3
        out[f"{name}_mape"] = (
            float(100 * np.abs(err[nz] / target[nz, k]).mean()) if nz.any() else None
        )
    return out


def _tv(a: Counter, b: Counter) -> float:
    na, nb = sum(a.values()), sum(b.values())
    if not na or not nb:
        return 1.0
    keys = sorted(set(a) | set(b))  # a fixed order: the same float sum on every run
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in keys)


def element_distance(samples: Sequence[Structure | None], train: Sequence[Structure]) -> float:
    """Total variation between the atom-fraction distributions of elements."""

    def hist(ss):
        c: Counter = Counter()
        for s in ss:
            if s is not None:
                for el, n in s.composition.items():
                    c[el.symbol] += n
        return c

    return _tv(hist(samples), hist(train))


def spacegroup(s: Structure, symprec: float = 0.1) -> int:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        return SpacegroupAnalyzer(s, symprec=symprec).get_space_group_number()
    except Exception:  # spglib fails on degenerate cells: count them as P1
        return 1


def spacegroup_distance(samples: Sequence[Structure | None], train: Sequence[Structure]) -> float:
    """Total variation between the space-group-number distributions (symprec 0.1)."""
    a = Counter(spacegroup(s) for s in _usable(samples))
    b = Counter(spacegroup(s) for s in train)
    return _tv(a, b)
