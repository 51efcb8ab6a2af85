"""CHGNet relaxation is bounded by the time limit and refuses isolated atoms up front."""

import pytest
from pymatgen.core import Lattice, Structure

pytest.importorskip("chgnet")

from domains.crystals.relax import RelaxRefused, chgnet_relax, isolated_sites  # noqa: E402


def test_time_limit_stops_relaxation_and_keeps_a_geometry(rocksalt):
    squeezed = rocksalt.copy()
    squeezed.scale_lattice(rocksalt.volume * 0.8)  # far from equilibrium: many steps needed
    s, info = chgnet_relax(squeezed, steps=500, fmax=1e-4, time_limit=0.0)
    assert info["relax_steps"] == 1 and "time limit" in info["relax_stopped"]
    assert len(s) == len(squeezed)


def test_isolated_atoms_are_refused_before_relaxing():
    lone = Structure(Lattice.cubic(14.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert isolated_sites(lone) == [0, 1]  # 12 A apart, images 14 A: beyond CHGNet's 6 A
    with pytest.raises(RelaxRefused, match="no neighbour within"):
        chgnet_relax(lone)
