"""What trains: LoRA targets and counts, freeze layer selection, full tuning, adapter save and reload."""

import pytest
import torch
from torch import nn

from tuneforge.config.args import FinetuneArgs, ModelArgs
from tuneforge.errors import ConfigError, ModelError
from tuneforge.models.adapters import apply_finetuning, count_parameters, lora_target_modules
from tuneforge.models.loader import load_base_model, load_model

HIDDEN, LAYERS, INTERMEDIATE, KV = 64, 2, 128, 32  # tests/tiny.py: 4 heads of 16, 2 kv heads
LINEAR_IN_OUT = {"q_proj": (64, 64), "k_proj": (64, KV), "v_proj": (64, KV), "o_proj": (64, 64),
                 "gate_proj": (64, 128), "up_proj": (64, 128), "down_proj": (128, 64)}


def _base(folder, **model_keys):
    return load_base_model(ModelArgs(model_name_or_path=folder, **model_keys), None, is_trainable=True)


def _ids():
    torch.manual_seed(1)
    return torch.randint(0, 300, (2, 12))


def test_lora_all_targets_every_linear_but_the_head(tiny_model_dir):
    model = _base(tiny_model_dir)
    assert lora_target_modules(model, "all") == sorted(LINEAR_IN_OUT)
    rank = 4
    lora = apply_finetuning(model, ModelArgs(), FinetuneArgs(lora_rank=rank), is_trainable=True)
    trainable, total = count_parameters(lora)
    expected = LAYERS * sum(rank * (i + o) for i, o in LINEAR_IN_OUT.values())
    assert trainable == expected
    assert not any("lm_head" in n for n, p in lora.named_parameters() if p.requires_grad)
    config = lora.peft_config["default"]
    assert config.lora_alpha == 2 * rank and config.r == rank


def test_lora_named_targets_and_options(tiny_model_dir):
    args = FinetuneArgs(lora_rank=2, lora_alpha=7, lora_target="q_proj, v_proj", use_rslora=True, use_dora=True,
                        additional_target="embed_tokens")
    lora = apply_finetuning(_base(tiny_model_dir), ModelArgs(), args, is_trainable=True)
    config = lora.peft_config["default"]
    assert config.target_modules == {"q_proj", "v_proj"}
    assert config.use_rslora and config.use_dora and config.lora_alpha == 7
    assert "embed_tokens" in config.modules_to_save
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert any("embed_tokens" in n for n in names)
    assert any("lora_magnitude_vector" in n for n in names)  # DoRA
    assert not any("k_proj" in n or "mlp" in n for n in names)


def test_lora_unknown_target(tiny_model_dir):
    with pytest.raises(ConfigError, match="lora_target: qkv_linear not found.*q_proj"):
        apply_finetuning(_base(tiny_model_dir), ModelArgs(), FinetuneArgs(lora_target="qkv_linear"), True)


class _FusedAttentionModel(nn.Module):
    """Baichuan-style: one W_pack projection instead of q/k/v."""

    def __init__(self):
        super().__init__()
        self.layer = nn.ModuleDict({"W_pack": nn.Linear(8, 24), "o_proj": nn.Linear(8, 8)})
        self.lm_head = nn.Linear(8, 10)

    def get_output_embeddings(self):
        return self.lm_head


def test_split_attention_names_fall_back_to_fused_projection():
    assert lora_target_modules(_FusedAttentionModel(), "q_proj,v_proj,o_proj") == ["W_pack", "o_proj"]
    assert lora_target_modules(_FusedAttentionModel(), "all") == ["W_pack", "o_proj"]


def test_freeze_last_and_first_layers(tiny_model_dir):
    last = apply_finetuning(_base(tiny_model_dir), ModelArgs(), FinetuneArgs(finetuning_type="freeze",
                            freeze_trainable_layers=1), True)
    names = {n for n, p in last.named_parameters() if p.requires_grad}
    assert names and all(n.startswith("model.layers.1.") for n in names)
    first = apply_finetuning(_base(tiny_model_dir), ModelArgs(), FinetuneArgs(finetuning_type="freeze",
                             freeze_trainable_layers=-1, freeze_trainable_modules="mlp",
                             freeze_extra_modules="norm,lm_head"), True)
    names = {n for n, p in first.named_parameters() if p.requires_grad}
    assert names == {"model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight",
                     "model.layers.0.mlp.down_proj.weight", "model.norm.weight", "lm_head.weight"}


def test_freeze_bad_keys(tiny_model_dir):
    with pytest.raises(ConfigError, match="freeze_trainable_layers: 5 .* 2 layers"):
        apply_finetuning(_base(tiny_model_dir), ModelArgs(), FinetuneArgs(finetuning_type="freeze",
                         freeze_trainable_layers=5), True)
    with pytest.raises(ConfigError, match="freeze_trainable_modules: ffn not found.*self_attn"):
        apply_finetuning(_base(tiny_model_dir), ModelArgs(), FinetuneArgs(finetuning_type="freeze",
                         freeze_trainable_modules="ffn"), True)
    with pytest.raises(ConfigError, match="freeze_extra_modules: head not found"):
        apply_finetuning(_base(tiny_model_dir), ModelArgs(), FinetuneArgs(finetuning_type="freeze",
                         freeze_extra_modules="head"), True)


