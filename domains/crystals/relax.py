"""Optional CHGNet relaxation of decoded structures (`pip install seqmodels[relax]`).

CHGNet ships its weights in its wheel, so no download happens at run time.
"""

from __future__ import annotations

import contextlib
import functools
import io
import time

from pymatgen.core import Structure


class RelaxUnavailable(ImportError):
    """CHGNet is not installed or cannot load here."""


@functools.cache
def _optimizer():
    try:
        from chgnet.model import StructOptimizer
    except ImportError as err:
        raise RelaxUnavailable(
            f"CHGNet relaxation needs the relax extra (pip install chgnet): {err}"
        ) from err
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its version and device
        return StructOptimizer(use_device="cpu")


def chgnet_relax(structure: Structure, steps: int = 300, fmax: float = 0.1):
    """(relaxed structure, info) with the final energy per atom and the seconds taken."""
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        out = _optimizer().relax(structure, fmax=fmax, steps=steps, verbose=False)
    traj = out["trajectory"]
    info = {
        "energy_per_atom": float(traj.energies[-1]) / len(structure),
        "relax_steps": len(traj.energies),
        "relax_seconds": time.perf_counter() - t0,
    }
    return out["final_structure"], info
