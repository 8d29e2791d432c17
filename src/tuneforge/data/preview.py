"""`tuneforge data preview CONFIG.yaml`: what training will see, before training.

Prints a summary (datasets, rows read / dropped with reasons / kept, truncation, token lengths, the share of
supervised tokens) and the first examples with the trained text highlighted. `--json` writes instead one
JSON object per example on stdout and nothing else there (the summary and progress go to stderr).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

from ..errors import ConfigError
from ..stages import row_shape
from tuneforge.labels import IGNORE

USAGE = ("usage: tuneforge data preview CONFIG.yaml [key=value ...] [--num N] [--json]  "
         "(--num: examples shown, default 3; with --json all unless --num is given)")
GREEN, RESET = "\033[1;32m", "\033[0m"


def _take_option(argv: list[str], name: str, flag: bool = False):
    """(argv without the option, its value: None if absent, True for a flag)."""
    for i, item in enumerate(argv):
        if item == name:
            if flag:
                return argv[:i] + argv[i + 1:], True
            if i + 1 >= len(argv):
                raise ConfigError(f"{name} needs a value, e.g. {name} 5")
            return argv[:i] + argv[i + 2:], argv[i + 1]
        if not flag and item.startswith(name + "="):
            return argv[:i] + argv[i + 1:], item.split("=", 1)[1]
    return argv, None


def _parse_num(text) -> int | None:
    if text is None:
        return None
    try:
        num = int(text)
    except ValueError:
        num = -1
    if num < 0:
        raise ConfigError(f"--num {text!r} must be a whole number of examples (0 or more)")
    return num


# ----- rendering


def spans(input_ids: list[int], labels: list[int]):
    """Runs of (trained?, ids)."""
    out = []
    for tid, lab in zip(input_ids, labels):
        trained = lab != IGNORE
        if out and out[-1][0] == trained:
            out[-1][1].append(tid)
        else:
            out.append((trained, [tid]))
    return out


def mark(text: str, color: bool) -> str:
    return f"{GREEN}{text}{RESET}" if color else f"[[{text}]]"


def render_example(tokenizer, input_ids, labels, color: bool) -> str:
    parts = []
    for trained, ids in spans(input_ids, labels):
        text = tokenizer.decode(ids, skip_special_tokens=False)
        parts.append(mark(text, color) if trained else text)
    return "".join(parts)


def _use_color(stream) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def _shape(row: dict) -> str:
    if "chosen_input_ids" in row:
        return "pairwise"
    if "kto_tag" in row:
        return "kto"
    if len(row["labels"]) != len(row["input_ids"]):
        return "unsupervised"  # a prompt, and the reference response as labels
    return "aligned"


def _render_row(tokenizer, row: dict, color: bool) -> str:
    shape = _shape(row)
    if shape == "pairwise":
        return "\n".join(
            f"-- {side} ({len(row[f'{side}_input_ids'])} tokens)\n"
            + render_example(tokenizer, row[f"{side}_input_ids"], row[f"{side}_labels"], color)
            for side in ("chosen", "rejected")
        )
    if shape == "unsupervised":
        reference = tokenizer.decode(row["labels"], skip_special_tokens=False)
        return tokenizer.decode(row["input_ids"], skip_special_tokens=False) + f"\n-- reference response: {reference}"
    text = render_example(tokenizer, row["input_ids"], row["labels"], color)
    return f"-- {'desirable' if row['kto_tag'] else 'undesirable'}\n{text}" if shape == "kto" else text


def _json_row(tokenizer, row: dict) -> dict:
    def one(ids, labels):
        text = tokenizer.decode(ids, skip_special_tokens=False)
        return {"input_ids": list(ids), "labels": list(labels), "text": text}

    if _shape(row) == "pairwise":
        return {side: one(row[f"{side}_input_ids"], row[f"{side}_labels"]) for side in ("chosen", "rejected")}
    out = one(row["input_ids"], row["labels"])
    if "kto_tag" in row:
        out["kto_tag"] = bool(row["kto_tag"])
    return out


# ----- statistics


def percentiles(values) -> dict:
    import numpy as np

    s = np.sort(np.asarray(values, dtype=np.int64))
    if not len(s):
        return {}
    pick = lambda q: int(s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))])  # noqa: E731
    return {"min": int(s[0]), "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": int(s[-1]),
            "mean": round(float(s.mean()), 1)}


def token_stats(dataset) -> tuple[list[int], int, int]:
    """(length of every sequence, supervised tokens, all tokens) of a tokenized Dataset, read in Arrow
    batches so a large dataset is not turned into Python lists."""
    import pyarrow.compute as pc

    pairs = [("input_ids", "labels")]
    if "chosen_input_ids" in dataset.column_names:
        pairs = [("chosen_input_ids", "chosen_labels"), ("rejected_input_ids", "rejected_labels")]
    aligned = _aligned(dataset)
    lengths, supervised, total = [], 0, 0
    for table in dataset.with_format("arrow").iter(batch_size=10_000):
        for ids_col, labels_col in pairs:
            lens = pc.list_value_length(table.column(ids_col))
            lengths += lens.to_pylist()
            total += pc.sum(lens).as_py() or 0
            if aligned:
                flat = pc.list_flatten(table.column(labels_col))
                supervised += pc.sum(pc.not_equal(flat, IGNORE)).as_py() or 0
    return lengths, supervised, total


def _aligned(dataset) -> bool:
    return len(dataset) == 0 or _shape(dataset[0]) != "unsupervised"


def _dropped_lines(data) -> list[str]:
    reasons: Counter = Counter()
    where: dict[str, list[str]] = {}
    stats = list(data.load_report.datasets.values()) if data.load_report is not None else []
    for st in stats:
        for reason, n in st.dropped.items():
            reasons[reason] += n
            where.setdefault(reason, []).append(f"{st.name}, while reading")
    if data.train_report is not None:
        for reason, n in data.train_report.dropped.items():
            reasons[reason] += n
            where.setdefault(reason, []).append("while tokenizing")
    lines = [f"rows dropped: {sum(reasons.values())}"]
    lines += [f"  {reason}: {n} ({'; '.join(where[reason])})" for reason, n in reasons.most_common()]
    return lines


def summary_lines(data, stage: str, data_args) -> list[str]:
    train, rep, load = data.train, data.train_report, data.load_report
    out = [f"stage {stage}, template {data_args.template}, cutoff_len {data_args.cutoff_len}"]
    if load is None:  # loaded from tokenized_path
        out += data.load_lines
    elif load.streaming:
        out.append("datasets: " + ", ".join(f"{s.name} ({s.formatting})" for s in load.datasets.values()))
    else:
        out.append("datasets:")
        out += [f"  {line}" for line in load.summary_lines()]
        stats = list(load.datasets.values())
        out.append(f"rows read: {sum(s.rows_read for s in stats)}")
        out += _dropped_lines(data)
        left_out = sum(s.rows_kept - s.rows_used for s in stats if s.rows_used is not None)
        if left_out:
            out.append(f"rows left out by num_samples / max_samples: {left_out}")
        if rep is not None and data.eval is not None and not data_args.eval_dataset and hasattr(data.eval, "__len__"):
            out.append(f"rows held out for evaluation (val_size): {len(data.eval)}")
        out += [line for line in data.load_lines if "tokenized data" in line]
    if rep is not None and not load.streaming:
        kept = f"rows kept: {rep.examples} examples"
        if row_shape(stage).name == "document":
            kept = f"rows kept: {rep.rows_in} documents, cut into {rep.examples} blocks"
        out.append(kept)
        out.append(f"truncated: {rep.truncated} (cut to fit cutoff_len {data_args.cutoff_len})")
        if rep.cache:
            out.append(f"cache: {rep.cache}")
    if data.packed_from is not None and hasattr(train, "__len__"):
        out.append(f"packing: {data.packed_from} examples packed into {len(train)} rows "
                   f"of up to {data_args.cutoff_len} tokens")
    if hasattr(train, "__len__"):
        lengths, supervised, total = token_stats(train)
        pct = percentiles(lengths)
        both = " (chosen and rejected)" if "chosen_input_ids" in train.column_names else ""
        out.append(f"token lengths{both}: " + ", ".join(f"{k} {v}" for k, v in pct.items()))
        if _aligned(train):
            out.append(f"supervised tokens: {supervised} of {total} ({100 * supervised / max(total, 1):.1f}%)")
        else:
            out.append("supervised tokens: none (prompt-only rows; labels hold the reference response)")
    else:
        out.append("streaming: rows are read as training consumes them, so counts and lengths are not known here")
    if data.eval_report is not None:
        ev = data.eval_report
        dropped = ", ".join(f"{r}: {n}" for r, n in ev.dropped.most_common())
        out.append(f"eval: {ev.examples} examples kept of {ev.rows_in}, truncated {ev.truncated}"
                   + (f", dropped {sum(ev.dropped.values())} ({dropped})" if dropped else ""))
    return out


def _first_rows(dataset, num: int | None):
    if num is None:
        yield from dataset
        return
    if hasattr(dataset, "select"):
        yield from dataset.select(range(min(num, len(dataset))))
    else:
        yield from dataset.take(num)


def prepare_for_preview(args, train_kwargs):
    """(tokenizer, prepared data) for a preview of parsed args, as training prepares them; the command and
    the board's data preview share it."""
    from ..models.loader import load_tokenizer
    from .prepare import prepare_datasets
    from .templates import get_template

    if not args.model.model_name_or_path:
        raise ConfigError("model_name_or_path is not set: the tokenizer decides the token ids; set it in the config "
                          "(the board: the Model field)")
    if not args.data.dataset:
        raise ConfigError("dataset is not set: name datasets from dataset_info.json or give a file path")
    tokenizer = load_tokenizer(args.model)
    template = get_template(args.data.template, tokenizer, args.data.default_system, args.data.enable_thinking)
    data = prepare_datasets(args.data, args.finetune.stage, tokenizer, template, seed=train_kwargs.get("seed", 42),
                            num_proc=args.data.preprocessing_num_workers)
    return tokenizer, data


