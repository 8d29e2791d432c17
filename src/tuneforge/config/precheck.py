"""Every config mistake that can be found without a model, found before torch and transformers load.

`tuneforge train` (and `data preview`) run this first: keys and their values, settings that clash, the
stage's keys, the dataset names against dataset_info.json and the files they point to. It takes a fraction of
a second; the full parse that follows (with transformers' TrainingArguments) only adds what needs them.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .parser import build_args, read_sources
from .validate import validate


def check_train_config(argv: list[str]) -> None:
    from ..data.registry import resolve_specs

    args, train_kwargs = build_args(read_sources(argv), with_training=True, quick=True)
    validate(args, train_kwargs, args.sources)
    d = args.data
    for names in (d.dataset, d.eval_dataset):
        for spec in resolve_specs(names, d.dataset_dir) if names else []:
            if spec.load_from == "file" and not Path(spec.path).exists():
                raise DataError(f"{spec.where}: its file {spec.path} does not exist; fix file_name in "
                                f"dataset_info.json or dataset_dir")
