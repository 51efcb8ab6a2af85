"""The DNA recipes parse, define the finetuning task once, and keep the split settings of
pretraining and finetuning identical."""

from pathlib import Path

import pytest

from seqmodels.recipes import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "dna"


@pytest.mark.parametrize(
    "name", ["quickstart.yaml", "omni-multitask.yaml", "human-nontata-gpu.yaml"]
)
def test_recipe_loads(name, tmp_path):
    assert load_recipe(RECIPES / name, tmp_path)


def test_omni_single_task_stages_differ_from_multitask_only_in_the_task(tmp_path):
    stages = {s.name: s for s in load_recipe(RECIPES / "omni-multitask.yaml", tmp_path)}
    multi = stages["multitask"].config
    singles = [s for n, s in stages.items() if n.startswith("single_")]
    assert len(singles) == 5
    for s in singles:
        cfg = s.config
        data = dict(cfg["data"]["init_args"])
        assert data.pop("only") == [s.name.removeprefix("single_")]
        assert data == multi["data"]["init_args"]
        assert cfg["model"] == multi["model"] and cfg["trainer"]["max_epochs"] == 3
        dirpath = cfg["trainer"]["callbacks"][1]["init_args"]["dirpath"]
        assert dirpath == str(tmp_path / s.name / "checkpoints")
    pre = stages["pretrain"].config["data"]["init_args"]
    assert pre["split_seed"] == multi["data"]["init_args"]["split_seed"]
    classify = [s for n, s in stages.items() if n.startswith("classify")]
    assert classify and all(s.args["ckpt"].endswith("checkpoints/best.ckpt") for s in classify)
