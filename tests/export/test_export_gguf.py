"""`tuneforge export ... export_format=gguf`: one file that transformers reads back, with a Modelfile."""

from __future__ import annotations

import os

import pytest
import torch

from tests.export.test_export_merge import IDS, exported_logits, logits_of, make_adapter
from tests.tiny import save_tiny_model
from tuneforge.errors import ConfigError, ExportError
from tuneforge.export.command import run_export


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("base"), initializer_range=0.1)


def test_base_plus_adapter_to_gguf_reads_back_and_has_a_modelfile(base, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = make_adapter(base, tmp_path / "a", 5)
    merged = tmp_path / "merged"
    run_export([f"model_name_or_path={base}", f"adapter_name_or_path={adapter}", f"export_dir={merged}"])
    out = tmp_path / "forge-gguf"
    assert run_export([f"model_name_or_path={base}", f"adapter_name_or_path={adapter}", f"export_dir={out}",
                       "export_format=gguf", "export_quantization=q8_0", "default_system=You are Forge."]) == 0
    files = sorted(os.listdir(out))
    assert files == ["Modelfile", "README.md", "forge-gguf-q8_0.gguf", "tuneforge_export.json"]
    model = AutoModelForCausalLM.from_pretrained(str(out), gguf_file="forge-gguf-q8_0.gguf", dtype=torch.float32)
    expected = exported_logits(str(merged))
    error = (logits_of(model) - expected).abs().max() / expected.abs().max()
    assert error < 7e-2  # q8_0's bound for these weights (the merged model, not the base, is inside)
    assert (expected - exported_logits(base)).abs().max() > 10 * error * expected.abs().max()
    tok = AutoTokenizer.from_pretrained(str(out), gguf_file="forge-gguf-q8_0.gguf")
    assert tok.encode("Hello 你好<|im_end|>", add_special_tokens=False) == \
        AutoTokenizer.from_pretrained(base).encode("Hello 你好<|im_end|>", add_special_tokens=False)
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./forge-gguf-q8_0.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and 'SYSTEM """You are Forge."""' in modelfile
    assert 'TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n' in modelfile
    assert "ollama create forge-gguf -f Modelfile" in (out / "README.md").read_text()


def test_gguf_mistakes_are_found_before_weights_load(base, tmp_path, monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tuneforge.models import loader

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded")

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(gpt2)
    monkeypatch.setattr(loader, "load_base_model", no_weights)
    with pytest.raises(ExportError, match="supported: .*llama"):
        run_export([f"model_name_or_path={gpt2}", f"export_dir={tmp_path / 'o'}", "export_format=gguf"])
    with pytest.raises(ExportError, match="q4_k.*not supported.*q8_0"):
        run_export([f"model_name_or_path={base}", f"export_dir={tmp_path / 'o'}", "export_format=gguf",
                    "export_quantization=q4_k"])
    with pytest.raises(ConfigError, match="export_hub_model_id"):
        run_export([f"model_name_or_path={base}", f"export_dir={tmp_path / 'o'}", "export_hub_model_id=me/m"])
    assert not (tmp_path / "o").exists()
