"""Cross-field checks with messages that name the clashing keys, and the final TrainingArguments."""

from __future__ import annotations

import logging
import os

from ..errors import ConfigError
from ..stages import PREFERENCE, READY, get_stage
from .validate_predict import default_do_eval, default_do_train, validate_predict_keys
from .validate_rl import validate_rl_keys

logger = logging.getLogger("tuneforge")

PREF_LOSSES = ("sigmoid", "hinge", "ipo", "orpo", "simpo")
REFERENCE_FREE = ("orpo", "simpo")  # losses that need no reference model


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


def _has_cuda() -> bool:
    """Asked only when a GPU-only key is set, so a config check does not import torch otherwise."""
    import torch

    return torch.cuda.is_available()


def validate(args, train_kwargs: dict, where: dict) -> None:
    """Raises ConfigError for settings that cannot work together; warns for ones that only cost speed."""
    m, d, f = args.model, args.data, args.finetune

    def at(key):
        return f" ({where[key]})" if key in where else ""

    if not m.model_name_or_path:
        raise ConfigError("model_name_or_path is not set: give a Hugging Face folder, hub id, .gguf file or alias")
    if get_stage(f.stage, at("stage")).recipe is None:
        raise ConfigError(
            f"stage{at('stage')}: stage {f.stage!r} is not implemented in this version yet; available: {', '.join(READY)}"
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
    gpu_keys = train_kwargs.get("fp16") or train_kwargs.get("bf16") or train_kwargs.get("deepspeed") or \
        fsdp_value(train_kwargs.get("fsdp")) is not None or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    cuda = _has_cuda() if gpu_keys else False
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
    if default_do_train(train_kwargs) and not d.dataset:
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
    validate_stage_keys(args, train_kwargs, at)
    validate_rl_keys(args, train_kwargs, at)
    validate_predict_keys(args, train_kwargs, at)


def _reference_needed(args) -> bool:
    return args.finetune.stage in PREFERENCE and (args.finetune.stage == "kto" or
                                                  args.preference.pref_loss not in REFERENCE_FREE)


def validate_stage_keys(args, train_kwargs: dict, at) -> None:
    """Keys of the reward and preference stages: values in range, and no key that the chosen stage or loss
    would not read. Keys LLaMA-Factory configs often carry for every stage (pref_beta, pref_loss) are
    warned about when they have no effect; keys that change what is trained are refused."""
    f, d, p = args.finetune, args.data, args.preference
    stage = get_stage(f.stage)
    pairwise_or_kto = stage.shape.name in ("pairwise", "kto")
    given = set(args.sources)
    if p.pref_loss == "kto_pair":
        raise ConfigError(f"pref_loss{at('pref_loss')}: kto_pair is no longer a DPO loss; use stage: kto")
    if p.pref_loss not in PREF_LOSSES:
        raise ConfigError(f"pref_loss{at('pref_loss')}: unknown loss {p.pref_loss!r}; choose one of {', '.join(PREF_LOSSES)}")
    if p.pref_bco_weight:
        raise ConfigError(f"pref_bco_weight{at('pref_bco_weight')}: BCO is not supported; set pref_bco_weight: 0")
    if p.pref_beta <= 0:
        raise ConfigError(f"pref_beta{at('pref_beta')}: must be above 0, got {p.pref_beta}")
    if not 0 <= p.dpo_label_smoothing < 0.5:
        raise ConfigError(f"dpo_label_smoothing{at('dpo_label_smoothing')}: must be in [0, 0.5), got {p.dpo_label_smoothing}")
    if p.pref_ftx < 0 or p.kto_chosen_weight < 0 or p.kto_rejected_weight < 0:
        raise ConfigError("pref_ftx, kto_chosen_weight and kto_rejected_weight must not be negative")
    if p.ref_model_quantization_bit not in (None, 4, 8):
        raise ConfigError(f"ref_model_quantization_bit{at('ref_model_quantization_bit')}: must be 4 or 8")
    if pairwise_or_kto and d.train_on_prompt:
        raise ConfigError(
            f"train_on_prompt{at('train_on_prompt')}: stage {f.stage} scores responses to a prompt, so the prompt is "
            "never trained; remove train_on_prompt"
        )
    if pairwise_or_kto and (d.packing or d.neat_packing):
        key = "packing" if d.packing else "neat_packing"
        raise ConfigError(
            f"{key}{at(key)}: stage {f.stage} batches its sequences padding-free already, with no padding to pack "
            f"away; remove {key}"
        )
    if f.stage == "kto" and d.streaming:
        raise ConfigError(f"streaming{at('streaming')}: stage kto pairs each prompt with another row's response for "
                          "its KL estimate, which needs the whole dataset; set streaming: false")
    if f.stage in PREFERENCE and p.precompute_ref_logps and d.streaming:
        raise ConfigError(f"precompute_ref_logps{at('precompute_ref_logps')}: needs a dataset that is not streamed")
    if f.stage == "dpo" and p.dpo_label_smoothing and p.pref_loss != "sigmoid":
        raise ConfigError(f"dpo_label_smoothing{at('dpo_label_smoothing')}: applies to pref_loss sigmoid only, "
                          f"not {p.pref_loss}")
    if f.stage == "dpo" and p.pref_loss in REFERENCE_FREE and (p.ref_model or p.ref_model_adapters):
        raise ConfigError(f"ref_model{at('ref_model')}: pref_loss {p.pref_loss} uses no reference model; remove ref_model")
    if p.ref_model_adapters and not p.ref_model:
        raise ConfigError(f"ref_model_adapters{at('ref_model_adapters')}: give ref_model, the base they belong to")
    _check_reference_folders(p, at)
    if f.stage in PREFERENCE and _reference_needed(args) and f.finetuning_type != "lora" and not p.ref_model:
        sharded = train_kwargs.get("deepspeed") or fsdp_value(train_kwargs.get("fsdp")) is not None
        if sharded and _zero_stage(train_kwargs.get("deepspeed")) != 2:
            raise ConfigError(
                f"finetuning_type={f.finetuning_type} with stage {f.stage} needs a frozen reference copy, which is not "
                "supported under DeepSpeed ZeRO-3 or FSDP yet; use finetuning_type: lora (the reference is then the "
                "base with adapters off) or ZeRO-2"
            )
    if pairwise_or_kto and fsdp_value(train_kwargs.get("fsdp")) is not None:
        raise ConfigError(f"fsdp{at('fsdp')}: stage {f.stage} is not supported with FSDP yet; use DeepSpeed or DDP")
    unused = _unused_preference_keys(args, given)
    if unused:
        logger.warning("%s: no effect with stage %s%s", ", ".join(unused), f.stage,
                       f" and pref_loss {p.pref_loss}" if f.stage == "dpo" else "")


def _check_reference_folders(p, at) -> None:
    """A ref_model folder that is not a model, or ref_model_adapters that are not adapters, found before any
    model is loaded."""
    folder = os.path.expanduser(p.ref_model or "")
    if folder and os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, "config.json")):
        if os.path.isfile(os.path.join(folder, "adapter_config.json")):
            raise ConfigError(
                f"ref_model{at('ref_model')}: {p.ref_model} is a LoRA adapter folder, not a model; set ref_model to "
                f"its base model and ref_model_adapters: {p.ref_model}"
            )
        if not any(name.endswith(".gguf") for name in os.listdir(folder)):
            raise ConfigError(
                f"ref_model{at('ref_model')}: {p.ref_model} has no config.json, so it is not a model folder; give "
                "the model to compare against (a model folder, .gguf file, alias or hub id)"
            )
    from ..data.registry import split_names

    for adapter in split_names(p.ref_model_adapters):
        if not os.path.isfile(os.path.join(os.path.expanduser(adapter), "adapter_config.json")):
            raise ConfigError(
                f"ref_model_adapters{at('ref_model_adapters')}: {adapter} has no adapter_config.json; point it at "
                "a folder a LoRA run saved"
            )


