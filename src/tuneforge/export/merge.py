"""The model an export writes: the base in float with its LoRA/DoRA adapters merged in, in order.

A QLoRA adapter is merged into the base loaded in float (its 4-bit weights were only a training-time copy
of the same base), never into quantised weights: asking for quantization_bit here is refused. An adapter
trained on another model is reported in one line, naming the base it was trained on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from ..errors import ExportError

logger = logging.getLogger("tuneforge")


def _recorded_base(adapter: str) -> str:
    try:
        config = json.loads((Path(adapter).expanduser() / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "unknown"
    return config.get("base_model_name_or_path") or "unknown"


def training_chat_template(adapters: list[str]) -> str | None:
    """The chat template the last adapter's run saved beside it (what training rendered with), if any."""
    if not adapters:
        return None
    folder = Path(adapters[-1]).expanduser()
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def _adapted_modules(adapter: str) -> set[str]:
    """Paths (in the base model) of the modules an adapter's weights belong to."""
    from safetensors import safe_open

    folder = Path(adapter).expanduser()
    files = sorted(folder.glob("adapter_model*.safetensors"))
    if not files:
        return set()
    modules = set()
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if ".lora_" in key:
                    modules.add(key.split(".lora_")[0].removeprefix("base_model.model."))
    return modules


def merge_adapters(model, adapters: list[str], model_name: str):
    """`model` with each adapter merged in turn; ExportError when an adapter does not fit the model (modules
    it adapts that the model lacks, or weights of other shapes)."""
    from peft import PeftModel

    from ..models.adapters import _check_adapter_dir

    for path in adapters:
        _check_adapter_dir(path)
        base = _recorded_base(path)
        missing = sorted(_adapted_modules(path) - {name for name, _ in model.named_modules()})
        if missing:
            raise ExportError(f"adapter_name_or_path: {path} adapts {len(missing)} modules {model_name} does not "
                              f"have (e.g. {missing[0]}); it was trained on {base}: set model_name_or_path to that model")
        try:
            model = PeftModel.from_pretrained(model, path).merge_and_unload()
        except (RuntimeError, ValueError, KeyError) as e:
            text = str(e)
            if "size mismatch" in text and ("embed_tokens" in text or "lm_head" in text):
                raise ExportError(f"adapter_name_or_path: {path} was trained with a larger vocabulary than "
                                  f"{model_name}'s tokenizer; repeat the run's new_special_tokens (and resize_vocab) "
                                  "in the export config") from None
            reason = text.strip().splitlines()[0][:160] if text.strip() else type(e).__name__
            raise ExportError(f"adapter_name_or_path: {path} does not fit {model_name} (it was trained on "
                              f"{base}): {reason}; set model_name_or_path to that model") from None
        if base != "unknown" and Path(base).name != Path(str(model_name).rstrip("/")).name:
            logger.warning("%s was trained on %s; merging it into %s (same shapes)", path, base, model_name)
        logger.info("merged adapter %s", path)
    return model


def load_merged(args, device: str = "cpu"):
    """(float32 model with adapters merged, tokenizer) from the config's model keys."""
    import torch

    from ..models.loader import load_base_model, load_tokenizer, parse_names

    if args.model.quantization_bit:
        raise ExportError("quantization_bit: an export merges adapters into the base loaded in float (a QLoRA "
                          "adapter too), never into quantised weights; remove quantization_bit")
    model_args = dataclasses.replace(args.model, infer_dtype="float32", adapter_name_or_path=None)
    tokenizer = load_tokenizer(model_args)
    model = load_base_model(model_args, tokenizer, is_trainable=False)
    if device == "auto" and torch.cuda.is_available():
        model.to("cuda")
    model = merge_adapters(model, parse_names(args.model.adapter_name_or_path), args.model.model_name_or_path)
    return model.to("cpu"), tokenizer
