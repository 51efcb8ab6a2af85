"""One cell and a set of equivalent frames per crystal, so that the SLICES string does not
depend on the cell, basis, origin or rounding a file happens to use.

The crystal is reduced to its primitive cell (pymatgen and spglib, 0.05 A tolerance, the
smaller cell wins: supercells and conventional cells collapse), Niggli-reduced (pymatgen),
and then every basis of that lattice whose vectors have the three Niggli lengths (the
successive minima, a lattice invariant) is a candidate frame, as is every atom of the
rarest element as the origin. The encoder writes the graph in each frame and keeps the
smallest canonical string, so the choice among equivalent bases and origins cannot show.
Fractional coordinates are wrapped into [-WRAP_SHIFT, 1 - WRAP_SHIFT): atoms on special
positions (0, 1/2, 1/4, 1/3 ...) or a few 1e-4 off them (CIF rounding) never sit on the
wrap boundary. One fixed shift, not one chosen per frame: choosing among 2-6 candidate
shifts the one that keeps every coordinate farthest from the boundary (or putting the
boundary in the widest gap between coordinates) flipped strings 2-3.4x more often under
symmetry-preserving position noise, since its choice then flips where two margins tie.
"""

from __future__ import annotations

import itertools
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Lattice, Structure

from domains.crystals.canonical import element_key

WRAP_SHIFT = 0.0379  # no special position (k/2, k/3, k/4, k/6, k/8, k/12, k/24) is this close
SYMPREC = 0.01  # A; spglib's tolerance for symmetrising the cell before bonds are found
LENGTH_RTOL = 2e-3  # equal lattice vector lengths (CIF rounding is ~1e-5 relative)
PRIMITIVE_TOL = 0.05  # A; pymatgen defaults to 0.25, which would also fold genuinely
# distorted supercells (displacements of ~0.1 A) into a smaller cell; rounding noise is ~1e-4 A
SPGLIB_PRIMITIVE_TOL = 0.045  # A; at 0.05 spglib folds mp-28688 (a near-repeat it finds at
# 0.055-0.06 A in the clean cell) under noise in a skewed cell; mp-1286841's is at 0.042-0.044
_COEFFS = np.array(list(itertools.product(range(-2, 3), repeat=3)), dtype=np.int64)


def wrap(frac: np.ndarray) -> np.ndarray:
    """Integer image of each coordinate so that frac - image lies in the wrap window."""
    return np.floor(frac + WRAP_SHIFT).astype(np.int64)


def wrapped(structure: Structure) -> Structure:
    """An ordered copy with fractional coordinates in the wrap window: offsets refer to it."""
    if not structure.is_ordered:
        raise ValueError("disordered structure: SLICES needs one element per site")
    f = structure.frac_coords
    return Structure(structure.lattice, [s.specie.symbol for s in structure], f - wrap(f))


def reduced_cell(structure: Structure) -> Structure:
    """The primitive, Niggli-reduced cell of an ordered structure, sites wrapped."""
    if not structure.is_ordered:
        raise ValueError("disordered structure: SLICES needs one element per site")
    # pymatgen's primitive search applies its tolerance per fractional axis, so in a skewed
    # cell it misses translations it finds in a reduced one: reduce first, then search
    reduced = structure.get_reduced_structure()
    prim = reduced.get_primitive_structure(tolerance=PRIMITIVE_TOL)
    # even in the reduced cell a per-axis tolerance depends on the cell's shape: a translation
    # just within it is found in one cell of a crystal and missed in another (a supercell).
    # spglib's tolerance is a Cartesian distance: the smaller cell of the two searches wins
    alt = spglib_primitive(reduced, SPGLIB_PRIMITIVE_TOL)
    if alt is not None and len(alt) < len(prim):
        prim = alt
    prim = symmetrized(prim)
    lat = prim.lattice.get_niggli_reduced_lattice()
    frac = lat.get_fractional_coords(prim.cart_coords)
    frac = frac - wrap(frac)
    return Structure(lat, [s.specie for s in prim], frac)


