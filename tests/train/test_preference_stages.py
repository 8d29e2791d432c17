"""End-to-end `tuneforge train` for stages rm, dpo and kto on a tiny model: learning on a separable set,
invariances (batch x accumulation, padded vs padding-free, precomputed reference), references, outputs,
resume, and one-line errors."""

import json
import math
import os
import shutil

import pytest

from tests.tiny import save_tiny_model
from tests.train.test_train_e2e import base_args
from tests.train.preference_data import kto_rows, separable_pairs, write
from tuneforge.cli import main
from tuneforge.train.runner import run_train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("pref-data")
    pairs = separable_pairs(60)
    return {"pairs": write(d, "pairs.json", pairs), "kto": write(d, "kto.json", kto_rows(pairs[:24])),
            "sft": write(d, "sft.json", [{"instruction": p["instruction"], "output": p["chosen"]} for p in pairs])}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))


def pref_args(model_dir, dataset, out, **over):
    """test_train_e2e's command line, for stage dpo unless told otherwise."""
    return base_args(model_dir, dataset, out, **{"stage": "dpo", "max_steps": 4, "pref_beta": 0.5, **over})


def records(out, key="loss"):
    with open(os.path.join(out, "trainer_log.jsonl")) as f:
        return [r for r in map(json.loads, f) if key in r]


def column(out, key):
    return [r[key] for r in records(out, key)]


def test_dpo_lora_starts_at_ln2_and_learns_the_preference(tiny_model_dir, data, tmp_path):
    out = str(tmp_path / "dpo")
    results = run_train(pref_args(tiny_model_dir, data["pairs"], out, max_steps=30, logging_steps=5,
                                  plot_loss=True, val_size=12, eval_strategy="steps", eval_steps=30))
    first = json.loads(open(os.path.join(out, "trainer_log.jsonl")).readline())
    train = records(out)
    assert train[0]["rewards/margins"] < train[-1]["rewards/margins"]
    assert train[0]["rewards/accuracies"] < train[-1]["rewards/accuracies"] == 1.0
    assert results["eval_rewards/accuracies"] == 1.0 and results["eval_rewards/margins"] > 0
    assert "eval_perplexity" not in results and "eval_perplexity" not in first
    for name in ("adapter_model.safetensors", "training_loss.png", "training_rewards.png", "training_accuracy.png",
                 "eval_results.json", "generation_config.json"):
        assert os.path.exists(os.path.join(out, name)), name
    one = str(tmp_path / "one-step")
    run_train(pref_args(tiny_model_dir, data["pairs"], one, max_steps=1))
    step1 = records(one)[0]
    assert step1["loss"] == pytest.approx(math.log(2), abs=1e-6)  # LoRA at initialisation: policy = reference
    assert step1["rewards/chosen"] == step1["rewards/rejected"] == step1["rewards/margins"] == 0


