import numpy as np
import pytest
from pymatgen.analysis.local_env import EconNN
from pymatgen.analysis.structure_matcher import StructureMatcher

from domains.crystals.cell import wrapped
from domains.crystals.codec import _encode_supercell, canonical, decode, encode, encode_info
from domains.crystals.data import permuted
from domains.crystals.geometry import BondTable
from domains.crystals.io import aflow_prototypes
from domains.crystals.neighbors import econ_pairs
from domains.crystals.slices import check, parse

STRICT = StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5)


@pytest.mark.parametrize("name", ["rocksalt", "perovskite", "rutile"])
def test_round_trip_matches_input(name, request):
    s = request.getfixturevalue(name)
    table = BondTable.fit([s])  # bond statistics of the structure itself
    text = encode(s)
    assert check(text) == (True, "valid")
    res = decode(text, table)
    assert res.ok, res.reason
    assert STRICT.fit(s, res.structure)


def test_econnn_matches_pymatgen(rutile, perovskite):
    for s in (wrapped(rutile), wrapped(perovskite)):
        mine = {tuple(r) for r in econ_pairs(s, band=0.0).tolist()}
        ref = {
            (i, nn["site_index"], *np.rint(nn["image"]).astype(int).tolist())
            for i, infos in enumerate(EconNN().get_all_nn_info(s))
            for nn in infos
        }
        assert mine == ref


def test_canonical_is_invariant_to_site_order(permute):
    rng = np.random.default_rng(0)
    records, _ = aflow_prototypes(max_atoms=12)
    for r in records[:15]:
        ref = encode(r.structure)
        for _ in range(2):
            assert encode(permute(r.structure, rng)) == ref, r.id


def test_canonical_is_invariant_to_edge_order_and_orientation(rutile):
    import random

    ref = encode(rutile)
    for seed in range(5):
        assert canonical(permuted(ref, random.Random(seed))) == ref


def test_layered_structure_gets_contacts_and_decodes(graphite):
    info = encode_info(graphite)
    assert info.n_contacts > 0
    assert check(info.slices)[0]
    assert decode(info.slices, BondTable.fit([graphite])).ok


def test_barycentric_placement_minimises_its_squared_bond_vectors(graphite):
    from domains.crystals import geometry

    g = parse(encode(graphite))
    x = geometry.barycentric(g)
    d = x[g.edges[:, 1]] + g.edges[:, 2:] - x[g.edges[:, 0]]
    grad = np.zeros_like(x)  # d/dx of sum |x_j + t - x_i|^2, zero at the minimum
    np.add.at(grad, g.edges[:, 1], 2 * d)
    np.add.at(grad, g.edges[:, 0], -2 * d)
    assert np.abs(grad).max() < 1e-9
    assert np.abs(d).max() <= 2 / 3 + 1e-9  # graphite: no bond vector longer than its own cell


def test_contacts_are_learned_apart_from_bonds_and_found_in_the_string(graphite):
    from domains.crystals import geometry

    other = graphite.copy()
    other.scale_lattice(graphite.volume * 1.03)
    table = BondTable.fit([graphite, other])
    assert table.bond["C-C"] == pytest.approx(1.43, abs=0.02)  # the interlayer pairs left out
    assert table.contact["C-C"] == pytest.approx(3.37, abs=0.03)
    g = parse(encode(graphite))
    found = geometry.contact_edges(g, table)
    assert found.sum() == encode_info(graphite).n_contacts == 2
    prob = geometry._Problem(g, table, geometry.FitOptions(), deadline=np.inf)
    assert prob.targets[found] == pytest.approx(table.contact["C-C"])
    res = decode(encode(graphite), table)
    assert res.ok and STRICT.fit(graphite, res.structure)


def test_skewed_cell_is_reduced_first(rocksalt):
    # the same crystal in a very skewed cell: bonds would span up to 4 cells along one axis
    skewed = rocksalt.copy()
    skewed.make_supercell([[1, 4, 0], [0, 1, 0], [0, 0, 1]])
    info = encode_info(skewed)
    assert info.slices == encode(rocksalt) and info.supercell == (1, 1, 1)


