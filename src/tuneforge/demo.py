"""`make demo`: answers before, LoRA training on the bundled identity data, answers after."""

from __future__ import annotations

import os
import sys
import time

CONFIG = "examples/demo_identity.yaml"
QUESTIONS = ["Who are you?", "你是谁？"]


def ask(argv: list[str]) -> list[str]:
    from .config.parser import build_args, read_sources
    from .data.conversation import Message
    from .infer.engine import ChatEngine

    args, _ = build_args(read_sources(argv + ["max_new_tokens=40"]), with_training=False)
    engine = ChatEngine.from_args(args)
    try:
        return [engine.chat([Message("user", q)]).strip() for q in QUESTIONS]
    finally:
        engine.close()  # its scheduler thread must not be inside torch when the interpreter exits


def main() -> int:
    from .cli import _quiet_libraries
    from .train.runner import run_train

    _quiet_libraries()
    root = os.getcwd()
    if not os.path.exists(CONFIG):
        print(f"run `make demo` from the project root ({CONFIG} not found in {root})", file=sys.stderr)
        return 2
    model = ["model_name_or_path=smollm2-135m-instruct", "template=auto"]
    print("== before training")
    for q, a in zip(QUESTIONS, ask(model)):
        print(f"Q: {q}\nA: {a}\n")
    start = time.time()
    results = run_train([CONFIG])
    out = os.path.abspath("saves/demo-identity")
    print(f"\n== after training ({time.time() - start:.0f} s, final loss {results.get('train_loss', float('nan')):.3f})")
    for q, a in zip(QUESTIONS, ask(model + [f"adapter_name_or_path={out}"])):
        print(f"Q: {q}\nA: {a}\n")
    print(f"loss curve: {os.path.join(out, 'training_loss.png')}")
    print(f"adapter:    {out}")
    print(f"chat with it: .venv/bin/tuneforge chat --model_name_or_path smollm2-135m-instruct --adapter_name_or_path {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
