import logging

import pytest

from tuneforge.config import validate as validate_module
from tuneforge.config.parser import build_args, read_sources
from tuneforge.errors import ConfigError

BASE = ["model_name_or_path=m", "dataset=d"]


def _validate(*items):
    args, train_kwargs = build_args(read_sources([*BASE, *items]), with_training=True)
    validate_module.validate(args, train_kwargs, args.sources)
    return args, train_kwargs


def test_bf16_on_a_cpu_without_bf16_is_a_warning_not_an_error(monkeypatch, caplog):
    monkeypatch.setattr(validate_module, "_cpu_has_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        _validate("bf16=true")
    assert "bf16=false is faster here" in caplog.text


def test_null_unsets_a_key_and_warmup_ratio_becomes_fractional_steps():
    args, train_kwargs = _validate("template=null", "warmup_ratio=0.1")
    assert args.data.template == "auto"
    training = validate_module.training_arguments(args, train_kwargs)
    assert training.warmup_steps == pytest.approx(0.1)


def test_save_strategy_no_survives_yaml_booleans(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model_name_or_path: m\ndataset: d\nsave_strategy: no\n")
    args, train_kwargs = build_args(read_sources([str(cfg)]), with_training=True)
    assert validate_module.training_arguments(args, train_kwargs).save_strategy == "no"


def test_unknown_key_names_the_file_and_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model_name_or_path: m\n\nlearnig_rate: 1e-4\n")
    with pytest.raises(ConfigError, match=r"c.yaml:3: unknown key 'learnig_rate'; did you mean 'learning_rate'"):
        build_args(read_sources([str(cfg)]), with_training=True)


def test_streaming_needs_max_steps():
    with pytest.raises(ConfigError, match="max_steps"):
        _validate("streaming=true")


@pytest.mark.parametrize("value", ["true", "full_shard auto_wrap"])
def test_fsdp_without_a_gpu_is_an_error_not_silent_ddp(value, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"fsdp \(command line\): FSDP needs GPUs.*set fsdp=null"):
        _validate(f"fsdp={value}")
    _validate("fsdp=false")  # off spelled out is fine


@pytest.mark.parametrize("value,reshard", [("true", True), ("full_shard auto_wrap", True), ("shard_grad_op", False)])
def test_fsdp_true_and_the_legacy_strings_both_reach_the_fsdp2_plugin(value, reshard):
    args, train_kwargs = build_args(read_sources([*BASE, f"fsdp={value}", 'fsdp_config={"version": 2}']),
                                    with_training=True)
    training = validate_module.training_arguments(args, train_kwargs)
    assert training.fsdp is True
    assert training.fsdp_plugin_args["fsdp_version"] == 2
    assert training.fsdp_plugin_args["reshard_after_forward"] is reshard


def test_accelerate_launch_with_fsdp_on_a_cpu_is_an_error(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="ACCELERATE_USE_FSDP=true"):
        _validate()


@pytest.mark.parametrize("keys,cuda,launched", [
    (["deepspeed=ds.json"], True, True), (["fsdp=true"], True, True), (["fsdp=false"], True, False),
    (["deepspeed=ds.json"], False, False), ([], True, False), (["nproc_per_node=2"], False, True),
])
def test_deepspeed_and_fsdp_run_under_torchrun_even_for_one_gpu(monkeypatch, keys, cuda, launched):
    import torch

    from tuneforge.train.launch import launch_settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    for name in ("LOCAL_RANK", "TUNEFORGE_LAUNCHED", "NPROC_PER_NODE", "NNODES"):
        monkeypatch.delenv(name, raising=False)
    settings = launch_settings([*BASE, *keys])
    assert (settings is not None) is launched
    if launched:
        assert settings["nproc_per_node"] == (2 if "nproc_per_node=2" in keys else 1)


def test_keys_of_the_other_rl_stage_are_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        _validate("stage=grpo", "reward_funcs=accuracy", "ppo_epochs=2", "ppo_target=3")
        _validate("stage=sft", "num_generations=8")
    assert "ppo_epochs, ppo_target: no effect with stage grpo" in caplog.text
    assert "num_generations: no effect with stage sft (they are keys of ppo and grpo)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        _validate("stage=grpo", "reward_funcs=accuracy", "beta=0.1", "ref_model=some/model")
    assert "no effect" not in caplog.text  # grpo's KL reads the reference
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        _validate("stage=grpo", "reward_funcs=accuracy", "beta=0", "ref_model=some/model")
    assert "ref_model: no effect with stage grpo" in caplog.text


@pytest.mark.parametrize("items,message", [
    (["stage=ppo", "reward_model=/no/such/rm"], "reward_model (command line): /no/such/rm is not a folder"),
    (["stage=grpo", "reward_funcs=accuracy", "reward_model_type=api"], "'api' is not lora or full"),
    (["stage=grpo", "reward_funcs=acuracy"], "reward_funcs: unknown reward 'acuracy'"),
    (["stage=grpo", "reward_funcs=format", "format_pattern=(unclosed"], "format_pattern: '(unclosed' is not a valid"),
    (["stage=grpo", "reward_funcs=accuracy", "epsilon_high=0.1"], "epsilon_high (command line) at least epsilon"),
    (["stage=grpo", "reward_funcs=accuracy", "num_generations=1"], "num_generations (command line): grpo compares"),
    (["stage=grpo", "reward_funcs=accuracy", "token_budget=512"], "token_budget (command line): stage grpo batches"),
    (["stage=grpo", "reward_funcs=accuracy", "num_beams=4"], "num_beams (command line): stage grpo samples"),
    (["stage=grpo", "reward_funcs=accuracy", "length_penalty=1.2"], "length_penalty (command line): it weighs beam"),
])
def test_rl_stage_mistakes(items, message):
    with pytest.raises(ConfigError) as e:
        _validate(*items)
    assert message in str(e.value)


def test_lora_reward_model_needs_a_lora_adapter_and_a_lora_policy(tmp_path):
    full, adapter = tmp_path / "full", tmp_path / "adapter"
    for folder in (full, adapter):
        folder.mkdir()
        (folder / "value_head.safetensors").write_bytes(b"")
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds a full model; set reward_model_type: full"):
        _validate("stage=ppo", f"reward_model={full}")
    with pytest.raises(ConfigError, match="shares the policy's base weights, which finetuning_type full changes"):
        _validate("stage=ppo", f"reward_model={adapter}", "finetuning_type=full")
    _validate("stage=ppo", f"reward_model={full}", "reward_model_type=full", "finetuning_type=full")
    with pytest.raises(ConfigError, match="ppo_lam .*must be in \\[0, 1\\], got 1.5"):
        _validate("stage=ppo", f"reward_model={adapter}", "ppo_lam=1.5")


@pytest.mark.parametrize("items,do_train,do_eval", [
    (["do_predict=true", "predict_with_generate=true", "eval_dataset=e", "dataset=null"], False, False),  # LF predict
    (["do_predict=true", "predict_with_generate=true", "do_train=true", "eval_dataset=e"], True, True),
    (["eval_dataset=e"], True, True),
    (["do_train=false", "eval_dataset=e"], False, True),
])
def test_a_prediction_config_without_do_train_only_predicts(items, do_train, do_eval):
    args, train_kwargs = _validate(*items)
    training = validate_module.training_arguments(args, train_kwargs)
    assert (training.do_train, training.do_eval) == (do_train, do_eval)


def test_predict_with_generate_without_predict_or_eval_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        _validate("predict_with_generate=true")
    assert "predict_with_generate: no effect without do_predict or evaluation" in caplog.text