def test_long_bonds_fallback_uses_a_supercell_not_clamping(rocksalt):
    skewed = rocksalt.copy()
    skewed.make_supercell([[1, 4, 0], [0, 1, 0], [0, 0, 1]])
    info = _encode_supercell(wrapped(skewed), "econnn")  # what encode does without a frame
    g = parse(info.slices)
    assert np.abs(g.edges[:, 2:]).max() <= 1
    assert info.supercell != (1, 1, 1)
    res = decode(info.slices, BondTable.fit([rocksalt]))
    assert res.ok and STRICT.fit(rocksalt, res.structure)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("Xx 0 0 +oo", "does not parse"),
        ("Na Cl 0 1", "not a whole number"),
        ("Na Cl 0 2 ooo", "names site 2"),
        ("Na Cl 0 1 oo*", "offset"),
        ("Na Cl Cl 0 1 ooo 0 1 +oo 0 1 o+o 0 1 oo+", "atom without bonds"),
        ("Na Cl 0 1 ooo 0 1 +oo 0 1 o+o", "offsets do not span the 3 axes"),
        ("Na Na Cl Cl 0 2 +oo 0 0 o+o 0 0 oo+ 1 3 +oo 1 1 o+o 1 1 oo+", "not connected"),
        ("Na Cl 0 1 ooo 0 1 ++o 0 0 oo+ 1 1 oo+", "does not span 3 dimensions"),
    ],
)
def test_check_reasons(text, reason):
    ok, why = check(text)
    assert not ok and reason in why


def test_decode_reports_failure_instead_of_raising():
    res = decode("Na Cl 0 1 ooo")
    assert not res.ok and "offsets do not span" in res.reason


def test_decode_time_limit():
    res = decode(encode_info_of_big(), time_limit=1e-4)
    assert not res.ok and "time limit" in res.reason


def encode_info_of_big() -> str:
    records, _ = aflow_prototypes(max_atoms=40)
    big = max(records, key=lambda r: len(r.structure))
    return encode(big.structure)


def test_reads_older_format_strings():
    older = "Sr Cd Cd P P 0 3 -o- 0 3 oo- 0 3 --- 0 4 o-o 0 4 --o 0 4 ooo 1 3 ooo 1 3 -oo"
    older += " 1 3 o+o 1 4 ooo 2 4 ooo 2 4 +oo 2 4 o-o 2 3 ooo"
    assert check(older) == (True, "valid")
    assert decode(older).ok


def _variants(s, rng):
    """What users vary: origin, CIF rounding, basis, supercell."""
    from pymatgen.core import Lattice, Structure

    yield "translation", Structure(s.lattice, s.species, s.frac_coords + rng.random(3))
    f = np.round(s.frac_coords, 4) + rng.uniform(-1e-5, 1e-5, size=(len(s), 3))
    yield "noise", Structure(s.lattice, s.species, f)
    m = np.array([[1, 2, 0], [0, 1, 0], [0, 3, 1]])  # a' = a + 2b, c' = c + 3b
    lat = Lattice(m @ s.lattice.matrix)
    yield "cell", Structure(lat, s.species, s.cart_coords, coords_are_cartesian=True)
    yield "supercell", s * [2, 1, 1]


@pytest.mark.parametrize("name", ["rocksalt", "perovskite", "rutile", "graphite"])
def test_canonical_is_invariant_to_origin_rounding_basis_and_supercell(name, request):
    s = request.getfixturevalue(name)
    ref = encode(s)
    rng = np.random.default_rng(0)
    for kind, v in _variants(s, rng):
        assert encode(v) == ref, kind


def test_conventional_cell_encodes_as_primitive():
    from pymatgen.core import Lattice, Structure

    conv = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]
    )
    assert len(conv) == 8
    text = encode(conv)
    assert parse(text).n_sites == 2 and text == encode(conv.get_primitive_structure())


def test_check_rejects_duplicate_edges_and_canonical_drops_them():
    text = "Na Cl 0 1 ooo 0 1 +oo 0 1 o+o 0 1 oo+"
    dup = text + " 1 0 -oo"  # the edge 0 1 +oo seen from the other end
    ok, why = check(dup)
    assert not ok and "duplicate" in why
    assert canonical(dup) == canonical(text)


def _tetragonal(c: float):
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.tetragonal(3.0, c), ["Cu"], [[0, 0, 0]])


def test_bond_shell_at_the_econnn_threshold_does_not_flip_with_noise():
    # tune c until the two c-axis neighbours sit exactly at EconNN's weight threshold
    lo, hi = 3.05, 4.5  # 6 bonds (4 in-plane + 2 along c) at lo, 4 at hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if len(econ_pairs(_tetragonal(mid), band=0.0)) > 4 else (lo, mid)
    below, above = _tetragonal(lo * (1 - 1e-5)), _tetragonal(hi * (1 + 1e-5))
    # pymatgen's rule (band 0) flips on a 1e-5 change; the gap rule does not
    assert len(econ_pairs(below, band=0.0)) != len(econ_pairs(above, band=0.0))
    assert len(econ_pairs(below)) == len(econ_pairs(above))


