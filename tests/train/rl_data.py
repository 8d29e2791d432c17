"""Data for the ppo/grpo tests: prompts, a reward that favours one token, and reward-model pairs that
teach the same preference."""

from __future__ import annotations

import json
import random

FAVOURED = "you"  # a whole token of the tiny tokenizer (tests/tiny.py)


def favour_token(prompts, completions, **_):
    """A GRPO reward function: how often the favoured token's text occurs in each completion."""
    return [float(c.count(FAVOURED)) for c in completions]


def wrong_count(prompts, completions, **_):
    return [0.0]


def raises(prompts, completions, **_):
    raise KeyError("score")


def prompt_rows(n: int = 64) -> list[dict]:
    return [{"instruction": f"Say something about item {i}.", "input": "", "output": "ok", "answer": str(i % 7)}
            for i in range(n)]


def favoured_token_pairs(tokenizer, n: int = 64, seed: int = 0) -> list[dict]:
    """Pairs of random-token replies, the chosen one with 1-3 of its 8 tokens replaced by the favoured token:
    a reward model trained on them scores replies by how often the token occurs, whatever else they hold
    (as sampled replies look)."""
    rng = random.Random(seed)
    favoured = tokenizer.convert_tokens_to_ids(FAVOURED)
    plain = sorted(i for t, i in tokenizer.get_vocab().items()
                   if FAVOURED not in t and i not in tokenizer.all_special_ids and t.isalpha())
    rows = []
    for i in range(n):
        rejected = rng.sample(plain, 8)
        chosen = list(rejected)
        for position in rng.sample(range(8), rng.randint(1, 3)):
            chosen[position] = favoured
        rows.append({"instruction": f"Say something about item {i}.", "input": "",
                     "chosen": tokenizer.decode(chosen), "rejected": tokenizer.decode(rejected)})
    return rows


def write(folder, name: str, rows: list[dict]) -> str:
    path = folder / name
    path.write_text(json.dumps(rows, ensure_ascii=False))
    return str(path)
