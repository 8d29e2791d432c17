"""GPU-path checks for DeepSpeed and FSDP, made to run as one device call (devtools/gpu_check.sh).

The CPU suite cannot run these: accelerate uses DeepSpeed and FSDP only on GPUs. On a one-GPU machine each
run is a single process under torchrun (NCCL refuses two ranks on one GPU), which still goes through the
whole integration: partitioning or sharding while loading, the sharded loss path, the optimizer (mapped to
DeepSpeedCPUAdam for the offload config), and gathering the weights when saving.

Every run trains the same tiny model on the same rows, in float32, with the same seed; the losses must
equal the plain single-process run's, and each saved model must load and give the plain run's logits.

    python3 devtools/gpu_check.py OUT_DIR      -> OUT_DIR/gpu_check.json, one line per run on stdout
    GPU_CHECK_ONLY=plain,plain_lora python3 devtools/gpu_check.py OUT_DIR    (some runs only)
"""

import json
import os
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

DS = os.path.join(ROOT, "examples", "deepspeed")
FSDP2 = ["fsdp=true", 'fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}']
STEPS = 6
RUNS = {  # name: (extra keys, the run it must match)
    "plain": ([], None),
    "ds_z2": ([f"deepspeed={DS}/ds_z2_config.json"], "plain"),
    "ds_z3": ([f"deepspeed={DS}/ds_z3_config.json"], "plain"),
    "ds_z3_offload": ([f"deepspeed={DS}/ds_z3_offload_config.json"], "plain"),
    "fsdp2": (FSDP2, "plain"),
    "plain_lora": (["finetuning_type=lora"], None),
    "ds_z3_lora": (["finetuning_type=lora", f"deepspeed={DS}/ds_z3_config.json"], "plain_lora"),
    "fsdp2_lora": (["finetuning_type=lora", *FSDP2], "plain_lora"),
    "bf16": (["bf16=true"], None),
}


def _setup(work: str) -> tuple[str, str]:
    from tests.tiny import save_tiny_model
    from tests.train.test_train_e2e import ROWS

    model = save_tiny_model(os.path.join(work, "model"))
    data = os.path.join(work, "rows.json")
    with open(data, "w") as f:
        json.dump(ROWS * 4, f, ensure_ascii=False)
    return model, data


def _train(name: str, extra: list, model: str, data: str, work: str, port: int) -> dict:
    out = os.path.join(work, name)
    argv = [f"model_name_or_path={model}", f"dataset={data}", "stage=sft", "finetuning_type=full", "lora_rank=4",
            "template=auto", "cutoff_len=64", f"output_dir={out}", "per_device_train_batch_size=4",
            "learning_rate=2e-3", f"max_steps={STEPS}", "logging_steps=1", "save_strategy=no", "report_to=none",
            "seed=7", "overwrite_output_dir=true", "dataloader_num_workers=0", f"master_port={port}", *extra]
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "tuneforge.cli", "train", *argv], capture_output=True, text=True,
                          env=dict(os.environ, TUNEFORGE_DATA_CACHE=os.path.join(work, "cache")), timeout=420)
    result = {"name": name, "rc": proc.returncode, "seconds": round(time.time() - start, 1), "losses": []}
    if proc.returncode != 0:
        result["error"] = (proc.stdout + proc.stderr)[-2500:]
        return result
    with open(os.path.join(out, "trainer_log.jsonl")) as f:
        result["losses"] = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    with open(os.path.join(out, "all_results.json")) as f:
        result["mfu"] = json.load(f).get("train_mfu")  # against the GPU's own measured peak: at most 1
    result["out"] = out
    return result


def _logits(out: str, model_dir: str, lora: bool):
    import torch
    from transformers import AutoModelForCausalLM

    if lora:
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), out)
    else:
        model = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        return model.float().eval()(input_ids=ids).logits


def main(out_dir: str) -> int:
    import torch

    os.makedirs(out_dir, exist_ok=True)
    work = "/tmp/tuneforge-gpu-check"
    os.makedirs(work, exist_ok=True)
    model, data = _setup(work)
    results, failed = {}, False
    only = [n for n in os.environ.get("GPU_CHECK_ONLY", "").split(",") if n]  # e.g. plain,plain_lora on a CPU
    for i, (name, (extra, ref)) in enumerate(RUNS.items()):
        if only and name not in only:
            continue
        r = _train(name, extra, model, data, work, 29600 + i)
        if r["rc"] == 0 and ref and results.get(ref, {}).get("rc") == 0:
            want = results[ref]["losses"]
            r["max_loss_diff"] = max(abs(a - b) for a, b in zip(r["losses"], want)) if r["losses"] else None
            lora = "lora" in name
            if "logits" not in results[ref]:
                results[ref]["logits"] = _logits(results[ref]["out"], model, lora)
            r["max_logit_diff"] = (_logits(r["out"], model, lora) - results[ref]["logits"]).abs().max().item()
            r["ok"] = len(r["losses"]) == len(want) and r["max_loss_diff"] < 1e-3 and r["max_logit_diff"] < 1e-2
        else:
            r["ok"] = r["rc"] == 0 and len(r["losses"]) == STEPS
        r["ok"] = r["ok"] and (r.get("mfu") or 0) <= 1
        failed |= not r["ok"]
        results[name] = r
        print(json.dumps({k: v for k, v in r.items() if k not in ("out", "logits")}), flush=True)
    from tuneforge.train.throughput import machine_peak_flops

    peaks = {dtype: machine_peak_flops(dtype) for dtype in ("float32", "bfloat16")}
    print(json.dumps({"peak_flops": peaks}), flush=True)
    if torch.cuda.is_available() and peaks["bfloat16"] < 1e14:  # an H200 does ~8e14; a CPU's peak is ~1e11
        failed = True
    summary = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "torch": torch.__version__, "peak_flops": peaks, "runs": results}
    for r in results.values():
        r.pop("logits", None)
    with open(os.path.join(out_dir, "gpu_check.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print("ALL OK" if not failed else "SOME RUNS FAILED", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "gpu-check-out"))
