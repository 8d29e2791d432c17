"""Config to ready-to-train datasets: load rows, split, tokenize (cached), pack. Preview uses it too."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .collator import pack_examples
from .pipeline import PreprocessReport, canonical, preprocess_settings, tokenize_rows

TOKENIZED_META = "tuneforge_tokenized.json"
# Settings a tokenized_path must have been made with to be loaded. The code hash is left out on purpose:
# an explicitly saved dataset stays usable across tuneforge versions.
_CHECKED_SETTINGS = ("stage", "template", "tokenizer", "cutoff_len", "train_on_prompt", "mask_history",
                     "concatenate_documents", "block_batch_size")


@dataclass
class PreparedData:
    train: object | None
    eval: object | None
    load_lines: list[str] = field(default_factory=list)
    train_report: PreprocessReport | None = None
    eval_report: PreprocessReport | None = None
    load_report: object | None = None  # loader.LoadReport of the training datasets
    eval_load_report: object | None = None
    packed_from: int | None = None  # examples before packing, when packed

    def summary_lines(self) -> list[str]:
        out = list(self.load_lines)
        for name, rep in (("train", self.train_report), ("eval", self.eval_report)):
            if rep is not None:
                out += [f"[{name}] {line}" for line in rep.lines()]
        if self.packed_from is not None and hasattr(self.train, "__len__"):
            out.append(f"[train] packed {self.packed_from} examples into {len(self.train)} rows")
        return out


def _key_parts(data_args, which: str, seed: int):
    # No file sizes or times: the key holds a hash of the rows themselves, so a touched file stays a hit.
    return [which, data_args.dataset if which == "train" else data_args.eval_dataset, data_args.max_samples,
            data_args.mix_strategy, data_args.interleave_probs, data_args.val_size, seed]


def _tokenized_meta(data_args, settings: dict, files) -> dict:
    return {
        "settings": canonical({k: settings[k] for k in _CHECKED_SETTINGS}),
        "dataset": data_args.dataset,
        "eval_dataset": data_args.eval_dataset,
        "files": [vars(f) for f in files],
    }


def _stale_reasons(saved: dict, current: dict) -> list[str]:
    reasons = [f"{k} differs" for k in _CHECKED_SETTINGS
               if saved.get("settings", {}).get(k) != current["settings"].get(k)]
    for key in ("dataset", "eval_dataset"):
        if saved.get(key) != current[key]:
            reasons.append(f"{key} was {saved.get(key)!r}, now {current[key]!r}")
    for f in saved.get("files", []):
        # A file absent here is fine: tokenized data is often made on one machine and trained on elsewhere.
        try:
            stat = os.stat(f["path"])
        except OSError:
            continue
        if stat.st_size != f["size"] or stat.st_mtime_ns != f["mtime_ns"]:
            reasons.append(f"{f['path']} changed since")
    return reasons


def _load_tokenized(data_args, stage, tokenizer, template) -> PreparedData:
    from datasets import load_from_disk

    path = data_args.tokenized_path
    try:
        saved = load_from_disk(path)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(
            f"tokenized_path '{path}' is not tokenized data saved by tuneforge ({e}); "
            "point it at an empty or new folder to save there, or set overwrite_cache: true"
        ) from None
    meta_file = Path(path) / TOKENIZED_META
    note = "made with unknown settings: no " + TOKENIZED_META
    if meta_file.is_file():
        saved_meta = json.loads(meta_file.read_text(encoding="utf-8"))
        current = _tokenized_meta(data_args, preprocess_settings(stage, template, tokenizer, data_args), [])
        reasons = _stale_reasons(saved_meta, current)
        if reasons:
            raise DataError(
                f"tokenized_path '{path}' was made with other settings or data ({'; '.join(reasons)}); "
                "set overwrite_cache: true to rebuild it, or point tokenized_path elsewhere"
            )
        note = f"made from dataset {saved_meta.get('dataset')} with the same settings"
    get = saved.get if hasattr(saved, "get") else (lambda k: saved if k == "train" else None)
    return PreparedData(get("train"), get("validation"), [f"loaded tokenized data from {path} ({note})"])


def _save_tokenized(data_args, parts: dict, meta: dict) -> str:
    from datasets import DatasetDict

    path = data_args.tokenized_path
    if any(not hasattr(ds, "__len__") for ds in parts.values()):
        raise DataError("tokenized_path cannot save a streamed dataset; set streaming: false or remove tokenized_path")
    DatasetDict(parts).save_to_disk(path)
    (Path(path) / TOKENIZED_META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return f"saved tokenized data to {path}"


def _nothing_left(report: PreprocessReport, load_report, data_args) -> DataError:
    reasons = [f"{reason}: {n}" for reason, n in report.dropped.most_common()]
    read = [f"{reason}: {n}" for st in load_report.datasets.values() for reason, n in st.dropped.most_common()]
    when_read = f"; before that, while reading: {', '.join(read)}" if read else ""
    return DataError(
        f"no training example is left after tokenizing: all {report.rows_in} rows were dropped "
        f"({', '.join(reasons) or 'no reason recorded'}){when_read}; raise cutoff_len (now {data_args.cutoff_len}) "
        "or check the dataset's rows and columns"
    )


def prepare_datasets(data_args, stage: str, tokenizer, template, seed: int = 42, num_proc=None) -> PreparedData:
    from .loader import load_rows, split_train_val

    if data_args.tokenized_path and os.path.isdir(data_args.tokenized_path) and not data_args.overwrite_cache \
            and any(Path(data_args.tokenized_path).iterdir()):
        return _load_tokenized(data_args, stage, tokenizer, template)
    rows, load_report = load_rows(data_args, stage, which="train", seed=seed)
    if rows is None:
        raise DataError("dataset is not set: name datasets from dataset_info.json or give file paths (dataset: a,b)")
    lines = list(load_report.summary_lines())
    eval_rows, eval_load_report = None, None
    if data_args.eval_dataset:
        eval_rows, eval_load_report = load_rows(data_args, stage, which="eval", seed=seed)
        lines += [f"[eval] {line}" for line in eval_load_report.summary_lines()]
    elif data_args.val_size:
        rows, eval_rows = split_train_val(rows, data_args.val_size, seed)
    key = _key_parts(data_args, "train", seed)
    train, train_rep = tokenize_rows(rows, stage=stage, template=template, tokenizer=tokenizer,
                                     data_args=data_args, key_parts=key, num_proc=num_proc)
    if train_rep.rows_in and not train_rep.examples:
        raise _nothing_left(train_rep, load_report, data_args)
    evalset, eval_rep = None, None
    if eval_rows is not None:
        evalset, eval_rep = tokenize_rows(eval_rows, stage=stage, template=template, tokenizer=tokenizer,
                                          data_args=data_args, key_parts=key + ["eval"], num_proc=num_proc,
                                          desc="Tokenizing eval")
    packed_from = None
    if data_args.packing or data_args.neat_packing:
        if not hasattr(train, "__len__"):
            raise DataError("packing needs a dataset that is not streamed; set streaming=false or packing=false")
        packed_from = len(train)
        train = pack_examples(train, data_args.cutoff_len, neat=data_args.neat_packing, seed=seed)
    if data_args.tokenized_path:
        parts = {"train": train} | ({"validation": evalset} if evalset is not None else {})
        files = list(load_report.files) + (list(eval_load_report.files) if eval_load_report else [])
        meta = _tokenized_meta(data_args, preprocess_settings(stage, template, tokenizer, data_args), files)
        lines.append(_save_tokenized(data_args, parts, meta))
    return PreparedData(train, evalset, lines, train_rep, eval_rep, load_report, eval_load_report, packed_from)
