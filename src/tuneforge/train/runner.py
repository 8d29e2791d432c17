"""`tuneforge train`: parses the config and hands it to the recipe of its stage (see stages.py)."""

from __future__ import annotations

import importlib

from ..stages import get_stage
from .common import parse_train_args


def run_train(argv: list[str]) -> dict:
    args = parse_train_args(argv)
    recipe = importlib.import_module(get_stage(args.finetune.stage).recipe)
    return recipe.run(args)
