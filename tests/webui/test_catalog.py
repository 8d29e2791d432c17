"""The webui's choices, against the project's own tables and LLaMA-Factory's demo data."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from tuneforge.config.args import FinetuneArgs, GenerateArgs, ModelArgs, PreferenceArgs, RLArgs
from tuneforge.errors import DataError
from tuneforge.stages import READY, STAGES
from tuneforge.webui import catalog

ANCHOR_DATA = Path("/work/shared/anchors/llamafactory-data")
needs_anchor = pytest.mark.skipif(not (ANCHOR_DATA / "dataset_info.json").is_file(),
                                  reason=f"LLaMA-Factory's demo data is not at {ANCHOR_DATA}")
INSTANCES = [ModelArgs(), FinetuneArgs(), PreferenceArgs(), RLArgs(), GenerateArgs()]


def dataclass_default(name):
    return next(getattr(obj, name) for obj in INSTANCES if hasattr(obj, name))


def test_no_gradio_or_torch_on_import():
    import subprocess

    code = ("import sys, tuneforge.webui.catalog, tuneforge.webui.config_io; "
            "print(sorted(m for m in ('gradio', 'torch', 'transformers', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_models_aliases_and_local_paths(tmp_path):
    from tuneforge.models.aliases import ALIASES

    hf = tmp_path / "models" / "tiny"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text("{}")
    (tmp_path / "models" / "small.gguf").write_bytes(b"GGUF")
    (tmp_path / "models" / "notes").mkdir()
    (tmp_path / "readme.txt").write_text("x")
    choices = catalog.model_choices([tmp_path / "models", str(hf), tmp_path / "readme.txt", tmp_path / "missing"])
    assert choices[:len(ALIASES)] == list(ALIASES)
    assert choices[len(ALIASES):] == [str(tmp_path / "models" / "small.gguf"), str(hf)]  # once each
    assert catalog.model_kind(str(hf)) == "folder"
    assert catalog.model_kind(str(tmp_path / "models" / "small.gguf")) == "gguf"
    assert catalog.model_kind("smollm2-135m-instruct") == "alias"
    assert catalog.model_kind("HuggingFaceTB/SmolLM2-135M-Instruct") == "hub"
    assert catalog.model_kind(str(tmp_path / "readme.txt")) is None and catalog.model_kind("") is None
    assert "SmolLM2" in catalog.describe_model("smollm2-135m-instruct")


def test_templates_and_stages():
    from tuneforge.data.templates import TEMPLATE_NAMES

    templates = catalog.template_choices()
    assert templates[0] == "auto" and templates == list(TEMPLATE_NAMES) and "chatml" in templates
    assert catalog.stage_choices() == list(READY)
    assert catalog.stage_summary("dpo") == STAGES["dpo"].summary


def test_method_keys_take_the_dataclass_defaults():
    assert catalog.METHODS == ("lora", "qlora", "freeze", "full")
    lora = {k.name: k for k in catalog.method_keys("lora")}
    assert {"lora_rank", "lora_alpha", "lora_dropout", "lora_target"} <= set(lora)
    for key in lora.values():
        assert key.default == dataclass_default(key.name)
    assert lora["lora_rank"].kind == "int" and lora["lora_dropout"].kind == "float" and lora["lora_alpha"].optional
    qlora = {k.name: k for k in catalog.method_keys("qlora")}
    assert qlora["quantization_bit"].default in qlora["quantization_bit"].choices == (4, 8)
    assert set(lora) < set(qlora)
    freeze = {k.name: k.default for k in catalog.method_keys("freeze")}
    assert freeze["freeze_trainable_layers"] == FinetuneArgs().freeze_trainable_layers
    assert catalog.method_keys("full") == []
    for method in catalog.METHODS:
        assert catalog.method_of(catalog.method_config(method)) == method
    assert catalog.method_config("qlora") == {"finetuning_type": "lora", "quantization_bit": 4}
    assert catalog.method_of({}) == FinetuneArgs().finetuning_type


def test_stage_keys_cover_every_stage_with_dataclass_defaults():
    for stage in STAGES:
        for key in catalog.stage_keys(stage):
            assert key.default == dataclass_default(key.name), key.name
            assert stage in catalog.stage_of_key(key.name)
    dpo = {k.name: k for k in catalog.stage_keys("dpo")}
    assert {"pref_beta", "pref_loss", "pref_ftx", "ref_model"} <= set(dpo)
    assert dpo["pref_loss"].choices[0] == dpo["pref_loss"].default == "sigmoid"
    assert {"kto_chosen_weight", "kto_rejected_weight", "pref_beta"} <= {k.name for k in catalog.stage_keys("kto")}
    ppo = {k.name for k in catalog.stage_keys("ppo")}
    grpo = {k.name for k in catalog.stage_keys("grpo")}
    assert {"reward_model", "ppo_epochs", "ppo_kl_coef", "max_new_tokens"} <= ppo and "num_generations" not in ppo
    assert {"num_generations", "beta", "loss_type", "reward_funcs"} <= grpo and "ppo_epochs" not in grpo
    assert catalog.stage_keys("sft") == [] and catalog.stage_of_key("lora_rank") == ()


def test_choices_match_what_the_code_accepts():
    from tuneforge.train.rl_loss import LOSS_TYPES

    assert set(catalog.CHOICES["loss_type"]) == set(LOSS_TYPES)
    for name, choices in catalog.CHOICES.items():
        key = catalog.form_key(name)
        if key.default is not None:
            assert key.default in choices, name
        if name not in ("quantization_bit", "ref_model_quantization_bit", "stage"):  # these say "4 or 8", or list all
            assert all(str(c) in key.help for c in choices), name


@needs_anchor
def test_datasets_of_the_demo_data():
    entries = {e.name: e for e in catalog.list_datasets(str(ANCHOR_DATA), local_only=True)}
    info = json.loads((ANCHOR_DATA / "dataset_info.json").read_text())
    local = [name for name, raw in info.items() if "file_name" in raw and "mllm" not in name]
    assert list(entries) == local  # file order; the multimodal ones are left out (not supported)
    dpo = entries["dpo_en_demo"]
    assert (dpo.file, dpo.formatting, dpo.ranking, dpo.source, dpo.exists) == (
        "dpo_en_demo.json", "sharegpt", True, "file", True)
    assert entries["kto_en_demo"].kto and entries["wiki_demo"].prompt_only
    assert entries["identity"].formatting == "alpaca" and not entries["identity"].ranking

    assert catalog.dataset_choices(str(ANCHOR_DATA), "dpo") == ["dpo_en_demo", "dpo_zh_demo"]
    assert catalog.dataset_choices(str(ANCHOR_DATA), "rm") == ["dpo_en_demo", "dpo_zh_demo"]
    assert catalog.dataset_choices(str(ANCHOR_DATA), "kto") == ["kto_en_demo"]
    sft = catalog.dataset_choices(str(ANCHOR_DATA), "sft")
    assert {"identity", "alpaca_en_demo", "glaive_toolcall_en_demo"} <= set(sft)
    assert not {"dpo_en_demo", "wiki_demo", "c4_demo"} & set(sft)
    assert {"wiki_demo", "c4_demo", "identity"} <= set(catalog.dataset_choices(str(ANCHOR_DATA), "pt"))

    everything = {e.name: e for e in catalog.list_datasets(str(ANCHOR_DATA), with_problems=True)}
    assert "multimodal" in everything["mllm_demo"].problem and everything["mllm_demo"].stages == ()
    hub = everything["alpaca_en"]
    assert hub.source == "hf_hub" and hub.file == info["alpaca_en"]["hf_hub_url"] and not hub.exists
    assert "alpaca_en" in {e.name for e in catalog.list_datasets(str(ANCHOR_DATA), "sft")}
    assert catalog.dataset_choices("/nonexistent/folder", "sft") == []
    with pytest.raises(DataError, match="dataset_info.json"):
        catalog.list_datasets("/nonexistent/folder")


@needs_anchor
@pytest.mark.parametrize("stage", READY)
def test_stage_filter_agrees_with_the_loader(stage):
    """An entry is offered for a stage exactly when the loader's checks on its first rows accept it."""
    from tuneforge.data.loader import LoadReport, _prepare
    from tuneforge.data.registry import resolve_specs

    for entry in catalog.list_datasets(str(ANCHOR_DATA), local_only=True):
        spec = resolve_specs(entry.name, str(ANCHOR_DATA))[0]
        try:
            _prepare(spec, stage, False, LoadReport())
            accepted = True
        except DataError:
            accepted = False
        assert entry.suits(stage) == accepted, (entry.name, stage)


