"""How close `tuneforge estimate` comes to the peak RSS of the `tuneforge train` run it predicts.

For each model, method (LoRA, QLoRA, freeze, full) and gradient checkpointing setting: writes one config
(the first N rows of alpaca_en_demo, cutoff 512, batch 4, a few steps, fp32), runs
`python -m tuneforge.estimate CONFIG --json` for its `peak_bytes`, then `tuneforge train CONFIG` under
`/usr/bin/time -v` for the process's maximum resident set size, and prints one table row each: estimated,
measured, error. Both share one tokenized-data cache, so training reads the data the estimate tokenized.

Models: `tiny` is tests/tiny.py's save_tiny_model (a 2-layer Llama, hidden 64, 400-token vocabulary:
framework overhead is nearly all of it), `smollm2` the SmolLM2-135M-Instruct folder
(default /tmp/tf-bench/models/smollm2-135m-instruct; the alias's converted folder works as well).

usage: .venv/bin/python benchmarks/estimate_accuracy.py [--models tiny,smollm2] [--methods lora,qlora,freeze,full]
                                                      [--gc off,on] [--examples 64] [--steps 3] [--rounds 1]
                                                      [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA_DIR = ROOT.parent / "shared" / "anchors" / "llamafactory-data"
SMOLLM2 = "/tmp/tf-bench/models/smollm2-135m-instruct"
METHODS = {
    "lora": {"finetuning_type": "lora", "lora_rank": 8, "lora_target": "all"},
    "qlora": {"finetuning_type": "lora", "lora_rank": 8, "lora_target": "all", "quantization_bit": 4},
    "freeze": {"finetuning_type": "freeze"},
    "full": {"finetuning_type": "full"},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="tuneforge estimate against measured peak RSS")
    p.add_argument("--models", default="tiny,smollm2")
    p.add_argument("--smollm2", default=SMOLLM2, help=f"SmolLM2 folder (default {SMOLLM2})")
    p.add_argument("--methods", default="lora,qlora,freeze,full")
    p.add_argument("--gc", default="off,on")
    p.add_argument("--examples", type=int, default=64, help="first N rows of alpaca_en_demo (default 64)")
    p.add_argument("--steps", type=int, default=3, help="max_steps of each run (default 3)")
    p.add_argument("--rounds", type=int, default=1, help="training runs per row; the table shows their mean")
    p.add_argument("--keep", help="keep configs, logs and outputs here (default: a temporary folder)")
    return p.parse_args(argv)


def bench_env(cache: Path) -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               TUNEFORGE_DATA_CACHE=str(cache))
    return env


def tiny_model(work: Path) -> str:
    sys.path.insert(0, str(ROOT))
    from tests.tiny import save_tiny_model

    return save_tiny_model(work / "tiny-model")


def write_config(work: Path, name: str, model: str, method: str, gc: str, args) -> Path:
    keys = {
        "model_name_or_path": model, "stage": "sft", "do_train": "true", "dataset": "alpaca_en_demo",
        "dataset_dir": str(DATA_DIR), "template": "auto", "cutoff_len": 512, "max_samples": args.examples,
        "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "max_steps": args.steps,
        "learning_rate": "1.0e-4", "logging_steps": 1, "save_strategy": '"no"', "report_to": "none",
        "output_dir": str(work / f"out-{name}"), "overwrite_output_dir": "true", "seed": 42, "bf16": "false",
        "dataloader_num_workers": 0, "gradient_checkpointing": "true" if gc == "on" else "false",
        **METHODS[method],
    }
    path = work / f"{name}.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in keys.items()), encoding="utf-8")
    return path


def estimate(config: Path, env: dict, log: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "tuneforge.estimate", str(config), "--json"], capture_output=True,
                         text=True, env=env, cwd=ROOT)
    log.write_text(out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"estimate failed for {config}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def train_peak_rss(config: Path, env: dict, log: Path) -> int:
    time_file = log.with_suffix(".time")
    tf_bin = Path(sys.executable).parent / "tuneforge"
    with open(log, "w") as f:
        proc = subprocess.run(["/usr/bin/time", "-v", "-o", str(time_file), str(tf_bin), "train", str(config)],
                              stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"training failed for {config} (exit {proc.returncode}):\n{tail}")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_file.read_text())
    return int(match.group(1)) * 1024


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.keep or tempfile.mkdtemp(prefix="tf-estimate-"))
    work.mkdir(parents=True, exist_ok=True)
    env = bench_env(work / "data-cache")
    models = {"tiny": None, "smollm2": args.smollm2}
    rows = []
    print("| model | method | gc | estimated MB | measured MB (runs) | error |")
    print("|---|---|---|---|---|---|")
    try:
        for model_name in args.models.split(","):
            model = models[model_name] or tiny_model(work)
            for method in args.methods.split(","):
                for gc in args.gc.split(","):
                    name = f"{model_name}-{method}-gc{gc}"
                    config = write_config(work, name, model, method, gc, args)
                    est = estimate(config, env, work / f"{name}.estimate.log")
                    runs = [train_peak_rss(config, env, work / f"{name}.train{r}.log") for r in range(args.rounds)]
                    measured = sum(runs) / len(runs)
                    error = est["peak_bytes"] / measured - 1
                    rows.append({"model": model_name, "method": method, "gc": gc, "estimated": est["peak_bytes"],
                                 "measured": measured, "runs": runs, "error": error, "breakdown": est["breakdown"]})
                    each = f" ({', '.join(f'{r / 2**20:.0f}' for r in runs)})" if len(runs) > 1 else ""
                    print(f"| {model_name} | {method} | {gc} | {est['peak_bytes'] / 2**20:.0f} | "
                          f"{measured / 2**20:.0f}{each} | {100 * error:+.1f}% |", flush=True)
    finally:
        (work / "results.json").write_text(json.dumps(rows, indent=1))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    worst = max((abs(r["error"]) for r in rows), default=0.0)
    print(f"\nlargest error: {100 * worst:.1f}% (target: within 20%)")
    return 0 if worst <= 0.2 else 1


if __name__ == "__main__":
    sys.exit(main())
