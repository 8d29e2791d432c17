"""The estimate as a table for people and as one JSON object for programs."""

from __future__ import annotations

from .memory import COMPONENTS
from .timing import ASSUMED_MFU

LABELS = {
    "weights": "weights",
    "adapter_and_master": "adapter / float32 master weights",
    "optimizer": "optimizer state (AdamW)",
    "gradients": "gradients",
    "activations": "activations",
    "lm_head_and_loss": "LM head and loss buffers",
    "heap_slack": "CPU heap slack (glibc malloc)",
    "framework": "framework (process, or CUDA context)",
}


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}" if unit == "GB" else f"{n / scale:.0f} {unit}"
    return f"{int(n)} B"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def keys_text(keys: dict) -> str:
    return ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in keys.items())


def method_text(plan) -> str:
    quant = f" + {plan.quantization_bit}-bit base (QLoRA)" if plan.quantization_bit else ""
    rank = f" rank {plan.lora_rank}" if plan.method == "lora" else ""
    return f"{plan.method}{rank}{quant}"


def sharding_text(plan) -> str:
    if plan.zero_stage:
        offload = [w for w, on in (("optimizer", plan.offload_optimizer), ("params", plan.offload_params)) if on]
        return f"DeepSpeed ZeRO-{plan.zero_stage}" + (f" (offload {', '.join(offload)})" if offload else "")
    if plan.fsdp:
        return "FSDP" + (" (offload)" if plan.offload_params else "")
    return "DDP" if plan.world_size > 1 else "one process"


def text_report(est) -> str:
    plan, shape, data, b, other = est.plan, est.shape, est.data, est.breakdown, est.flipped
    where = "per GPU" if plan.device == "cuda" else "per process"
    lines = [
        f"tuneforge estimate: {shape.name} | stage {plan.stage} | {method_text(plan)} | weights {plan.weight_dtype}, "
        f"compute {plan.compute_dtype} | {plan.world_size} process{'es' if plan.world_size > 1 else ''} "
        f"({sharding_text(plan)}) on {plan.device}",
        f"model: {shape.total_params / 1e6:,.1f}M parameters ({shape.layers} layers, hidden {shape.hidden}, vocabulary "
        f"{shape.vocab:,}), {shape.trainable_params / 1e6:,.2f}M trained",
    ]
    if data.lengths is not None:
        lines.append(f"data: {data.source}: {data.examples:,} examples, {data.tokens:,} tokens per epoch "
                     f"({data.supervised_tokens:,} supervised)")
    else:
        lines.append(f"data: {data.source}")
    lines.append(f"longest batch: {b.batch_tokens:,} tokens ({b.batch_supervised:,} supervised), "
                 f"{'padding-free' if plan.padding_free else 'padded'}, batch {plan.batch_size} x accumulation "
                 f"{plan.gradient_accumulation}")
    gc_now = "on" if plan.gradient_checkpointing else "off"
    gc_other = "off" if plan.gradient_checkpointing else "on"
    head = (f"memory {where}", f"gc {gc_now} (run)", f"gc {gc_other}")
    rows = [head] + [(LABELS[name], size(getattr(b, name)), size(getattr(other, name))) for name in COMPONENTS]
    rows.append(("peak", size(est.peak_bytes), size(max(other.peak, est.load_peak))))
    width = max(len(r[0]) for r in rows) + 2
    lines.append("")
    for i, (label, now, alt) in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("  " + "-" * (width + 24))
        lines.append(f"  {label:<{width}}{now:>12}{alt:>12}")
    decided = "set in the config" if plan.gc_source == "set" else "decided automatically, as train does"
    lines.append(f"  (gradient checkpointing {gc_now}: {decided}; loading peaks at {size(est.load_peak)})")
    if not b.optimizer and est.shape.trainable_params and not plan.offload_optimizer:
        later = 2 * est.shape.trainable_params * (2 if plan.pure_bf16 else 4)
        lines.append(f"  (the peak falls before the first optimizer step; AdamW's state, ~{size(later)}, "
                     "comes after it)")
    if b.host_offload:
        lines.append(f"  offloaded to host RAM: {size(b.host_offload)} per process")
    lines.append("")
    lines += fit_lines(est)
    t = est.time
    per_epoch = duration(t.seconds_per_epoch)
    if not t.peak_flops:
        lines.append("time: not estimated: no peak is known for the planned device; set peak_tflops (e.g. the GPU's "
                     "dense bf16 TFLOP/s)")
        return "\n".join(lines)
    lines.append(f"time: {per_epoch} per epoch, {duration(t.seconds_per_step)} per optimizer step at the longest "
                 f"batch; assumes MFU {ASSUMED_MFU} (what benchmarks/README.md's runs reach) of the measured "
                 f"{t.peak_flops / 1e9:,.0f} GFLOP/s {plan.compute_dtype} peak")
    return "\n".join(lines)


