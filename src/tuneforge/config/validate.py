"""Cross-field checks with messages that name the clashing keys, and the final TrainingArguments."""

from __future__ import annotations

import logging
import os

from ..errors import ConfigError

logger = logging.getLogger("tuneforge")

STAGES_READY = ("pt", "sft")
STAGES_ALL = ("pt", "sft", "rm", "dpo", "kto", "ppo", "grpo")


def _cpu_has_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fsdp_value(value):
    """The `fsdp` setting as the Trainer takes it: None when off, True for `fsdp: true` (transformers 5's
    form), else the older option string such as "full_shard auto_wrap"."""
    text = str(value).strip().lower() if value is not None else ""
    if text in ("", "false", "no", "none", "null", "0"):
        return None
    return True if text == "true" else value


def validate(args, train_kwargs: dict, where: dict) -> None:
    """Raises ConfigError for settings that cannot work together; warns for ones that only cost speed."""
    import torch

    m, d, f = args.model, args.data, args.finetune

    def at(key):
        return f" ({where[key]})" if key in where else ""

    if not m.model_name_or_path:
        raise ConfigError("model_name_or_path is not set: give a Hugging Face folder, hub id, .gguf file or alias")
    if f.stage not in STAGES_ALL:
        raise ConfigError(f"stage{at('stage')}: unknown stage {f.stage!r}; choose one of {', '.join(STAGES_ALL)}")
    if f.stage not in STAGES_READY:
        raise ConfigError(
            f"stage{at('stage')}: stage {f.stage!r} is not implemented in this version yet; available: {', '.join(STAGES_READY)}"
        )
    if f.finetuning_type not in ("lora", "freeze", "full"):
        raise ConfigError(f"finetuning_type{at('finetuning_type')}: {f.finetuning_type!r} is not one of lora, freeze, full")
    if m.quantization_bit is not None:
        if m.quantization_bit not in (4, 8):
            raise ConfigError(f"quantization_bit{at('quantization_bit')}: must be 4 or 8, got {m.quantization_bit}")
        if f.finetuning_type != "lora":
            raise ConfigError(
                f"quantization_bit{at('quantization_bit')} and finetuning_type={f.finetuning_type}{at('finetuning_type')} clash: "
                "quantized weights can only be trained through LoRA adapters; set finetuning_type=lora or quantization_bit=null"
            )
    cuda = torch.cuda.is_available()
    if train_kwargs.get("fp16") and not cuda:
        raise ConfigError(f"fp16{at('fp16')}: fp16 training needs a GPU and none is available; set fp16=false")
    if train_kwargs.get("bf16") and not cuda and not _cpu_has_bf16():
        logger.warning("bf16=true on a CPU without bf16 instructions: training will be slow; bf16=false is faster here")
    if train_kwargs.get("deepspeed") and not cuda:
        raise ConfigError(f"deepspeed{at('deepspeed')}: DeepSpeed needs a GPU and none is available; set deepspeed=null")
    if fsdp_value(train_kwargs.get("fsdp")) is not None and not cuda:
        raise ConfigError(
            f"fsdp{at('fsdp')}: FSDP needs GPUs and none is available (on the CPU accelerate would silently train "
            "unsharded DDP instead); set fsdp=null"
        )
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not cuda:
        raise ConfigError(
            "ACCELERATE_USE_FSDP=true (accelerate launch with an FSDP config): FSDP needs GPUs and none is available; "
            "run tuneforge train without accelerate launch, or with nproc_per_node for DDP on the CPU"
        )
    if train_kwargs.get("do_train", True) and not d.dataset:
        raise ConfigError("dataset is not set: name datasets from dataset_info.json or give a file path")
    if d.streaming and (train_kwargs.get("max_steps") or -1) <= 0:
        raise ConfigError(f"streaming{at('streaming')}: a streamed dataset has no length; set max_steps")
    if d.streaming and 0 < d.val_size < 1:
        raise ConfigError(f"val_size{at('val_size')}: with streaming, val_size must be a row count (>= 1)")
    if d.mix_strategy not in ("concat", "interleave_under", "interleave_over"):
        raise ConfigError(f"mix_strategy{at('mix_strategy')}: {d.mix_strategy!r} is not concat, interleave_under or interleave_over")
    if d.neat_packing and d.padding_free is False:
        raise ConfigError(
            f"neat_packing{at('neat_packing')} and padding_free=false{at('padding_free')} clash: examples packed into "
            "one row stay apart only through restarting position_ids; remove padding_free=false or use packing=true"
        )
    if d.cutoff_len < 2:
        raise ConfigError(f"cutoff_len{at('cutoff_len')}: must be at least 2")


def training_arguments(args, train_kwargs: dict):
    """Builds Seq2SeqTrainingArguments with the defaults this project relies on."""
    import torch
    from transformers import Seq2SeqTrainingArguments

    kw = {k: v for k, v in train_kwargs.items() if k != "_extra"}
    ratio = train_kwargs.get("_extra", {}).get("warmup_ratio")
    if ratio is not None and "warmup_steps" not in kw:
        kw["warmup_steps"] = float(ratio)  # transformers 5 reads a float in [0, 1) as a ratio of all steps
    kw.setdefault("output_dir", os.path.join("saves", f"{args.finetune.stage}-{args.finetune.finetuning_type}"))
    kw.setdefault("report_to", "none")
    kw.setdefault("do_train", True)
    if args.finetune.disable_gradient_checkpointing:
        kw["gradient_checkpointing"] = False
    if "fsdp" in kw:
        kw["fsdp"] = fsdp_value(kw["fsdp"])
    if not torch.cuda.is_available():
        kw["use_cpu"] = True
    kw["remove_unused_columns"] = False  # our collators need every column (segments, lengths)
    kw["prediction_loss_only"] = True
    kw["label_names"] = ["shift_labels"]
    kw.setdefault("ddp_find_unused_parameters", False)
    # Rank 0 tokenizes while the others wait at a barrier: a large dataset must not time them out.
    kw.setdefault("ddp_timeout", 7 * 24 * 3600)
    if kw.get("eval_strategy", "no") != "no" or args.data.val_size or args.data.eval_dataset:
        kw.setdefault("do_eval", True)
    try:
        return Seq2SeqTrainingArguments(**kw)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"training arguments: {e}") from None
