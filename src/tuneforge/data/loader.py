"""dataset names / paths in DataArgs -> one `datasets` table of normalised conversations, plus a report.

Each dataset is read, converted row by row (formats.convert_row), sampled (num_samples, max_samples) and
then all are mixed. Every dropped row is counted with its reason in the LoadReport, and the files read are
listed there (with mtime and size) so a cache built on this data can tell when it went stale.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain, islice

import datasets

from tuneforge.data.formats import check_columns, convert_row
from tuneforge.data.readers import FileInfo, file_info, iter_file_rows, iter_hub_rows, list_data_files
from tuneforge.data.registry import DatasetSpec, detect_format, resolve_specs
from tuneforge.errors import DataError
from tuneforge.stages import STAGES, row_shape
from tuneforge.config.lists import comma_list

_MESSAGE = {"role": datasets.Value("string"), "content": datasets.Value("string")}
# One schema for every format, so datasets of different formats concatenate and interleave.
FEATURES = datasets.Features(
    {
        "messages": datasets.List(_MESSAGE),
        "system": datasets.Value("string"),
        "tools": datasets.Value("string"),
        "chosen": _MESSAGE,
        "rejected": _MESSAGE,
        "kto_tag": datasets.Value("bool"),
        "text": datasets.Value("string"),
        "source": datasets.Value("string"),
        "extra": datasets.Value("string"),
    }
)
_SAMPLE_ROWS = 20  # rows looked at to detect a format and check columns before converting everything


@dataclass
class DatasetStats:
    name: str
    formatting: str | None = None
    rows_read: int = 0
    rows_kept: int = 0  # converted successfully, before num_samples / max_samples
    rows_used: int | None = None  # after num_samples / max_samples; None while streaming
    dropped: Counter = field(default_factory=Counter)  # reason -> rows

    def reset(self) -> None:
        self.rows_read, self.rows_kept, self.dropped = 0, 0, Counter()


@dataclass
class LoadReport:
    """What load_rows read. While streaming, the counts grow as rows are consumed (in this process only)."""

    datasets: dict[str, DatasetStats] = field(default_factory=dict)
    files: list[FileInfo] = field(default_factory=list)  # data files and dataset_info.json, for cache keys
    streaming: bool = False

    def add_file(self, info: FileInfo) -> None:
        if all(f.path != info.path for f in self.files):
            self.files.append(info)

    def summary_lines(self) -> list[str]:
        lines = []
        for stats in self.datasets.values():
            used = "" if stats.rows_used is None else f", used {stats.rows_used}"
            line = f"{stats.name} ({stats.formatting}): read {stats.rows_read}, kept {stats.rows_kept}{used}"
            if stats.dropped:
                reasons = ", ".join(f"{reason}: {n}" for reason, n in stats.dropped.most_common())
                line += f"; dropped {sum(stats.dropped.values())} ({reasons})"
            if self.streaming:
                line += " [streaming: counts so far]"
            lines.append(line)
        return lines


def _check_stage(spec: DatasetSpec, stage: str) -> None:
    if stage not in STAGES:
        raise DataError(f"unknown stage '{stage}'; expected one of {', '.join(STAGES)}")
    shape = row_shape(stage).name
    name = f"dataset '{spec.name}'"
    if spec.formatting == "text" and shape != "document":
        raise DataError(
            f"{name} is plain text (one 'text' column), which only stage pt can train on; "
            f"give a chat or instruction dataset for stage {stage}"
        )
    if shape == "pairwise" and not spec.ranking:
        raise DataError(
            f"stage {stage} needs a ranking dataset (chosen/rejected responses) but {name} is not one; "
            f'set "ranking": true with columns chosen and rejected in its dataset_info.json entry'
        )
    if shape != "pairwise" and spec.ranking:
        pairwise = [s for s in STAGES if row_shape(s).name == "pairwise"]
        raise DataError(f"{name} is a ranking dataset (chosen/rejected), usable with stage {' or '.join(pairwise)} only, "
                        f"not {stage}")
    if shape == "kto" and not spec.is_kto:
        raise DataError(
            f"stage {stage} needs a kto_tag column (desirable true/false) but {name} has none; "
            f"set columns.kto_tag in its dataset_info.json entry"
        )


def _open_rows(spec: DatasetSpec, streaming: bool):
    if spec.load_from == "file":
        files = list_data_files(spec)
        return chain.from_iterable(iter_file_rows(f) for f in files), files
    return iter_hub_rows(spec, streaming), []


def _prepare(spec: DatasetSpec, stage: str, streaming: bool, report: LoadReport):
    """Open the dataset, settle its format from the first rows, and check it suits the stage."""
    rows, files = _open_rows(spec, streaming)
    for path in files:
        report.add_file(file_info(path))
    if spec.info_file:
        report.add_file(file_info(spec.info_file))
    sample = list(islice(rows, _SAMPLE_ROWS))
    if not sample:
        raise DataError(f"{spec.where}: the dataset has no rows; check the file is not empty")
    if spec.formatting is None:
        detect_format(spec, [row for row, _ in sample])
    _check_stage(spec, stage)
    check_columns(spec, stage, list(dict.fromkeys(k for row, _ in sample for k in row)))
    return chain(sample, rows)


def _convert(spec: DatasetSpec, stage: str, rows, stats: DatasetStats | None, seen: set | None = None):
    for index, (row, where) in enumerate(rows):
        if seen is not None:
            seen.update(row)
        result = convert_row(row, spec, stage, index, where)
        if stats is not None:
            stats.rows_read += 1
            if isinstance(result, str):
                stats.dropped[result] += 1
            else:
                stats.rows_kept += 1
        if not isinstance(result, str):
            yield result.to_dict()


def _sample_indices(n_rows: int, num_samples: int, rng: random.Random) -> list[int]:
    # Whole copies first, then a random (sorted, so file order stays) subset for the remainder.
    repeats, rest = divmod(num_samples, n_rows)
    return list(range(n_rows)) * repeats + sorted(rng.sample(range(n_rows), rest))


def _no_rows_error(spec: DatasetSpec, stage: str, stats: DatasetStats) -> DataError:
    reasons = ", ".join(f"{r}: {n}" for r, n in stats.dropped.most_common())
    return DataError(
        f"dataset '{spec.name}': none of its {stats.rows_read} rows is usable for stage {stage} "
        f"(dropped {reasons}); check the format and columns"
    )


def _load_in_memory(spec: DatasetSpec, stage: str, rows, stats: DatasetStats, max_samples, seed: int):
    seen: set = set()
    converted = list(_convert(spec, stage, rows, stats, seen))
    if not converted:
        raise _no_rows_error(spec, stage, stats)
    never_seen = sorted(spec.columns[k] for k in spec.explicit_columns if spec.columns[k] not in seen)
    if never_seen:
        raise DataError(
            f"{spec.where}: column(s) {', '.join(never_seen)} not found in any row; columns present: "
            f"{', '.join(sorted(seen))}. Fix the names under 'columns' in dataset_info.json"
        )
    if spec.num_samples:
        rng = random.Random(f"{seed}:{spec.name}")
        converted = [converted[i] for i in _sample_indices(len(converted), spec.num_samples, rng)]
    if max_samples:
        converted = converted[:max_samples]
    stats.rows_used = len(converted)
    return datasets.Dataset.from_list(converted, features=FEATURES)


def _load_streaming(spec: DatasetSpec, stage: str, stats: DatasetStats, max_samples):
    def generate():
        # Reopened on every pass (epoch); counts describe the latest pass. num_samples takes the first rows
        # or cycles through them again (no random subset: a stream has no known length to sample from).
        stats.reset()
        produced, first_pass = 0, True
        while True:
            rows = _convert(spec, stage, _open_rows(spec, True)[0], stats if first_pass else None)
            got_any = False
            for row in rows:
                if spec.num_samples and produced >= spec.num_samples:
                    return
                got_any = True
                produced += 1
                yield row
            if not spec.num_samples or not got_any:
                return
            first_pass = False

    stream = datasets.IterableDataset.from_generator(generate, features=FEATURES)
    return stream.take(max_samples) if max_samples else stream


def _load_one(spec: DatasetSpec, stage: str, data_args, report: LoadReport, seed: int):
    key = spec.name if spec.name not in report.datasets else f"{spec.name} #{len(report.datasets) + 1}"
    stats = report.datasets.setdefault(key, DatasetStats(key))
    rows = _prepare(spec, stage, data_args.streaming, report)
    stats.formatting = spec.formatting
    if data_args.streaming:
        return _load_streaming(spec, stage, stats, data_args.max_samples)
    return _load_in_memory(spec, stage, rows, stats, data_args.max_samples, seed)


def _parse_probs(text, count: int) -> list[float] | None:
    if text in (None, ""):
        return None
    try:
        probs = [float(p) for p in comma_list(text)]
    except ValueError:
        raise DataError(f"interleave_probs '{text}' must be comma-separated numbers, e.g. 0.7,0.3") from None
    if len(probs) != count or any(p < 0 for p in probs) or abs(sum(probs) - 1) > 1e-3:
        raise DataError(f"interleave_probs '{text}' must give one non-negative probability per dataset ({count}) summing to 1")
    return [p / sum(probs) for p in probs]


def mix_datasets(parts: list, mix_strategy: str, interleave_probs, seed: int):
    """concat, interleave_under (stop when the first dataset runs out) or interleave_over (oversample until
    every dataset has been seen whole), the latter two sampled by `interleave_probs` with `seed`."""
    if mix_strategy not in ("concat", "interleave_under", "interleave_over"):
        raise DataError(f"mix_strategy '{mix_strategy}' is not one of concat, interleave_under, interleave_over")
    if mix_strategy == "concat" and interleave_probs not in (None, ""):
        raise DataError(
            "interleave_probs only applies to mix_strategy interleave_under or interleave_over; "
            "remove it or change mix_strategy"
        )
    probs = _parse_probs(interleave_probs, len(parts))
    if len(parts) == 1:
        return parts[0]
    if mix_strategy == "concat":
        return datasets.concatenate_datasets(parts)
    stopping = "first_exhausted" if mix_strategy == "interleave_under" else "all_exhausted"
    return datasets.interleave_datasets(parts, probabilities=probs, seed=seed, stopping_strategy=stopping)


def load_rows(data_args, stage: str, which: str = "train", seed: int = 42):
    """Rows of Conversation.to_dict() for `stage` from data_args.dataset (which="train") or
    data_args.eval_dataset (which="eval"): a Dataset, or an IterableDataset when data_args.streaming,
    or None when no dataset is named; and the LoadReport."""
    if which not in ("train", "eval"):
        raise ValueError(f"which must be 'train' or 'eval', not {which!r}")
    names = data_args.dataset if which == "train" else data_args.eval_dataset
    report = LoadReport(streaming=bool(data_args.streaming))
    specs = resolve_specs(names, data_args.dataset_dir)
    if not specs:
        return None, report
    parts = [_load_one(spec, stage, data_args, report, seed) for spec in specs]
    return mix_datasets(parts, data_args.mix_strategy, data_args.interleave_probs, seed), report


def sample_columns(data_args, count: int = 50) -> dict[str, list[set]]:
    """The raw columns of the first `count` rows of each training dataset (name -> one set per row), read
    without converting or tokenizing anything: for checks that must come before the slow steps."""
    out = {}
    for spec in resolve_specs(data_args.dataset, data_args.dataset_dir):
        rows, _ = _open_rows(spec, True)
        out[spec.name] = [set(row) for row, _ in islice(rows, count)]
    return out


def split_train_val(dataset, val_size: float, seed: int):
    """(train, val). val_size < 1 is a fraction of the rows, >= 1 a row count (the only choice when
    streaming, where the first val_size rows become the validation set)."""
    if val_size <= 0 or (val_size >= 1 and val_size != int(val_size)):
        raise DataError(f"val_size {val_size} must be a fraction between 0 and 1 or a whole number of rows")
    if isinstance(dataset, datasets.IterableDataset):
        if val_size < 1:
            raise DataError(
                f"val_size {val_size} is a fraction, but a streamed dataset has no known length; "
                f"give a row count (e.g. val_size: 500)"
            )
        return dataset.skip(int(val_size)), dataset.take(int(val_size))
    size = int(val_size) if val_size >= 1 else val_size
    n_val = size if isinstance(size, int) else int(round(len(dataset) * size))
    if n_val < 1 or n_val >= len(dataset):
        raise DataError(
            f"val_size {val_size} leaves {n_val} validation rows out of {len(dataset)}; "
            f"choose a size that leaves rows for both splits"
        )
    parts = dataset.train_test_split(test_size=n_val, seed=seed)
    return parts["train"], parts["test"]
