import json

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from domains.crystals import metrics as M
from domains.crystals.io import read_any, read_cif, read_cif_dir, read_csv, write_skip_log

DISORDERED = """data_x
_cell_length_a 4.0
_cell_length_b 4.0
_cell_length_c 4.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Fe1 Fe 0 0 0 0.5
Co1 Co 0 0 0 0.5
"""


def test_readers_skip_bad_records_with_reasons(tmp_path, rocksalt):
    (tmp_path / "good.cif").write_text(rocksalt.to(fmt="cif"))
    (tmp_path / "broken.cif").write_text("data_broken\n_cell_length_a 1\nnot a cif at all\n")
    (tmp_path / "mixed.cif").write_text(DISORDERED)
    records, skipped = read_cif_dir(tmp_path)
    assert [r.id for r in records] == [str(tmp_path / "good.cif")]
    reasons = {s.id.split("/")[-1]: s.reason for s in skipped}
    assert "unreadable CIF" in reasons["broken.cif"]
    assert "disordered" in reasons["mixed.cif"]
    write_skip_log(skipped, tmp_path / "skipped.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "skipped.jsonl").read_text().splitlines()]
    assert len(lines) == 2


def test_atom_limit(tmp_path, rutile):
    (tmp_path / "r.cif").write_text(rutile.to(fmt="cif"))
    records, skipped = read_cif(tmp_path / "r.cif", max_atoms=4)
    assert not records and "over the limit" in skipped[0].reason


def test_csv_reader(tmp_path, rocksalt):
    import csv

    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["material_id", "band_gap", "cif"])
        w.writerow(["m-1", "1.5", rocksalt.to(fmt="cif")])
        w.writerow(["m-2", "oops", rocksalt.to(fmt="cif")])
        w.writerow(["m-3", "2.0", "garbage"])
    records, skipped = read_csv(path, prop_columns=["band_gap"])
    assert [r.props["band_gap"] for r in records] == [1.5]
    assert {s.id.split(":")[-1]: s.reason.split(" ")[0] for s in skipped} == {
        "m-2": "property",
        "m-3": "unreadable",
    }
    with pytest.raises(ValueError, match="no 'structure' column"):
        read_csv(path, cif_column="structure")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_any(tmp_path / "missing.csv")


def test_aflow_default_has_the_prototypes():
    records, skipped = read_any("aflow", max_atoms=None)
    assert len(records) + len(skipped) == 288 and len(records) == 288


def test_structural_and_compositional_validity(rocksalt):
    squashed = Structure(Lattice.cubic(3.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])
    assert M.structural_validity([rocksalt, squashed, None]) == pytest.approx(1 / 3)
    assert M.smact_valid(rocksalt.composition)
    bad = Structure(Lattice.cubic(5.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5] * 3, [0.25] * 3])
    assert not M.smact_valid(bad.composition)
    assert M.compositional_validity([rocksalt, bad, None]) == pytest.approx(1 / 3)
    assert M.validity([rocksalt, squashed, bad]) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("formula", "valid"),
    # where SMACT (as CDVAE runs it) and pymatgen's oxidation-state guesses disagree
    [("Na2BiO3", True), ("Co2Ge", True), ("LaSe2", False), ("NaCl", True), ("Fe", True)],
)
def test_smact_validity_as_cdvae(formula, valid):
    from pymatgen.core import Composition

    assert M.smact_valid(Composition(formula)) is valid


def test_wasserstein_and_coverage(rocksalt, perovskite, rutile):
    same = M.wasserstein_distances([rocksalt, perovskite], [rocksalt, perovskite])
    assert same == {"wdist_density": 0.0, "wdist_num_elems": 0.0}
    d = M.wasserstein_distances([rocksalt], [perovskite])
    assert d["wdist_num_elems"] == pytest.approx(1.0)
    assert d["wdist_density"] == pytest.approx(abs(rocksalt.density - perovskite.density))
    ref = M.fingerprints([rocksalt, perovskite])
    scale = M.composition_scale([rocksalt, perovskite, rutile])
    assert M.coverage(ref, ref, scale) == {"cov_recall": 1.0, "cov_precision": 1.0}
    other = M.fingerprints([rutile, None])  # a failed decode counts against precision
    cov = M.coverage(other, ref, scale)
    assert cov == {"cov_recall": 0.0, "cov_precision": 0.0}


def test_uniqueness_novelty_and_distances(rocksalt, perovskite, permute):
    twin = permute(rocksalt, np.random.default_rng(0))
    assert M.uniqueness([rocksalt, twin, perovskite]) == pytest.approx(2 / 3)
    assert M.novelty([twin, perovskite], [rocksalt]) == 0.5
    assert M.novelty([twin, perovskite], []) is None  # undefined without training structures
    assert M.element_distance([rocksalt], [rocksalt]) == 0.0
    assert M.element_distance([rocksalt], [perovskite]) == pytest.approx(1.0)
    assert M.spacegroup_distance([rocksalt, perovskite], [rocksalt, perovskite]) == 0.0


def test_slices_metrics_and_property_errors():
    good = "Na Cl 0 1 ooo 0 1 +oo 0 1 o+o 0 1 oo+"
    assert M.slices_validity([good, "Na Cl 0 1 ooo"]) == 0.5
    assert M.reconstruction_rate([None, object()]) == 0.5
    err = M.property_errors(np.array([[1.0, 2.0]]), np.array([[2.0, 2.0]]), ["a", "b"])
    assert err == {"a_mae": 1.0, "a_mape": 50.0, "b_mae": 0.0, "b_mape": 0.0}


def test_properties_are_measured_on_structures_and_proxies_are_named(rocksalt, perovskite):
    from domains.crystals.evaluate import property_metrics, string_uniqueness

    targets = [[rocksalt.density, 1.0], [perovskite.density + 1.0, 2.0]]
    predicted = [[0.0, 1.5], [0.0, 2.5]]  # a string model's guesses: never used for density
    m, used = property_metrics([rocksalt, perovskite], targets, ["density", "band_gap"], predicted)
    assert m["density_mae"] == pytest.approx(0.5)
    assert m["predictor/band_gap_mae"] == pytest.approx(0.5) and "band_gap_mae" not in m
    assert used[0][0] == pytest.approx(rocksalt.density)
    nacl = "Na Cl 0 1 ooo 0 1 +oo 0 1 o+o 0 1 oo+"
    same = "Na Cl 0 1 oo+ 0 1 o+o 1 0 -oo 0 1 ooo"  # the same graph, spelled differently
    assert string_uniqueness([nacl, same]) == 0.5


def test_fingerprint_time_bound(rocksalt, monkeypatch):
    monkeypatch.setattr(M, "FINGERPRINT_SECONDS", 1e-4)  # nothing finishes in 0.1 ms
    struc, comp = M.fingerprints([rocksalt])
    assert struc == [None] and comp == [None]


def test_missing_shared_file_names_the_fetch_command(tmp_path, monkeypatch):
    from domains.crystals.io import resolve

    monkeypatch.setenv("SEQMODELS_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="seqmodels data fetch mp20_mini"):
        resolve("data:crystals/mp20_mini.csv")
