"""Decides what trains: LoRA adapters (new, continued or loaded), QLoRA, freeze or full tuning."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from tuneforge.errors import ConfigError, ModelError
from tuneforge.models.freezing import VISION_MODULES, setup_freeze, setup_full
from tuneforge.config.lists import comma_list as _names

logger = logging.getLogger(__name__)

APPLIED_MARK = "_tuneforge_finetuning"
# Fused attention projections that stand in for q_proj/k_proj/v_proj in some architectures.
FUSED_ATTENTION = ("W_pack", "query_key_value", "c_attn", "qkv_proj", "Wqkv", "qkv")
SPLIT_ATTENTION = ("q_proj", "k_proj", "v_proj")


def apply_finetuning(model, model_args, finetune_args, is_trainable: bool):
    """Returns the model with adapters attached and exactly the parameters of finetuning_type trainable.

    For inference (is_trainable=False) adapters are loaded (merged when the weights allow it, for speed) and
    nothing trains. A model this function has already prepared is returned unchanged.
    """
    if getattr(model, APPLIED_MARK, None) is not None:
        return model
    kind = finetune_args.finetuning_type
    adapters = _names(model_args.adapter_name_or_path)
    if adapters and kind != "lora":
        raise ConfigError(
            f"adapter_name_or_path only works with finetuning_type: lora (got {kind}); for a freeze/full run, "
            "set model_name_or_path to its output folder instead"
        )
    quantized = is_quantized(model)
    if quantized and kind != "lora":
        raise ConfigError(
            f"quantization_bit with finetuning_type: {kind} cannot train: quantised weights only train through "
            "LoRA; set finetuning_type: lora or remove quantization_bit"
        )

    if not is_trainable:
        if adapters:
            model = _load_adapters_for_inference(model, adapters, quantized)
        model.requires_grad_(False)
        model.eval()
    elif kind == "full":
        setup_full(model, finetune_args)
    elif kind == "freeze":
        setup_freeze(model, finetune_args)
    elif kind == "lora":
        model = _setup_lora(model, model_args, finetune_args, adapters, quantized)
    else:
        raise ConfigError(f"finetuning_type: '{kind}' is not one of lora, freeze, full")

    setattr(model, APPLIED_MARK, kind if is_trainable else "inference")
    if is_trainable:
        trainable, total = count_parameters(model)
        logger.debug("trainable parameters %s of %s (%.4f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return model


def unwrap(model):
    """The model inside DDP / accelerate / DeepSpeed wrappers (a PEFT model stays a PEFT model)."""
    while hasattr(model, "module"):
        model = model.module
    return model


def base_model(model):
    """The transformers model inside a PEFT wrapper, or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def param_numel(param) -> int:
    """Elements of a parameter, also under DeepSpeed ZeRO-3, whose partitioned tensors are empty outside
    the forward and keep the true count in `ds_numel`."""
    return param.ds_numel if hasattr(param, "ds_numel") else param.numel()


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit bitsandbytes weights are packed, so they count double."""
    trainable = total = 0
    for param in model.parameters():
        count = param_numel(param)
        if param.__class__.__name__ == "Params4bit":
            storage = getattr(param, "quant_storage", None)
            count *= 2 * (storage.itemsize if storage is not None else 1)
        total += count
        if param.requires_grad:
            trainable += count
    return trainable, total


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
                or getattr(model, "hf_quantizer", None) is not None)


def lora_target_modules(model, lora_target: str, freeze_vision_tower: bool = True) -> list[str]:
    """Module names (last path component) for LoRA: `all` is every linear layer but the output head."""
    linear = _linear_module_names(model, freeze_vision_tower)
    wanted = _names(lora_target) or ["all"]
    if wanted == ["all"]:
        return sorted(linear)
    targets, unknown = [], []
    for name in wanted:
        if name in linear:
            targets.append(name)
        elif name in SPLIT_ATTENTION and (fused := [f for f in FUSED_ATTENTION if f in linear]):
            targets.append(fused[0])  # e.g. Baichuan's W_pack, ChatGLM's query_key_value
        else:
            unknown.append(name)
    if unknown:
        raise ConfigError(
            f"lora_target: {', '.join(unknown)} not found in the model; use 'all' or some of "
            f"{', '.join(sorted(linear))}"
        )
    return list(dict.fromkeys(targets))


def _linear_module_names(model, freeze_vision_tower: bool) -> set[str]:
    head = model.get_output_embeddings()
    names = set()
    for path, module in model.named_modules():
        if module is head or not isinstance(module, nn.Linear):  # bitsandbytes layers subclass nn.Linear
            continue
        if freeze_vision_tower and any(part in VISION_MODULES for part in path.split(".")):
            continue
        names.add(path.rsplit(".", 1)[-1])
    return names


def _setup_lora(model, model_args, finetune_args, adapters: list[str], quantized: bool):
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model

    if quantized and len(adapters) > 1:
        raise ConfigError("adapter_name_or_path: a quantised model can continue only one adapter (merging needs "
                          "full-precision weights); merge the others first with `tuneforge export`")
    if quantized and finetune_args.create_new_adapter and adapters:
        raise ConfigError("create_new_adapter needs the loaded adapters merged, which a quantised model cannot do; "
                          "drop quantization_bit or create_new_adapter")
    # Continue the last adapter; the ones before it (all of them with create_new_adapter) are merged in.
    resume = adapters[-1] if adapters and not finetune_args.create_new_adapter else None
    to_merge = adapters[:-1] if resume else adapters
    if to_merge:
        model = _merge_adapters(model, to_merge)
    # Quantised weights stay frozen as they are. peft's prepare_model_for_kbit_training would also upcast every
    # other weight (embeddings, head) to float32, which costs memory and changes nothing LoRA trains.
    model.enable_input_require_grads()  # lets gradient checkpointing work with frozen embeddings
    if resume:
        _check_adapter_dir(resume)
        logger.info("continuing LoRA adapter %s", resume)
        return PeftModel.from_pretrained(model, resume, is_trainable=True)

    save_modules = _names(finetune_args.additional_target)
    if model_args.resize_vocab or model_args.new_special_tokens:
        # New tokens need their embedding rows (and output rows) trained, not just the adapters.
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            if module is not None:
                save_modules.append(_module_path(model, module).rsplit(".", 1)[-1])
    rank = finetune_args.lora_rank
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=rank,
        lora_alpha=finetune_args.lora_alpha or 2 * rank,
        lora_dropout=finetune_args.lora_dropout,
        target_modules=lora_target_modules(model, finetune_args.lora_target, finetune_args.freeze_vision_tower),
        use_rslora=finetune_args.use_rslora,
        use_dora=finetune_args.use_dora,
        modules_to_save=list(dict.fromkeys(save_modules)) or None,
        ensure_weight_tying=bool(save_modules) and bool(getattr(model.config, "tie_word_embeddings", False)),
    )
    # autocast_adapter_dtype (peft's default) keeps the adapter weights in float32 on a bf16/fp16 base.
    return get_peft_model(model, config)


def _load_adapters_for_inference(model, adapters: list[str], quantized: bool):
    from peft import PeftModel

    if quantized:
        if len(adapters) > 1:
            raise ConfigError("adapter_name_or_path: a quantised model can load only one adapter; merge the "
                              "others first with `tuneforge export`")
        _check_adapter_dir(adapters[0])
        return PeftModel.from_pretrained(model, adapters[0], is_trainable=False)
    # Merged weights generate as fast as the base model, with no adapter overhead per layer.
    return _merge_adapters(model, adapters)


def _merge_adapters(model, adapters: list[str]):
    from peft import PeftModel

    for path in adapters:
        _check_adapter_dir(path)
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
        logger.info("merged adapter %s", path)
    return model


def _check_adapter_dir(path: str) -> None:
    if not (Path(path).expanduser() / "adapter_config.json").is_file():
        raise ModelError(
            f"adapter_name_or_path: {path} has no adapter_config.json; point it at a folder a LoRA run saved"
        )


def _module_path(model, target) -> str:
    return next(name for name, module in model.named_modules() if module is target)


