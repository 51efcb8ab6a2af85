"""CHGNet formation energies of crystals: a CHGNet-model figure, not DFT.

E_f = E(relaxed) / N - sum_el x_el * mu_el, where E is CHGNet's energy after a relaxation
bounded in time (`relax.chgnet_relax`: FIRE with a cell filter, the lowest-energy geometry
kept at the deadline), x_el the atomic fractions and mu_el CHGNet's own elemental
references: for each element the lowest CHGNet energy per atom among relaxed candidate
elemental structures, i.e. fcc, bcc, hcp and diamond lattices built at twice the atomic
radius, a dimer in a 10 A box (positions relaxed, box kept) for the elements whose standard
state is a diatomic gas, and any one-element crystal passed in (e.g. MP-20's own elemental
rows). Referencing CHGNet to CHGNet keeps its systematic error in both terms; a reference
lower than any candidate (sulfur rings, black phosphorus) is missed, which makes E_f too
negative for those elements. A candidate CHGNet cannot treat (an atom isolated at its 6 A
cutoff) is skipped; an element with none gets no reference and its compounds no E_f.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pymatgen.core import Element, Lattice, Structure

from domains.crystals.relax import RelaxRefused, chgnet_relax

DIATOMIC = ("H", "N", "O", "F", "Cl", "Br", "I")
REFERENCE_TIME = 20.0  # s per candidate relaxation (one thread; tiny cells converge sooner)


def candidates(symbol: str) -> list[tuple[str, Structure, bool]]:
    """(name, structure, relax the cell) candidates for an element's reference state."""
    el = Element(symbol)
    r = float(el.atomic_radius or el.atomic_radius_calculated or 1.5)
    d = 2.0 * r  # nearest-neighbour distance; CHGNet's relaxation then fixes it
    out = [
        ("fcc", Structure(Lattice.cubic(d * 2**0.5), [symbol] * 4,
                          [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]), True),
        ("bcc", Structure(Lattice.cubic(d * 2 / 3**0.5), [symbol] * 2,
                          [[0, 0, 0], [0.5, 0.5, 0.5]]), True),
        ("hcp", Structure(Lattice.hexagonal(d, d * (8 / 3) ** 0.5), [symbol] * 2,
                          [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]), True),
        ("diamond", Structure(Lattice.cubic(d * 4 / 3**0.5), [symbol] * 8,
                              [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                               [0.25] * 3, [0.75, 0.75, 0.25], [0.75, 0.25, 0.75],
                               [0.25, 0.75, 0.75]]), True),
    ]  # fmt: skip
    if symbol in DIATOMIC:
        bond = 2.0 * float(el.atomic_radius_calculated or r) * 0.75
        box = Lattice.cubic(10.0)
        out.append(("dimer", Structure(box, [symbol] * 2, [[0, 0, 0], [bond / 10.0, 0, 0]]), False))
    return out


class ElementReferences:
    """mu_el (eV/atom) from CHGNet, computed once per element and kept in a JSON file."""

    def __init__(self, path: str | Path | None = None, time_limit: float = REFERENCE_TIME):
        self.path = Path(path) if path else None
        self.time_limit = time_limit
        self.mu: dict[str, dict] = {}
        if self.path and self.path.is_file():
            self.mu = json.loads(self.path.read_text())

    def add_known(self, structures: Iterable[Structure]) -> None:
        """One-element crystals (e.g. from the training data) as further candidates."""
        for s in structures:
            if len(s.composition.elements) == 1:
                el = s.composition.elements[0].symbol
                self._consider(el, f"given {len(s)} sites {s.volume:.2f} A3", s, True)

    def get(self, symbol: str) -> float | None:
        """mu of an element (None: no candidate CHGNet can treat); computed on first use."""
        fresh = [c for c in candidates(symbol) if c[0] not in self._entry(symbol)["tried"]]
        for name, s, cell in fresh:
            self._consider(symbol, name, s, cell)
        if fresh:
            self.save()
        return self.mu[symbol]["energy"]

    def _entry(self, symbol: str) -> dict:
        return self.mu.setdefault(symbol, {"energy": None, "from": None, "tried": []})

    def _consider(self, symbol: str, name: str, s: Structure, cell: bool) -> None:
        entry = self._entry(symbol)
        if name in entry["tried"]:
            return
        entry["tried"].append(name)
        try:
            _, info = chgnet_relax(s, time_limit=self.time_limit, cell=cell)
        except RelaxRefused:  # isolated atoms (noble gases): CHGNet cannot treat them
            return
        e = float(info["energy_per_atom"])
        if entry["energy"] is None or e < entry["energy"]:
            entry.update(energy=e, **{"from": name})

    def save(self) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.mu, indent=1, sort_keys=True) + "\n")


def formation_energy(
    structure: Structure,
    refs: ElementReferences,
    time_limit: float = 10.0,
    energy_per_atom: float | None = None,
) -> tuple[float | None, str]:
    """(E_f in eV/atom, "ok") or (None, why not). energy_per_atom: a CHGNet energy already
    computed after relaxation (decode with relax="chgnet"); otherwise relaxed here."""
    comp = structure.composition.fractional_composition
    mu = {el.symbol: refs.get(el.symbol) for el in comp.elements}
    missing = sorted(k for k, v in mu.items() if v is None)
    if missing:
        return None, f"no CHGNet reference for {missing}"
    if energy_per_atom is None:
        try:
            _, info = chgnet_relax(structure, time_limit=time_limit)
        except RelaxRefused as err:
            return None, str(err)
        energy_per_atom = info["energy_per_atom"]
    ref = sum(float(x) * mu[el.symbol] for el, x in comp.items())
    return float(energy_per_atom - ref), "ok"


def formation_metrics(values: list[float | None], targets: list[float] | None) -> dict:
    """Summary of CHGNet formation energies (keys under `chgnet/`, a CHGNet-model figure)."""
    got = [(k, v) for k, v in enumerate(values) if v is not None]
    out: dict = {"chgnet/formation_energy_computed": len(got) / max(len(values), 1)}
    if not got:
        return out
    v = np.array([x for _, x in got])
    out["chgnet/formation_energy_mean"] = float(v.mean())
    out["chgnet/formation_energy_below_zero"] = float((v < 0).mean())
    if targets is not None:
        t = np.array([targets[k] for k, _ in got])
        out["chgnet/formation_energy_mae"] = float(np.abs(v - t).mean())
    return out