def run_data(argv: list[str]) -> int:
    from ..config.parser import build_args, read_sources

    if not argv or argv[0] != "preview":
        raise ConfigError(USAGE)
    argv = argv[1:]
    argv, num = _take_option(argv, "--num")
    argv, as_json = _take_option(argv, "--json", flag=True)
    num = _parse_num(num)
    args, train_kwargs = build_args(read_sources(argv), with_training=True)
    tokenizer, data = prepare_for_preview(args, train_kwargs)
    lines = summary_lines(data, args.finetune.stage, args.data)
    if as_json:
        # stdout carries the examples only, so `... --json | other-tool` reads clean JSON lines.
        print("\n".join(["== summary", *lines]), file=sys.stderr)
        for row in _first_rows(data.train, num):
            sys.stdout.write(json.dumps(_json_row(tokenizer, row), ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return 0
    color = _use_color(sys.stdout)
    print("== summary")
    print("\n".join(lines))
    for i, row in enumerate(_first_rows(data.train, 3 if num is None else num)):
        size = len(row["input_ids"]) if "input_ids" in row else len(row["chosen_input_ids"])
        how = "in green" if color else "in [[ ]]"
        print(f"\n== example {i} ({size} tokens; trained text {how})")
        print(_render_row(tokenizer, row, color))
    return 0
