"""The bytes a training process holds at its peak, counted from the model's shape and the batch's size.

Every count is per process (per device under DDP / ZeRO / FSDP) and in the units the run uses:

- weights: the parameters in their loaded dtype; 4-bit NF4 weights take half a byte per element plus one
  absmax per 64 (a byte with double quantisation, else four), 8-bit one byte plus a float scale per row, and
  the unquantised rest (embeddings, norms) is copied in the loaded dtype. A checkpoint stored in the loaded
  dtype is memory-mapped; after a quantising load its pages stay mapped and resident (measured: the 538 MB
  SmolLM2 file stays in RSS next to the 4-bit weights and a copy of the embeddings), so it counts whole.
- adapter / master weights: LoRA adapters (float32, as peft keeps them), or float32 copies of the trained
  parameters of a bf16/fp16 model (freeze, full), as models/freezing.py makes them.
- optimizer: AdamW's two float32 moments per trained parameter (the Trainer's default), from the first
  optimizer step on; ZeRO-1/2/3 and FSDP split them across processes; offload moves them to host RAM.
- gradients: one per trained parameter, alive from the backward pass to the optimizer step.
- activations: what autograd keeps for the backward pass, per token and decoder layer (counted on the
  saved tensors of a Llama layer with this project's per-example attention, and equal to what
  `torch.autograd.graph.saved_tensors_hooks` reports to 1%): both norms' inputs and outputs, q, k, v, the
  attention output and o_proj's input, and the MLP's gate, up, activation and product (2 tensors for an
  ungated MLP), plus each norm's normalised input where the norm's weight trains and rank-sized LoRA
  intermediates. Only layers above the lowest trained one keep anything. Gradient checkpointing keeps each
  layer's input instead, except the last layer (train/callbacks.py), and recomputes one layer at a time; it
  also makes frozen bottom layers part of the graph (see graph_layers). The backward pass holds one more
  layer's worth (its gradients) at a time.
- LM head / loss: train/loss.py projects `loss_chunk_size` supervised positions at a time into a float32
  chunk of logits (kept from step to step on the CPU), and keeps the hidden-state gradient of the supervised
  positions (and the head's weight gradient when the head trains).
- CPU heap slack: glibc's malloc grows its heap for tensors under its mmap threshold (which rises to 32 MB)
  and does not hand freed holes back, and posix_memalign cannot reuse a hole of the same size, so a pass that
  keeps tensors for the backward leaves part of what it allocated and freed resident. Measured with
  mallinfo2 after the forward pass of SmolLM2-135M LoRA steps (1,152 tokens): 26% (without gradient
  checkpointing) and 20% (with) of the bytes the forward allocated in those layers were free but resident;
  the estimate uses 23% of the forward's allocations (counted per token and layer like the activations), and
  of the weights a 4/8-bit model dequantises in each pass.
  Not counted on a GPU (its caching allocator reuses blocks) or with MALLOC_MMAP_THRESHOLD_ set (which
  fixes the threshold, so large tensors are returned to the system when freed).
- framework: the resident size of a process that imported torch, transformers, peft, datasets and
  accelerate and ran one small training step, measured once on this machine (machine.py), plus the
  tokenizer (12x its tokenizer.json, measured on SmolLM2's) and 70 MB for the Trainer, the data pipeline
  and the final save (the tiny test model's runs peak at 561-575 MB against a 499 MB baseline).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

HEAP_SLACK = 0.23  # share of a forward pass's allocations glibc leaves resident (see above)
MMAP_CEILING = 32 * 2**20  # glibc's largest dynamic mmap threshold on 64-bit: larger tensors are returned
TOKENIZER_FACTOR = 12  # resident bytes per byte of tokenizer.json (SmolLM2: 3.5 MB file, +43 MB RSS)
PIPELINE_BYTES = 70 * 2**20  # Trainer, accelerate, dataset tables, saving: measured on the tiny model
CUDA_CONTEXT_BYTES = 600 * 2**20  # CUDA context and kernels on a GPU (not measured here: no GPU)
COMPONENTS = ("weights", "adapter_and_master", "optimizer", "gradients", "activations", "lm_head_and_loss",
              "heap_slack", "framework")


@dataclass
class Breakdown:
    weights: int = 0
    adapter_and_master: int = 0
    optimizer: int = 0
    gradients: int = 0
    activations: int = 0
    lm_head_and_loss: int = 0
    heap_slack: int = 0
    framework: int = 0
    host_offload: int = 0  # moved to host RAM by ZeRO/FSDP offload (not in peak on a GPU)
    batch_tokens: int = 0
    batch_supervised: int = 0

    @property
    def peak(self) -> int:
        return sum(getattr(self, name) for name in COMPONENTS)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["peak"] = self.peak
        return out


def layer_saved(shape, plan) -> float:
    """Elements autograd keeps per token in one decoder layer (see the module docstring)."""
    h, q, kv, i = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    n = 4 * h + 3 * q + 2 * kv + (4 * i if shape.gated_mlp else 2 * i)
    if shape.trains_norms:
        n += 2 * h
    if plan.method == "lora":
        n += plan.lora_rank * shape.linear_count / max(shape.layers, 1)  # rank-sized intermediates
    return n


def layer_allocated(shape, plan) -> tuple[float, float, float, float]:
    """Elements one decoder layer's forward allocates per token (kept or not), as (h, q, kv, i) coefficients:
    2 norms x 3 tensors, 2 residual adds, rotary embedding 4.5 x (q + kv), attention 3q, each linear's output
    (x4 under LoRA: base, B, scaled, sum) and the MLP's activation and product."""
    lora = 4 if plan.method == "lora" else 1
    gated = shape.gated_mlp
    coef_h = 8 + lora * 2
    coef_q = 4.5 + 3 + lora
    coef_kv = 4.5 + lora * 2
    coef_i = lora * (2 if gated else 1) + (2 if gated else 1)
    return coef_h, coef_q, coef_kv, coef_i


