"""A clearly separable synthetic preference set for the tiny test model: every chosen response ends with
"Thank you.", which no rejected response contains; both are made of the same fillers, so length does not
tell them apart."""

import json
import random

SUBJECTS = ["the fox", "the dog", "Paris", "the weather", "python code", "numbers", "the morning", "a function",
            "the assistant", "good morning", "today", "the lazy dog", "French", "the answer", "the city", "my name"]
FILLERS = ["It is fine.", "How are you today?", "The quick brown fox.", "I am fine.", "Numbers 0123456789.",
           "Who are you?", "return a + b", "It is sunny in Paris.", "bonjour", "Hello!"]


def separable_pairs(n: int = 60, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b, c = rng.sample(FILLERS, 3)
        rows.append({"instruction": f"Tell me about {rng.choice(SUBJECTS)}.", "input": "",
                     "chosen": f"{a} Thank you.", "rejected": f"{b} {c}"})
    return rows


def kto_rows(pairs: list[dict]) -> list[dict]:
    """Each pair as two KTO rows: the chosen response desirable, the rejected one not."""
    rows = []
    for p in pairs:
        for key, tag in (("chosen", True), ("rejected", False)):
            rows.append({"messages": [{"role": "user", "content": p["instruction"]},
                                      {"role": "assistant", "content": p[key]}], "label": tag})
    return rows


def write(folder, name: str, rows: list[dict]) -> str:
    path = folder / name
    path.write_text(json.dumps(rows, ensure_ascii=False))
    return str(path)
