"""Every YAML under examples/ parses, validates, and the CPU ones train on a tiny model."""

import glob
import os

import pytest

from tuneforge.config.parser import build_args, read_sources
from tuneforge.config.validate import validate
from tuneforge.errors import ConfigError

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.yaml")))
GPU_ONLY = {"sft_full_ds3.yaml": "deepspeed=null", "sft_full_fsdp.yaml": "fsdp=null"}
NEEDS_REWARD_MODEL = {"ppo_lora.yaml": "reward_model (examples/ppo_lora.yaml:"}  # until rm_lora.yaml has run


def test_there_are_examples():
    assert len(EXAMPLES) >= 8


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_parses_and_validates(path):
    args, train_kwargs = build_args(read_sources([path]), with_training=True)
    if os.path.basename(path) in GPU_ONLY:
        import torch

        if not torch.cuda.is_available():
            with pytest.raises(ConfigError, match=GPU_ONLY[os.path.basename(path)]):
                validate(args, train_kwargs, args.sources)
            return
    if os.path.basename(path) in NEEDS_REWARD_MODEL and not os.path.isdir(os.path.join(ROOT, "saves", "rm-lora")):
        with pytest.raises(ConfigError, match=r"saves/rm-lora is not a folder; give the output_dir of a stage: rm"):
            validate(args, train_kwargs, args.sources)
        return
    validate(args, train_kwargs, args.sources)


@pytest.mark.parametrize("name", ["sft_lora.yaml", "sft_qlora.yaml", "sft_freeze.yaml", "sft_full.yaml", "pt_lora.yaml",
                                  "rm_lora.yaml", "dpo_lora.yaml", "kto_lora.yaml", "grpo_arithmetic.yaml"])
def test_cpu_example_trains_on_a_tiny_model(name, tiny_model_dir, tmp_path, monkeypatch):
    from tuneforge.train.runner import run_train

    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    out = str(tmp_path / "out")
    results = run_train([os.path.join("examples", name), f"model_name_or_path={tiny_model_dir}", f"output_dir={out}",
                         "max_steps=2", "save_strategy=no", "eval_strategy=no", "val_size=0", "freeze_trainable_layers=1"])
    assert results["train_loss"] == results["train_loss"]


def test_ppo_example_trains_on_the_rm_example_output(tiny_model_dir, tmp_path, monkeypatch):
    from tuneforge.train.runner import run_train

    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    rm, out = str(tmp_path / "rm"), str(tmp_path / "ppo")
    common = [f"model_name_or_path={tiny_model_dir}", "max_steps=2", "save_strategy=no", "eval_strategy=no", "val_size=0"]
    run_train([os.path.join("examples", "rm_lora.yaml"), f"output_dir={rm}", *common])
    results = run_train([os.path.join("examples", "ppo_lora.yaml"), f"output_dir={out}", f"reward_model={rm}",
                         "max_new_tokens=8", *common])
    assert results["train_loss"] == results["train_loss"]
    assert os.path.exists(os.path.join(out, "critic_head.safetensors"))