@needs_anchor
def test_preview_rows(tmp_path):
    rows = catalog.preview_rows(str(ANCHOR_DATA), "identity", 2)
    assert rows == json.loads((ANCHOR_DATA / "identity.json").read_text())[:2]
    assert len(catalog.preview_rows(str(ANCHOR_DATA), "c4_demo", 3)) == 3  # JSON lines
    assert catalog.preview_rows(str(ANCHOR_DATA), "wiki_demo", 1)[0]["text"]  # plain text
    own = tmp_path / "mine.jsonl"
    own.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n')
    assert catalog.preview_rows(str(ANCHOR_DATA), str(own), 5) == [{"instruction": "a", "output": "b"},
                                                                   {"instruction": "c", "output": "d"}]
    with pytest.raises(DataError, match="only local files"):
        catalog.preview_rows(str(ANCHOR_DATA), "alpaca_en", 1)
    with pytest.raises(DataError, match="not in"):
        catalog.preview_rows(str(ANCHOR_DATA), "no_such_dataset", 1)


@pytest.fixture
def tiny_config(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))
    return {"model_name_or_path": tiny_model_dir, "stage": "sft", "dataset": "identity",
            "dataset_dir": str(ANCHOR_DATA), "template": "auto", "cutoff_len": 512, "lora_alpha": "",
            "tokenized_path": str(tmp_path / "tokenized"), "val_size": 0.5}


