import pytest

from seqmodels.cli import main


def test_encode_check_decode_files(tmp_path, rocksalt, perovskite, capsys):
    folder = tmp_path / "cifs"
    folder.mkdir()
    (folder / "a.cif").write_text(rocksalt.to(fmt="cif"))
    (folder / "b.cif").write_text(perovskite.to(fmt="cif"))
    (folder / "bad.cif").write_text("nonsense")
    assert main(["crystals", "encode", str(folder), "-o", str(tmp_path / "s.tsv")]) == 0
    lines = (tmp_path / "s.tsv").read_text().splitlines()
    assert lines[0] == "id\tslices" and len(lines) == 3
    assert "bad.cif" in capsys.readouterr().err
    (tmp_path / "s.tsv").write_text("\n".join([*lines, "x\tNa Cl 0 1 ooo"]) + "\n")
    assert main(["crystals", "check", str(tmp_path / "s.tsv")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[1] for line in out][:2] == ["valid", "valid"]
    assert "offsets do not span" in out[2]
    assert main(["crystals", "decode", str(tmp_path / "s.tsv"), "-o", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out").glob("*.cif"))) == 2
    assert "cannot decode" in capsys.readouterr().err


def test_decode_single_string_to_cif(tmp_path):
    out = tmp_path / "nacl.cif"
    assert (
        main(["crystals", "decode", "Na Cl 0 1 ooo 0 1 +oo 0 1 o+o 0 1 oo+", "-o", str(out)]) == 0
    )
    assert "_cell_length_a" in out.read_text()


def test_missing_bond_table_is_a_clear_error(tmp_path, capsys):
    code = main(["crystals", "decode", "Na Cl 0 1 ooo", "--table", str(tmp_path / "t.json")])
    assert code != 0
    assert "bond table not found" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["encode", "table"])
def test_missing_input_is_a_clear_error(tmp_path, cmd, capsys):
    args = ["crystals", cmd, str(tmp_path / "nope.csv")]
    if cmd == "table":
        args += ["-o", str(tmp_path / "t.json")]
    assert main(args) != 0
    assert "nope.csv" in capsys.readouterr().err
