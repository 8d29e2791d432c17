"""Rows of conversations to a tokenized dataset, with a report of what was kept, cut and dropped, and a
cache keyed by everything that changes the result."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .conversation import Conversation
from .processors import (
    ProcessorOptions,
    kto_example,
    pairwise_example,
    pretrain_documents,
    supervised_example,
    unsupervised_example,
)

ROW_SHAPE = {"sft": "supervised", "rm": "pairwise", "dpo": "pairwise", "kto": "kto", "ppo": "unsupervised"}
_BUILDERS = {
    "supervised": supervised_example,
    "pairwise": pairwise_example,
    "kto": kto_example,
    "unsupervised": unsupervised_example,
}


@dataclass
class PreprocessReport:
    rows_in: int = 0
    examples: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)
    cache: str = ""  # "hit <path>", "saved <path>" or ""

    def lines(self) -> list[str]:
        out = [f"rows tokenized: {self.rows_in}, examples kept: {self.examples}, truncated: {self.truncated}"]
        out += [f"dropped {n}: {reason}" for reason, n in self.dropped.most_common()]
        return out


def _tokenize_batch(batch, *, stage, template, tokenizer, opts, concatenate):
    if stage == "pt":
        texts = batch["text"]
        blocks = pretrain_documents(tokenizer, texts, opts.cutoff_len, concatenate)
        n = len(blocks)
        return {"input_ids": blocks, "labels": [list(b) for b in blocks], "_drop": [""] * n, "_cut": [False] * n}
    build = _BUILDERS[ROW_SHAPE[stage]]
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    out: dict[str, list] = {}
    drops, cuts = [], []
    for row in rows:
        example, cut = build(template, tokenizer, Conversation.from_dict(row), opts)
        if isinstance(example, str):
            drops.append(f"{example}"), cuts.append(cut)
            example = None
        else:
            drops.append(""), cuts.append(cut)
        for key in _columns(stage):
            out.setdefault(key, []).append(example[key] if example else _empty(key))
    out["_drop"], out["_cut"] = drops, cuts
    return out


def _columns(stage: str) -> list[str]:
    shape = ROW_SHAPE[stage]
    if shape == "pairwise":
        return ["chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"]
    if shape == "kto":
        return ["input_ids", "labels", "kto_tag"]
    return ["input_ids", "labels"]


def _empty(key: str):
    return False if key == "kto_tag" else []


def fingerprint(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def tokenizer_identity(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    extra = [tokenizer.chat_template, tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token]
    return fingerprint(vocab, extra, type(tokenizer).__name__)


def default_cache_root() -> Path:
    return Path(os.environ.get("TUNEFORGE_DATA_CACHE", Path.home() / ".cache" / "tuneforge" / "datasets"))


def tokenize_rows(rows, *, stage, template, tokenizer, data_args, key_parts, num_proc=None, desc="Tokenizing"):
    """rows: a datasets.Dataset of Conversation columns. key_parts: what identifies the input rows (files
    with size and mtime, dataset names, sampling); with the template, tokenizer and options it keys the cache.
    Returns (dataset, report)."""
    from datasets import Dataset, load_from_disk

    opts = ProcessorOptions(data_args.cutoff_len, data_args.train_on_prompt, data_args.mask_history)
    concatenate = not (data_args.neat_packing or data_args.packing is False)
    key = fingerprint(
        "v1", stage, key_parts, template.name, getattr(template, "__dict__", {}), tokenizer_identity(tokenizer),
        opts.__dict__, concatenate,
    )
    report = PreprocessReport(rows_in=len(rows) if isinstance(rows, Dataset) else 0)
    cache_dir = default_cache_root() / key
    if isinstance(rows, Dataset) and cache_dir.is_dir() and not data_args.overwrite_cache:
        ds = load_from_disk(str(cache_dir))
        meta = json.loads((cache_dir / "tuneforge_report.json").read_text())
        report.examples, report.truncated, report.dropped = len(ds), meta["truncated"], Counter(meta["dropped"])
        report.cache = f"hit {cache_dir}"
        return ds, report
    fn_kwargs = dict(stage=stage, template=template, tokenizer=tokenizer, opts=opts, concatenate=concatenate)
    map_kwargs = dict(batched=True, batch_size=data_args.preprocessing_batch_size, fn_kwargs=fn_kwargs,
                      remove_columns=list(rows.column_names or []))
    if isinstance(rows, Dataset):
        map_kwargs.update(num_proc=num_proc if num_proc and num_proc > 1 and len(rows) > 256 else None,
                          desc=desc, load_from_cache_file=False)
    ds = rows.map(_tokenize_batch, **map_kwargs)
    if not isinstance(rows, Dataset):  # streaming: counted lazily, never cached
        return ds.filter(lambda r: not r["_drop"]).remove_columns(["_drop", "_cut"]), report
    drops = ds["_drop"]
    report.dropped = Counter(d for d in drops if d)
    report.truncated = sum(ds["_cut"])
    ds = ds.filter(lambda d: not d, input_columns=["_drop"]) if report.dropped else ds
    ds = ds.remove_columns(["_drop", "_cut"])
    report.examples = len(ds)
    tmp = cache_dir.with_name(cache_dir.name + f".tmp{os.getpid()}")
    try:
        ds.save_to_disk(str(tmp))
        (tmp / "tuneforge_report.json").write_text(
            json.dumps({"truncated": report.truncated, "dropped": dict(report.dropped)})
        )
        if cache_dir.exists():
            import shutil

            shutil.rmtree(cache_dir)
        tmp.rename(cache_dir)
        ds = load_from_disk(str(cache_dir))
        report.cache = f"saved {cache_dir}"
    except OSError:
        pass  # a read-only cache folder costs speed next time, not correctness
    return ds, report
