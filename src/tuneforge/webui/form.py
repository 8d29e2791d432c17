"""The board's form as config keys: which fields there are, how a field's value becomes a key's value, and
back (a YAML file loads into the form). Keys the form has no field for go in the Other keys box."""

from __future__ import annotations

import json

import yaml

from ..errors import TuneforgeError
from . import catalog

# Fields of the shared model row, the train form and the tabs: key -> kind (how the field's value is read).
MODEL_KEYS = {"model_name_or_path": "str", "adapter_name_or_path": "str", "template": "str", "method": "method"}
TRAIN_KEYS = {
    "stage": "str", "dataset_dir": "str", "dataset": "list", "cutoff_len": "int", "max_samples": "int",
    "learning_rate": "float", "num_train_epochs": "float", "max_steps": "int", "per_device_train_batch_size": "int",
    "gradient_accumulation_steps": "int", "lr_scheduler_type": "str", "warmup_ratio": "float",
    "lora_rank": "int", "lora_alpha": "int", "lora_dropout": "float", "lora_target": "str",
    "freeze_trainable_layers": "int", "logging_steps": "int", "save_steps": "int",
    "gradient_checkpointing": "choice", "seed": "int", "output_dir": "str", "extra_yaml": "yaml",
}
TRAIN_DEFAULTS = {
    "stage": "sft", "dataset_dir": "data", "cutoff_len": 1024, "max_samples": None, "learning_rate": 1e-4,
    "num_train_epochs": 3.0, "max_steps": 0, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4,
    "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "logging_steps": 5, "save_steps": 100,
    "gradient_checkpointing": "auto", "seed": 42, "output_dir": "saves/webui-run",
}
LR_SCHEDULES = ("cosine", "linear", "constant", "constant_with_warmup", "polynomial", "inverse_sqrt")
GC_CHOICES = ("auto", "true", "false")
def read_field(kind: str, value):
    if value is None or value == "" or value == []:
        return None
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "list":
        return ",".join(value) if isinstance(value, (list, tuple)) else str(value)
    if kind == "choice":
        return None if value == "auto" else value == "true"
    return str(value).strip() or None


def form_config(model_values: list, train_values: list) -> dict:
    """The config dict of the shared model row and the train form, in the README reference's order."""
    config = {}
    for (key, kind), value in zip(MODEL_KEYS.items(), model_values):
        if kind == "method":
            config.update(catalog.method_config(value or "lora"))
        else:
            config[key] = read_field(kind, value)
    extra = {}
    for (key, kind), value in zip(TRAIN_KEYS.items(), train_values):
        if kind == "yaml":
            extra = _extra_keys(value)
        else:
            config[key] = read_field(kind, value)
    if config.get("finetuning_type") != "lora":
        for key in ("lora_rank", "lora_alpha", "lora_dropout", "lora_target"):
            config.pop(key, None)
    if config.get("finetuning_type") != "freeze":
        config.pop("freeze_trainable_layers", None)
    for key in ("max_steps", "max_samples"):  # 0: by epochs / every row
        if not config.get(key):
            config.pop(key, None)
    config.update(extra)
    config.setdefault("do_train", True)
    config.setdefault("plot_loss", True)
    config.setdefault("report_to", "none")
    return {k: v for k, v in config.items() if v is not None}


def _extra_keys(text) -> dict:
    if not text or not str(text).strip():
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TuneforgeError(f"Other keys: not YAML ({str(e).splitlines()[0]}); write one `key: value` per line")
    if not isinstance(value, dict):
        raise TuneforgeError("Other keys: write one `key: value` per line")
    return value


def stage_keys_yaml(stage: str) -> str:
    """The stage's own keys with their defaults, as commented YAML for the Other keys box."""
    lines = []
    for key in catalog.stage_keys(stage):
        default = "" if key.default is None else json.dumps(key.default)
        lines.append(f"# {key.name}: {default}  # {key.help}".rstrip())
    return "\n".join(lines)


def config_to_fields(config: dict) -> tuple[list, list]:
    """The inverse of form_config: values for the model row and the train form; unknown keys go to Other."""
    config = dict(config)
    model_values = [config.pop("model_name_or_path", None), config.pop("adapter_name_or_path", None),
                    config.pop("template", None) or "auto", catalog.method_of(config)]
    config.pop("finetuning_type", None)
    qlora_bits = catalog.method_config("qlora")["quantization_bit"]
    if model_values[3] == "qlora" and config.get("quantization_bit") == qlora_bits:
        config.pop("quantization_bit")  # the method says it; any other width stays in Other keys, applied last
    train_values = []
    for key, kind in TRAIN_KEYS.items():
        if kind == "yaml":
            train_values.append(None)
            continue
        value = config.pop(key, None)
        if value is None:
            value = TRAIN_DEFAULTS.get(key)
            if key in ("lora_rank", "lora_alpha", "lora_dropout", "lora_target", "freeze_trainable_layers"):
                value = catalog.form_key(key).default
        if kind == "list" and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if kind == "choice":
            value = "auto" if value in (None, "auto") else str(bool(value)).lower()
        train_values.append(value)
    for key in ("do_train", "plot_loss", "report_to"):
        if config.get(key) == {"do_train": True, "plot_loss": True, "report_to": "none"}[key]:
            config.pop(key)
    extra_index = list(TRAIN_KEYS).index("extra_yaml")
    train_values[extra_index] = yaml.safe_dump(config, sort_keys=False, allow_unicode=True) if config else ""
    return model_values, train_values