def test_dpo_batch_times_accumulation_invariance(tiny_model_dir, data, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run_train(pref_args(tiny_model_dir, data["pairs"], a, per_device_train_batch_size=4))
    run_train(pref_args(tiny_model_dir, data["pairs"], b, per_device_train_batch_size=1, gradient_accumulation_steps=4))
    assert column(a, "loss") == pytest.approx(column(b, "loss"), abs=1e-5)
    assert column(a, "rewards/margins") == pytest.approx(column(b, "rewards/margins"), abs=1e-5)
    assert len(set(column(a, "loss"))) == 4  # the steps differ: the comparison means something


@pytest.mark.parametrize("stage,dataset", [("dpo", "pairs"), ("kto", "kto"), ("rm", "pairs")])
def test_padding_free_equals_padded_per_step(tiny_model_dir, data, tmp_path, stage, dataset):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run_train(pref_args(tiny_model_dir, data[dataset], a, stage=stage, padding_free=True))
    run_train(pref_args(tiny_model_dir, data[dataset], b, stage=stage, padding_free=False))
    assert column(a, "loss") == pytest.approx(column(b, "loss"), abs=1e-5)


@pytest.mark.parametrize("stage,dataset", [("dpo", "pairs"), ("kto", "kto")])
def test_precomputed_reference_equals_the_reference_pass(tiny_model_dir, data, tmp_path, stage, dataset):
    a, b = str(tmp_path / "live"), str(tmp_path / "pre")
    run_train(pref_args(tiny_model_dir, data[dataset], a, stage=stage, val_size=8, eval_strategy="steps", eval_steps=4))
    results = run_train(pref_args(tiny_model_dir, data[dataset], b, stage=stage, precompute_ref_logps=True, val_size=8,
                                  eval_strategy="steps", eval_steps=4))
    assert column(a, "loss") == pytest.approx(column(b, "loss"), abs=1e-5)
    assert column(a, "eval_loss") == pytest.approx(column(b, "eval_loss"), abs=1e-5)
    assert results["train_tokens"] > 0


@pytest.mark.parametrize("pref_loss", ["hinge", "ipo", "orpo", "simpo"])
def test_other_dpo_losses_train(tiny_model_dir, data, tmp_path, capsys, pref_loss):
    out = str(tmp_path / pref_loss)
    run_train(pref_args(tiny_model_dir, data["pairs"], out, pref_loss=pref_loss, pref_ftx=0.1, max_steps=12,
                        logging_steps=4))
    stdout = capsys.readouterr().out
    assert ("[reference]" in stdout) == (pref_loss in ("hinge", "ipo"))  # orpo and simpo need no reference
    train = records(out)
    assert all("sft_loss" in r for r in train)
    assert train[-1]["rewards/margins"] > train[0]["rewards/margins"]


@pytest.mark.parametrize("finetuning_type", ["full", "freeze"])
def test_full_and_freeze_compare_with_a_frozen_copy(tiny_model_dir, data, tmp_path, capsys, finetuning_type):
    out = str(tmp_path / finetuning_type)
    run_train(pref_args(tiny_model_dir, data["pairs"], out, finetuning_type=finetuning_type, learning_rate=1e-3,
                        freeze_trainable_layers=1, max_steps=6))
    assert "a frozen copy" in capsys.readouterr().out
    train = records(out)
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # the copy equals the policy at the start
    assert train[-1]["rewards/margins"] > 0 and os.path.exists(os.path.join(out, "model.safetensors"))


def test_ref_model_is_used(tiny_model_dir, data, tmp_path):
    same = str(tmp_path / "same")
    run_train(pref_args(tiny_model_dir, data["pairs"], same, ref_model=tiny_model_dir, max_steps=1))
    assert records(same)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    other_dir = save_tiny_model(tmp_path / "other-model")  # same architecture and tokenizer, other weights
    from tests.tiny import chatml_tokenizer, tiny_llama

    tiny_llama(chatml_tokenizer(), seed=11).save_pretrained(other_dir)
    other = str(tmp_path / "other")
    run_train(pref_args(tiny_model_dir, data["pairs"], other, ref_model=other_dir, max_steps=1))
    first = records(other)[0]
    assert first["loss"] != pytest.approx(math.log(2), abs=1e-3) and first["rewards/chosen"] != 0


def test_reward_model_separates_held_out_pairs_and_loads_back(tiny_model_dir, data, tmp_path):
    import torch

    from tuneforge.data.collator import PairwiseCollator
    from tuneforge.errors import ModelError
    from tuneforge.models.value_head import load_reward_model, score
    from tuneforge.train.logps import last_token_hidden

    out = str(tmp_path / "rm")
    results = run_train(pref_args(tiny_model_dir, data["pairs"], out, stage="rm", max_steps=30, logging_steps=10,
                                  learning_rate=1e-3, val_size=0.25, eval_strategy="steps", eval_steps=10,
                                  plot_loss=True))
    assert results["eval_accuracy"] > 0.9
    evals = records(out, "eval_accuracy")
    assert [r["step"] for r in evals] == [10, 20, 30] and evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert all("accuracy" in r for r in records(out))
    for name in ("value_head.safetensors", "adapter_model.safetensors", "training_accuracy.png", "training_loss.png"):
        assert os.path.exists(os.path.join(out, name)), name

    # Loaded back by its folder, the reward model scores the held-out pairs as training's evaluation did.
    model, head, tokenizer = load_reward_model(out)
    from tuneforge.config.parser import build_args, read_sources
    from tuneforge.data.prepare import prepare_datasets
    from tuneforge.data.templates import get_template

    args, _ = build_args(read_sources(pref_args(tiny_model_dir, data["pairs"], out, stage="rm", val_size=0.25)),
                         with_training=True)
    held_out = prepare_datasets(args.data, "rm", tokenizer, get_template("auto", tokenizer), seed=7).eval
    batch = PairwiseCollator(False, tokenizer.pad_token_id)(list(held_out))
    with torch.no_grad():
        scores = score(head, last_token_hidden(model, batch))
    n = len(held_out)
    assert (scores[:n] > scores[n:]).float().mean().item() == pytest.approx(results["eval_accuracy"], abs=1e-6)
    with pytest.raises(ModelError, match="reward_model: .* is not a reward model folder .*value_head.safetensors"):
        load_reward_model(tiny_model_dir)


@pytest.mark.parametrize("finetuning_type", ["full"])
def test_full_reward_model_folder_is_a_plain_causal_lm(tiny_model_dir, data, tmp_path, finetuning_type):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    out = str(tmp_path / "rm-full")
    run_train(pref_args(tiny_model_dir, data["pairs"], out, stage="rm", finetuning_type=finetuning_type,
                        learning_rate=1e-4, max_steps=2))
    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if k.startswith("v_head")]
    AutoModelForCausalLM.from_pretrained(out)
    from tuneforge.models.value_head import load_reward_model

    model, head, _ = load_reward_model(out)
    assert head.in_features == model.config.hidden_size


