"""Greedy accuracy of SmolLM2-135M-Instruct on short arithmetic questions that are not in
data/forge_arithmetic.json, without and with the adapter examples/grpo_arithmetic.yaml trains: does GRPO
teach it something it can check?

usage: .venv/bin/python benchmarks/grpo_arithmetic_eval.py ADAPTER_DIR [N_QUESTIONS=100]
"""

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tuneforge.config.args import FinetuneArgs, ModelArgs  # noqa: E402
from tuneforge.data.stops import stop_tokens  # noqa: E402
from tuneforge.data.templates import get_template  # noqa: E402
from tuneforge.models.loader import load_model, load_tokenizer  # noqa: E402
from tuneforge.train.rewards import accuracy  # noqa: E402
from tuneforge.train.rollout import HFGenerator, Sampling  # noqa: E402

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b}


def questions(n: int, seed: int = 11) -> list[tuple[str, str]]:
    """n (question, answer) pairs with results 0..50, none worded as in the training data."""
    seen = {row["instruction"] for row in json.loads((ROOT / "data" / "forge_arithmetic.json").read_text())}
    rng, out = random.Random(seed), {}
    while len(out) < n:
        op = rng.choice(list(OPS))
        a, b = (rng.randint(2, 10), rng.randint(0, 5)) if op == "×" else (rng.randint(0, 40), rng.randint(0, 10))
        if op == "-" and b > a:
            a, b = b, a
        text = f"Calculate {a} {op} {b}. Reply with the number only."
        if text not in seen:
            out[text] = str(OPS[op](a, b))
    return list(out.items())


def greedy_accuracy(adapter: str | None, asked: list[tuple[str, str]]) -> tuple[float, float]:
    model_args = ModelArgs(model_name_or_path="smollm2-135m-instruct", adapter_name_or_path=adapter)
    tokenizer = load_tokenizer(model_args)
    model = load_model(model_args, FinetuneArgs(), tokenizer, is_trainable=False)
    template = get_template("auto", tokenizer, None, True)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
               for q, _ in asked]
    prompts = [p if isinstance(p, list) else p["input_ids"] for p in prompts]
    generator = HFGenerator(Sampling(False, 1.0, 1.0, 0, 32), stop_tokens(tokenizer, template)[0],
                            tokenizer.pad_token_id)
    replies = []
    for start in range(0, len(prompts), 25):
        sampled = generator.sample(model, prompts[start : start + 25]).completions
        replies += tokenizer.batch_decode(sampled, skip_special_tokens=True)
    scores = accuracy(None, replies, [a for _, a in asked])
    length = sum(len(tokenizer(r).input_ids) for r in replies) / len(replies)
    return sum(scores) / len(scores), length


if __name__ == "__main__":
    asked = questions(int(sys.argv[2]) if len(sys.argv) > 2 else 100)
    for name, adapter in (("base", None), ("grpo", sys.argv[1])):
        acc, length = greedy_accuracy(adapter, asked)
        print(json.dumps({"model": name, "questions": len(asked), "greedy_accuracy": round(acc, 3),
                          "mean_reply_tokens": round(length, 1)}))
