"""llama.cpp runs the exported GGUF files like transformers runs the source model.

llama-cpp-python is not a dependency (it compiles llama.cpp, ~15 minutes on 2 cores:
`CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python`), so these tests skip without it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (CMAKE_ARGS=-DGGML_NATIVE=OFF pip install llama-cpp-python)"
)

from tests.export.test_gguf_writer import TEXTS, build_case, needs_smollm2, smollm2  # noqa: E402,F401
from tuneforge.export.gguf_writer import SUPPORTED_ARCHITECTURES, write_gguf  # noqa: E402

MESSAGES = [{"role": "user", "content": "Hello! Who are you? 你好，今天天气很好。 The quick brown fox 🙂 12345."}]
NEW_TOKENS = 10


def _llama(path):
    return llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False)


def _hf_greedy(model, ids: list[int]) -> list[int]:
    inputs = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=model.config.pad_token_id or 0,
        )
    return out[0, len(ids):].tolist()


def _llama_cpp_greedy(llm, ids: list[int]) -> list[int]:
    tokens = []
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        tokens.append(token)
        if len(tokens) == NEW_TOKENS:
            break
    return tokens


def _check_runs_like_transformers(model, tokenizer, path, same_prompt_tokens: bool = True):
    llm = _llama(path)
    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.encode(prompt)
    for text in (TEXTS["english"], TEXTS["chinese"]):
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tokenizer.encode(text, add_special_tokens=False)
    if same_prompt_tokens:
        assert llm.tokenize(prompt.encode(), add_bos=True, special=True) == ids

    llm.eval(ids)
    logits = np.asarray(llm.scores[: len(ids)])
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(logits - reference).max() / np.abs(reference).max() < 5e-3  # f16 weights; measured 1-2e-3
    assert _llama_cpp_greedy(llm, ids) == _hf_greedy(model, ids)

    # Chat formatting comes from the embedded template, and renders the prompt transformers renders.
    template = llm.metadata["tokenizer.chat_template"]
    assert template == tokenizer.chat_template and llm.chat_format == "chat_template.default"
    formatter = llama_cpp.llama_chat_format.Jinja2ChatFormatter(
        template, eos_token=tokenizer.eos_token or "", bos_token=tokenizer.bos_token or ""
    )
    assert formatter(messages=MESSAGES).prompt == prompt
    llm.close()


@pytest.mark.parametrize("arch", SUPPORTED_ARCHITECTURES)
def test_llama_cpp_continues_like_transformers(arch, tmp_path):
    model, tokenizer, _, pre = build_case(arch)
    write_gguf(model, tokenizer, tmp_path / "model.gguf", "f16")
    # llama.cpp's SentencePiece tokenizer with a prefix space puts a space after every special token as well (the
    # original sentencepiece "legacy" behaviour); transformers' Llama tokenizer does not. Plain text still matches.
    prefix_space = tokenizer.tokenize("Hello")[0].startswith("\u2581")
    _check_runs_like_transformers(model, tokenizer, tmp_path / "model.gguf", same_prompt_tokens=not prefix_space)


@pytest.mark.slow
@needs_smollm2
def test_llama_cpp_runs_exported_smollm2(smollm2, tmp_path):  # noqa: F811
    model, tokenizer = smollm2
    write_gguf(model, tokenizer, tmp_path / "smollm2.gguf", "f16")
    _check_runs_like_transformers(model, tokenizer, tmp_path / "smollm2.gguf")
