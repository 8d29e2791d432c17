"""Throughput and peak memory of `tuneforge train` against a plain transformers Trainer + PEFT script
(benchmarks/plain_hf.py) on the same LoRA SFT workload, runs alternated round by round.

Workload (the one ../shared/bench/compare.sh gives tuneforge and LLaMA-Factory): the first N rows of
alpaca_en_demo in the model's own chat template, cutoff 512, batch 4, LoRA r8/alpha16 on all linear layers,
lr 1e-4, seed 42, fp32, 1 epoch.

tokens/s = the workload's real (non-padding) tokens, counted once by ../shared/bench/workload_tokens.py and
the same for both tools, divided by the training time: `train_runtime` from tuneforge's all_results.json,
and the baseline's own timing of trainer.train(). Supervised tokens/s likewise. Peak RSS from
/usr/bin/time -v. Each run is a fresh process, so nothing is shared or cached in memory between them.

Both log every step (--logging-steps), so the first logged loss is the loss of the first batch before any
update: at the same seed and data order it must be the same in both (LoRA's B matrices start at zero, so the
random A matrices do not enter it). The data order is the same because both use the Trainer's seeded random
sampler over the same rows in the same order.

usage: .venv/bin/python benchmarks/throughput.py [--model DIR] [--examples N] [--rounds R] [--gc on|off]
                                                 [--only tf|hf] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared"
DEFAULT_MODEL = "/tmp/tf-bench/models/tiny-llama-smol"
DEFAULT_DATA_DIR = SHARED / "anchors" / "llamafactory-data"
WORKLOAD_TOKENS = SHARED / "bench" / "workload_tokens.py"
LOSS_TOLERANCE = 1e-4  # fp32; padded vs padding-free batches differ only by summation order


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="tuneforge vs a plain transformers Trainer + PEFT baseline")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"HF model folder (default {DEFAULT_MODEL})")
    p.add_argument("--examples", type=int, default=240, help="first N rows of alpaca_en_demo (default 240)")
    p.add_argument("--rounds", type=int, default=2, help="rounds, each one run per tool (default 2)")
    p.add_argument("--gc", choices=("on", "off"), default="off", help="gradient checkpointing in both (default off)")
    p.add_argument("--only", choices=("tf", "hf"), help="run only tuneforge (tf) or only the baseline (hf)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="folder with alpaca_en_demo.json and dataset_info.json")
    p.add_argument("--tf-bin", default=str(Path(sys.executable).parent / "tuneforge"), help="tuneforge executable")
    p.add_argument("--python", default=sys.executable, help="python that runs plain_hf.py (needs transformers, peft)")
    p.add_argument("--logging-steps", type=int, default=1, help="both tools log every K steps (default 1)")
    p.add_argument("--cutoff", type=int, default=512)
    p.add_argument("--keep", help="keep configs, logs and outputs in this folder (default: a temporary one, removed)")
    return p.parse_args(argv)


def workload_tokens(python: str, model: str, data_file: Path, n: int, cutoff: int) -> dict:
    out = subprocess.run([python, str(WORKLOAD_TOKENS), model, str(data_file), str(n), str(cutoff)],
                         check=True, capture_output=True, text=True, env=bench_env())
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               DISABLE_VERSION_CHECK="1")
    return env


def tuneforge_config(args, work: Path) -> Path:
    """The keys compare.sh gives both tools, as one YAML file; per-run keys go on the command line."""
    lines = {
        "model_name_or_path": args.model, "stage": "sft", "do_train": "true", "finetuning_type": "lora",
        "lora_target": "all", "lora_rank": 8, "lora_alpha": 16, "dataset": "alpaca_en_demo",
        "dataset_dir": args.data_dir, "cutoff_len": args.cutoff, "max_samples": args.examples,
        "overwrite_cache": "true", "preprocessing_num_workers": 1, "dataloader_num_workers": 0,
        "overwrite_output_dir": "true", "save_strategy": '"no"', "logging_steps": args.logging_steps,
        "report_to": "none", "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
        "learning_rate": "1.0e-4", "num_train_epochs": 1, "seed": 42, "bf16": "false", "fp16": "false",
        "template": "auto", "gradient_checkpointing": "true" if args.gc == "on" else "false",
    }
    path = work / "tuneforge.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in lines.items()), encoding="utf-8")
    return path


def command(tool: str, args, work: Path, out: Path, config: Path) -> list[str]:
    if tool == "tf":
        return [args.tf_bin, "train", str(config), f"output_dir={out}"]
    return [args.python, str(HERE / "plain_hf.py"), "--model", args.model,
            "--data", str(Path(args.data_dir) / "alpaca_en_demo.json"), "--examples", str(args.examples),
            "--output", str(out), "--cutoff", str(args.cutoff), "--gc", args.gc,
            "--logging-steps", str(args.logging_steps)]


def peak_rss_mb(time_file: Path) -> float:
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_file.read_text())
    return int(match.group(1)) / 1024 if match else float("nan")


def read_results(tool: str, out: Path) -> dict:
    """-> runtime (s), losses (per logged step), tokens the tool says it trained on."""
    if tool == "hf":
        res = json.loads((out / "plain_hf_results.json").read_text())
        return {"runtime": res["train_runtime"], "losses": [h["loss"] for h in res["log_history"] if "loss" in h],
                "tool_tokens": res["tokens"], "tool_supervised": res["supervised_tokens"],
                "padded_tokens": res["padded_tokens"], "truncated": res.get("truncated_examples", 0)}
    res = json.loads((out / "all_results.json").read_text())
    state = out / "trainer_state.json"
    if state.exists():
        history = json.loads(state.read_text()).get("log_history", [])
    else:
        log = out / "trainer_log.jsonl"
        history = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return {"runtime": res["train_runtime"], "losses": [h["loss"] for h in history if "loss" in h],
            "tool_tokens": res.get("train_tokens"), "tool_supervised": res.get("train_supervised_tokens"),
            "padded_tokens": None, "truncated": None}


def run_once(tool: str, rnd: int, args, work: Path, config: Path, workload: dict) -> dict:
    out = work / f"{tool}-{rnd}"
    log, time_file = work / f"log-{tool}-{rnd}", work / f"time-{tool}-{rnd}"
    cmd = ["/usr/bin/time", "-v", "-o", str(time_file)] + command(tool, args, work, out, config)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=bench_env(), cwd=ROOT)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{tool} run {rnd} failed (exit {proc.returncode}); log {log}:\n{tail}")
    res = read_results(tool, out)
    res.update(tool=tool, round=rnd, rss=peak_rss_mb(time_file),
               tps=workload["tokens"] / res["runtime"], sup_tps=workload["supervised_tokens"] / res["runtime"])
    return res


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def report(rows: list[dict], workload: dict) -> None:
    by = {t: [r for r in rows if r["tool"] == t] for t in ("hf", "tf")}
    print()
    for tool, name in (("hf", "baseline (transformers Trainer + PEFT)"), ("tf", "tuneforge")):
        rs = by[tool]
        if not rs:
            continue
        print(f"{name}: tokens/s median {statistics.median(r['tps'] for r in rs):.1f}, supervised tokens/s median "
              f"{statistics.median(r['sup_tps'] for r in rs):.1f}, peak RSS max {max(r['rss'] for r in rs):.0f} MB")
        counted = {(r["tool_tokens"], r["tool_supervised"]) for r in rs}
        if counted != {(workload["tokens"], workload["supervised_tokens"])}:
            print(f"  note: {name} reports training on tokens/supervised {sorted(counted)}, the workload is "
                  f"{workload['tokens']}/{workload['supervised_tokens']}")
        padded = [r["padded_tokens"] for r in rs if r["padded_tokens"]]
        if padded:
            print(f"  its padded batches hold {padded[0]} token slots, {100 * (1 - workload['tokens'] / padded[0]):.1f}% padding")
    if by["hf"] and by["tf"]:
        pairs = [t["tps"] / h["tps"] for h, t in zip(by["hf"], by["tf"])]
        print(f"ratio tuneforge/baseline tokens/s per round: {' '.join(f'{p:.2f}' for p in pairs)}  "
              f"median {statistics.median(pairs):.2f}")
        print(f"peak RSS tuneforge/baseline: {max(r['rss'] for r in by['tf']) / max(r['rss'] for r in by['hf']):.2f}")
        h, t = by["hf"][0]["losses"], by["tf"][0]["losses"]
        if h and t:
            diff = abs(h[0] - t[0])
            verdict = "MATCH" if diff <= LOSS_TOLERANCE else "DIFFER"
            print(f"first logged loss: baseline {h[0]:.6f}  tuneforge {t[0]:.6f}  |diff| {diff:.2e}  -> {verdict} "
                  f"(tolerance {LOSS_TOLERANCE:g})")
            k = min(len(h), len(t))
            if k > 1:
                worst = max(abs(a - b) for a, b in zip(h[:k], t[:k]))
                cut = by["hf"][0]["truncated"]
                why = (f"; {cut} example(s) exceed the cutoff, which the baseline cuts at the end and tuneforge "
                       "cuts keeping the end-of-turn token, so their batches differ slightly") if cut else ""
                print(f"logged losses over {k} logs: max |diff| {worst:.2e} (after step 1 the updates differ by "
                      f"rounding, and by the LoRA A init if it were drawn differently{why})")


def main(argv=None) -> int:
    args = parse_args(argv)
    args.model = str(Path(args.model).resolve())
    args.data_dir = str(Path(args.data_dir).resolve())
    data_file = Path(args.data_dir) / "alpaca_en_demo.json"
    for path, what in ((Path(args.model), "--model"), (data_file, "--data-dir"), (Path("/usr/bin/time"), "GNU time")):
        if not path.exists():
            print(f"error: {path} not found ({what})", file=sys.stderr)
            return 2
    if args.only != "hf" and not Path(args.tf_bin).exists():
        print(f"error: tuneforge executable {args.tf_bin} not found (--tf-bin)", file=sys.stderr)
        return 2

    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="tf-throughput."))
    work.mkdir(parents=True, exist_ok=True)
    config = tuneforge_config(args, work)
    workload = workload_tokens(args.python, args.model, data_file, args.examples, args.cutoff)
    tools = [args.only] if args.only else ["hf", "tf"]
    print(f"model={Path(args.model).name} examples={args.examples} gc={args.gc} rounds={args.rounds} "
          f"workload={workload['tokens']} tokens ({workload['supervised_tokens']} supervised)")
    print(f"{'round':>5} {'tool':>4} {'runtime_s':>9} {'tokens/s':>9} {'sup_tok/s':>9} {'peakRSS_MB':>10} {'first_loss':>10}")
    rows, failed = [], False
    try:
        for rnd in range(1, args.rounds + 1):
            for tool in tools if rnd % 2 else tools[::-1]:  # alternate who goes first
                r = run_once(tool, rnd, args, work, config, workload)
                rows.append(r)
                first = r["losses"][0] if r["losses"] else None
                print(f"{rnd:>5} {tool:>4} {r['runtime']:>9.2f} {r['tps']:>9.1f} {r['sup_tps']:>9.1f} "
                      f"{r['rss']:>10.0f} {fmt(first, '>10.6f')}", flush=True)
    except RuntimeError as e:
        failed = True
        print(f"error: {e}", file=sys.stderr)
    report(rows, workload)
    if args.keep or failed:
        print(f"configs, logs and outputs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
