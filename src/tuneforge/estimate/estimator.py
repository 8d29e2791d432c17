"""Puts the pieces together: the model's shape, the run's plan, the batches and this machine give the peak
per process (with gradient checkpointing as configured and flipped), the loading peak, the time per epoch,
and, when the run does not fit, the keys that would make it fit."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from . import memory
from .data_shape import DataShape, micro_batches
from .machine import Machine
from .timing import TimeEstimate, estimate_time

FIT_MARGIN = 1.0  # `tuneforge estimate` says "fits" when the peak is at most the available memory
REFUSE_MARGIN = 1.2  # `train` refuses only above 1.2x: the estimate's accuracy target is 20%


@dataclass
class Suggestion:
    keys: dict  # key -> value to set
    peak_bytes: int
    fits: bool
    note: str = ""


@dataclass
class Estimate:
    shape: object
    plan: object
    data: DataShape
    machine: Machine
    breakdown: memory.Breakdown  # the run as configured
    flipped: memory.Breakdown  # the same with gradient checkpointing the other way
    load_peak: int
    time: TimeEstimate
    framework_note: str
    suggestions: list[Suggestion] = field(default_factory=list)

    @property
    def peak_bytes(self) -> int:
        return max(self.breakdown.peak, self.load_peak)

    @property
    def needed_bytes(self) -> int:
        """What this machine must hold: all its processes' peaks on the CPU (they share the RAM), one
        process's on a GPU (each has its own)."""
        return self.peak_bytes * (self.plan.processes_here if self.plan.device == "cpu" else 1)

    @property
    def fits(self) -> bool | None:
        if self.machine.device != self.plan.device:
            return None  # estimated for a device this machine does not have
        return self.needed_bytes <= self.machine.available_bytes * FIT_MARGIN


def load_peak(shape, plan, framework: int) -> int:
    """Loading: the weights being built while the checkpoint's pages are read (a conversion to another
    dtype holds both; a same-dtype load maps the file and builds nothing)."""
    weights, mapped = memory.weight_bytes(shape, plan)
    same = shape.file_dtype is not None and shape.file_dtype.lower() in memory._FILE_NAMES.get(plan.weight_dtype, ())
    reading = 0 if same or plan.device != "cpu" else shape.file_bytes
    return framework + weights + mapped + reading


def breakdown_for(shape, plan, data, framework: int) -> memory.Breakdown:
    return memory.peak_breakdown(shape, plan, micro_batches(data, plan), framework)


def peak_for(shape, plan, data, framework: int) -> int:
    return max(breakdown_for(shape, plan, data, framework).peak, load_peak(shape, plan, framework))


def build_estimate(shape, plan, data: DataShape, machine: Machine, framework: int, framework_note: str,
                   peak_flops: float, shape_for=None) -> Estimate:
    """shape_for(finetuning_type): the model's shape under another method (for the QLoRA suggestion)."""
    batches = micro_batches(data, plan)
    breakdown = memory.peak_breakdown(shape, plan, batches, framework)
    flipped = breakdown_for(shape, plan.with_(gradient_checkpointing=not plan.gradient_checkpointing), data, framework)
    longest = max(batches, key=lambda b: b.tokens)
    est = Estimate(shape, plan, data, machine, breakdown, flipped, load_peak(shape, plan, framework),
                   estimate_time(shape, plan, data, longest, peak_flops), framework_note)
    if est.fits is False:
        est.suggestions = suggestions(est, framework, shape_for)
    return est


def _fits(peak: int, est: Estimate) -> bool:
    count = est.plan.processes_here if est.plan.device == "cpu" else 1
    return peak * count <= est.machine.available_bytes


def _clip(data: DataShape, cutoff: int) -> DataShape:
    """The data as a smaller cutoff_len would cut it (each sequence at most cutoff tokens)."""
    if data.lengths is None:
        return data
    out = copy.copy(data)
    limit = cutoff * data.sequences
    out.lengths = data.lengths.clip(max=limit)
    out.supervised = data.supervised.clip(max=out.lengths)
    out.longest = data.longest.clip(max=cutoff)
    out.squares = (data.squares / data.sequences).clip(max=cutoff * cutoff) * data.sequences
    return out


def suggestions(est: Estimate, framework: int, shape_for=None) -> list[Suggestion]:
    """Single changes that bring the peak under the available memory, each with its estimate: gradient
    checkpointing, the largest batch that fits (accumulation raised to keep the effective batch), the
    largest cutoff_len that fits, QLoRA, and ZeRO-3 with offload on a GPU."""
    shape, plan, data = est.shape, est.plan, est.data
    out: list[Suggestion] = []
    gc_key = {} if plan.gradient_checkpointing else {"gradient_checkpointing": True}

    def add(keys, new_plan, new_data=data, new_shape=shape, note=""):
        keys = {**gc_key, **keys} if new_plan.gradient_checkpointing else keys
        peak = peak_for(new_shape, new_plan, new_data, framework)
        out.append(Suggestion(keys, peak, _fits(peak, est), note))
        return out[-1]

    if not plan.gradient_checkpointing:
        add({"gradient_checkpointing": True}, plan.with_(gradient_checkpointing=True))
    base = plan.with_(gradient_checkpointing=True)
    batch = plan.batch_size // 2
    while batch >= 1:
        accumulation = plan.gradient_accumulation * max(plan.batch_size // batch, 1)
        keys = {"per_device_train_batch_size": batch, "gradient_accumulation_steps": accumulation}
        if add(keys, base.with_(batch_size=batch, gradient_accumulation=accumulation)).fits or batch == 1:
            break
        out.pop()
        batch //= 2
    cutoff = plan.cutoff_len // 2
    while cutoff >= 128:
        if add({"cutoff_len": cutoff}, base.with_(cutoff_len=cutoff), _clip(data, cutoff)).fits or cutoff // 2 < 128:
            break
        out.pop()
        cutoff //= 2
    if plan.quantization_bit is None and shape_for is not None:
        keys = {"quantization_bit": 4} if plan.method == "lora" else {"finetuning_type": "lora", "quantization_bit": 4}
        q_shape = shape if plan.method == "lora" else shape_for("lora")
        add(keys, base.with_(quantization_bit=4, method="lora"), new_shape=q_shape)
    if plan.device == "cuda" and not plan.offload_optimizer:
        add({"deepspeed": "examples/deepspeed/ds_z3_offload_config.json"},
            base.with_(zero_stage=3, offload_optimizer=True, offload_params=True),
            note="optimizer state and weights in host RAM")
    return out