def test_full_trains_everything_in_float32(tiny_model_dir):
    model = _base(tiny_model_dir, torch_dtype="bfloat16")
    full = apply_finetuning(model, ModelArgs(), FinetuneArgs(finetuning_type="full"), True)
    trainable, total = count_parameters(full)
    assert trainable == total
    assert all(p.dtype == torch.float32 for p in full.parameters())
    pure = apply_finetuning(_base(tiny_model_dir, torch_dtype="bfloat16"), ModelArgs(),
                            FinetuneArgs(finetuning_type="full", pure_bf16=True), True)
    assert all(p.dtype == torch.bfloat16 for p in pure.parameters())


def test_applying_twice_changes_nothing(tiny_model_dir):
    args = ModelArgs(model_name_or_path=tiny_model_dir)
    model = load_model(args, FinetuneArgs(lora_rank=4), None, is_trainable=True)
    assert apply_finetuning(model, args, FinetuneArgs(lora_rank=4), True) is model


def _train_lora(folder, out_dir, seed, model_args=None, finetune_args=None):
    """A LoRA adapter with non-zero weights, saved to out_dir; returns the model it came from."""
    torch.manual_seed(seed)
    model = load_model(model_args or ModelArgs(model_name_or_path=folder), finetune_args or FinetuneArgs(lora_rank=4),
                       None, is_trainable=True)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(param, std=0.05)
    model.save_pretrained(out_dir)
    return model.eval()


def test_adapter_save_and_reload_gives_identical_logits(tiny_model_dir, tmp_path):
    trained = _train_lora(tiny_model_dir, tmp_path / "a", seed=0)
    ids = _ids()
    with torch.no_grad():
        expected = trained(ids).logits
    args = ModelArgs(model_name_or_path=tiny_model_dir, adapter_name_or_path=str(tmp_path / "a"))

    merged = load_model(args, FinetuneArgs(), None, is_trainable=False)
    assert type(merged).__name__ == "LlamaForCausalLM"  # merged for fast inference
    assert not any(p.requires_grad for p in merged.parameters())
    continued = load_model(args, FinetuneArgs(), None, is_trainable=True)
    assert count_parameters(continued)[0] > 0
    assert all("lora_" in n for n, p in continued.named_parameters() if p.requires_grad)
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(continued.eval()(ids).logits, expected, rtol=0, atol=1e-6)


def test_several_adapters_merge_all_but_the_last(tiny_model_dir, tmp_path):
    _train_lora(tiny_model_dir, tmp_path / "a", seed=0)
    # The second adapter was trained on top of the first one, merged.
    second_args = ModelArgs(model_name_or_path=tiny_model_dir, adapter_name_or_path=str(tmp_path / "a"))
    stacked = _train_lora(tiny_model_dir, tmp_path / "b", seed=1, model_args=second_args,
                          finetune_args=FinetuneArgs(lora_rank=4, create_new_adapter=True))
    ids = _ids()
    with torch.no_grad():
        expected = stacked(ids).logits
    both = ModelArgs(model_name_or_path=tiny_model_dir, adapter_name_or_path=f"{tmp_path / 'a'},{tmp_path / 'b'}")
    continued = load_model(both, FinetuneArgs(), None, is_trainable=True)
    inference = load_model(both, FinetuneArgs(), None, is_trainable=False)
    with torch.no_grad():
        torch.testing.assert_close(continued.eval()(ids).logits, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(inference(ids).logits, expected, rtol=0, atol=1e-5)
    assert set(continued.peft_config) == {"default"}


def test_adapter_errors(tiny_model_dir, tmp_path):
    with pytest.raises(ModelError, match="has no adapter_config.json"):
        load_model(ModelArgs(model_name_or_path=tiny_model_dir, adapter_name_or_path=str(tmp_path)),
                   FinetuneArgs(), None, is_trainable=False)
    with pytest.raises(ConfigError, match="only works with finetuning_type: lora"):
        load_model(ModelArgs(model_name_or_path=tiny_model_dir, adapter_name_or_path=str(tmp_path)),
                   FinetuneArgs(finetuning_type="full"), None, is_trainable=True)


def test_lora_with_new_tokens_trains_their_embeddings(tiny_model_dir):
    from tuneforge.models.loader import load_tokenizer

    args = ModelArgs(model_name_or_path=tiny_model_dir, new_special_tokens="<tool>")
    tokenizer = load_tokenizer(args)
    model = load_model(args, FinetuneArgs(lora_rank=4), tokenizer, is_trainable=True)
    assert {"embed_tokens", "lm_head"} <= set(model.peft_config["default"].modules_to_save)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("embed_tokens" in n for n in trainable) and any("lm_head" in n for n in trainable)
