"""Serving benchmark: 8 chat requests of 64 new tokens sent one after another, then all at once, to a running
`tuneforge api` server, against the same model answering with transformers' `generate` (how `tuneforge chat`
generated before it shared the API's scheduler).

    python benchmarks/api_concurrency.py [--model smollm2-135m-instruct] [--requests 8] [--tokens 64]

It starts the server itself on 127.0.0.1 (a subprocess, as a user would run it), uses the official openai
client, and prints one JSON line. Answers may end before 64 tokens at the model's end of turn, so the
comparison is in completion tokens per second as well as wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

QUESTIONS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator works, step by step.",
    "Describe the water cycle to a ten-year-old.",
    "What are the pros and cons of electric cars? Give details.",
    "Write a poem about autumn leaves in a city park.",
    "Explain the rules of chess to a beginner.",
    "Describe a day in the life of a medieval blacksmith.",
    "How do airplanes stay in the air? Explain the physics.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tuneforge.cli", "api", "--model_name_or_path", model, "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.time() + 600
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit("the server exited:\n" + server.stderr.read())
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit("the server did not start")


def ask(client, name: str, question: str, tokens: int) -> int:
    reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": question}],
                                          max_tokens=tokens, temperature=0)
    return reply.usage.completion_tokens


def hf_generate_baseline(model_name: str, questions: list[str], tokens: int) -> tuple[float, int]:
    """Seconds and tokens of answering the first question with transformers' generate, greedy, KV cache."""
    import torch

    from tuneforge.config.parser import build_args, read_sources
    from tuneforge.infer.engine import ChatEngine
    from tuneforge.data.conversation import Message

    args, _ = build_args(read_sources([f"model_name_or_path={model_name}"]), with_training=False)
    engine = ChatEngine.from_args(args)
    ids = torch.tensor([engine.prompt_ids([Message("user", questions[0])])])
    best, produced = float("inf"), 0
    for _ in range(3):
        start = time.perf_counter()
        with torch.inference_mode():
            out = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                        do_sample=False, eos_token_id=engine.stop_ids,
                                        pad_token_id=engine.tokenizer.pad_token_id)
        best = min(best, time.perf_counter() - start)
        produced = out.shape[1] - ids.shape[1]
    return best, produced


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    opts = parser.parse_args()
    from openai import OpenAI

    questions = (QUESTIONS * 4)[: opts.requests]
    port = free_port()
    server = start_server(opts.model, port)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600)
        name = client.models.list().data[0].id
        ask(client, name, questions[0], 8)  # warm-up
        start = time.perf_counter()
        single_tokens = ask(client, name, questions[0], opts.tokens)
        single = time.perf_counter() - start
        start = time.perf_counter()
        serial_tokens = sum(ask(client, name, q, opts.tokens) for q in questions)
        serial = time.perf_counter() - start
        start = time.perf_counter()
        with ThreadPoolExecutor(len(questions)) as pool:
            concurrent_tokens = sum(pool.map(lambda q: ask(client, name, q, opts.tokens), questions))
        concurrent = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=60)
    hf_seconds, hf_tokens = hf_generate_baseline(opts.model, questions, opts.tokens)
    print(json.dumps({
        "model": opts.model, "requests": len(questions), "max_tokens": opts.tokens, "threads": os.cpu_count(),
        "serial_s": round(serial, 2), "serial_tokens": serial_tokens,
        "concurrent_s": round(concurrent, 2), "concurrent_tokens": concurrent_tokens,
        "concurrent_over_serial_time": round(concurrent / serial, 3),
        "serial_tok_per_s": round(serial_tokens / serial, 1),
        "concurrent_tok_per_s": round(concurrent_tokens / concurrent, 1),
        "single_request_s": round(single, 3), "single_tokens": single_tokens,
        "hf_generate_s": round(hf_seconds, 3), "hf_generate_tokens": hf_tokens,
    }))


if __name__ == "__main__":
    main()
