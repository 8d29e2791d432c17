"""Which datasets a config names: entries of a LLaMA-Factory `dataset_info.json`, or plain file paths.

Only the entries a run asks for are validated, so one stale entry among hundreds in a shared
dataset_info.json does not stop every run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.errors import DataError
from tuneforge.config.lists import comma_list as split_names  # noqa: F401 -- callers import it from here

INFO_FILE = "dataset_info.json"
FORMATTINGS = ("alpaca", "sharegpt", "openai")
SOURCE_KEYS = ("file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
ENTRY_KEYS = SOURCE_KEYS + ("formatting", "ranking", "subset", "split", "folder", "num_samples", "columns", "tags")
COLUMN_KEYS = (
    "prompt", "query", "response", "history", "messages", "system", "tools",
    "chosen", "rejected", "kto_tag", "images", "videos", "audios",
)  # fmt: skip
MEDIA_COLUMNS = ("images", "videos", "audios")
TAG_KEYS = ("role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag")

# LLaMA-Factory's defaults, so existing dataset_info.json files mean the same thing here.
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}
SHAREGPT_COLUMNS = {"messages": "conversations"}
OPENAI_COLUMNS = {"messages": "messages"}
SHAREGPT_TAGS = {
    "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
    "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system",
}  # fmt: skip
OPENAI_TAGS = {
    "role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
    "observation_tag": "tool", "function_tag": "function_call", "system_tag": "system",
}  # fmt: skip
# Local data files this loader reads, by suffix.
FILE_TYPES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text", ".arrow": "arrow"}


@dataclass
class DatasetSpec:
    """One dataset to load. `formatting` None means: detect it from the file's columns."""

    name: str
    load_from: str = "file"  # file | hf_hub | ms_hub | om_hub | script | cloud_file
    path: str | None = None  # resolved local file or folder, or the hub id / url
    formatting: str | None = "alpaca"
    ranking: bool = False
    subset: str | None = None
    split: str = "train"
    folder: str | None = None
    num_samples: int | None = None
    columns: dict[str, str] = field(default_factory=dict)  # standard name -> column in the file
    tags: dict[str, str] = field(default_factory=dict)
    explicit_columns: frozenset = frozenset()  # the columns the entry named itself (a missing one is a typo)
    where: str = ""  # "dataset_info.json entry 'x'" or the path, for error messages
    info_file: str | None = None  # the dataset_info.json this came from: part of the data's fingerprint

    @property
    def is_kto(self) -> bool:
        return "kto_tag" in self.columns


def default_columns(formatting: str) -> dict[str, str]:
    return dict({"alpaca": ALPACA_COLUMNS, "sharegpt": SHAREGPT_COLUMNS, "openai": OPENAI_COLUMNS}[formatting])


def default_tags(formatting: str) -> dict[str, str]:
    return dict(OPENAI_TAGS if formatting == "openai" else SHAREGPT_TAGS)


def load_registry(dataset_dir: str) -> tuple[dict, Path]:
    path = Path(dataset_dir) / INFO_FILE
    if not path.is_file():
        raise DataError(
            f"{path} not found: dataset names are looked up in {INFO_FILE} inside dataset_dir "
            f"(now '{dataset_dir}'); set dataset_dir to the folder that holds it, or give file paths in `dataset`"
        )
    try:
        registry = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno} column {e.colno}: invalid JSON ({e.msg}); fix the file") from None
    if not isinstance(registry, dict):
        raise DataError(f"{path}: expected a JSON object mapping dataset names to entries, got {type(registry).__name__}")
    return registry, path


def _check_keys(given: dict, allowed: tuple, what: str, where: str) -> None:
    for key in given:
        if key not in allowed:
            raise DataError(f"{where}: unknown {what} '{key}'; allowed: {', '.join(allowed)}")


def parse_entry(name: str, entry: dict, dataset_dir: str, info_path: Path | str = INFO_FILE) -> DatasetSpec:
    where = f"{info_path} entry '{name}'"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object with file_name or hf_hub_url, got {type(entry).__name__}")
    _check_keys(entry, ENTRY_KEYS, "key", where)
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATTINGS:
        raise DataError(f"{where}: formatting '{formatting}' is not one of {', '.join(FORMATTINGS)}")
    columns = entry.get("columns") or {}
    tags = entry.get("tags") or {}
    if not isinstance(columns, dict) or not isinstance(tags, dict):
        raise DataError(f"{where}: 'columns' and 'tags' must be objects mapping names to column names / role tags")
    _check_keys(columns, COLUMN_KEYS, "column", where)
    _check_keys(tags, TAG_KEYS, "tag", where)
    media = [c for c in MEDIA_COLUMNS if c in columns]
    if media:
        raise DataError(
            f"{where}: multimodal columns are not supported yet ({', '.join(media)}); "
            f"use a text-only dataset or remove those columns from the entry"
        )
    num_samples = entry.get("num_samples")
    if num_samples is not None and (not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1):
        raise DataError(f"{where}: num_samples must be a positive integer, got {num_samples!r}")

    spec = DatasetSpec(
        name=name,
        formatting=formatting,
        ranking=bool(entry.get("ranking", False)),
        subset=entry.get("subset"),
        split=entry.get("split", "train"),
        folder=entry.get("folder"),
        num_samples=num_samples,
        columns={**default_columns(formatting), **columns},
        tags={**default_tags(formatting), **tags},
        explicit_columns=frozenset(columns),
        where=where,
        info_file=str(info_path),
    )
    if spec.ranking:  # the obvious names, so a ranking entry needs no columns for them
        spec.columns = {"chosen": "chosen", "rejected": "rejected", **spec.columns}
    # The same precedence as LLaMA-Factory: a hub address wins over file_name.
    for key, load_from in (("hf_hub_url", "hf_hub"), ("ms_hub_url", "ms_hub"), ("om_hub_url", "om_hub"),
                           ("script_url", "script"), ("cloud_file_name", "cloud_file")):  # fmt: skip
        if entry.get(key):
            spec.load_from, spec.path = load_from, entry[key]
            return spec
    if not entry.get("file_name"):
        raise DataError(f"{where}: needs one of {', '.join(SOURCE_KEYS)} to say where the data is")
    spec.path = str(Path(dataset_dir) / entry["file_name"])
    return spec


def looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or Path(name).suffix.lower() in FILE_TYPES or os.path.exists(name)


def spec_from_path(path: str, dataset_dir: str) -> DatasetSpec:
    """A dataset given as a file or folder path; its format is detected from the columns once read."""
    for candidate in (Path(path), Path(dataset_dir) / path):
        if candidate.exists():
            return DatasetSpec(name=path, path=str(candidate), formatting=None, where=str(candidate))
    raise DataError(
        f"dataset file '{path}' not found (looked in the current folder and in dataset_dir '{dataset_dir}'); "
        f"check the path, or give a name from {INFO_FILE}"
    )


def resolve_specs(names: str | list[str] | None, dataset_dir: str) -> list[DatasetSpec]:
    """Turn `dataset: a,b,path/c.jsonl` into specs. A name found in dataset_info.json is an entry; anything
    else that looks like a path is read as a file."""
    specs, registry, info_path = [], None, None
    for name in split_names(names):
        if dataset_dir == "ONLINE":  # LLaMA-Factory's way of saying "every name is a hub id"
            specs.append(DatasetSpec(name=name, load_from="hf_hub", path=name, where=f"hub dataset '{name}'"))
            continue
        if registry is None and (Path(dataset_dir) / INFO_FILE).is_file():
            registry, info_path = load_registry(dataset_dir)
        if registry is not None and name in registry:
            specs.append(parse_entry(name, registry[name], dataset_dir, info_path))
        elif looks_like_path(name):
            specs.append(spec_from_path(name, dataset_dir))
        elif registry is None:
            load_registry(dataset_dir)  # raises the "dataset_info.json not found" error
        else:
            import difflib

            close = difflib.get_close_matches(name, sorted(registry), n=3, cutoff=0.5)
            if len(registry) <= 10:  # a short list helps more than a guess
                hint = f"known names: {', '.join(sorted(registry))}"
            else:
                hint = f"{len(registry)} names there" + (
                    f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "")
            raise DataError(f"dataset '{name}' is not in {info_path}; {hint}. Add an entry for it or give a file path")
    return specs


_PROMPT_NAMES = ("instruction", "prompt", "question")
_RESPONSE_NAMES = ("output", "response", "completion", "answer")


def detect_format(spec: DatasetSpec, sample: list[dict]) -> DatasetSpec:
    """Fill in formatting, columns and tags of a path-given dataset from the columns of its first rows."""
    present = list(dict.fromkeys(key for row in sample for key in row))
    has = set(present).__contains__
    media = [c for c in present if c in MEDIA_COLUMNS or c in ("image", "video", "audio")]
    if media:
        raise DataError(f"{spec.where}: multimodal columns are not supported yet ({', '.join(media)}); use text-only data")
    columns = {k: k for k in ("system", "tools") if has(k)}
    kto = next((c for c in ("kto_tag", "label") if has(c)), None)
    if kto:
        columns["kto_tag"] = kto
    spec.ranking = has("chosen") and has("rejected")
    if spec.ranking:
        columns.update(chosen="chosen", rejected="rejected")

    messages_column = next((c for c in ("conversations", "messages") if has(c)), None)
    if messages_column:
        first = next((m for row in sample for m in (row.get(messages_column) or [])[:1]), None)
        keys = set(first) if isinstance(first, dict) else set()
        if {"from", "value"} <= keys:
            spec.formatting = "sharegpt"
        elif {"role", "content"} <= keys:
            spec.formatting = "openai"
        elif first is not None:
            raise DataError(
                f"{spec.where}: column '{messages_column}' holds messages with keys {sorted(keys)}; expected "
                f"from/value (sharegpt) or role/content (openai), or describe it with tags in a dataset_info.json entry"
            )
        else:
            spec.formatting = "sharegpt"
        columns["messages"] = messages_column
    elif (prompt := next((c for c in _PROMPT_NAMES if has(c)), None)) is not None:
        spec.formatting = "alpaca"
        columns["prompt"] = prompt
        response = next((c for c in _RESPONSE_NAMES if has(c)), None)
        columns.update({k: v for k, v in (("query", "input"), ("history", "history")) if has(v)})
        if response:
            columns["response"] = response
    elif has("text"):
        spec.formatting, columns = "text", {"prompt": "text"}
    else:
        raise DataError(
            f"{spec.where}: cannot tell the dataset format from its columns ({', '.join(present) or 'none'}); expected "
            f"instruction/output (alpaca), conversations or messages (sharegpt/openai), chosen/rejected, or text. "
            f"Rename the columns or describe them in a dataset_info.json entry"
        )
    spec.columns = columns
    spec.tags = default_tags(spec.formatting)
    return spec
