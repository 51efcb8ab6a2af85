import warnings

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture
def rocksalt() -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()  # noqa: E501


@pytest.fixture
def perovskite() -> Structure:
    return Structure(
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


@pytest.fixture
def rutile() -> Structure:
    u = 0.305
    return Structure(
        Lattice.tetragonal(4.594, 2.959),
        ["Ti", "Ti", "O", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [u, u, 0], [-u, -u, 0],
         [0.5 + u, 0.5 - u, 0.5], [0.5 - u, 0.5 + u, 0.5]],
    )  # fmt: skip


@pytest.fixture
def graphite() -> Structure:
    """Layered: its bond graph is 2-periodic until contacts are added."""
    return Structure(
        Lattice.hexagonal(2.46, 6.70),
        ["C"] * 4,
        [[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]],
    )


@pytest.fixture
def permute():
    def run(s: Structure, rng: np.random.Generator) -> Structure:
        order = rng.permutation(len(s))
        return Structure(s.lattice, [s[i].specie for i in order], s.frac_coords[order])

    return run
