"""Config to ready-to-train datasets: load rows, split, tokenize (cached), pack. Preview uses it too."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import DataError
from .collator import pack_examples
from .pipeline import PreprocessReport, tokenize_rows


@dataclass
class PreparedData:
    train: object | None
    eval: object | None
    load_lines: list[str] = field(default_factory=list)
    train_report: PreprocessReport | None = None
    eval_report: PreprocessReport | None = None

    def summary_lines(self) -> list[str]:
        out = list(self.load_lines)
        for name, rep in (("train", self.train_report), ("eval", self.eval_report)):
            if rep is not None:
                out += [f"[{name}] {line}" for line in rep.lines()]
        return out


def _key_parts(data_args, report, which: str, seed: int):
    files = getattr(report, "files", [])
    return [which, data_args.dataset if which == "train" else data_args.eval_dataset, data_args.max_samples,
            data_args.mix_strategy, data_args.interleave_probs, data_args.val_size, seed, files]


def prepare_datasets(data_args, stage: str, tokenizer, template, seed: int = 42, num_proc=None) -> PreparedData:
    from datasets import DatasetDict, load_from_disk

    from .loader import load_rows, split_train_val

    if data_args.tokenized_path and os.path.isdir(data_args.tokenized_path) and not data_args.overwrite_cache:
        saved = load_from_disk(data_args.tokenized_path)
        return PreparedData(saved.get("train"), saved.get("validation"),
                            [f"loaded tokenized data from {data_args.tokenized_path}"])
    rows, load_report = load_rows(data_args, stage, which="train", seed=seed)
    lines = list(load_report.summary_lines())
    eval_rows = None
    if data_args.eval_dataset:
        eval_rows, eval_report = load_rows(data_args, stage, which="eval", seed=seed)
        lines += list(eval_report.summary_lines())
    elif data_args.val_size:
        rows, eval_rows = split_train_val(rows, data_args.val_size, seed)
    key = _key_parts(data_args, load_report, "train", seed)
    train, train_rep = tokenize_rows(rows, stage=stage, template=template, tokenizer=tokenizer,
                                     data_args=data_args, key_parts=key, num_proc=num_proc)
    if train_rep.rows_in and not train_rep.examples:
        reasons = "; ".join(f"{n} rows: {r}" for r, n in train_rep.dropped.most_common()) or "no rows"
        raise DataError(f"no training example is left after preprocessing ({reasons}); "
                        "raise cutoff_len or check the dataset's columns")
    evalset, eval_rep = None, None
    if eval_rows is not None:
        evalset, eval_rep = tokenize_rows(eval_rows, stage=stage, template=template, tokenizer=tokenizer,
                                          data_args=data_args, key_parts=key + ["eval"], num_proc=num_proc,
                                          desc="Tokenizing eval")
    if data_args.packing or data_args.neat_packing:
        if not hasattr(train, "__len__"):
            raise DataError("packing needs a dataset that is not streamed; set streaming=false or packing=false")
        train = pack_examples(train, data_args.cutoff_len, neat=data_args.neat_packing, seed=seed)
    if data_args.tokenized_path:
        parts = {"train": train} | ({"validation": evalset} if evalset is not None else {})
        DatasetDict(parts).save_to_disk(data_args.tokenized_path)
        lines.append(f"saved tokenized data to {data_args.tokenized_path}")
    return PreparedData(train, evalset, lines, train_rep, eval_rep)