def test_only_contacts_that_can_change_periodicity_are_candidates(graphite):
    from domains.crystals.neighbors import can_change_periodicity, undirected

    s = wrapped(graphite)
    bonds = undirected(econ_pairs(s))
    in_layer = np.array([[0, 0, 1, 0, 0], [2, 2, 1, 0, 0]])  # second neighbours in a layer
    between = np.array([[0, 1, 0, 0, 0], [2, 3, 0, 0, 0]])  # sites 0, 2 at z=1/4; 1, 3 at 3/4
    assert not can_change_periodicity(len(s), bonds, in_layer).any()
    assert can_change_periodicity(len(s), bonds, between).all()


def test_pseudo_translation_is_found_in_a_skewed_cell_too(rocksalt):
    from pymatgen.core import Lattice, Structure

    sup = rocksalt * [2, 1, 1]
    sup.translate_sites([0], [0.003, 0, 0])  # 0.01 A off an exact supercell
    m = np.array([[1, 3, 0], [0, 1, 0], [2, 0, 1]])
    skewed = Structure(Lattice(m @ sup.lattice.matrix), sup.species, sup.cart_coords,
                       coords_are_cartesian=True)  # fmt: skip
    assert parse(encode(skewed)).n_sites == parse(encode(sup)).n_sites == 2


def test_symmetrised_cell_makes_noisy_symmetry_copies_exactly_equal(rutile):
    from domains.crystals.cell import symmetrized

    rng = np.random.default_rng(0)
    noisy = rutile.copy()
    for k in range(len(noisy)):
        noisy.translate_sites([k], rng.uniform(-2e-4, 2e-4, 3))
    ti_o = lambda s: np.sort(s.distance_matrix[:2, 2:].ravel())  # noqa: E731
    assert np.ptp(ti_o(noisy)[:4]) > 1e-4  # the four short Ti-O bonds differ by noise
    sym = symmetrized(noisy)
    assert len(sym) == len(rutile) and np.ptp(ti_o(sym)[:4]) < 1e-9


def test_fit_restarts_keep_the_lowest_energy_and_survive_a_late_timeout(rocksalt, monkeypatch):
    """Several starts, the lowest final energy wins; the time limit reached during a later
    start ends the restarts but keeps the best geometry so far (it used to fail the decode)."""
    from domains.crystals import geometry

    g = parse(encode(rocksalt))
    real_fit = geometry._Problem.fit
    volumes = []

    def fit(self, x, m):
        if len(volumes) == 2:
            raise geometry.DecodeTimeout("decode time limit reached")
        x, m, _ = real_fit(self, x, m)
        m = m * (1.5 if not volumes else 1.0)  # the first start: another cell, higher energy
        volumes.append(abs(np.linalg.det(m)))
        return x, m, [5.0, 1.0][len(volumes) - 1]

    monkeypatch.setattr(geometry._Problem, "fit", fit)
    s = geometry.embed(g, BondTable(), options=geometry.FitOptions(restarts=4))
    assert len(volumes) == 2  # the third start timed out, the fourth never ran
    assert s.volume == pytest.approx(volumes[1], rel=1e-6)  # energy 1.0 beat energy 5.0


def _pseudo_supercell(d: float):
    """Two formula units, the second TiO pair 0.045 A off the first shifted by c/2."""
    from pymatgen.core import Lattice, Structure

    lat = Lattice.from_parameters(5.494, 3.188, 9.302, 73.225, 83.757, 80.837)
    p = np.array([0.691, 0.179, 0.198])
    shift = lat.get_fractional_coords(d * np.array([-0.0896, -0.2460, 0.9651]))
    q = p + [0, 0, 0.5] + shift
    return Structure(lat, ["Ti", "O", "Ti", "O"], [[0, 0, 0], p, [0, 0, 0.5], q])


def test_primitive_search_tolerance_is_a_distance_not_per_axis():
    from domains.crystals.cell import PRIMITIVE_TOL, reduced_cell

    near = _pseudo_supercell(0.045)  # within the 0.05 A tolerance in Cartesian distance
    # pymatgen's search scales its tolerance per lattice axis and misses it in this cell
    assert len(near.get_reduced_structure().get_primitive_structure(tolerance=PRIMITIVE_TOL)) == 4
    assert len(reduced_cell(near)) == 2
    assert encode(near) == encode(near * [2, 1, 1]) == encode(near * [1, 3, 1])
    assert len(reduced_cell(_pseudo_supercell(0.08))) == 4  # beyond it: a distorted supercell