def spglib_primitive(structure: Structure, symprec: float) -> Structure | None:
    """spglib's primitive cell at a Cartesian tolerance, positions not idealised (the sites
    that a pseudo-translation maps onto each other are averaged); None when spglib fails."""
    import spglib

    numbers = [site.specie.Z for site in structure]
    cell = (structure.lattice.matrix, structure.frac_coords, numbers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        std = spglib.standardize_cell(cell, to_primitive=True, no_idealize=True, symprec=symprec)
    if std is None:
        return None
    lattice, frac, z = std
    return Structure(Lattice(lattice), [int(x) for x in z], frac)


def symmetrized(structure: Structure, symprec: float = SYMPREC) -> Structure:
    """The same primitive cell with positions and lattice made exactly symmetric (spglib).

    Coordinate noise (CIF rounding, a few 1e-3 A in a skewed cell) then no longer tells
    symmetry copies of a bond apart, and what is left of it only moves free parameters.
    Unchanged when spglib finds another cell size (a pseudo-translation within symprec)."""
    import spglib

    numbers = [site.specie.Z for site in structure]
    cell = (structure.lattice.matrix, structure.frac_coords, numbers)
    with warnings.catch_warnings():  # spglib 2.x warns about its own None-on-failure API
        warnings.simplefilter("ignore", DeprecationWarning)
        std = spglib.standardize_cell(cell, to_primitive=True, symprec=symprec)
    if std is None or len(std[2]) != len(structure):
        return structure
    lattice, frac, z = std
    return Structure(Lattice(lattice), [int(x) for x in z], frac)


def equivalent_bases(lattice: Lattice, rtol: float = LENGTH_RTOL) -> np.ndarray:
    """(K, 3, 3) unimodular integer matrices M such that M @ basis is another reduced basis.

    Candidates are made of vectors with the basis' three lengths (for a Niggli-reduced basis
    these are the successive minima, and coefficients within +/-2 suffice) and keep a Niggli
    type: all angles acute or all obtuse, an angle within rtol of 90 degrees counting as
    either. The set depends only on the lattice, not on which reduced basis pymatgen returned.
    """
    b = lattice.matrix
    lens2 = ((_COEFFS @ b) ** 2).sum(1)
    target = (b**2).sum(1)
    pools = [_COEFFS[np.abs(lens2 - t) <= 2 * rtol * t] for t in target]
    m = np.stack(np.meshgrid(*(np.arange(len(p)) for p in pools), indexing="ij"), -1)
    m = m.reshape(-1, 3)
    mats = np.stack([pools[0][m[:, 0]], pools[1][m[:, 1]], pools[2][m[:, 2]]], axis=1)
    det = np.rint(np.linalg.det(mats.astype(float))).astype(np.int64)
    mats = mats[np.abs(det) == 1]
    vec = mats @ b  # (K, 3, 3) candidate lattice rows
    gram = vec @ vec.transpose(0, 2, 1)
    norm = np.sqrt(target[:, None] * target[None, :])
    iu = np.triu_indices(3, 1)
    cos = (gram / norm)[:, iu[0], iu[1]]
    niggli_type = (cos > -rtol).all(1) | (cos < rtol).all(1)
    return mats[niggli_type]


def origin_sites(species: list[str]) -> list[int]:
    """The sites of the rarest element (ties: the first in formula order): a choice that
    depends on the crystal only, not on site order or position."""
    counts = Counter(species)
    rare = min(counts, key=lambda e: (counts[e], element_key(e)))
    return [k for k, e in enumerate(species) if e == rare]


@dataclass
class Frame:
    """The bond graph of a reduced cell rewritten in another basis and origin."""

    edges: np.ndarray  # (E, 5) with offsets in that frame
    basis: np.ndarray  # M: the frame's lattice rows are M @ reduced lattice rows
    origin: int  # the site moved to the origin


def frames(structure: Structure, edges: np.ndarray):
    """Every (basis, origin) frame of a reduced cell's bond graph with offsets within +/-1.

    An edge (i, j, t) joins site i to site j in image t. In the frame (M, k) fractional
    coordinates are g = (f - f_k) M^-1 wrapped by s = wrap(g), so the edge becomes
    (i, j, t M^-1 + s_j - s_i).
    """
    f = structure.frac_coords
    species = [s.specie.symbol for s in structure]
    seen: set[bytes] = set()
    for m in equivalent_bases(structure.lattice):
        minv = np.rint(np.linalg.inv(m.astype(float))).astype(np.int64)
        t = edges[:, 2:] @ minv
        for k in origin_sites(species):
            s = wrap((f - f[k]) @ minv)
            off = t + s[edges[:, 1]] - s[edges[:, 0]]
            if np.abs(off).max(initial=0) > 1:
                continue
            e = np.concatenate([edges[:, :2], off], axis=1)
            key = e.tobytes()
            if key in seen:
                continue
            seen.add(key)
            yield Frame(e, m, k)
