"""`tuneforge export` to safetensors: merged logits equal base + adapters, the folder loads in plain
transformers and in `tuneforge chat`, and bad input leaves nothing behind."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.tiny import chatml_tokenizer, save_tiny_model
from tuneforge.cli import main
from tuneforge.errors import ConfigError, ExportError
from tuneforge.export.command import run_export

IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 11]])


def make_adapter(base_dir, out, seed, use_dora=False, target=("q_proj", "v_proj", "gate_proj")):
    """A LoRA (or DoRA) adapter with random non-zero weights (B starts at zero when trained from scratch,
    which would make merging trivially exact)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(target), init_lora_weights=False, use_dora=use_dora)
    peft = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.mul_(3.0)  # a clearly visible change of the logits
    peft.save_pretrained(out)
    return str(out)


def logits_of(model):
    with torch.no_grad():
        return model(IDS).logits.float()


def reference_logits(base_dir, adapters):
    """Base + adapters applied unmerged (all active at once): what the merged model must reproduce."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft = PeftModel.from_pretrained(model, adapters[0], adapter_name="a0")
    for i, path in enumerate(adapters[1:], 1):
        peft.load_adapter(path, adapter_name=f"a{i}")
    peft.base_model.set_adapter([f"a{i}" for i in range(len(adapters))])
    return logits_of(peft)


def exported_logits(folder):
    from transformers import AutoModelForCausalLM

    return logits_of(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("base"))


@pytest.mark.parametrize("kind", ["lora", "dora", "two stacked"])
def test_merged_logits_equal_base_plus_adapters(base, tmp_path, kind):
    adapters = [make_adapter(base, tmp_path / "a", 1, use_dora=kind == "dora")]
    if kind == "two stacked":
        adapters.append(make_adapter(base, tmp_path / "b", 2, target=("k_proj", "o_proj", "down_proj")))
    out = tmp_path / "merged"
    assert run_export([f"model_name_or_path={base}", f"adapter_name_or_path={','.join(adapters)}",
                       f"export_dir={out}", "infer_dtype=float32"]) == 0
    merged, expected = exported_logits(str(out)), reference_logits(base, adapters)
    assert (expected - exported_logits(base)).abs().max() > 1e-2  # the adapters really change the model
    torch.testing.assert_close(merged, expected, atol=2e-5, rtol=1e-5)


def test_export_loads_in_plain_transformers_and_tuneforge_chat(base, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    adapter = make_adapter(base, tmp_path / "a", 3)
    out = tmp_path / "merged"
    run_export([f"model_name_or_path={base}", f"adapter_name_or_path={adapter}", f"export_dir={out}"])
    files = sorted(os.listdir(out))
    assert "model.safetensors" in files and not any(f.endswith(".bin") or "adapter" in f for f in files)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == chatml_tokenizer().chat_template
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    eos = GenerationConfig.from_pretrained(out).eos_token_id
    assert im_end == (eos[0] if isinstance(eos, list) else eos)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.float32  # auto: the source config's dtype
    assert json.load(open(out / "tuneforge_export.json"))["source"].endswith(adapter)
    assert main(["chat", f"model_name_or_path={out}", "max_new_tokens=4", "query=Hi"]) == 0
    assert capsys.readouterr().out.strip() != ""


def test_dtype_conversion_of_a_full_model_folder(base, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "bf16"
    run_export([f"model_name_or_path={base}", f"export_dir={out}", "infer_dtype=bfloat16"])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    torch.testing.assert_close(logits_of(model), exported_logits(base), atol=0.05, rtol=0.05)


def test_qlora_adapter_merges_into_the_float_base(base, tmp_path):
    pytest.importorskip("bitsandbytes")
    from tests.train.test_train_e2e import base_args
    from tuneforge.train.runner import run_train

    run = tmp_path / "qlora"
    data = tmp_path / "rows.json"
    data.write_text(json.dumps([{"instruction": "Who are you?", "output": "I am Forge."}] * 4))
    argv = base_args(base, str(data), str(run), max_steps=1)
    run_train([*argv, "quantization_bit=4", "lora_target=q_proj,v_proj"])
    with pytest.raises(ExportError, match="never into quantised weights"):
        run_export([f"model_name_or_path={base}", f"adapter_name_or_path={run}", f"export_dir={tmp_path / 'x'}",
                    "quantization_bit=4"])
    assert not (tmp_path / "x").exists()
    out = tmp_path / "merged"
    run_export([f"model_name_or_path={base}", f"adapter_name_or_path={run}", f"export_dir={out}"])
    torch.testing.assert_close(exported_logits(str(out)), reference_logits(base, [str(run)]), atol=2e-5, rtol=1e-5)


def test_bad_input_is_one_line_and_leaves_nothing(base, tmp_path, capsys):
    other = save_tiny_model(tmp_path / "other", hidden=32)
    foreign = make_adapter(other, tmp_path / "foreign", 4)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=f"trained on {other}"):
        run_export([f"model_name_or_path={base}", f"adapter_name_or_path={foreign}", f"export_dir={out}"])
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".out")]

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["export", f"model_name_or_path={base}", f"export_dir={occupied}"]) == 1
    err = capsys.readouterr().err.strip()
    assert "not a tuneforge export" in err and "\n" not in err
    assert os.listdir(occupied) == ["notes.txt"]

    for argv, words in [([f"export_dir={out}"], "model_name_or_path"),
                        ([f"model_name_or_path={base}"], "export_dir is not set"),
                        ([f"model_name_or_path={base}", f"export_dir={out}", "export_format=onnx"], "export_format"),
                        ([f"model_name_or_path={base}", f"export_dir={out}", "export_legacy_format=true"], "safetensors only"),
                        ([f"model_name_or_path={base}", f"export_dir={out}", "export_quantization=q8_0"], "gguf")]:
        with pytest.raises(ConfigError, match=words):
            run_export(argv)


def test_a_failed_write_leaves_the_previous_export(base, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run_export([f"model_name_or_path={base}", f"export_dir={out}"])
    before = sorted(os.listdir(out))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    from transformers import PreTrainedModel

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        run_export([f"model_name_or_path={base}", f"export_dir={out}"])
    assert sorted(os.listdir(out)) == before
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_an_adapter_for_more_layers_is_refused_not_half_merged(base, tmp_path):
    deeper = save_tiny_model(tmp_path / "deeper", layers=4)
    adapter = make_adapter(deeper, tmp_path / "deep-adapter", 6)
    with pytest.raises(ExportError, match="adapts .* modules .* does not have"):
        run_export([f"model_name_or_path={base}", f"adapter_name_or_path={adapter}", f"export_dir={tmp_path / 'o'}"])
    assert not (tmp_path / "o").exists()


def test_default_system_of_an_auto_template_is_in_the_exported_template(base, tmp_path):
    from transformers import AutoTokenizer

    from tuneforge.data.conversation import Message
    from tuneforge.data.templates.auto import AutoTemplate

    out = tmp_path / "sys"
    run_export([f"model_name_or_path={base}", f"export_dir={out}", "default_system=You are Forge."])
    tok = AutoTokenizer.from_pretrained(out)
    rendered = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == AutoTemplate(default_system="You are Forge.").render_prompt([Message("user", "Hi")], None,
                                                                                    None, chatml_tokenizer())


def test_files_added_to_an_earlier_export_are_never_deleted(base, tmp_path):
    out = tmp_path / "out"
    run_export([f"model_name_or_path={base}", f"export_dir={out}"])
    (out / "model-Q4_K_M.gguf").write_text("made by llama-quantize")
    with pytest.raises(ExportError, match="was added to it"):
        run_export([f"model_name_or_path={base}", f"export_dir={out}"])
    assert (out / "model-Q4_K_M.gguf").read_text() == "made by llama-quantize"
