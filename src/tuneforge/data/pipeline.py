"""Rows of conversations to a tokenized dataset, with a report of what was kept, cut and dropped, and a
cache keyed by everything that changes the result.

The cache key is built from named parts (see `preprocess_settings`): the stage, the template (its class and
every setting, canonicalised so the key is the same in every process), the tokenizer (its whole
serialised vocabulary, merges, normalisation and special tokens, plus its chat template), the processing
options (cutoff_len, train_on_prompt, mask_history, packing mode), the source of the code that tokenizes,
and the rows themselves: a hash of their contents, so a rewritten data file can never be served from a
stale cache, whatever its size or modification time.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..stages import row_shape
from . import processors
from .conversation import Conversation
from .processors import ProcessorOptions, cut_blocks, encode_documents

logger = logging.getLogger(__name__)

REPORT_FILE = "tuneforge_report.json"
# Below this many rows, starting worker processes costs more than it saves.
MIN_ROWS_FOR_WORKERS = 256


@dataclass
class PreprocessReport:
    rows_in: int = 0
    examples: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)
    cache: str = ""  # "hit <path>", "saved <path>", "not cached (...)" or "" (streaming)

    def lines(self) -> list[str]:
        out = [f"rows tokenized: {self.rows_in}, examples kept: {self.examples}, truncated: {self.truncated}"]
        out += [f"dropped {n}: {reason}" for reason, n in self.dropped.most_common()]
        if self.cache:
            out.append(f"cache: {self.cache}")
        return out

    @property
    def cache_hit(self) -> bool:
        return self.cache.startswith("hit ")


def _tokenize_batch(batch, *, stage, template, tokenizer, opts):
    shape = row_shape(stage)
    build = getattr(processors, shape.processor)
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    out: dict[str, list] = {}
    drops, cuts = [], []
    for row in rows:
        example, cut = build(template, tokenizer, Conversation.from_dict(row), opts)
        if isinstance(example, str):
            drops.append(example), cuts.append(cut)
            example = None
        else:
            drops.append(""), cuts.append(cut)
        for key in shape.columns:
            out.setdefault(key, []).append(example[key] if example else _empty(key))
    out["_drop"], out["_cut"] = drops, cuts
    return out


def _encode_documents_batch(batch, *, tokenizer):
    texts = batch["text"]
    encoded = iter(encode_documents(tokenizer, texts))  # the non-blank ones, in order, in one call
    return {"_doc": [next(encoded) if t and t.strip() else [] for t in texts]}


def _block_batch(batch, *, cutoff_len, concatenate):
    # pt's second step, run in one process: where blocks start must not depend on how rows were split
    # among tokenizing workers (it does depend on the batch size, which is part of the cache key).
    blocks = cut_blocks([d for d in batch["_doc"] if d], cutoff_len, concatenate)
    return {"input_ids": blocks, "labels": [list(b) for b in blocks]}


def _map_rows(rows, stage, template, tokenizer, data_args, workers, desc, key=None):
    """The tokenized rows (with _drop/_cut columns for the row-per-example stages). key: the cache key,
    given to datasets as the result's fingerprint, which datasets would otherwise compute by pickling the
    function's arguments, the tokenizer among them (its whole vocabulary, once more)."""
    from datasets import Dataset

    columns = list(rows.column_names or [])
    in_memory = isinstance(rows, Dataset)
    extra = dict(num_proc=workers, desc=desc, load_from_cache_file=False) if in_memory else {}
    if in_memory and key:
        extra["new_fingerprint"] = f"{key}-tokenized"
    batch_size = data_args.preprocessing_batch_size
    if not _is_document(stage):
        opts = ProcessorOptions(data_args.cutoff_len, data_args.train_on_prompt, data_args.mask_history)
        kwargs = dict(stage=stage, template=template, tokenizer=tokenizer, opts=opts)
        return rows.map(_tokenize_batch, batched=True, batch_size=batch_size, fn_kwargs=kwargs,
                        remove_columns=columns, **extra)
    docs = rows.map(_encode_documents_batch, batched=True, batch_size=batch_size,
                    fn_kwargs=dict(tokenizer=tokenizer), remove_columns=columns, **extra)
    extra.pop("num_proc", None)
    if in_memory:
        extra["desc"] = "Cutting into blocks"
        extra.pop("new_fingerprint", None)
    kwargs = dict(cutoff_len=data_args.cutoff_len, concatenate=packs_documents(data_args))
    return docs.map(_block_batch, batched=True, batch_size=batch_size, fn_kwargs=kwargs, remove_columns=["_doc"],
                    **extra)


def _is_document(stage: str) -> bool:
    """Plain-text stages are tokenized as a stream of documents cut into blocks, not row by row."""
    return row_shape(stage).name == "document"


