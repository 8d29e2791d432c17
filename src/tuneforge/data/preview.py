"""`tuneforge data preview CONFIG.yaml`: what training will see, before training."""

from __future__ import annotations

import json
import sys

from ..errors import ConfigError

IGNORE = -100


def _take_option(argv: list[str], name: str, default=None, flag=False):
    if name not in argv:
        return argv, default
    i = argv.index(name)
    if flag:
        return argv[:i] + argv[i + 1:], True
    if i + 1 >= len(argv):
        raise ConfigError(f"{name} needs a value")
    return argv[:i] + argv[i + 2:], argv[i + 1]


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


def render_example(tokenizer, input_ids, labels, color: bool) -> str:
    parts = []
    for trained, ids in spans(input_ids, labels):
        text = tokenizer.decode(ids, skip_special_tokens=False)
        if trained:
            text = f"\033[1;32m{text}\033[0m" if color else f"[[{text}]]"
        parts.append(text)
    return "".join(parts)


def percentiles(values: list[int]) -> dict:
    if not values:
        return {}
    s = sorted(values)
    pick = lambda q: s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]  # noqa: E731
    return {"min": s[0], "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": s[-1]}


def run_data(argv: list[str]) -> int:
    from ..config.parser import build_args, read_sources
    from ..data.prepare import prepare_datasets
    from ..data.templates import get_template
    from ..models.loader import load_tokenizer

    if not argv or argv[0] != "preview":
        raise ConfigError("usage: tuneforge data preview CONFIG.yaml [key=value ...] [--num N] [--json]")
    argv = argv[1:]
    argv, num = _take_option(argv, "--num", 3)
    argv, as_json = _take_option(argv, "--json", False, flag=True)
    args, train_kwargs = build_args(read_sources(argv), with_training=True)
    if not args.model.model_name_or_path:
        raise ConfigError("model_name_or_path is not set: the tokenizer decides the token ids")
    if not args.data.dataset:
        raise ConfigError("dataset is not set: name datasets from dataset_info.json or give a file path")
    tokenizer = load_tokenizer(args.model)
    template = get_template(args.data.template, tokenizer, args.data.default_system, args.data.enable_thinking)
    seed = train_kwargs.get("seed", 42)
    data = prepare_datasets(args.data, args.finetune.stage, tokenizer, template, seed=seed,
                            num_proc=args.data.preprocessing_num_workers)
    train = data.train
    rows = train.select(range(min(int(num), len(train)))) if hasattr(train, "select") else list(train.take(int(num)))
    if as_json:
        for row in rows:
            text = tokenizer.decode(row["input_ids"], skip_special_tokens=False)
            print(json.dumps({"input_ids": row["input_ids"], "labels": row["labels"], "text": text}, ensure_ascii=False))
        return 0
    print("== summary")
    for line in data.summary_lines():
        print(line)
    if hasattr(train, "__len__"):
        lengths = [len(x) for x in train["input_ids"]]
        supervised = sum(sum(1 for t in lab if t != IGNORE) for lab in train["labels"])
        print(f"token lengths: {percentiles(lengths)}")
        print(f"supervised tokens: {supervised} of {sum(lengths)} ({100 * supervised / max(sum(lengths), 1):.1f}%)")
    color = sys.stdout.isatty()
    for i, row in enumerate(rows):
        print(f"\n== example {i} ({len(row['input_ids'])} tokens; trained text {'in green' if color else 'in [[ ]]'})")
        print(render_example(tokenizer, row["input_ids"], row["labels"], color))
    return 0
