"""recipes/core/scales.yaml end to end at a few steps: tokenizer fit, next-scale fit on the
tokenized data (cache written), `seqmodels scales generate` with guidance, the untrained
baseline and the tokenizer reference."""

import json
from pathlib import Path

import pytest
import yaml

from seqmodels.recipes import run_recipe

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "core" / "scales.yaml"


@pytest.mark.slow
def test_scales_recipe_runs_end_to_end(tmp_path):
    recipe = yaml.safe_load(RECIPE.read_text())
    for stage in recipe["stages"]:
        config = stage.get("config")
        if config:
            config["model"]["init_args"]["max_steps"] = 4
            config["trainer"].update(max_steps=4, val_check_interval=2, log_every_n_steps=1)
            data = config["data"]["init_args"]
            src = data.get("source", {}).get("init_args", data)
            src["n_examples"] = 120
    recipe["stages"][-1]["args"]["n"] = 4
    small = tmp_path / "scales.yaml"
    small.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    metrics = run_recipe(small, out)
    gen = metrics["generate"]
    for key in ("g1/valid_fraction", "g2/class_match", "untrained_g1/valid_fraction"):
        assert 0.0 <= gen[key] <= 1.0
    assert "tokenizer_reference/valid_fraction" in gen
    assert (out / "generate" / "samples_guidance_2.png").is_file()
    assert list((out / "tokenizer" / "checkpoints" / "tokenized").glob("*.pt"))
    assert json.loads((out / "metrics.json").read_text())["generate"] == gen
