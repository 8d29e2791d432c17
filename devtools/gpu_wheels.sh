#!/usr/bin/env bash
# Run HERE (needs PyPI), before a device call: puts into .whl/ (git-ignored) the packages tuneforge needs
# that the nvidia-h200 image lacks (it has torch, transformers, peft, accelerate, pyarrow, pandas, ...).
# DeepSpeed ships only a source archive; its wheel is pure Python (the ops compile on first use), so it is
# built here.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# The versions installed in .venv (make test), the ones the suite ran with.
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
PKGS=()
for name in datasets dill multiprocess hjson gguf pydantic pydantic-core annotated-types typing-inspection; do
  PKGS+=("$name==$(version "$name")")
done
python3 -m pip download -q --no-deps "${PLAT[@]}" -d .whl "${PKGS[@]}"
.venv/bin/pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed==$(version deepspeed)"
du -sh .whl && ls .whl