def _empty(key: str):
    return {"kto_tag": False, "extra": "{}"}.get(key, [])


# ----- what the result depends on


def canonical(value):
    """A JSON-able form of `value` that is the same in every process (sets sorted, dataclasses by field,
    no memory addresses), so a key built from it does not change from one run to the next."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__class__": type(value).__name__, **fields}
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "__dict__"):
        return {"__class__": type(value).__name__, **canonical(vars(value))}
    return f"{type(value).__name__}:{value!r}"


def fingerprint(*parts) -> str:
    blob = json.dumps(canonical(list(parts)), sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def template_identity(template) -> dict:
    return {"class": type(template).__name__, "name": getattr(template, "name", None),
            "settings": canonical(vars(template) if hasattr(template, "__dict__") else {})}


IDENTITY_ATTRIBUTE = "_tuneforge_identity"


def tokenizer_identity(tokenizer) -> str:
    """Everything about a tokenizer that changes token ids: for a fast tokenizer its whole serialised form
    (vocabulary, merges, normaliser, pre-tokeniser, added tokens), else its vocabulary; and the special
    tokens and chat template transformers keeps beside it.

    Serialising a large vocabulary takes most of a second, and the key is built for the training set, the
    eval set and tokenized_path alike, so the hash of the serialised part is kept on the tokenizer object
    itself, beside a stamp of what can change it in place: the added tokens and the normaliser,
    pre-tokeniser, post-processor and decoder (each a few bytes to read). A tokenizer's vocabulary and
    merges cannot change in place but by adding tokens, which the stamp sees. The rest (chat template,
    special tokens) is read on every call."""
    stamp = _core_stamp(tokenizer)
    kept = getattr(tokenizer, "__dict__", {}).get(IDENTITY_ATTRIBUTE)
    if kept is None or kept.stamp != stamp:
        kept = _KeptCore(stamp, _core_digest(tokenizer))
        if hasattr(tokenizer, "__dict__"):
            tokenizer.__dict__[IDENTITY_ATTRIBUTE] = kept
    extra = {
        "class": type(tokenizer).__name__,
        "chat_template": getattr(tokenizer, "chat_template", None),
        "special": {k: str(v) for k, v in (getattr(tokenizer, "special_tokens_map", None) or {}).items()},
        "split_special_tokens": getattr(tokenizer, "split_special_tokens", None),
        "length": len(tokenizer),
    }
    digest = kept.digest.copy()
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:20]


class _KeptCore:
    """The hash of a tokenizer's serialised form and the stamp it was made at. Not pickled (hash objects
    cannot be): a copy of the tokenizer in a worker process starts without it."""

    def __init__(self, stamp=None, digest=None):
        self.stamp, self.digest = stamp, digest

    def __reduce__(self):
        return (_KeptCore, ())


def _core_digest(tokenizer):
    """A sha256 object fed with the tokenizer's serialised vocabulary, merges and pipeline (the costly part)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # Truncation and padding are call-time settings transformers writes into the backend; they do not
        # change what `encode(..., add_special_tokens=False)` returns here.
        state.pop("truncation", None), state.pop("padding", None)
        core = json.dumps(state, sort_keys=True, ensure_ascii=False)
    else:
        core = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(core.encode())


def _core_stamp(tokenizer) -> tuple:
    """What can change a tokenizer's serialised form in place, cheap to read."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return (type(tokenizer).__name__, len(tokenizer))
    parts = [getattr(backend, name, None) for name in ("normalizer", "pre_tokenizer", "post_processor", "decoder")]
    return (type(tokenizer).__name__, len(tokenizer), type(backend.model).__name__,
            backend.get_vocab_size(with_added_tokens=False), repr(sorted(backend.get_added_tokens_decoder().items())),
            tuple(p.__getstate__() if p is not None else None for p in parts))


@functools.lru_cache(maxsize=1)
def code_identity() -> str:
    """A hash of the source of the data package: a new tuneforge that tokenizes differently never reuses
    the old cache."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def rows_identity(rows) -> str:
    """A hash of the contents of a datasets.Dataset (its selected rows, in order)."""
    import pyarrow as pa

    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(rows.features.to_dict(), sort_keys=True).encode())
    for table in rows.with_format("arrow").iter(batch_size=10_000):
        for batch in table.combine_chunks().to_batches():
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, batch.schema) as writer:
                writer.write_batch(batch)
            digest.update(sink.getvalue())
    return digest.hexdigest()


def packs_documents(data_args) -> bool:
    """pt: join documents into one stream (False: each document cut on its own, for neat packing)."""
    return not (data_args.neat_packing or data_args.packing is False)


