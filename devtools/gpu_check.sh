#!/usr/bin/env bash
# The device side of the GPU checks: one call, e.g.
#   run(command="bash devtools/gpu_check.sh", carry=[".whl"], timeout_s=540)
# after devtools/gpu_wheels.sh has filled .whl/ here. Results: $OUT/gpu_check.json and $OUT/log.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, peft, accelerate, deepspeed; print(torch.__version__, transformers.__version__, peft.__version__, accelerate.__version__, deepspeed.__version__)"
python3 devtools/gpu_check.py "$OUT" 2>&1 | tee "$OUT/log.txt"
