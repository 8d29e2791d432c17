"""The decisions of a run that size its memory, taken from the parsed config the way `tuneforge train` takes
them: dtype, quantisation, gradient checkpointing (set, or decided automatically as common.py does),
padding-free batches, batch and accumulation, processes, and DeepSpeed ZeRO / FSDP sharding and offload."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class RunPlan:
    stage: str
    method: str  # lora | freeze | full
    quantization_bit: int | None
    lora_rank: int
    double_quantization: bool
    weight_dtype: str  # what the weights are loaded in
    compute_dtype: str  # what the matrix products run in (bf16/fp16 flags, else the weights')
    pure_bf16: bool
    gradient_checkpointing: bool
    gc_source: str  # "set" | "auto" (decided from memory, as train does)
    batch_size: int
    gradient_accumulation: int
    cutoff_len: int
    padding_free: bool
    loss_chunk_size: int
    token_budget: int | None
    group_by_length: bool
    seed: int
    epochs: float
    max_steps: int
    world_size: int  # all processes
    processes_here: int  # processes on this machine (they share its RAM)
    zero_stage: int  # 0 (none), 1, 2 or 3
    fsdp: bool
    offload_optimizer: bool
    offload_params: bool
    device: str  # cpu | cuda

    @property
    def lm_head(self) -> bool:
        """Whether the loss runs the LM head (a reward model scores with its value head instead)."""
        return self.stage != "rm"

    @property
    def weight_bytes(self) -> int:
        return DTYPE_BYTES.get(self.weight_dtype, 4)

    @property
    def act_bytes(self) -> int:
        return DTYPE_BYTES.get(self.compute_dtype, 4)

    @property
    def sharded(self) -> bool:
        """ZeRO-3 or FSDP: the weights themselves are split, and the model computes its own logits."""
        return self.zero_stage == 3 or self.fsdp

    def with_(self, **changes) -> "RunPlan":
        return dataclasses.replace(self, **changes)


def deepspeed_settings(value) -> tuple[int, bool, bool]:
    """(ZeRO stage, optimizer offloaded, parameters offloaded) of a DeepSpeed config file or dict."""
    if not value:
        return 0, False, False
    config = value
    if isinstance(value, str):
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"deepspeed: {value} is not a file; point it at a DeepSpeed JSON config "
                              "(examples/deepspeed/)")
        config = json.loads(path.read_text(encoding="utf-8"))
    zero = config.get("zero_optimization", {}) or {}
    device = lambda key: str((zero.get(key) or {}).get("device", "none")).lower() in ("cpu", "nvme")  # noqa: E731
    return int(zero.get("stage", 0) or 0), device("offload_optimizer"), device("offload_param")


def fsdp_settings(training) -> tuple[bool, bool]:
    from ..config.validate import fsdp_value

    on = fsdp_value(getattr(training, "fsdp", None)) not in (None, [], "")
    config = getattr(training, "fsdp_config", None) or {}
    offload = str(config.get("offload_params", config.get("cpu_offload", False))).lower() == "true"
    return on, on and offload


def process_counts(args) -> tuple[int, int]:
    """(processes in all, processes on this machine), as launch.py will start them."""
    here = int(args.finetune.nproc_per_node or os.environ.get("NPROC_PER_NODE") or os.environ.get("LOCAL_WORLD_SIZE")
               or 1)
    nodes = int(args.finetune.nnodes or os.environ.get("NNODES") or 1)
    world = int(os.environ.get("WORLD_SIZE") or here * nodes)
    return max(world, 1), max(here, 1)


def run_plan(args, config, device: str, available_bytes: int, deepspeed=None) -> RunPlan:
    """The plan of `args` (a parsed training config). `config`: the model's transformers config, used for the
    automatic gradient-checkpointing decision exactly as train/common.py takes it."""
    from ..models.loader import resolve_attn_implementation
    from ..stages import get_stage
    from ..train.common import needs_gradient_checkpointing

    m, d, f, t = args.model, args.data, args.finetune, args.training
    weight_dtype = _weight_dtype(m.torch_dtype, device)
    compute = "bfloat16" if t.bf16 else "float16" if t.fp16 else weight_dtype
    sequences = 2 if get_stage(f.stage).shape.name == "pairwise" else 1
    gc_source = "set"
    gc = bool(t.gradient_checkpointing) and not f.disable_gradient_checkpointing
    if "gradient_checkpointing" not in args.sources and not f.disable_gradient_checkpointing:
        gc_source = "auto"
        tokens = f.token_budget or t.per_device_train_batch_size * d.cutoff_len * sequences
        gc = gc or needs_gradient_checkpointing(config, tokens, available_bytes)
    attn = resolve_attn_implementation(m)
    supported = attn in ("sdpa", "flash_attention_2", "flash_attention_3", "eager")
    padding_free = supported if d.padding_free is None else (d.padding_free and supported)
    zero, off_opt, off_param = deepspeed_settings(deepspeed if deepspeed is not None else t.deepspeed)
    fsdp, fsdp_offload = fsdp_settings(t)
    world, here = process_counts(args)
    return RunPlan(
        stage=f.stage, method=f.finetuning_type, quantization_bit=m.quantization_bit, lora_rank=f.lora_rank,
        double_quantization=m.double_quantization, weight_dtype=weight_dtype, compute_dtype=compute,
        pure_bf16=f.pure_bf16, gradient_checkpointing=gc, gc_source=gc_source,
        batch_size=t.per_device_train_batch_size, gradient_accumulation=t.gradient_accumulation_steps,
        cutoff_len=d.cutoff_len, padding_free=padding_free, loss_chunk_size=f.loss_chunk_size,
        token_budget=f.token_budget, group_by_length=bool(args.extra.get("group_by_length")), seed=t.seed,
        epochs=float(t.num_train_epochs), max_steps=int(t.max_steps or -1), world_size=world, processes_here=here,
        zero_stage=zero, fsdp=fsdp, offload_optimizer=off_opt or fsdp_offload, offload_params=off_param or fsdp_offload,
        device=device,
    )


def _weight_dtype(name: str, device: str) -> str:
    """loader.resolve_dtype's rule, for a device that may not be this machine's: auto is float32 on the CPU
    and bfloat16 on a GPU (float16 on GPUs without bf16, which the estimate does not tell apart)."""
    from ..models.loader import DTYPE_NAMES

    name = (name or "auto").strip().lower()
    if name == "auto":
        return "bfloat16" if device == "cuda" else "float32"
    if name not in DTYPE_NAMES:
        raise ConfigError(f"torch_dtype: '{name}' is not one of auto, float32, bfloat16, float16")
    return DTYPE_NAMES[name]
