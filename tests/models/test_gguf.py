"""A GGUF file is converted once into the model cache and loads with the same tokens and logits."""

import os

import pytest
import torch

from tests.models.tiny_gguf import write_tiny_llama_gguf
from tests.tiny import chatml_tokenizer, tiny_llama
from tuneforge.config.args import FinetuneArgs, ModelArgs
from tuneforge.models import gguf_conversion
from tuneforge.models.loader import load_model, load_tokenizer


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    tokenizer = chatml_tokenizer()
    model = tiny_llama(tokenizer)
    path = write_tiny_llama_gguf(model, tokenizer, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf")
    return path, model, tokenizer


def test_gguf_loads_with_same_tokens_and_logits(tiny_gguf, tmp_path):
    path, reference, reference_tokenizer = tiny_gguf
    args = ModelArgs(model_name_or_path=path, model_cache_dir=str(tmp_path))
    tokenizer = load_tokenizer(args)
    text = reference_tokenizer.apply_chat_template([{"role": "user", "content": "Hello! Who are you?"}], tokenize=False)
    assert tokenizer.chat_template == reference_tokenizer.chat_template
    assert tokenizer.encode(text) == reference_tokenizer.encode(text)

    model = load_model(args, FinetuneArgs(), tokenizer, is_trainable=False)
    ids = torch.tensor([reference_tokenizer.encode(text)])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-6)

    converted = [p for p in os.listdir(tmp_path) if not p.startswith(".")]
    assert len(converted) == 1 and converted[0].startswith("tiny-f32-")
    folder = tmp_path / converted[0]
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(os.listdir(folder))


def test_second_load_reuses_the_cache(tiny_gguf, tmp_path, monkeypatch):
    path, _, _ = tiny_gguf
    args = ModelArgs(model_name_or_path=path, model_cache_dir=str(tmp_path))
    load_tokenizer(args)

    def no_conversion(*_a, **_k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(gguf_conversion, "convert_gguf_to_folder", no_conversion)
    load_tokenizer(args)


def test_interrupted_conversion_leaves_no_cache(tiny_gguf, tmp_path, monkeypatch):
    path, _, _ = tiny_gguf
    real_convert = gguf_conversion.convert_gguf_to_folder

    def fail_after_writing(gguf_path, out_dir, **kwargs):
        real_convert(gguf_path, out_dir, **kwargs)
        (out_dir / gguf_conversion.COMPLETE_MARKER).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_conversion, "convert_gguf_to_folder", fail_after_writing)
    with pytest.raises(KeyboardInterrupt):
        load_tokenizer(ModelArgs(model_name_or_path=path, model_cache_dir=str(tmp_path)))
    assert [p for p in os.listdir(tmp_path) if not p.endswith(".lock")] == []

    monkeypatch.setattr(gguf_conversion, "convert_gguf_to_folder", real_convert)
    tokenizer = load_tokenizer(ModelArgs(model_name_or_path=path, model_cache_dir=str(tmp_path)))
    assert tokenizer.eos_token == "<|im_end|>"


def test_changed_file_is_converted_again(tiny_gguf, tmp_path):
    path, model, tokenizer = tiny_gguf
    copy = tmp_path / "src" / "tiny-f32.gguf"
    copy.parent.mkdir()
    write_tiny_llama_gguf(model, tokenizer, copy)
    cache = tmp_path / "cache"
    load_tokenizer(ModelArgs(model_name_or_path=str(copy), model_cache_dir=str(cache)))
    os.utime(copy, ns=(1, 1))  # as if replaced by another file
    load_tokenizer(ModelArgs(model_name_or_path=str(copy), model_cache_dir=str(cache)))
    assert len([p for p in os.listdir(cache) if not p.startswith(".")]) == 2


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEFORGE_MODEL_CACHE", str(tmp_path / "env"))
    assert gguf_conversion.model_cache_root(str(tmp_path / "key")) == tmp_path / "key"
    assert gguf_conversion.model_cache_root(None) == tmp_path / "env"
    monkeypatch.delenv("TUNEFORGE_MODEL_CACHE")
    assert str(gguf_conversion.model_cache_root(None)).endswith(os.path.join(".cache", "tuneforge", "models"))