def weight_bytes(shape, plan) -> tuple[int, int]:
    """(device bytes of the base weights, bytes of the checkpoint file kept mapped besides them)."""
    wb = plan.weight_bytes
    if plan.quantization_bit is None:
        return shape.total_params * wb, 0
    n = shape.linear_params
    if plan.quantization_bit == 4:
        absmax = n / 64 * (1 + 4 / 256) if plan.double_quantization else n / 64 * 4
        quantised = n / 2 + absmax
    else:
        quantised = n + 4 * n / max(shape.hidden, 1)
    rest = (shape.total_params - n) * wb
    same_dtype = shape.file_dtype is not None and shape.file_dtype.lower() in _FILE_NAMES.get(plan.weight_dtype, ())
    if same_dtype and plan.device == "cpu":
        return int(quantised + rest), shape.file_bytes  # every page was read to quantise, and stays mapped
    return int(quantised + rest), 0


_FILE_NAMES = {"float32": ("f32",), "bfloat16": ("bf16",), "float16": ("f16",)}


def state_bytes(shape, plan) -> dict:
    """Weights, adapters / master copies, optimizer moments and gradients per process (device), and what
    offload moves to the host."""
    base, mapped_file = weight_bytes(shape, plan)
    trainable = shape.trainable_params
    adapter = 0
    if plan.method == "lora":
        adapter = trainable * 4
    elif plan.weight_bytes < 4 and not plan.pure_bf16:
        adapter = trainable * (4 - plan.weight_bytes)  # float32 masters replace the 16-bit trained weights
    param_bytes = 2 if plan.pure_bf16 else 4
    optimizer = 2 * trainable * param_bytes
    grads = trainable * param_bytes
    w = plan.world_size
    host = 0
    if plan.zero_stage >= 1 or plan.fsdp:
        if plan.compute_dtype != "float32" and plan.zero_stage:
            optimizer += trainable * 4  # DeepSpeed keeps float32 masters beside the 16-bit weights
        optimizer //= w
    if plan.zero_stage >= 2 or plan.fsdp:
        grads //= w
    if plan.sharded:
        working = 2 * shape.layer_params * plan.weight_bytes  # one layer gathered, the next prefetched
        base = base // w + working
        adapter //= w
    if plan.offload_optimizer:
        host += optimizer
        optimizer = 0
    if plan.offload_params and plan.sharded:
        host += base - working
        base = working
    ddp_buckets = trainable * 4 if w > 1 and not (plan.zero_stage or plan.fsdp) else 0
    return {"weights": base + mapped_file, "adapter": adapter, "optimizer": optimizer, "gradients": grads + ddp_buckets,
            "host": host}


def graph_layers(shape, plan) -> int:
    """Decoder layers that keep anything for the backward pass: those from the lowest trained one up, or all
    of them under gradient checkpointing (transformers then makes the embeddings' output require a gradient,
    so even frozen bottom layers are checkpointed and back-propagated through)."""
    return shape.layers if plan.gradient_checkpointing and shape.trained_layers else shape.trained_layers