def _unused_preference_keys(args, given: set) -> list[str]:
    f, p = args.finetune, args.preference
    reads = set()
    if f.stage in PREFERENCE:
        reads |= {"pref_beta", "pref_ftx", "pref_bco_weight"}
        if _reference_needed(args):
            reads |= {"ref_model", "ref_model_adapters", "ref_model_quantization_bit", "precompute_ref_logps"}
    if f.stage == "dpo":
        reads |= {"pref_loss", "dpo_label_smoothing"} | ({"simpo_gamma"} if p.pref_loss == "simpo" else set())
    if f.stage == "kto":
        reads |= {"kto_chosen_weight", "kto_rejected_weight"}
    if f.stage == "ppo" or (f.stage == "grpo" and args.rl.beta):  # their KL is to a reference too
        reads |= {"ref_model", "ref_model_adapters", "ref_model_quantization_bit"}
    keys = [field for field in vars(p) if field in given and field not in reads]
    return keys


def _zero_stage(deepspeed) -> int | None:
    """The ZeRO stage of a DeepSpeed config (a path or a dict), None when there is none."""
    import json

    if not deepspeed:
        return None
    config = deepspeed
    if isinstance(deepspeed, str):
        try:
            with open(deepspeed, encoding="utf-8") as fh:
                config = json.load(fh)
        except (OSError, ValueError) as e:
            raise ConfigError(f"deepspeed: cannot read {deepspeed} ({e})") from None
    stage = (config.get("zero_optimization") or {}).get("stage") if isinstance(config, dict) else None
    return int(stage) if stage is not None else None


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
    kw.setdefault("do_train", default_do_train(train_kwargs))
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
    kw.setdefault("do_eval", default_do_eval(args, train_kwargs))
    if args.data.streaming and get_stage(args.finetune.stage).shape.name in ("pairwise", "kto"):
        # accelerate's dispatching of a streamed dataset concatenates and re-slices batches along their first
        # dimension, which per-pair tensors (num_items, reference log-probabilities) do not share with the
        # packed sequences; each process reading its own batches needs no re-slicing.
        kw.setdefault("accelerator_config", {"dispatch_batches": False})
    try:
        return Seq2SeqTrainingArguments(**kw)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"training arguments: {e}") from None