def test_kto_learns_desirable_over_undesirable(tiny_model_dir, data, tmp_path):
    out = str(tmp_path / "kto")
    run_train(pref_args(tiny_model_dir, data["kto"], out, stage="kto", max_steps=24, logging_steps=1, plot_loss=True))
    train = records(out)
    assert train[0]["loss"] == pytest.approx(0.5, abs=1e-6)  # at the start: 1 - s(0) for every example
    assert train[0]["kl"] == 0
    last = train[-1]
    assert last["rewards/chosen"] > last["rewards/rejected"] and last["kl"] >= 0
    assert os.path.exists(os.path.join(out, "training_rewards.png"))


@pytest.mark.parametrize("stage,dataset", [("dpo", "pairs"), ("kto", "kto"), ("rm", "pairs")])
def test_resume_continues_with_the_same_losses(tiny_model_dir, data, tmp_path, stage, dataset):
    full = str(tmp_path / "full")
    common = dict(stage=stage, per_device_train_batch_size=2, max_steps=6, save_strategy="steps", save_steps=3)
    run_train(pref_args(tiny_model_dir, data[dataset], full, **common))
    resumed = str(tmp_path / "resumed")
    shutil.copytree(full, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoint-6"))
    os.remove(os.path.join(resumed, "trainer_log.jsonl"))
    if stage == "rm":
        assert os.path.exists(os.path.join(resumed, "checkpoint-3", "value_head.safetensors"))
    run_train(pref_args(tiny_model_dir, data[dataset], resumed, overwrite_output_dir=False,
                        resume_from_checkpoint="true", **common))
    assert column(resumed, "loss") == pytest.approx(column(full, "loss")[3:], abs=1e-5)


@pytest.mark.parametrize("extra,message", [
    ({"pref_loss": "dpop"}, "pref_loss (command line): unknown loss 'dpop'; choose one of sigmoid"),
    ({"pref_loss": "kto_pair"}, "use stage: kto"),
    ({"train_on_prompt": True}, "train_on_prompt (command line): stage dpo"),
    ({"pref_loss": "simpo", "ref_model": "x"}, "pref_loss simpo uses no reference model; remove ref_model"),
    ({"dataset": "SFT"}, "stage dpo needs a ranking dataset (chosen/rejected responses) but dataset"),
    ({"stage": "kto", "dataset": "PAIRS"}, "is a ranking dataset (chosen/rejected), usable with stage rm or dpo only"),
    ({"stage": "kto", "dataset": "SFT"}, "stage kto needs a kto_tag column (desirable true/false) but dataset"),
    ({"ref_model": "ADAPTER"}, "is a LoRA adapter folder, not a model; set ref_model to its base model"),
    ({"ref_model": "EMPTY"}, "has no config.json, so it is not a model folder"),
    ({"ref_model": "no/such/model-dir"}, "ref_model 'no/such/model-dir': no such file or folder"),
    ({"packing": True}, "packing (command line): stage dpo batches its sequences padding-free already"),
    ({"pref_bco_weight": 0.5}, "pref_bco_weight (command line): BCO is not supported"),
    ({"pref_loss": "ipo", "dpo_label_smoothing": 0.1}, "applies to pref_loss sigmoid only, not ipo"),
    ({"stage": "kto", "dataset": "KTO", "streaming": True, "max_steps": 2}, "streaming (command line): stage kto pairs"),
    ({"precompute_ref_logps": True, "streaming": True, "max_steps": 2}, "needs a dataset that is not streamed"),
])
def test_bad_input_is_one_line(tiny_model_dir, data, tmp_path, capsys, extra, message):
    empty, adapter = tmp_path / "empty", tmp_path / "adapter"
    empty.mkdir()
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    names = {"SFT": data["sft"], "PAIRS": data["pairs"], "KTO": data["kto"], "ADAPTER": str(adapter),
             "EMPTY": str(empty)}
    extra = {k: names.get(v, v) if isinstance(v, str) else v for k, v in extra.items()}
    extra.setdefault("dataset", data["pairs"])
    code = main(["train", *pref_args(tiny_model_dir, out=str(tmp_path / "x"), **extra)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error:") and len(err.splitlines()) == 1, err
    assert message in err, err


def test_unused_preference_keys_are_warned_about(tiny_model_dir, data, tmp_path, caplog):
    run_train(pref_args(tiny_model_dir, data["pairs"], str(tmp_path / "rm"), stage="rm", max_steps=1,
                        pref_loss="sigmoid", simpo_gamma=1.0))
    assert any("pref_beta, pref_loss, simpo_gamma: no effect with stage rm" in r.getMessage() for r in caplog.records)


def test_dpo_with_checkpointing_streaming_and_length_batches(tiny_model_dir, data, tmp_path):
    a, b = str(tmp_path / "gc"), str(tmp_path / "nogc")
    run_train(pref_args(tiny_model_dir, data["pairs"], a, gradient_checkpointing=True))
    run_train(pref_args(tiny_model_dir, data["pairs"], b, gradient_checkpointing=False))
    assert column(a, "loss") == pytest.approx(column(b, "loss"), abs=1e-5)
    stream = str(tmp_path / "stream")
    run_train(pref_args(tiny_model_dir, data["pairs"], stream, streaming=True, max_steps=3))
    assert len(column(stream, "loss")) == 3 and column(stream, "loss")[0] == pytest.approx(math.log(2), abs=1e-6)


def test_length_batches_count_both_responses_of_a_pair(tiny_model_dir, data):
    from tuneforge.config.parser import build_args, read_sources
    from tuneforge.models.loader import load_tokenizer
    from tuneforge.data.prepare import prepare_datasets
    from tuneforge.data.templates import get_template
    from tuneforge.train.common import length_samplers

    args, _ = build_args(read_sources(pref_args(tiny_model_dir, data["pairs"], "unused", token_budget=200)),
                         with_training=True)
    args.training, args.extra = type("T", (), {"seed": 7, "per_device_train_batch_size": 4, "world_size": 1})(), {}
    tokenizer = load_tokenizer(args.model)
    train = prepare_datasets(args.data, "dpo", tokenizer, get_template("auto", tokenizer), seed=7).train
    _, batches = length_samplers(args, train, ("chosen_input_ids", "rejected_input_ids"))
    sizes = [len(train[i]["chosen_input_ids"]) + len(train[i]["rejected_input_ids"]) for i in range(len(train))]
    listed = list(batches)
    assert sorted(i for b in listed for i in b) == list(range(len(train)))
    assert all(sum(sizes[i] for i in b) <= 200 or len(b) == 1 for b in listed)
    assert max(len(b) for b in listed) > 1


def test_a_run_from_a_reward_model_folder_continues_its_value_head(tiny_model_dir, data, tmp_path, capsys):
    first = str(tmp_path / "first")
    run_train(pref_args(tiny_model_dir, data["pairs"], first, stage="rm", max_steps=30, learning_rate=3e-3))
    again, fresh = str(tmp_path / "again"), str(tmp_path / "fresh")
    capsys.readouterr()
    run_train(pref_args(tiny_model_dir, data["pairs"], again, stage="rm", max_steps=1, adapter_name_or_path=first))
    assert "value head continued from" in capsys.readouterr().out
    run_train(pref_args(tiny_model_dir, data["pairs"], fresh, stage="rm", max_steps=1))
    # The same first batch: the continued reward model already separates it, a fresh one does not.
    assert column(again, "loss")[0] < 0.5 * column(fresh, "loss")[0]


@pytest.mark.parametrize("key,value,message", [
    ("finetuning_type", "full", "needs a frozen reference copy, which is not supported under DeepSpeed ZeRO-3"),
    ("fsdp", "true", "stage dpo is not supported with FSDP yet"),
])
def test_sharded_setups_not_supported_yet_are_refused(tiny_model_dir, data, key, value, message):
    """Checked directly: on a machine without a GPU, DeepSpeed and FSDP are refused before these checks."""
    from tuneforge.config.parser import build_args, read_sources
    from tuneforge.config.validate import validate_stage_keys
    from tuneforge.errors import ConfigError

    ds3 = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "deepspeed", "ds_z3_config.json")
    over = {key: value} | ({"deepspeed": ds3} if key == "finetuning_type" else {})
    args, train_kwargs = build_args(read_sources(pref_args(tiny_model_dir, data["pairs"], "unused", **over)), True)
    with pytest.raises(ConfigError, match=message):
        validate_stage_keys(args, train_kwargs, lambda key: "")
    ds2 = ds3.replace("z3", "z2")  # ZeRO-2 keeps whole weights on every process: a frozen copy works there
    if key == "finetuning_type":
        args, train_kwargs = build_args(read_sources(pref_args(tiny_model_dir, data["pairs"], "unused",
                                                               finetuning_type="full", deepspeed=ds2)), True)
        validate_stage_keys(args, train_kwargs, lambda key: "")


def test_ref_model_adapters_and_quantization_are_used(tiny_model_dir, data, tmp_path, caplog):
    sft = str(tmp_path / "sft")  # an adapter that moves the model away from its base
    run_train(base_args(tiny_model_dir, data["sft"], sft, max_steps=4, learning_rate=1e-2))
    with_adapter = str(tmp_path / "with-adapter")
    run_train(pref_args(tiny_model_dir, data["pairs"], with_adapter, ref_model=tiny_model_dir,
                        ref_model_adapters=sft, max_steps=1))
    assert abs(records(with_adapter)[0]["loss"] - math.log(2)) > 1e-3  # the reference is base + adapter
    quantized = str(tmp_path / "quantized")
    run_train(pref_args(tiny_model_dir, data["pairs"], quantized, ref_model=tiny_model_dir,
                        ref_model_quantization_bit=8, max_steps=1))
    gap = abs(records(quantized)[0]["loss"] - math.log(2))
    assert 1e-7 < gap < 0.05  # an 8-bit copy of the policy: close to it, not equal
    # Continuing an adapter: the reference is the base without it, and the run says so.
    run_train(pref_args(tiny_model_dir, data["pairs"], str(tmp_path / "continued"), adapter_name_or_path=sft,
                        max_steps=1))
    assert any("the reference is the base model without the adapter this run continues" in r.getMessage()
               for r in caplog.records)
