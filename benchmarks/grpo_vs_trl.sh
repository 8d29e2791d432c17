#!/usr/bin/env bash
# tuneforge's `stage: grpo` on the workload of ../shared/bench/trl_grpo.py (TRL's GRPOTrainer), and optionally
# TRL itself, for a completions-per-second comparison.
#
# Workload (identical to trl_grpo.py): the first N_PROMPTS instructions of alpaca_en_demo as single-turn chat
# prompts in the model's own template, NUM_GENERATIONS completions per prompt of at most MAX_NEW tokens
# (temperature 1, no top-p / top-k), 8 completions per optimizer step (batch 8, accumulation 1), STEPS steps,
# LoRA r8 / alpha 16 on all linear layers, lr 1e-4, beta 0.04 (KL to the reference), seed 42, fp32 on the CPU,
# and the reward grpo_rewards.py:brevity (-len(text)/100, the same as TRL's script).
#
# Measures, from the run's own files: train_runtime (all_results.json / train_results.json), the mean
# completion length over the steps (trainer_log.jsonl's completion_length; every step has exactly 8
# completions, so the mean of the step means is the exact mean), completions/s = STEPS x 8 / train_runtime
# and completion tokens/s = completions/s x mean completion length. wall_s is the whole process (model
# loading included), for reference only. Compare completions/s only at equal mean completion length.
#
# usage: benchmarks/grpo_vs_trl.sh MODEL_DIR [N_PROMPTS=32] [NUM_GENERATIONS=4] [MAX_NEW=32] [STEPS=8]
#   TRL=1    also run ../shared/bench/trl_grpo.py (TRL venv: $TRL_PY, default /tmp/tf-bench/trl-venv/bin/python)
#            right after, and print its line and the ratio tuneforge / TRL of completions/s
#   KEEP=DIR keep tuneforge's output folder and logs in DIR (default: a temporary folder, removed)
#   TF_PREFIX="cmd ..."  run tuneforge under a prefix, e.g. TF_PREFIX="py-spy record -o /tmp/g.svg --"
# Prints one JSON line per tool (and one with the ratio when TRL=1); progress goes to stderr.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 2
fi

MODEL=$(cd "$1" && pwd)
N=${2:-32}
G=${3:-4}
MAX_NEW=${4:-32}
STEPS=${5:-8}
BATCH=8

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
DATA=$(cd "$ROOT/../shared/anchors/llamafactory-data" && pwd)
TF="$ROOT/.venv/bin/tuneforge"
PY="$ROOT/.venv/bin/python"
TRL_PY=${TRL_PY:-/tmp/tf-bench/trl-venv/bin/python}

if [[ -n "${KEEP:-}" ]]; then
    WORK=$(mkdir -p "$KEEP" && cd "$KEEP" && pwd)
else
    WORK=$(mktemp -d /tmp/grpo_vs_trl.XXXXXX)
    trap 'rm -rf "$WORK"' EXIT
fi
OUT="$WORK/tuneforge_out"

echo "[grpo_vs_trl] $(uptime)" >&2
echo "[grpo_vs_trl] tuneforge: model $MODEL, $N prompts, $G generations, $MAX_NEW new tokens, $STEPS steps" >&2
start=$(date +%s.%N)
# Run from benchmarks/: tuneforge puts the working directory on sys.path to import `grpo_rewards:brevity`.
(
    cd "$HERE"
    ${TF_PREFIX:-} "$TF" train stage=grpo model_name_or_path="$MODEL" dataset=alpaca_en_demo dataset_dir="$DATA" \
        max_samples="$N" template=auto finetuning_type=lora lora_rank=8 lora_alpha=16 lora_target=all \
        per_device_train_batch_size=$BATCH gradient_accumulation_steps=1 num_generations="$G" \
        max_new_tokens="$MAX_NEW" max_steps="$STEPS" learning_rate=1e-4 beta=0.04 temperature=1.0 top_p=1.0 \
        top_k=0 reward_funcs=grpo_rewards:brevity seed=42 save_strategy=no logging_steps=1 \
        output_dir="$OUT" overwrite_output_dir=true
) >"$WORK/tuneforge.log" 2>&1 || { tail -n 40 "$WORK/tuneforge.log" >&2; echo "[grpo_vs_trl] tuneforge failed" >&2; exit 1; }
end=$(date +%s.%N)
echo "[grpo_vs_trl] $(uptime)" >&2

TF_LINE=$("$PY" - "$OUT" "$STEPS" "$BATCH" "$start" "$end" <<'PYEOF'
import json, os, sys

out, steps, batch, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
results = {}
for name in ("train_results.json", "all_results.json"):
    path = os.path.join(out, name)
    if os.path.isfile(path):
        results.update(json.load(open(path)))
runtime = results["train_runtime"]
lengths = []
with open(os.path.join(out, "trainer_log.jsonl")) as f:
    for line in f:
        row = json.loads(line)
        if "completion_length" in row:
            lengths.append(row["completion_length"])
if len(lengths) != steps:
    print(f"[grpo_vs_trl] warning: {len(lengths)} completion_length entries for {steps} steps", file=sys.stderr)
completions = steps * batch
mean_len = sum(lengths) / max(len(lengths), 1)
cps = completions / runtime
print(json.dumps({"tool": "tuneforge", "completions": completions, "train_runtime": runtime,
                  "completions_per_s": round(cps, 3), "mean_completion_length": round(mean_len, 1),
                  "completion_tokens_per_s": round(cps * mean_len, 1), "wall_s": round(end - start, 1)}))
PYEOF
)
echo "$TF_LINE"

if [[ "${TRL:-0}" == 1 ]]; then
    echo "[grpo_vs_trl] TRL: $(uptime)" >&2
    (cd "$ROOT" && "$TRL_PY" "$ROOT/../shared/bench/trl_grpo.py" "$MODEL" "$DATA" "$N" "$G" "$MAX_NEW" "$STEPS") \
        >"$WORK/trl.log" 2>&1 || { tail -n 40 "$WORK/trl.log" >&2; echo "[grpo_vs_trl] TRL failed" >&2; exit 1; }
    echo "[grpo_vs_trl] $(uptime)" >&2
    TRL_RAW=$(grep '^{"tool": "trl"' "$WORK/trl.log" | tail -n 1)
    "$PY" - "$TF_LINE" "$TRL_RAW" <<'PYEOF'
import json, sys

tf, trl = json.loads(sys.argv[1]), json.loads(sys.argv[2])
tf_cps = tf["completions"] / tf["train_runtime"]  # unrounded
trl_cps = trl["completions"] / trl["train_runtime"]
trl["completion_tokens_per_s"] = round(trl_cps * trl["mean_completion_length"], 1)
print(json.dumps(trl))
print(json.dumps({"ratio_completions_per_s": round(tf_cps / trl_cps, 2),
                  "ratio_completion_tokens_per_s": round(tf_cps * tf["mean_completion_length"]
                                                         / (trl_cps * trl["mean_completion_length"]), 2),
                  "mean_completion_length": {"tuneforge": tf["mean_completion_length"],
                                             "trl": trl["mean_completion_length"]}}))
PYEOF
fi
