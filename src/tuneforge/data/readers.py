"""Raw rows out of local files (json, jsonl, csv, parquet, txt, arrow, or a folder of them).

Every row comes with a `where` string ("data.jsonl line 12") so later errors can point at it. Rows are
yielded one at a time so streaming never holds a whole file; only a JSON array has to be parsed at once.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuneforge.data.registry import FILE_TYPES, DatasetSpec
from tuneforge.errors import DataError
from tuneforge.offline import hub_is_offline


@dataclass(frozen=True)
class FileInfo:
    """Identity of a data file as read, so a cache keyed on it goes stale when the file changes."""

    path: str
    mtime_ns: int
    size: int


def file_info(path: Path | str) -> FileInfo:
    stat = os.stat(path)
    return FileInfo(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


def _split_matches(stem: str, split: str) -> bool:
    # train.jsonl, train-00000-of-00002.parquet, train_part1.csv all belong to split "train".
    return stem == split or any(stem.startswith(split + sep) for sep in "-_.")


def list_data_files(spec: DatasetSpec) -> list[Path]:
    """The files behind a local dataset: the file itself, or the data files of a folder (not recursive),
    narrowed by the entry's folder / subset / split."""
    root = Path(spec.path)
    if not root.exists():
        raise DataError(f"{spec.where}: '{root}' does not exist; check file_name (it is relative to dataset_dir)")
    for sub, key in ((spec.folder, "folder"), (spec.subset, "subset")):
        if sub:
            if not (root / sub).is_dir():
                raise DataError(f"{spec.where}: {key} '{sub}' is not a subfolder of '{root}'; remove {key} or create it")
            root = root / sub
    if root.is_file():
        if spec.split != "train":  # a lone file has no splits; `datasets` would fail the same way
            raise DataError(f"{spec.where}: split '{spec.split}' asked of the single file '{root.name}'; "
                            f"remove split, or point file_name at a folder with {spec.split}.* files")
        if root.suffix.lower() not in FILE_TYPES:
            raise DataError(f"{spec.where}: cannot read '{root.name}': supported files are {', '.join(FILE_TYPES)}")
        return [root]
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in FILE_TYPES)
    if not files:
        raise DataError(f"{spec.where}: folder '{root}' has no data files ({', '.join(FILE_TYPES)})")
    in_split = [p for p in files if _split_matches(p.name.split(".")[0], spec.split)]
    if in_split:
        return in_split
    if spec.split != "train":
        raise DataError(f"{spec.where}: no file in '{root}' is named for split '{spec.split}' (e.g. {spec.split}.jsonl)")
    return files


def iter_file_rows(path: Path) -> Iterator[tuple[dict, str]]:
    kind = FILE_TYPES[path.suffix.lower()]
    try:
        if kind == "json":
            yield from _iter_json(path)
        elif kind == "csv":
            yield from _iter_csv(path)
        elif kind == "text":
            yield from _iter_text(path)
        else:
            yield from _iter_arrow(path, kind)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); re-save the file as UTF-8") from None


def _as_row(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected an object (one row with named columns), got {type(value).__name__}")
    return value


def _iter_json(path: Path) -> Iterator[tuple[dict, str]]:
    if path.suffix.lower() == ".json":
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            # A .json file holding JSON lines is common (and what `datasets` accepts); anything else is broken.
            if e.msg != "Extra data":
                raise DataError(f"{path} line {e.lineno} column {e.colno}: invalid JSON ({e.msg}); fix the file") from None
        else:
            if not isinstance(data, list):
                raise DataError(
                    f"{path}: expected a JSON array of rows (or one JSON object per line), got a {type(data).__name__}; "
                    f"if the rows are under a key, save that list on its own"
                )
            for i, value in enumerate(data):
                yield _as_row(value, f"{path} item {i}"), f"{path.name} item {i}"
            return
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path} line {lineno} column {e.colno}: invalid JSON ({e.msg}); each line must be one JSON object"
                ) from None
            yield _as_row(value, f"{path} line {lineno}"), f"{path.name} line {lineno}"


def _iter_csv(path: Path) -> Iterator[tuple[dict, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                if None in row:  # DictReader's key for cells beyond the header
                    raise DataError(
                        f"{path} line {reader.line_num}: more cells than the header has columns; quote cells that hold commas"
                    )
                yield row, f"{path.name} line {reader.line_num}"
        except csv.Error as e:
            raise DataError(f"{path} line {reader.line_num}: invalid CSV ({e})") from None


def _iter_text(path: Path) -> Iterator[tuple[dict, str]]:
    # One document per line, as `datasets`' text loader does; blank lines become empty rows that are counted.
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            yield {"text": line.rstrip("\r\n")}, f"{path.name} line {lineno}"


def _iter_arrow(path: Path, kind: str) -> Iterator[tuple[dict, str]]:
    import pyarrow as pa

    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        else:
            batches = _arrow_batches(path)
        index = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield row, f"{path.name} row {index}"
                index += 1
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: cannot read as {kind} ({e}); check the file is complete and really {kind}") from None


def _arrow_batches(path: Path):
    import pyarrow as pa

    # `datasets` writes Arrow stream files; pyarrow's own default is the file (random access) format.
    try:
        yield from pa.ipc.open_stream(pa.memory_map(str(path)))
    except pa.ArrowInvalid:
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)


def iter_hub_rows(spec: DatasetSpec, streaming: bool) -> Iterator[tuple[dict, str]]:
    """Rows of a Hugging Face Hub dataset. The other hubs, loading scripts and cloud files are not supported."""
    how = (
        f"download it (e.g. `huggingface-cli download --repo-type dataset {spec.path} --local-dir data/{spec.name}`) "
        f"and set \"file_name\": \"{spec.name}\" instead of the hub address in dataset_info.json"
    )
    if spec.load_from == "script":
        raise DataError(
            f"{spec.where}: dataset loading scripts (script_url) are not supported by datasets>=4; "
            f"convert the data to json/jsonl/parquet and use file_name"
        )
    if spec.load_from != "hf_hub":
        raise DataError(f"{spec.where}: loading from {spec.load_from} ('{spec.path}') is not supported; {how}")
    if hub_is_offline():
        raise DataError(
            f"{spec.where}: '{spec.path}' is a hub dataset and hub datasets need network, but this run is offline; {how}"
        )
    import datasets

    try:
        data = datasets.load_dataset(spec.path, name=spec.subset, data_dir=spec.folder, split=spec.split, streaming=streaming)
    except Exception as e:  # noqa: BLE001 - any failure here is "could not fetch", reported with the cause
        raise DataError(f"{spec.where}: could not load hub dataset '{spec.path}' ({type(e).__name__}: {e}); {how}") from None
    for i, row in enumerate(data):
        yield row, f"{spec.path} row {i}"
