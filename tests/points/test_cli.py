"""`seqmodels points ...`: every command has --help with an example; render keeps going
past a bad file, writes the picture, and exits non-zero."""

import numpy as np
import pytest

from domains.points.io import write_ply
from seqmodels.cli import main


@pytest.mark.parametrize(
    "command", ["encode", "decode", "generate", "evaluate", "render", "compare"]
)
def test_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["points", command, "--help"])
    assert exit_.value.code == 0
    assert "example:\n  seqmodels points " + command in capsys.readouterr().out


def test_render_reports_a_bad_file_and_still_writes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    write_ply(tmp_path / "in" / "a.ply", rng.normal(size=(300, 3)))
    np.savetxt(tmp_path / "in" / "bad.xyz", rng.normal(size=(5, 3)))
    code = main(
        [
            "points",
            "render",
            str(tmp_path / "in"),
            "--n-points",
            "100",
            "--out",
            str(tmp_path / "shapes.png"),
        ]
    )
    err = capsys.readouterr().err
    assert code != 0
    assert "bad.xyz: 5 points, fewer than the 100 requested" in err
    assert (tmp_path / "shapes.png").stat().st_size > 1000


def test_compare_mean_and_spread_over_seeds(tmp_path, capsys):
    import json

    folders = []
    for i, nna in enumerate([0.7, 0.8]):
        d = tmp_path / f"eval_s{i}"
        d.mkdir()
        model = {"MMD-CD": 0.02, "COV-CD": 0.3, "1-NNA-CD": nna}
        ref = {"MMD-CD": 0.01, "COV-CD": 0.6, "1-NNA-CD": 0.5}
        (d / "metrics.json").write_text(json.dumps({"chair": {"model": model, "train_copy": ref}}))
        folders.append(str(d))
    code = main(["points", "compare", "--runs", "xs=" + ",".join(folders), "--out", str(tmp_path)])
    assert code == 0
    table = (tmp_path / "compare.md").read_text()
    assert "| xs (chair) | 2 | 0.0200 +- 0.0000 | 0.3000 +- 0.0000 | 0.7500 +- 0.0500 |" in table
    assert "| train_copy (chair) | - |" in table and (tmp_path / "compare.png").is_file()


def test_evaluate_against_a_folder_of_held_out_shapes(tmp_path, capsys):
    """References from a path (e.g. shapes nobody has seen), the train copy from
    --train-source; without it the references are skipped with a note, not copied."""
    import json

    from domains.points.synthetic import make_shapes

    shapes = make_shapes(12, 128, ("box",), seed=0)
    for folder, part in (("box_test", shapes[:6]), ("box_train", shapes[6:])):
        for k, s in enumerate(part):
            write_ply(tmp_path / folder / f"box_{k}.ply", s.points)
    samples = np.stack([s.points for s in make_shapes(6, 128, ("box",), seed=5)])
    npz = tmp_path / "samples.npz"
    np.savez(npz, points=samples, labels=np.zeros(6, int), classes=np.array(["box"]))
    common = ["points", "evaluate", "--samples", str(npz), "--source", str(tmp_path / "box_test")]
    common += ["--classes", "box", "--n-points", "128"]

    assert (
        main([*common, "--train-source", str(tmp_path / "box_train"), "--out", str(tmp_path / "a")])
        == 0
    )
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    # the train copy drew the 6 training boxes, not the references themselves (which would
    # give MMD 0)
    assert m["box"]["train_copy"]["MMD-CD"] > 0 and "1-NNA-CD" in m["box"]["model"]

    assert main([*common, "--out", str(tmp_path / "b")]) == 0
    assert "references are skipped" in capsys.readouterr().err
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert set(m["box"]) == {"model"}
