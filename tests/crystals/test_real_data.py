"""Checks on the shared MP-20 files; skipped when ../shared/data (SEQMODELS_DATA) is absent."""

import pytest

from seqmodels.paths import data_path

NONMETAL = data_path("crystals", "mp20_nonmetal_slices.csv")
MP20 = data_path("crystals", "mp20_mini.csv")


@pytest.mark.skipif(NONMETAL is None, reason="shared data crystals/mp20_nonmetal_slices.csv absent")
def test_published_older_format_slices_load_with_reasons(tmp_path):
    from domains.crystals.data import CrystalsDataModule

    dm = CrystalsDataModule(
        source="data:crystals/mp20_nonmetal_slices.csv",
        slices_column="SLICES",
        properties=["eform", "bandgap"],
        limit=300,
        log_dir=str(tmp_path),
    )
    dm.setup("fit")
    assert len(dm.records) + len(dm.skipped) == 300
    assert all("atom without bonds" in s.reason or "atoms" in s.reason for s in dm.skipped)
    if dm.skipped:
        assert (tmp_path / "skipped.jsonl").is_file()


@pytest.mark.skipif(MP20 is None, reason="shared data crystals/mp20_mini.csv absent")
def test_mp20_round_trip_sample():
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from domains.crystals.codec import decode, encode
    from domains.crystals.geometry import BondTable
    from domains.crystals.io import read_csv

    records, _ = read_csv(MP20, limit=130)
    table = BondTable.fit([r.structure for r in records[10:]])
    sm = StructureMatcher(ltol=0.3, stol=0.5, angle_tol=10)
    matched = sum(
        bool(res.ok and sm.fit(r.structure, res.structure))
        for r in records[:10]
        for res in [decode(encode(r.structure), table)]
    )
    assert matched >= 7  # loose match on 10 held-out MP-20 rows (measured here: 8)
