"""Data preparation speed: rows/s of tokenizing single-turn (alpaca-like) and long multi-turn (20-turn
ShareGPT-like) conversations, and documents/s of pre-training text; optionally against an older tuneforge.

Workloads, built from the LLaMA-Factory demo data in ../shared/anchors/llamafactory-data:
- single: the first N rows of alpaca_en_demo, one turn each (user: instruction + input; assistant: output);
- multi: the same N pairs chained 20 at a time into 20-turn conversations (a turn = one user message and
  its response), so both workloads hold the same turns and nearly the same tokens;
- pt: c4_demo's 300 documents (stage pt, cutoff 1024).

Tokenizer: SmolLM2-135M-Instruct's (the cached alias `smollm2-135m-instruct` in ~/.cache/tuneforge/models,
or --tokenizer DIR). Templates: `auto` with SmolLM2's own chat template; `auto` with Qwen2.5's official
chat template put on the same tokenizer (Qwen-style: default system prompt, tool branches); the named
template `qwen`.

Two timings per workload, in CPU seconds of this process (time.process_time: this machine's 2 cores are
shared, and CPU time is less disturbed by other jobs than wall time; the work is single-threaded):
- processor: the per-row work alone (render, tokenize, mask), `processors.supervised_example` in a loop;
- pipeline: `pipeline.tokenize_rows` on a datasets.Dataset with an empty cache folder and a freshly loaded
  tokenizer, so it includes the cache key (tokenizer identity, hash of the rows), the datasets map and
  writing the cache.
With --baseline SRC (the `src` folder of an older tuneforge, e.g. `git archive COMMIT src | tar -x -C DIR`),
that version is imported beside this one (as `tuneforge_base`) and the two are timed alternately, round
by round, in one process, so both see the same load; the median of --rounds rounds is reported.
It also counts Jinja renders (calls of the tokenizer's apply_chat_template) and the messages they render,
per turn, and times the tokenizer identity that keys the cache (first call, and again on the same object).

usage: .venv/bin/python benchmarks/prep_speed.py [--rows N] [--turns T] [--rounds R] [--baseline SRC]
                                                [--tokenizer DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import glob
import importlib
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT.parent / "shared" / "anchors" / "llamafactory-data"
sys.path.insert(0, str(ROOT))  # tests.data.official_templates: Qwen2.5's published chat template

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


class Version:
    """The modules of one tuneforge version that preparation uses."""

    def __init__(self, package: str):
        self.name = package
        self.processors = importlib.import_module(f"{package}.data.processors")
        self.pipeline = importlib.import_module(f"{package}.data.pipeline")
        self.templates = importlib.import_module(f"{package}.data.templates")
        self.conversation = importlib.import_module(f"{package}.data.conversation")
        self.args = importlib.import_module(f"{package}.config.args")


def import_baseline(src: str) -> Version:
    package_dir = Path(src) / "tuneforge"
    spec = importlib.util.spec_from_file_location("tuneforge_base", package_dir / "__init__.py",
                                                  submodule_search_locations=[str(package_dir)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["tuneforge_base"] = module
    spec.loader.exec_module(module)
    return Version("tuneforge_base")


def pairs(limit: int) -> list[tuple[str, str]]:
    rows = json.loads((DEMO / "alpaca_en_demo.json").read_text(encoding="utf-8"))[:limit]
    return [("\n".join(p for p in (r["instruction"], r.get("input") or "") if p), r["output"]) for r in rows]


def conversation_rows(qa: list[tuple[str, str]], turns: int) -> list[dict]:
    out = []
    for start in range(0, len(qa) - turns + 1, turns):
        messages = []
        for question, answer in qa[start:start + turns]:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        out.append({"messages": messages, "system": None, "tools": None, "chosen": None, "rejected": None,
                    "kto_tag": None, "text": None, "source": f"bench:{start}", "extra": None})
    return out


def smollm2_dir(arg: str | None) -> str:
    if arg:
        return arg
    found = sorted(glob.glob(os.path.expanduser("~/.cache/tuneforge/models/smollm2-135m-instruct-*")))
    if not found:
        sys.exit("no cached smollm2-135m-instruct under ~/.cache/tuneforge/models; pass --tokenizer DIR")
    return found[0]


def load_tokenizer(path: str, jinja: str | None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if jinja:
        tok.chat_template = jinja
    return tok


def count_renders(version: Version, template_name: str, tok, rows: list[dict]) -> dict:
    """Jinja renders and rendered messages for the rows, counted on this tokenizer object only."""
    counts = {"calls": 0, "messages": 0}
    original = tok.apply_chat_template

    def counting(conversation, *args, **kwargs):
        counts["calls"] += 1
        counts["messages"] += len(conversation)
        return original(conversation, *args, **kwargs)

    tok.apply_chat_template = counting
    try:
        template = version.templates.get_template(template_name, tok)
        options = version.processors.ProcessorOptions(cutoff_len=1 << 20)
        for row in rows:
            conv = version.conversation.Conversation.from_dict(row)
            version.processors.supervised_example(template, tok, conv, options)
    finally:
        del tok.apply_chat_template
    return counts


def time_processor(version: Version, template_name: str, tok, rows: list[dict]) -> tuple[float, int]:
    template = version.templates.get_template(template_name, tok)
    options = version.processors.ProcessorOptions(cutoff_len=1 << 20)
    convs = [version.conversation.Conversation.from_dict(r) for r in rows]
    start = time.process_time()
    examples = [version.processors.supervised_example(template, tok, c, options)[0] for c in convs]
    return time.process_time() - start, sum(len(e["input_ids"]) for e in examples)


def time_pipeline(version: Version, template_name: str, tok, dataset, stage: str, cutoff_len: int) -> float:
    """tok must be freshly loaded: nothing computed in one run may help the next."""
    os.environ["TUNEFORGE_DATA_CACHE"] = tempfile.mkdtemp(prefix="tf-prep-bench-")
    template = version.templates.get_template(template_name, tok)
    args = version.args.DataArgs(cutoff_len=cutoff_len)
    start = time.process_time()
    version.pipeline.tokenize_rows(dataset, stage=stage, template=template, tokenizer=tok, data_args=args)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=400, help="alpaca pairs in each workload (default 400)")
    parser.add_argument("--turns", type=int, default=20, help="turns per multi-turn row (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported (default 3)")
    parser.add_argument("--baseline", help="src folder of an older tuneforge to time alternately")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the cached smollm2-135m-instruct)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    import datasets

    from tests.data.official_templates import QWEN25

    datasets.disable_progress_bars()
    versions = {"current": Version("tuneforge")}
    if args.baseline:
        versions = {"baseline": import_baseline(args.baseline), **versions}
    path = smollm2_dir(args.tokenizer)
    qa = pairs(args.rows)
    workloads = {"single": (conversation_rows(qa, 1), 1), "multi": (conversation_rows(qa, args.turns), args.turns)}
    configs = [("smollm2 auto", "auto", None), ("qwen2.5 auto", "auto", QWEN25), ("named qwen", "qwen", None)]
    results = {"rows": args.rows, "turns_per_multi_row": args.turns, "tokenizer": path, "rounds": args.rounds,
               "entries": []}

    for label, template_name, jinja in configs:
        for kind, (rows, turns) in workloads.items():
            dataset = datasets.Dataset.from_list(rows)
            times = {v: {"processor": [], "pipeline": []} for v in versions}
            tokens = {}
            for _ in range(args.rounds):
                for key, version in versions.items():
                    seconds, tokens[key] = time_processor(version, template_name, load_tokenizer(path, jinja), rows)
                    times[key]["processor"].append(seconds)
                    tok = load_tokenizer(path, jinja)
                    times[key]["pipeline"].append(time_pipeline(version, template_name, tok, dataset, "sft", 1 << 20))
            for key, version in versions.items():
                counts = count_renders(version, template_name, load_tokenizer(path, jinja), rows)
                n_turns = len(rows) * turns
                processor_s = statistics.median(times[key]["processor"])
                pipeline_s = statistics.median(times[key]["pipeline"])
                entry = {
                    "version": key, "config": label, "workload": kind, "rows": len(rows), "turns": n_turns,
                    "tokens": tokens[key], "processor_s": processor_s, "pipeline_s": pipeline_s,
                    "processor_rows_per_s": len(rows) / processor_s, "processor_turns_per_s": n_turns / processor_s,
                    "pipeline_rows_per_s": len(rows) / pipeline_s, "pipeline_turns_per_s": n_turns / pipeline_s,
                    "renders_per_turn": counts["calls"] / n_turns,
                    "rendered_messages_per_turn": counts["messages"] / n_turns,
                }
                results["entries"].append(entry)
                print(f"{key:8s} {label:13s} {kind:6s} rows {len(rows):3d} turns {n_turns:3d} "
                      f"tokens {entry['tokens']:6d}"
                      f" | processor {entry['processor_rows_per_s']:7.1f} rows/s {entry['processor_turns_per_s']:6.1f}"
                      f" turns/s | pipeline {entry['pipeline_rows_per_s']:7.1f} rows/s "
                      f"{entry['pipeline_turns_per_s']:6.1f} turns/s | renders/turn {entry['renders_per_turn']:.2f}"
                      f" messages/turn {entry['rendered_messages_per_turn']:.1f}", flush=True)

    docs = [{"text": json.loads(line)["text"]} for line in (DEMO / "c4_demo.jsonl").read_text().splitlines() if line]
    dataset = datasets.Dataset.from_list(docs)
    pt = {v: [] for v in versions}
    for _ in range(args.rounds):
        for key, version in versions.items():
            pt[key].append(time_pipeline(version, "auto", load_tokenizer(path, None), dataset, "pt", 1024))
    for key, version in versions.items():
        seconds = statistics.median(pt[key])
        tok = load_tokenizer(path, None)
        start = time.process_time()
        version.pipeline.tokenizer_identity(tok)
        first = time.process_time() - start
        start = time.process_time()
        version.pipeline.tokenizer_identity(tok)
        again = time.process_time() - start
        results[f"pt_{key}"] = {"documents": len(docs), "pipeline_s": seconds, "documents_per_s": len(docs) / seconds}
        results[f"tokenizer_identity_{key}"] = {"first_s": first, "again_s": again}
        print(f"{key:8s} pt c4_demo: {len(docs)} documents, pipeline {len(docs) / seconds:.1f} documents/s; "
              f"tokenizer identity {first * 1000:.0f} ms, again on the same object {again * 1000:.1f} ms", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
