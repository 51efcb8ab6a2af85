"""The on-disk SLICES cache returns what the encoder returns and goes stale with the file."""

import csv

import pytest

from domains.crystals import data as crystals_data
from domains.crystals.data import CrystalsDataModule


def _write_csv(path, structures):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["material_id", "cif", "formation_energy_per_atom", "band_gap"])
        for k, s in enumerate(structures):
            w.writerow([f"m-{k}", s.to(fmt="cif"), -1.0 - k, 0.5 * k])


def _records(path, cache_dir):
    dm = CrystalsDataModule(source=str(path), max_atoms=20, cache_dir=str(cache_dir))
    return [(r["id"], r["slices"]) for r in dm.records]


def test_cache_hit_equals_encoding_and_file_change_invalidates(
    tmp_path, rocksalt, perovskite, rutile, monkeypatch
):
    src = tmp_path / "x.csv"
    _write_csv(src, [rocksalt, perovskite])
    first = _records(src, tmp_path / "cache")
    assert len(first) == 2 and list((tmp_path / "cache" / "crystals").glob("x-*.json"))

    def no_encoding(*a, **k):
        raise AssertionError("encoded again although cached")

    monkeypatch.setattr(crystals_data, "encode", no_encoding)
    assert _records(src, tmp_path / "cache") == first  # served from the cache

    _write_csv(src, [rocksalt, rutile])  # same ids, different second crystal
    with pytest.raises(AssertionError, match="encoded again"):
        _records(src, tmp_path / "cache")
    monkeypatch.undo()
    changed = _records(src, tmp_path / "cache")
    assert changed[0] == first[0] and changed[1] != first[1]


def test_cache_off(tmp_path, rocksalt, monkeypatch):
    src = tmp_path / "y.csv"
    _write_csv(src, [rocksalt])
    calls = []
    real = crystals_data.encode
    monkeypatch.setattr(crystals_data, "encode", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setenv("SEQMODELS_CACHE", "off")
    for _ in range(2):
        assert len(CrystalsDataModule(source=str(src), max_atoms=20).records) == 1
    assert len(calls) == 2


def test_cache_key_covers_the_encoder_source(tmp_path, monkeypatch):
    """Editing any module of the encoder (here neighbors.py) must give a new cache file."""
    import shutil
    from pathlib import Path

    pkg = tmp_path / "pkg"
    shutil.copytree(
        Path(crystals_data.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__")
    )
    monkeypatch.setattr(crystals_data, "__file__", str(pkg / "data.py"))
    src = tmp_path / "z.csv"
    src.write_text("material_id,cif\n")
    key = crystals_data.EncodingCache._key(src, "econnn")
    assert crystals_data.EncodingCache._key(src, "econnn") == key
    assert crystals_data.EncodingCache._key(src, "crystalnn") != key
    with open(pkg / "neighbors.py", "a") as fh:
        fh.write("\nECON_BAND_CHANGED = 0.04\n")
    assert crystals_data.EncodingCache._key(src, "econnn") != key
