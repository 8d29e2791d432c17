"""Tokenizer and model loading: padding, special tokens, dtype, attention, remote code, quantisation."""

import json

import pytest
import torch

from tuneforge.config.args import FinetuneArgs, ModelArgs
from tuneforge.errors import ConfigError, ModelError
from tuneforge.models.adapters import count_parameters
from tuneforge.models.loader import load_base_model, load_model, load_tokenizer, resolve_attn_implementation, resolve_dtype


def test_tokenizer_pads_right_and_keeps_settings(tiny_model_dir):
    tokenizer = load_tokenizer(ModelArgs(model_name_or_path=tiny_model_dir, model_max_length=256))
    assert tokenizer.padding_side == "right"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.model_max_length == 256
    assert tokenizer.chat_template is not None


def test_missing_pad_token_falls_back_to_eos(tmp_path):
    from tests.tiny import build_tokenizer, save_tiny_model

    tokenizer = build_tokenizer([], eos_token="<|endoftext|>")
    tokenizer.pad_token = None
    folder = save_tiny_model(tmp_path, tokenizer)
    assert load_tokenizer(ModelArgs(model_name_or_path=folder)).pad_token == "<|endoftext|>"


def test_split_special_tokens(tiny_model_dir):
    joined = load_tokenizer(ModelArgs(model_name_or_path=tiny_model_dir))
    split = load_tokenizer(ModelArgs(model_name_or_path=tiny_model_dir, split_special_tokens=True))
    assert len(joined.encode("<|im_end|>", add_special_tokens=False)) == 1
    assert len(split.encode("<|im_end|>", add_special_tokens=False)) > 1


def test_new_special_tokens_resize_the_embeddings(tiny_model_dir):
    args = ModelArgs(model_name_or_path=tiny_model_dir, new_special_tokens="<think>,</think>")
    tokenizer = load_tokenizer(args)
    assert len(tokenizer.encode("<think>", add_special_tokens=False)) == 1
    model = load_base_model(args, tokenizer, is_trainable=True)
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows >= len(tokenizer) and rows % 64 == 0


def test_bigger_tokenizer_without_resize_vocab_is_an_error(tiny_model_dir):
    tokenizer = load_tokenizer(ModelArgs(model_name_or_path=tiny_model_dir))
    tokenizer.add_special_tokens({"extra_special_tokens": [f"<t{i}>" for i in range(10)]})
    with pytest.raises(ModelError, match="resize_vocab: true"):
        load_base_model(ModelArgs(model_name_or_path=tiny_model_dir), tokenizer, is_trainable=True)
    model = load_base_model(ModelArgs(model_name_or_path=tiny_model_dir, resize_vocab=True), tokenizer, True)
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)


def test_dtypes(tiny_model_dir):
    assert resolve_dtype("auto", "torch_dtype") == torch.float32  # CPU
    assert resolve_dtype("bf16", "torch_dtype") == torch.bfloat16
    with pytest.raises(ConfigError, match="torch_dtype: 'int4'"):
        resolve_dtype("int4", "torch_dtype")
    args = ModelArgs(model_name_or_path=tiny_model_dir, torch_dtype="bfloat16", infer_dtype="float16")
    assert load_base_model(args, None, is_trainable=True).dtype == torch.bfloat16
    inference = load_base_model(args, None, is_trainable=False)
    assert inference.dtype == torch.float16
    assert not any(p.requires_grad for p in inference.parameters()) and not inference.training


def test_attention_implementation_names(tiny_model_dir):
    assert resolve_attn_implementation(ModelArgs()) == "sdpa"
    assert resolve_attn_implementation(ModelArgs(flash_attn="disabled")) == "eager"
    assert resolve_attn_implementation(ModelArgs(flash_attn="auto")) == "sdpa"
    with pytest.raises(ConfigError, match="flash_attn: 'fa3'"):
        resolve_attn_implementation(ModelArgs(flash_attn="fa3"))
    with pytest.raises(ConfigError, match="attn_implementation: 'fast'"):
        resolve_attn_implementation(ModelArgs(attn_implementation="fast"))
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="flash_attn: flash_attention_2 needs a CUDA GPU"):
            resolve_attn_implementation(ModelArgs(flash_attn="fa2"))
    model = load_base_model(ModelArgs(model_name_or_path=tiny_model_dir, flash_attn="disabled"), None, True)
    assert model.config._attn_implementation == "eager"


def test_remote_code_needs_the_key(tmp_path):
    config = {"model_type": "tuneforge_custom", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "configuration_custom.py").write_text(
        "from transformers import PretrainedConfig\nclass CustomConfig(PretrainedConfig):\n    model_type = 'tuneforge_custom'\n"
    )
    with pytest.raises(ModelError, match="set trust_remote_code: true"):
        load_base_model(ModelArgs(model_name_or_path=str(tmp_path)), None, is_trainable=True)


def test_bad_quantization_settings(tiny_model_dir):
    with pytest.raises(ConfigError, match="quantization_bit: must be 4 or 8"):
        load_base_model(ModelArgs(model_name_or_path=tiny_model_dir, quantization_bit=3), None, True)
    with pytest.raises(ConfigError, match="quantization_type"):
        load_base_model(ModelArgs(model_name_or_path=tiny_model_dir, quantization_bit=4, quantization_type="int4"), None, True)
    args = ModelArgs(model_name_or_path=tiny_model_dir, quantization_bit=4)
    with pytest.raises(ConfigError, match="finetuning_type: lora"):
        load_model(args, FinetuneArgs(finetuning_type="full"), None, is_trainable=True)


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_on_cpu(tiny_model_dir, bits):
    pytest.importorskip("bitsandbytes")
    args = ModelArgs(model_name_or_path=tiny_model_dir, quantization_bit=bits)
    tokenizer = load_tokenizer(args)
    model = load_model(args, FinetuneArgs(lora_rank=4), tokenizer, is_trainable=True)
    quantized = {type(m).__name__ for m in model.modules()}
    assert ("Linear4bit" if bits == 4 else "Linear8bitLt") in quantized

    trainable, total = count_parameters(model)
    reference_total = count_parameters(load_base_model(ModelArgs(model_name_or_path=tiny_model_dir), None, True))[1]
    assert total == reference_total + trainable  # packed 4-bit weights are counted at their real size
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)

    ids = torch.tensor([tokenizer.encode("The quick brown fox jumps over the lazy dog.")])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    # lora_B starts at zero, so at the first step only lora_B receives a gradient.
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        step_loss = model(input_ids=ids, labels=ids).loss
        step_loss.backward()
        optimizer.step()
        losses.append(step_loss.item())
    assert losses[-1] < losses[0]
