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
