"""Trainer callbacks: trainer_log.jsonl with throughput, and the numbers on the progress bar."""

from __future__ import annotations

import json
import math
import os
import time

from transformers import TrainerCallback
from transformers.modeling_layers import GradientCheckpointingLayer

from ..models.adapters import base_model
from .throughput import mfu


class ThroughputLogCallback(TrainerCallback):
    """Adds tokens/s, supervised tokens/s and MFU to every log and appends each log (with the stage's own
    metrics) to trainer_log.jsonl."""

    STANDARD = ("loss", "learning_rate", "grad_norm", "tokens_per_s", "supervised_tokens_per_s", "mfu", "eval_loss")

    def __init__(self, trainer, flop_model, peak_flops: float):
        self.trainer = trainer
        self.flop_model = flop_model
        self.peak_flops = peak_flops
        self.start = self.last_time = None
        self.last = (0, 0, 0, 0)
        self.path = None
        self.total_flops = 0.0  # estimated, all processes, for the end-of-run MFU

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.last_time = time.perf_counter()
        self.last = self.trainer.global_counts()
        if state.is_world_process_zero:
            os.makedirs(args.output_dir, exist_ok=True)
            self.path = os.path.join(args.output_dir, "trainer_log.jsonl")
            if not args.resume_from_checkpoint and os.path.exists(self.path):
                os.remove(self.path)
            elif os.path.exists(self.path):
                _drop_records_after(self.path, state.global_step)

    def _take_counts(self, world: int) -> tuple[int, int, float]:
        """Tokens, supervised tokens and FLOPs since the last call (all processes); adds to total_flops."""
        now = self.trainer.global_counts()
        tokens, sup, fwd_tokens, fwd_sup = (a - b for a, b in zip(now, self.last))
        # Sequence lengths are this process's; the attention FLOPs of the others are taken to be alike.
        t = self.trainer
        flops = self.flop_model.dense(tokens, sup, fwd_tokens, fwd_sup) + world * self.flop_model.attention(
            t.example_lengths, t.forward_example_lengths)
        self.total_flops += flops
        t.example_lengths.clear()
        t.forward_example_lengths.clear()
        self.last = now
        return tokens, sup, flops

    def on_step_end(self, args, state, control, **kwargs):
        # The last step is always logged, so a run shorter than logging_steps (LLaMA-Factory's examples log
        # every 10) still writes its loss to trainer_log.jsonl and the plot.
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            control.should_log = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.start is not None:  # the steps after the last log count towards the end-of-run MFU too
            self._take_counts(max(args.world_size, 1))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or self.start is None:
            return
        now = time.perf_counter()
        world = max(args.world_size, 1)
        if "loss" in logs:
            dt = max(now - self.last_time, 1e-9)
            tokens, sup, flops = self._take_counts(world)
            logs["tokens_per_s"] = round(tokens / dt, 1)
            logs["supervised_tokens_per_s"] = round(sup / dt, 1)
            logs["mfu"] = round(mfu(flops, dt, self.peak_flops * world), 4)
            self.last_time = now
        if not state.is_world_process_zero or self.path is None or not ({"loss", "eval_loss"} & set(logs)):
            return
        elapsed = now - self.start
        done = state.global_step / state.max_steps if state.max_steps else 0
        record = {"step": state.global_step, "total_steps": state.max_steps, "epoch": round(state.epoch or 0, 4)}
        for key in self.STANDARD:
            if key in logs:
                record["lr" if key == "learning_rate" else key] = _plain(logs[key])
        for name in self.trainer.metric_names:  # the stage's metrics: accuracy, rewards/..., and their eval_
            for key in (name, f"eval_{name}"):
                if key in logs:
                    record[key] = _plain(logs[key])
        if "eval_loss" in logs and getattr(self.trainer.objective, "is_cross_entropy", False):
            record["eval_perplexity"] = _perplexity(logs["eval_loss"])
        record["elapsed_s"] = round(elapsed, 2)
        record["eta_s"] = round(elapsed / done - elapsed, 2) if done > 0 else None
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _drop_records_after(path: str, step: int) -> None:
    """A run resumed from checkpoint-`step` logs the later steps again: the records the earlier run wrote
    after that checkpoint go, so the log holds each step once."""
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a killed run
        if isinstance(record, dict) and record.get("step", 0) > step:
            continue
        kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(kept)


def _plain(value):
    return float(value) if hasattr(value, "__float__") else value


def _perplexity(loss: float) -> float:
    try:
        return round(math.exp(loss), 4)
    except OverflowError:
        return float("inf")


class CheckpointingPolicy(TrainerCallback):
    """Once the Trainer has turned gradient checkpointing on (at the start of training), the last
    checkpointed decoder layer keeps its activations: its backward comes right after the LM head, so
    recomputing it would only cost time. It adds at most one layer's activations to the peak (a layer
    being recomputed holds as much), and saved ~5% of a step on the 4-layer benchmark model."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        enabled = getattr(args, "activation_checkpointing", None)  # transformers >= 5.2x; older: gradient_...
        enabled = getattr(args, "gradient_checkpointing", False) if enabled is None else enabled
        if model is None or not enabled:
            return
        base = base_model(model)
        layers = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
        if len(layers) > 1:
            layers[-1].gradient_checkpointing = False