def fit_lines(est) -> list[str]:
    m, plan = est.machine, est.plan
    many = f" for {plan.processes_here} processes" if plan.device == "cpu" and plan.processes_here > 1 else ""
    if est.fits is None:
        return [f"fit: not checked: the run is planned for {plan.device} and this machine has {m.device} "
                "(pass --gpu-memory GB to check against a GPU)"]
    memory_kind = "GPU memory free" if m.device == "cuda" else "RAM available"
    head = (f"this machine: {size(m.available_bytes)} {memory_kind} ({m.name}); the run needs "
            f"{size(est.needed_bytes)}{many}: ")
    if est.fits:
        return [head + "fits"]
    lines = [head + "does NOT fit"]
    good = [s for s in est.suggestions if s.fits]
    if good:
        lines.append("would fit with:")
    else:
        lines.append("no single change found makes it fit; the closest:")
    for s in (good or est.suggestions):
        note = f" ({s.note})" if s.note else ""
        lines.append(f"  {keys_text(s.keys)} -> {size(s.peak_bytes)}{note}")
    return lines


def json_report(est) -> dict:
    plan, b = est.plan, est.breakdown
    return {
        "peak_bytes": int(est.peak_bytes),
        "needed_bytes": int(est.needed_bytes),
        "fits": est.fits,
        "available_bytes": int(est.machine.available_bytes),
        "device": plan.device,
        "machine": est.machine.name,
        "processes": plan.world_size,
        "processes_here": plan.processes_here,
        "sharding": sharding_text(plan),
        "method": method_text(plan),
        "gradient_checkpointing": plan.gradient_checkpointing,
        "gradient_checkpointing_source": plan.gc_source,
        "breakdown": {name: int(getattr(b, name)) for name in COMPONENTS},
        "breakdown_gradient_checkpointing_flipped": {name: int(getattr(est.flipped, name)) for name in COMPONENTS},
        "peak_bytes_gradient_checkpointing_on": int(max((b if plan.gradient_checkpointing else est.flipped).peak,
                                                        est.load_peak)),
        "peak_bytes_gradient_checkpointing_off": int(max((est.flipped if plan.gradient_checkpointing else b).peak,
                                                         est.load_peak)),
        "load_peak_bytes": int(est.load_peak),
        "host_offload_bytes": int(b.host_offload),
        "longest_batch": {"tokens": b.batch_tokens, "supervised": b.batch_supervised},
        "data": {"source": est.data.source, "examples": est.data.examples, "tokens": est.data.tokens,
                 "supervised_tokens": est.data.supervised_tokens},
        "model": {"name": est.shape.name, "parameters": est.shape.total_params,
                  "trainable_parameters": est.shape.trainable_params, "layers": est.shape.layers,
                  "hidden_size": est.shape.hidden, "vocab_size": est.shape.vocab},
        "time": {"seconds_per_epoch": est.time.seconds_per_epoch, "seconds_per_step": est.time.seconds_per_step,
                 "flops_per_epoch": est.time.flops_per_epoch, "peak_flops": est.time.peak_flops,
                 "mfu_assumed": est.time.mfu},
        "framework": est.framework_note,
        "suggestions": [{"keys": s.keys, "peak_bytes": int(s.peak_bytes), "fits": s.fits, "note": s.note}
                        for s in est.suggestions],
    }