def preprocess_settings(stage: str, template, tokenizer, data_args) -> dict:
    """Everything besides the rows that decides the tokenized result, by name (so a mismatch can be told)."""
    return {
        "stage": stage,
        "template": template_identity(template),
        "tokenizer": tokenizer_identity(tokenizer),
        "cutoff_len": data_args.cutoff_len,
        "train_on_prompt": bool(data_args.train_on_prompt),
        "mask_history": bool(data_args.mask_history),
        "concatenate_documents": packs_documents(data_args),
        # pt cuts blocks per map batch (each batch's leftover is its own short block), so the batch size
        # decides where blocks start; the other stages tokenize row by row.
        "block_batch_size": data_args.preprocessing_batch_size if _is_document(stage) else None,
        "code": code_identity(),
    }


def default_cache_root() -> Path:
    return Path(os.environ.get("TUNEFORGE_DATA_CACHE", Path.home() / ".cache" / "tuneforge" / "datasets"))


# ----- tokenizing with the cache


def _load_cached(cache_dir: Path, report: PreprocessReport):
    from datasets import load_from_disk

    try:
        meta = json.loads((cache_dir / REPORT_FILE).read_text())
        ds = load_from_disk(str(cache_dir))
    except (OSError, ValueError, KeyError) as e:
        logger.warning("ignoring unreadable tokenized cache %s (%s); rebuilding it", cache_dir, e)
        return None
    report.examples, report.truncated = len(ds), meta["truncated"]
    report.dropped = Counter(meta["dropped"])
    report.cache = f"hit {cache_dir}"
    return ds


def _save_cache(ds, cache_dir: Path, report: PreprocessReport, replace: bool):
    """Write atomically (a folder renamed into place). replace: an entry there is to be rebuilt
    (overwrite_cache, or unreadable); otherwise one that appeared meanwhile came from another process
    (another rank) with the same key, hence the same rows, and is kept."""
    from datasets import load_from_disk

    tmp = cache_dir.with_name(f"{cache_dir.name}.tmp{os.getpid()}")
    try:
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        ds.save_to_disk(str(tmp))
        (tmp / REPORT_FILE).write_text(json.dumps({"truncated": report.truncated, "dropped": dict(report.dropped)}))
        if cache_dir.exists() and replace:
            shutil.rmtree(cache_dir)
        if cache_dir.exists():
            shutil.rmtree(tmp)
        else:
            tmp.rename(cache_dir)
    except OSError as e:  # a read-only cache folder costs speed next time, not correctness
        shutil.rmtree(tmp, ignore_errors=True)
        report.cache = f"not cached ({cache_dir.parent}: {e.strerror or e})"
        return ds
    report.cache = f"saved {cache_dir}"
    return load_from_disk(str(cache_dir))  # memory-mapped, like a cache hit


def tokenize_rows(rows, *, stage, template, tokenizer, data_args, key_parts=(), num_proc=None, desc="Tokenizing"):
    """rows: a datasets.Dataset (or IterableDataset when streaming) of Conversation columns. key_parts:
    anything else the caller wants in the cache key (names, files); the rows' contents, the template,
    tokenizer and options are always part of it. Returns (dataset, report)."""
    from datasets import Dataset

    report = PreprocessReport()
    if not isinstance(rows, Dataset):  # streaming: tokenized lazily, never cached
        ds = _map_rows(rows, stage, template, tokenizer, data_args, None, desc)
        if _is_document(stage):
            return ds, report
        return ds.filter(lambda r: not r["_drop"]).remove_columns(["_drop", "_cut"]), report

    report.rows_in = len(rows)
    key = fingerprint("v2", preprocess_settings(stage, template, tokenizer, data_args), list(key_parts),
                      rows_identity(rows))
    cache_dir = default_cache_root() / key
    existed = cache_dir.is_dir()
    if existed and not data_args.overwrite_cache:
        ds = _load_cached(cache_dir, report)
        if ds is not None:
            return ds, report
    workers = num_proc if num_proc and num_proc > 1 and len(rows) > MIN_ROWS_FOR_WORKERS else None
    ds = _map_rows(rows, stage, template, tokenizer, data_args, workers, desc, key=key)
    if not _is_document(stage):
        report.dropped = Counter(d for d in ds["_drop"] if d)
        report.truncated = sum(ds["_cut"])
        if report.dropped:
            ds = ds.filter(lambda d: not d, input_columns=["_drop"], desc="Dropping unusable rows")
        ds = ds.remove_columns(["_drop", "_cut"])
    report.examples = len(ds)
    if not report.examples:  # nothing worth keeping; the caller says why
        report.cache = "not cached (no examples)"
        return ds, report
    return _save_cache(ds, cache_dir, report, replace=existed), report
