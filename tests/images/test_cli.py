"""`seqmodels images ...` end to end on digits with tiny models: fit a tokenizer, encode a
folder with a broken file (written, non-zero exit), decode, fit the AR model on the cached
tokens, generate per class, train the classifier, evaluate."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from domains.images.splits import load_split
from seqmodels.cli import main

TINY = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "n_heads": 2}
TOK = {"image_size": 8, "patch_size": 2, "n_tokens": 16, "levels": [5, 5, 5], **TINY}


@pytest.mark.parametrize("command", ["classifier", "encode", "decode", "generate", "evaluate"])
def test_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["images", command, "--help"])
    assert exit_.value.code == 0
    assert "example:\n  seqmodels images " + command in capsys.readouterr().out


def _fit(tmp_path, name, model, data, steps=6):
    cfg = {
        "seed_everything": 0,
        "model": model,
        "data": data,
        "trainer": {
            "max_steps": steps,
            "accelerator": "cpu",
            "devices": 1,
            "logger": False,
            "enable_progress_bar": False,
            "limit_val_batches": 1,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    root = tmp_path / name
    assert main(["fit", "--config", str(path), "--trainer.default_root_dir", str(root)]) == 0
    return str(root / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_commands_end_to_end(tmp_path, capsys):
    digits = {
        "class_path": "domains.images.data.ImageDataModule",
        "init_args": {"source": "digits", "batch_size": 32, "limit_eval": 64},
    }
    tok = _fit(
        tmp_path,
        "tok",
        {
            "class_path": "domains.images.tokenizer.ImageTokenizer",
            "init_args": {**TOK, "warmup_steps": 2, "max_steps": 6},
        },
        digits,
    )

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, im in enumerate(load_split("digits", "test", limit=3).images):
        Image.fromarray((im[0] * 255).astype(np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG truncated")
    ids = tmp_path / "ids.npz"
    code = main(
        ["images", "encode", "--tokenizer", tok, "--source", str(folder), "--out", str(ids)]
    )
    err = capsys.readouterr().err
    assert code == 2 and "broken.png: unreadable, skipped" in err
    assert np.load(ids)["ids"].shape == (3, 16)  # the readable images were still written

    png = tmp_path / "dec.png"
    assert (
        main(
            [
                "images",
                "decode",
                "--tokenizer",
                tok,
                "--ids",
                str(ids),
                "--k",
                "2",
                "--out",
                str(png),
            ]
        )
        == 0
    )
    assert Image.open(png).size[0] > 28

    # a flow decoder on the frozen encoder, decoded with the Euler steps chosen at sampling
    flow = _fit(
        tmp_path,
        "flow",
        {
            "class_path": "domains.images.tokenizer.ImageTokenizer",
            "init_args": {
                **TOK,
                "decoder": "flow",
                "flow_predict": "x",
                "init_from": tok,
                "freeze_encoder": True,
                "warmup_steps": 2,
                "max_steps": 4,
            },
        },
        digits,
        steps=4,
    )
    grids = {}
    for n in ("1", "3"):
        grids[n] = tmp_path / f"flow{n}.png"
        cmd = ["images", "decode", "--tokenizer", flow, "--ids", str(ids), "--flow-steps", n]
        assert main([*cmd, "--out", str(grids[n])]) == 0
    assert not np.array_equal(
        np.asarray(Image.open(grids["1"])), np.asarray(Image.open(grids["3"]))
    )
    assert main([*cmd[:-1], "0", "--out", str(tmp_path / "x.png")]) != 0
    assert "--flow-steps 0" in capsys.readouterr().err

    ar = _fit(
        tmp_path,
        "ar",
        {
            "class_path": "seqmodels.training.SeqLM",
            "init_args": {
                "d_model": 32,
                "n_layers": 1,
                "n_heads": 2,
                "max_len": 18,
                "cond_dropout": 0.1,
                "warmup_steps": 2,
                "max_steps": 6,
            },
        },
        {
            "class_path": "domains.images.data.ImageTokensDataModule",
            "init_args": {"tokenizer": tok, "source": digits, "batch_size": 32},
        },
    )
    gen = tmp_path / "gen"
    assert (
        main(
            [
                "images",
                "generate",
                "--model",
                ar,
                "--tokenizer",
                tok,
                "--per-class",
                "2",
                "--k",
                "4",
                "--guidance",
                "2",
                "--out",
                str(gen),
            ]
        )
        == 0
    )
    samples = np.load(gen / "samples.npz")
    assert samples["images"].shape == (20, 1, 8, 8) and samples["codes"].shape == (20, 4)
    assert samples["labels"].tolist() == [c for c in range(10) for _ in range(2)]
    assert (gen / "samples_per_class_k4.png").is_file()

    clf = tmp_path / "clf"
    assert (
        main(["images", "classifier", "--source", "digits", "--epochs", "1", "--out", str(clf)])
        == 0
    )
    assert "cached classifier" not in capsys.readouterr().out
    assert (
        main(["images", "classifier", "--source", "digits", "--epochs", "1", "--out", str(clf)])
        == 0
    )
    assert "cached classifier" in capsys.readouterr().out

    ev = tmp_path / "ev"
    assert (
        main(
            [
                "images",
                "evaluate",
                "--tokenizer",
                f"1d={tok}",
                "--samples",
                str(gen / "samples.npz"),
                "--classifier",
                str(clf / "classifier.pt"),
                "--source",
                "digits",
                "--limit",
                "50",
                "--out",
                str(ev),
            ]
        )
        == 0
    )
    m = json.loads((ev / "metrics.json").read_text())
    assert set(m["1d/k1"]) == {"psnr", "ssim", "feature_fd"}
    assert "1d/k16" in m and 0 <= m["generation/class_accuracy"] <= 1
    assert m["generation/feature_fd_floor_test"] < m["generation/feature_fd"]
    assert (ev / "reconstructions_1d.png").is_file() and (ev / "psnr_vs_k.png").is_file()
