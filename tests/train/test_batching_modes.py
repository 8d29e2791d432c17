"""Packing, neat packing and streaming through a whole training run; --flag style command lines."""

import os

import pytest

from tests.train.test_train_e2e import base_args, data_files, losses  # noqa: F401 (fixture)
from tuneforge.config.parser import build_args, read_sources
from tuneforge.data.collator import pack_examples
from tuneforge.train.runner import run_train


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))


def test_pack_examples_first_fit_keeps_every_token():
    from datasets import Dataset

    ds = Dataset.from_dict({"input_ids": [[1] * 5, [2] * 3, [3] * 7, [4] * 2], "labels": [[1] * 5, [2] * 3, [3] * 7, [4] * 2]})
    neat = pack_examples(ds, cutoff_len=8, neat=True)
    assert sorted(t for row in neat["input_ids"] for t in row) == sorted(t for row in ds["input_ids"] for t in row)
    assert all(len(row) <= 8 for row in neat["input_ids"])
    assert all(sum(seg) == len(row) for seg, row in zip(neat["segments"], neat["input_ids"]))
    plain = pack_examples(ds, cutoff_len=8, neat=False)
    assert all(len(seg) == 1 for seg in plain["segments"])


@pytest.mark.parametrize("mode", [{"packing": True}, {"neat_packing": True}, {"neat_packing": True, "padding_free": False}])
def test_packed_training_learns(tiny_model_dir, data_files, tmp_path, mode):
    out = str(tmp_path / "packed")
    if mode.get("padding_free") is False:
        from tuneforge.errors import ConfigError

        with pytest.raises(ConfigError, match="neat_packing"):
            run_train(base_args(tiny_model_dir, data_files["sft"], out, cutoff_len=128, per_device_train_batch_size=1, **mode))
        return
    run_train(base_args(tiny_model_dir, data_files["sft"], out, cutoff_len=128, per_device_train_batch_size=1,
                        max_steps=8, **mode))
    curve = losses(out)
    assert len(curve) == 8 and curve[-1] < curve[0]


def test_streaming_training(tiny_model_dir, data_files, tmp_path):
    out = str(tmp_path / "stream")
    run_train(base_args(tiny_model_dir, data_files["sft"], out, streaming=True, max_steps=3))
    assert len(losses(out)) == 3


def test_flag_style_command_line():
    raw = read_sources(["--stage", "sft", "--do_train", "--model_name_or_path", "m", "--dataset=a,b",
                        "--finetuning-type", "lora", "--learning_rate", "1e-4"])
    args, train_kwargs = build_args(raw, with_training=True)
    assert args.finetune.stage == "sft" and args.finetune.finetuning_type == "lora"
    assert args.data.dataset == "a,b" and args.model.model_name_or_path == "m"
    assert train_kwargs["do_train"] is True and train_kwargs["learning_rate"] == 1e-4
