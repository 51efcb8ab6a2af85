"""Bad input to the crystals commands: clear errors naming the item, batches continue,
non-zero exit codes when every item failed."""

import csv

import pytest
from pymatgen.core import Lattice, Structure

from seqmodels.cli import main

NACL = "Na Cl 0 1 ooo 0 1 +oo 0 1 o+o 0 1 oo+"


def test_check_reads_a_csv_with_a_slices_column(tmp_path, capsys):
    path = tmp_path / "s.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["material_id", "slices", "band_gap"])
        w.writerow(["m-1", NACL, "1.0"])
        w.writerow(["m-2", "Na Cl 0 1 ooo", "2.0"])
    assert main(["crystals", "check", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "m-1\tvalid" and out[1].startswith("m-2\toffsets do not span")


def test_check_and_decode_fail_when_every_item_fails(tmp_path, capsys):
    path = tmp_path / "bad.tsv"
    path.write_text("id\tslices\na\tNa Cl 0 1 ooo\nb\tXx 0 0\n")
    assert main(["crystals", "check", str(path)]) != 0
    assert main(["crystals", "decode", str(path), "-o", str(tmp_path / "out")]) != 0
    assert "all 2" in capsys.readouterr().err


def test_mistyped_path_is_not_read_as_a_string(tmp_path, capsys):
    assert main(["crystals", "check", str(tmp_path / "smaples.tsv")]) != 0
    assert "no such file" in capsys.readouterr().err


def test_unicode_digits_do_not_crash(capsys):
    assert main(["crystals", "check", "Na Cl 0 \u00b9 ooo"]) != 0
    assert "does not parse" in capsys.readouterr().out


def test_poscar_encodes_and_xyz_is_a_molecule(tmp_path, rocksalt, capsys):
    rocksalt.to(filename=str(tmp_path / "POSCAR"), fmt="poscar")
    assert main(["crystals", "encode", str(tmp_path / "POSCAR")]) == 0
    assert "Na Cl" in capsys.readouterr().out
    (tmp_path / "w.xyz").write_text("3\nwater\nO 0 0 0\nH 0.76 0.59 0\nH -0.76 0.59 0\n")
    assert main(["crystals", "encode", str(tmp_path / "w.xyz")]) != 0
    assert "a molecule file, not a periodic crystal" in capsys.readouterr().err


def test_every_block_of_a_multi_block_cif(tmp_path, rocksalt, perovskite, capsys):
    (tmp_path / "two.cif").write_text(rocksalt.to(fmt="cif") + "\n" + perovskite.to(fmt="cif"))
    out = tmp_path / "sub" / "s.tsv"  # -o into a folder that does not exist yet
    assert main(["crystals", "encode", str(tmp_path / "two.cif"), "-o", str(out)]) == 0
    rows = out.read_text().splitlines()[1:]
    assert len(rows) == 2 and rows[0].split("\t")[0].endswith("#0")


def test_overlapping_atoms_and_heavy_elements_are_refused(tmp_path, capsys):
    close = Structure(Lattice.cubic(4.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5] * 3, [0.501] * 3])
    (tmp_path / "close.cif").write_text(close.to(fmt="cif"))
    heavy = Structure(Lattice.cubic(4.0), ["Rf", "O"], [[0, 0, 0], [0.5] * 3])
    (tmp_path / "heavy.cif").write_text(heavy.to(fmt="cif"))
    assert main(["crystals", "encode", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "A apart" in err and "beyond the SLICES vocabulary" in err


def test_table_continues_past_a_structure_that_is_not_3_periodic(tmp_path, rocksalt, capsys):
    (tmp_path / "a.cif").write_text(rocksalt.to(fmt="cif"))
    lone = Structure(Lattice.tetragonal(3.0, 80.0), ["Na"], [[0, 0, 0]])  # 80 A vacuum
    (tmp_path / "lone.cif").write_text(lone.to(fmt="cif"))
    assert main(["crystals", "table", str(tmp_path), "-o", str(tmp_path / "t" / "t.json")]) == 0
    assert "left out" in capsys.readouterr().err and (tmp_path / "t" / "t.json").is_file()


def test_bad_table_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "t.json").write_text("{not json")
    assert main(["crystals", "decode", NACL, "--table", str(tmp_path / "t.json")]) == 2
    assert "not a bond table" in capsys.readouterr().err


def test_decode_names_files_by_id(tmp_path):
    path = tmp_path / "s.tsv"
    path.write_text(f"id\tslices\ndata.csv:mp-22862\t{NACL}\n")
    assert main(["crystals", "decode", str(path), "-o", str(tmp_path / "out")]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mp-22862.cif"]


def test_bare_crystals_prints_its_own_help(capsys):
    assert main(["crystals"]) == 0
    assert "crystals commands" in capsys.readouterr().out


@pytest.mark.parametrize("cmd", ["encode", "decode", "check", "table", "generate", "evaluate"])
def test_help_has_an_example(cmd, capsys):
    with pytest.raises(SystemExit):
        main(["crystals", cmd, "--help"])
    assert "example:" in capsys.readouterr().out
