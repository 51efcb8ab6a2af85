"""The points recipes load (stage names, commands, substitutions) and their domain
commands parse their arguments; the fit stages name classes that exist."""

import importlib
from pathlib import Path

import pytest

from seqmodels.commands import build_parser
from seqmodels.recipes import _flags, load_recipe

RECIPES = sorted((Path(__file__).parents[2] / "recipes" / "points").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_loads_and_its_commands_parse(path, tmp_path):
    stages = load_recipe(path, tmp_path)
    assert stages and stages[0].name == "tokenizer"
    parser = build_parser()
    for st in stages:
        if st.fit_like:
            for part in ("model", "data"):
                module, name = st.config[part]["class_path"].rsplit(".", 1)
                assert hasattr(importlib.import_module(module), name)
        else:
            parser.parse_args([*st.command, *_flags(st.args, False)])