def activation_bytes(shape, plan, tokens: int) -> tuple[int, int]:
    """(kept for the backward pass at the forward's end, one layer's worth held by the backward pass)."""
    a = plan.act_bytes
    layer = layer_saved(shape, plan) * tokens * a
    layers = graph_layers(shape, plan)
    if layers == 0:
        return 0, 0
    if plan.gradient_checkpointing:
        kept = (layers - 1) * tokens * shape.hidden * a + layer
    else:
        kept = layers * layer
    final_norm = tokens * shape.hidden * a * (2 if shape.trains_norms else 1)
    return int(kept + final_norm), int(layer)


def head_bytes(shape, plan, supervised: int, workspace_rows: int) -> tuple[int, int]:
    """(kept between steps, alive during the loss) bytes of the loss's buffers: the chunk of float32 logits
    (on the CPU in float32 a buffer kept from step to step, sized by the largest chunk so far; else one
    chunk at a time; the whole supervised logits where the head cannot be fused or where the model computes
    them itself under ZeRO-3/FSDP), the supervised hidden states and their gradient, and the head's weight
    gradient when it trains."""
    a, v, h = plan.act_bytes, shape.vocab, shape.hidden
    kept = 0
    if not plan.lm_head:
        return 0, 2 * supervised * h * a
    if plan.sharded or shape.softcap:
        logits = supervised * v * (a + 8)
    else:
        rows = min(plan.loss_chunk_size, supervised)
        logits = rows * v * 4 + (rows * v * a if a != 4 else 0)
        if plan.device == "cpu" and a == 4:
            kept, logits = max(rows, workspace_rows) * v * 4, 0  # loss.LogitsWorkspace
    hidden = 2 * supervised * h * a
    head_grad = v * h * (4 + a) if shape.trains_head else 0
    return int(kept), int(logits + hidden + head_grad)


def heap_slack(shape, plan, tokens: int) -> int:
    if plan.device != "cpu" or os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return 0
    a = plan.act_bytes
    dims = (shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate)
    per_token = sum(c * d for c, d in zip(layer_allocated(shape, plan), dims) if tokens * d * a <= MMAP_CEILING)
    per_layer = per_token * tokens * a
    if plan.quantization_bit and shape.largest_linear * a <= MMAP_CEILING:
        # 4/8-bit weights are dequantised for every product: in the forward, in the backward (for the input's
        # gradient) and in the recomputed forward of gradient checkpointing
        passes = 3 if plan.gradient_checkpointing else 2
        per_layer += passes * shape.linear_params / max(shape.layers, 1) * a
    return int(HEAP_SLACK * per_layer * graph_layers(shape, plan))


def framework_bytes(baseline: int, tokenizer_file_bytes: int, device: str) -> int:
    """The process's fixed cost on the CPU; on a GPU, what the device holds besides the run (its context)."""
    if device == "cuda":
        return CUDA_CONTEXT_BYTES
    return baseline + TOKENIZER_FACTOR * tokenizer_file_bytes + PIPELINE_BYTES


def step_breakdown(shape, plan, batch, workspace_rows: int, framework: int) -> Breakdown:
    """The peak of one micro-batch: the forward's end (activations and loss buffers) or the backward's end
    (all gradients and one layer), over the weights and, after the first step, the optimizer state."""
    states = state_bytes(shape, plan)
    kept, one_layer = activation_bytes(shape, plan, batch.tokens)
    head_kept, head = head_bytes(shape, plan, batch.supervised, workspace_rows)
    if plan.quantization_bit:
        one_layer += shape.largest_linear * plan.act_bytes  # a 4/8-bit weight is dequantised to multiply
    forward_end = kept + one_layer + head
    backward_end = states["gradients"] + one_layer
    b = Breakdown(
        weights=states["weights"], adapter_and_master=states["adapter"],
        optimizer=states["optimizer"] if batch.after_first_step else 0, framework=framework,
        heap_slack=heap_slack(shape, plan, batch.tokens), host_offload=states["host"],
        batch_tokens=batch.tokens, batch_supervised=batch.supervised,
    )
    if forward_end >= backward_end:
        b.activations, b.lm_head_and_loss = kept + one_layer, head_kept + head
    else:
        b.gradients, b.activations, b.lm_head_and_loss = states["gradients"], one_layer, head_kept
    return b


def peak_breakdown(shape, plan, batches, framework: int) -> Breakdown:
    """The micro-batch whose step peaks highest, and that peak's breakdown."""
    best, rows, seen = None, 0, set()
    for batch in batches:
        rows = max(rows, min(plan.loss_chunk_size, batch.supervised))
        key = (batch.tokens, batch.supervised, batch.after_first_step, rows)
        if key in seen:
            continue
        seen.add(key)
        b = step_breakdown(shape, plan, batch, rows, framework)
        if best is None or b.peak > best.peak:
            best = b
    return best
