"""CHGNet formation energies: CHGNet energy after a bounded relaxation minus CHGNet's own
elemental references (a CHGNet-model figure)."""

import pytest

pytest.importorskip("chgnet")

from domains.crystals import formation  # noqa: E402
from domains.crystals.evaluate import formation_all  # noqa: E402

MP_NACL = -2.1  # eV/atom, Materials Project's (DFT) formation energy of rock-salt NaCl


def test_nacl_formation_energy_is_close_to_dft_and_references_are_cached(rocksalt, tmp_path):
    path = tmp_path / "refs.json"
    refs = formation.ElementReferences(path)
    e, why = formation.formation_energy(rocksalt, refs, time_limit=10.0)
    assert why == "ok" and abs(e - MP_NACL) < 0.15
    assert refs.mu["Cl"]["from"] == "dimer"  # the diatomic gas is chlorine's reference
    assert path.is_file()

    def no_relaxing(*args, **kwargs):
        raise AssertionError("cached references must not be recomputed")

    cached = formation.ElementReferences(path)
    original = formation.chgnet_relax
    formation.chgnet_relax = no_relaxing
    try:
        assert cached.get("Na") == refs.get("Na") and cached.get("Cl") == refs.get("Cl")
        # an energy already computed (decode with relax="chgnet") is used, not recomputed
        e2, _ = formation.formation_energy(rocksalt, cached, energy_per_atom=-3.0)
        mu = 0.5 * (refs.get("Na") + refs.get("Cl"))
        assert e2 == pytest.approx(-3.0 - mu)
    finally:
        formation.chgnet_relax = original


def test_evaluation_reports_chgnet_keys_and_skips_invalid(rocksalt, tmp_path):
    collapsed = rocksalt.copy()
    collapsed.scale_lattice(0.01)  # atoms far too close: not structurally valid
    sets = {"samples": ([rocksalt, None, collapsed], [None] * 3, [[MP_NACL]] * 3)}
    m = formation_all(sets, [], ["formation_energy_per_atom"], tmp_path, time_limit=10.0)
    assert m["chgnet/formation_energy_computed"] == pytest.approx(1 / 3)
    assert m["chgnet/formation_energy_mae"] < 0.15
    assert m["chgnet/formation_energy_below_zero"] == 1.0
    rows = (tmp_path / "chgnet_formation.tsv").read_text().splitlines()
    assert len(rows) == 4 and rows[2].endswith("\t")  # the missing decode has no value
