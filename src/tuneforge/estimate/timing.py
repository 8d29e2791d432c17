"""Expected time per epoch: the run's FLOPs, counted as the throughput meter counts them (train/throughput.py),
over the measured GEMM peak times the MFU this project reaches.

MFU 0.33 is what benchmarks/README.md's LoRA runs reach on the 2-core CPU: the tiny benchmark model at 843
tokens/s and SmolLM2-135M at 79.6 tokens/s come to ~43 GFLOP/s each against a 131 GFLOP/s peak (gradient
checkpointing off; with it on, the recomputed forward is counted as work, which keeps the same MFU).
"""

from __future__ import annotations

from dataclasses import dataclass

ASSUMED_MFU = 0.33


@dataclass
class TimeEstimate:
    seconds_per_epoch: float | None  # None when the data was not read
    seconds_per_step: float | None  # one optimizer step at the longest batch; None without a peak
    flops_per_epoch: float | None
    peak_flops: float
    mfu: float = ASSUMED_MFU


def flops_per_token(shape, plan) -> tuple[float, float]:
    """(FLOPs per trained token, per supervised position) including the recomputed forward of gradient
    checkpointing (2N per token for every checkpointed layer)."""
    from ..train.throughput import dense_flops_per_token, head_flops_per_supervised_token

    body = shape.body_params
    trainable_body = shape.trainable_params if plan.method != "full" else body
    per_token = dense_flops_per_token(body, min(trainable_body, body), plan.method == "full")
    if plan.gradient_checkpointing and shape.layers > 1:
        per_token += 2.0 * body * (shape.trained_layers - 1) / shape.layers
    return per_token, head_flops_per_supervised_token(shape.vocab, shape.hidden, shape.trains_head)


def attention_flops(shape, squares: float, plan) -> float:
    passes = 4 if plan.gradient_checkpointing else 3
    return 2.0 * passes * shape.layers * shape.hidden * squares


def estimate_time(shape, plan, data, longest_batch, peak: float) -> TimeEstimate:
    per_token, per_sup = flops_per_token(shape, plan)
    rate = peak * ASSUMED_MFU * max(plan.world_size, 1)
    step_flops = (longest_batch.tokens * per_token + longest_batch.supervised * per_sup) * plan.gradient_accumulation
    step_flops *= max(plan.world_size, 1)
    epoch_flops = None
    if data.lengths is not None:
        epoch_flops = data.tokens * per_token + data.supervised_tokens * per_sup
        epoch_flops += attention_flops(shape, float(data.squares.sum()), plan)
    return TimeEstimate(
        seconds_per_epoch=epoch_flops / rate if epoch_flops is not None and rate else None,
        seconds_per_step=step_flops / rate if rate else None,
        flops_per_epoch=epoch_flops, peak_flops=peak,
    )
