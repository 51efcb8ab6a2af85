"""Optional CHGNet relaxation of decoded structures (`pip install seqmodels[relax]`).

CHGNet ships its weights in its wheel, so no download happens at run time. The loop is
ASE's FIRE on CHGNet forces and stresses with a Frechet cell filter (what CHGNet's own
StructOptimizer runs), written out here so that a deadline can stop it: the lowest-energy
geometry seen so far is kept and `info["relax_stopped"]` says why it stopped early.
"""

from __future__ import annotations

import contextlib
import functools
import io
import time

import numpy as np
from pymatgen.core import Structure

CHGNET_CUTOFF = 6.0  # A: CHGNet's atom-graph cutoff; an atom with no neighbour within it
# is "isolated" and CHGNet's forces on it are meaningless (and relaxations crawl)


class RelaxUnavailable(ImportError):
    """CHGNet is not installed or cannot load here."""


class RelaxRefused(ValueError):
    """A structure CHGNet cannot treat (isolated atoms)."""


@functools.cache
def _calculator():
    try:
        from chgnet.model import CHGNet
        from chgnet.model.dynamics import CHGNetCalculator
    except ImportError as err:
        raise RelaxUnavailable(
            f"CHGNet relaxation needs the relax extra (pip install chgnet): {err}"
        ) from err
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its version and device
        return CHGNetCalculator(CHGNet.load(), use_device="cpu", on_isolated_atoms="ignore")


def isolated_sites(structure: Structure, cutoff: float = CHGNET_CUTOFF) -> list[int]:
    """Sites without any neighbour (periodic images included) within CHGNet's cutoff."""
    centres = structure.get_neighbor_list(cutoff, exclude_self=True)[0]
    return sorted(set(range(len(structure))) - set(centres.tolist()))


def chgnet_relax(
    structure: Structure,
    steps: int = 300,
    fmax: float = 0.1,
    time_limit: float | None = None,
    cell: bool = True,
) -> tuple[Structure, dict]:
    """(relaxed structure, info): energy per atom, steps, seconds, and relax_stopped when the
    time limit ended it before convergence. cell=False keeps the lattice (a molecule in a
    box). Raises RelaxRefused for isolated atoms."""
    lonely = isolated_sites(structure)
    if lonely:
        raise RelaxRefused(
            f"sites {lonely} have no neighbour within {CHGNET_CUTOFF} A (CHGNet's graph "
            "cutoff): not relaxed"
        )
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    calc = _calculator()  # loading the model is not relaxation time
    t0 = time.perf_counter()
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = calc
    opt = FIRE(FrechetCellFilter(atoms) if cell else atoms, logfile=None)
    best_e, best, n, stopped = np.inf, atoms.copy(), 0, None
    with contextlib.redirect_stdout(io.StringIO()):
        for n, _ in enumerate(opt.irun(fmax=fmax, steps=steps), 1):
            e = float(atoms.get_potential_energy())
            if e < best_e:
                best_e, best = e, atoms.copy()
            if time_limit is not None and time.perf_counter() - t0 > time_limit:
                stopped = f"time limit of {time_limit:.1f} s after {n} steps"
                break
    info = {
        "energy_per_atom": best_e / len(structure),
        "relax_steps": n,
        "relax_seconds": time.perf_counter() - t0,
    }
    if stopped:
        info["relax_stopped"] = stopped
    return AseAtomsAdaptor.get_structure(best), info