@needs_anchor
def test_preview_tokenized_marks_the_trained_text(tiny_config, tmp_path):
    rows = json.loads((ANCHOR_DATA / "identity.json").read_text())[:2]
    previews = catalog.preview_tokenized(tiny_config, 2)
    assert len(previews) == 2
    for row, spans in zip(rows, previews):
        assert all(isinstance(text, str) and isinstance(trained, bool) for text, trained in spans)
        trained = "".join(text for text, on in spans if on)
        prompt = "".join(text for text, on in spans if not on)
        assert row["output"] in trained and row["instruction"] in prompt and row["output"] not in prompt
    assert not (tmp_path / "tokenized").exists()  # a preview writes no tokenized_path


@needs_anchor
def test_preview_examples_of_pairs_and_kto(tiny_config):
    pairs = catalog.preview_examples({**tiny_config, "stage": "dpo", "dataset": "dpo_en_demo"}, 2)
    assert [p.title for p in pairs] == ["example 0 (chosen)", "example 0 (rejected)",
                                        "example 1 (chosen)", "example 1 (rejected)"]
    assert all(any(on for _, on in p.spans) and p.tokens > 0 for p in pairs)
    kto = catalog.preview_examples({**tiny_config, "stage": "kto", "dataset": "kto_en_demo"}, 1)
    assert len(kto) == 1 and kto[0].title.split()[-1] in ("(desirable)", "(undesirable)")
    prompts = catalog.preview_examples({**tiny_config, "stage": "ppo"}, 1)
    assert prompts[0].title == "example 0 (prompt)" and not any(on for _, on in prompts[0].spans)


def test_form_keys_are_frozen_records():
    key = catalog.form_key("lora_rank")
    assert dataclasses.is_dataclass(key) and key.name == "lora_rank"
    with pytest.raises(KeyError):
        catalog.form_key("no_such_key")
