"""Freeze and full tuning: which of the base model's own parameters train, and in what precision."""

from __future__ import annotations

import torch
from torch import nn

from tuneforge.errors import ConfigError
from tuneforge.config.lists import comma_list as _names_option

# Parts of multimodal models that text fine-tuning leaves alone (freeze_vision_tower).
VISION_MODULES = ("vision_tower", "visual", "vision_model", "multi_modal_projector", "mm_projector")


def setup_full(model, finetune_args) -> None:
    """Every parameter trains; float32 master weights unless pure_bf16 (the optimiser's small updates would
    vanish in bf16 rounding otherwise)."""
    for name, param in model.named_parameters():
        frozen = finetune_args.freeze_vision_tower and _in_vision(name)
        param.requires_grad_(not frozen)
        if not frozen:
            _to_master_precision(param, finetune_args)


def setup_freeze(model, finetune_args) -> None:
    """Trains freeze_trainable_modules of the last n (n > 0) or first -n (n < 0) decoder layers, plus
    freeze_extra_modules outside the layers; everything else is frozen."""
    layers_name, layers = find_decoder_layers(model)
    count = len(layers)
    n = finetune_args.freeze_trainable_layers
    if n == 0 or abs(n) > count:
        raise ConfigError(
            f"freeze_trainable_layers: {n} is not usable for a model with {count} layers; use 1..{count} "
            f"(last layers) or -1..-{count} (first layers)"
        )
    layer_ids = range(count - n, count) if n > 0 else range(-n)
    prefixes = [f"{layers_name}.{i}." for i in layer_ids]

    inside = _names_option(finetune_args.freeze_trainable_modules)
    if inside != ["all"]:
        _check_names(inside, _child_names(layers[0]), "freeze_trainable_modules", "inside each layer")
    extra = _names_option(finetune_args.freeze_extra_modules)
    outside = {
        part
        for name, _ in model.named_modules()
        if name and not name.startswith(layers_name + ".")
        for part in name.split(".")
    } - {layers_name.rsplit(".", 1)[-1]}
    _check_names(extra, outside, "freeze_extra_modules", "outside the decoder layers")

    # Tied weights have several names (embed_tokens / lm_head); a parameter trains if any of its names says so.
    decisions: dict[int, tuple[nn.Parameter, bool]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        in_layer = next((p for p in prefixes if name.startswith(p)), None)
        if in_layer is not None:
            inner = name[len(in_layer):].split(".")
            trainable = inside == ["all"] or any(module in inner for module in inside)
        else:
            parts = name.split(".")
            trainable = not name.startswith(layers_name + ".") and any(module in parts for module in extra)
        previous = decisions.get(id(param), (param, False))[1]
        decisions[id(param)] = (param, previous or trainable)
    for param, trainable in decisions.values():
        param.requires_grad_(trainable)
        if trainable:
            _to_master_precision(param, finetune_args)


def find_decoder_layers(model) -> tuple[str, nn.ModuleList]:
    """The ModuleList of decoder blocks: the one whose length is the config's layer count (the longest
    ModuleList if the config does not say), skipping a vision tower's blocks."""
    config = model.config
    expected = None
    for key in ("num_hidden_layers", "num_layers", "n_layer"):
        expected = getattr(config, key, None) or getattr(getattr(config, "text_config", None), key, None)
        if expected:
            break
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0 and not _in_vision(name)
    ]
    exact = [c for c in candidates if len(c[1]) == expected]
    chosen = exact or sorted(candidates, key=lambda c: len(c[1]), reverse=True)
    if not chosen:
        raise ConfigError("finetuning_type: freeze needs a model with a list of decoder layers; use lora or full")
    return chosen[0]


def _child_names(layer: nn.Module) -> set[str]:
    return {part for name, _ in layer.named_modules() if name for part in name.split(".") if not part.isdigit()}


def _check_names(wanted: list[str], available: set[str], key: str, where: str) -> None:
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise ConfigError(
            f"{key}: {', '.join(unknown)} not found {where}; choose from {', '.join(sorted(available))}"
        )


def _in_vision(name: str) -> bool:
    return any(part in VISION_MODULES for part in name.split("."))


def _to_master_precision(param: nn.Parameter, finetune_args) -> None:
    if not finetune_args.pure_bf16 and param.dtype in (torch.float16, torch.bfloat16):
        param.data = param.data.float()
