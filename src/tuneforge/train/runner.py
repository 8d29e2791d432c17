"""`tuneforge train`: parses the config and hands it to the recipe of its stage (see stages.py)."""

from __future__ import annotations

import importlib

from ..stages import get_stage
from .common import parse_train_args, release_output_dir


def run_train(argv: list[str]) -> dict:
    args = parse_train_args(argv)
    recipe = importlib.import_module(get_stage(args.finetune.stage).recipe)
    try:
        return recipe.run(args)
    finally:
        release_output_dir(args)  # also when the run fails: an in-process caller must not keep the folder
