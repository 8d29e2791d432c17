"""transformers.Trainer with the stage's objective passed in.

An objective computes, for one micro-batch, the *sum* of its per-item losses (items: supervised tokens
for sft/pt, pairs for rm/dpo, examples for kto), how many items it holds, and metrics to log. The Trainer
divides by the item count of the whole accumulated batch, so batch x accumulation does not change the
loss, and averages the metrics over each logging window (across processes too). It also counts the real
tokens each step trains on (and the tokens only run forward, such as a reference model's) for the
throughput meter, and batches by length or token budget when asked.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from transformers import Trainer

from ..errors import TuneforgeError
from .forward import fused_head_weight, final_hidden, head_logits, model_inputs, sequence_lengths, sharded_logits
from .loss import LogitsWorkspace, linear_cross_entropy
from ..labels import IGNORE


class NonFiniteLossError(TuneforgeError):
    pass


@dataclass
class LossOutput:
    """What an objective returns for one micro-batch.

    total: sum of the per-item losses (a scalar tensor with a graph in training).
    items: how many items it sums over.
    lengths: real token count of every sequence trained on (for tokens/s and attention FLOPs).
    supervised: positions where the LM head ran with a gradient.
    forward_lengths / forward_supervised: the same for passes run without a gradient (reference model, KL).
    metrics: name -> (sum, count), averaged per logging window.
    """

    total: torch.Tensor
    items: int
    lengths: list[int]
    supervised: int = 0
    forward_lengths: list[int] = field(default_factory=list)
    forward_supervised: int = 0
    metrics: dict[str, tuple[float, int]] = field(default_factory=dict)


def supervised_hidden(model, inputs: dict):
    """Runs the model without its LM head; returns (hidden states at supervised positions, their targets)."""
    inputs = dict(inputs)
    targets = inputs.pop("shift_labels")
    mask = targets != IGNORE
    return final_hidden(model, inputs)[mask], targets[mask]


def supervised_loss_sum(model, inputs: dict, chunk_size: int, workspace=None) -> tuple[torch.Tensor, int]:
    hidden, targets = supervised_hidden(model, inputs)
    weight = fused_head_weight(model)
    if weight is not None:
        return linear_cross_entropy(hidden, weight, targets, chunk_size, workspace), targets.numel()
    loss = torch.nn.functional.cross_entropy(head_logits(model, hidden), targets, reduction="sum")
    return loss, targets.numel()


def supervised_loss_sum_sharded(model, inputs: dict) -> tuple[torch.Tensor, int]:
    """For DeepSpeed ZeRO-3 and FSDP: the model computes the logits itself, at the supervised positions."""
    inputs = dict(inputs)
    logits, picked, _ = sharded_logits(model, inputs, inputs.pop("shift_labels"))
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), picked.flatten(), ignore_index=IGNORE, reduction="sum")
    return loss, int((picked != IGNORE).sum())


class SupervisedObjective:
    """pt/sft: next-token cross-entropy summed over supervised tokens."""

    is_cross_entropy = True  # so exp(eval_loss) is a perplexity

    def __init__(self, chunk_size: int = 1024):
        self.chunk_size = chunk_size
        self.sharded = False  # set by the Trainer
        self.workspace = LogitsWorkspace()

    def count_items(self, batch: dict) -> torch.Tensor:
        return batch["shift_labels"].ne(IGNORE).sum()

    def __call__(self, model, inputs: dict) -> LossOutput:
        batch = {**model_inputs(inputs), "shift_labels": inputs["shift_labels"]}
        if self.sharded:
            total, n = supervised_loss_sum_sharded(model, batch)
        else:
            total, n = supervised_loss_sum(model, batch, self.chunk_size, self.workspace)
        return LossOutput(total, n, sequence_lengths(inputs), supervised=n)


class WindowMetrics:
    """Sums and counts of an objective's metrics since they were last read, kept apart for train and eval."""

    def __init__(self):
        self.sums = {"train": defaultdict(float), "eval": defaultdict(float)}
        self.counts = {"train": defaultdict(int), "eval": defaultdict(int)}

    def add(self, mode: str, metrics: dict[str, tuple[float, int]]) -> None:
        for name, (total, count) in metrics.items():
            self.sums[mode][name] += float(total)
            self.counts[mode][name] += int(count)

    def take(self, mode: str, reduce=None) -> dict[str, float]:
        """Averages since the last take (summed over processes by `reduce`), and starts a new window."""
        names = sorted(self.sums[mode])
        sums, counts = self.sums[mode], self.counts[mode]
        self.sums[mode], self.counts[mode] = defaultdict(float), defaultdict(int)
        if reduce is not None:
            values = reduce([sums[n] for n in names] + [counts[n] for n in names])
            sums = dict(zip(names, values[: len(names)]))
            counts = dict(zip(names, values[len(names):]))
        return {n: round(sums[n] / counts[n], 6) for n in names if counts[n]}


class TuneforgeTrainer(Trainer):
    def __init__(self, *args, objective, length_sampler=None, batch_sampler=None, metric_names=(),
                 generation_eval=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = objective
        # model -> metrics of answers generated for the eval prompts (predict_with_generate), or None
        self.generation_eval = generation_eval
        # Under DeepSpeed or FSDP the LM head is whole only inside the model's forward (see *_sharded).
        objective.sharded = self.is_deepspeed_enabled or self.is_fsdp_enabled
        self.length_sampler = length_sampler
        self.batch_sampler = batch_sampler  # token-budget batches replace the fixed batch size
        self.metric_names = tuple(metric_names)  # the objective's metrics, for trainer_log.jsonl
        self.loss_is_scaled_for_ga = True
        self.tokens_seen = 0  # real (non-padding) input tokens trained on, this process
        self.supervised_seen = 0
        self.forward_tokens_seen = 0  # tokens run forward without a gradient (reference, KL)
        self.forward_supervised_seen = 0
        self.example_lengths: list[int] = []  # since the last log, for attention FLOPs
        self.forward_example_lengths: list[int] = []
        self.window = WindowMetrics()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = self.objective(model, inputs)
        if model.training:
            self._count(out)
        self.window.add("train" if model.training else "eval", out.metrics)
        denom = num_items_in_batch if num_items_in_batch is not None else max(out.items, 1)
        loss = out.total / denom
        if num_items_in_batch is not None and self.args.average_tokens_across_devices and self.args.world_size > 1:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        if not math.isfinite(loss.item()):
            raise NonFiniteLossError(
                f"the training loss became {loss.item()} at step {self.state.global_step + 1}; training stopped "
                f"and the last saved checkpoint in {self.args.output_dir} was kept; lower learning_rate, or use "
                "float32 (bf16=false, fp16=false)"
            )
        return (loss, {"loss": loss}) if return_outputs else loss

    def _get_num_items_in_batch(self, batch_samples: list, device):
        """Items (supervised tokens, pairs or examples) in the whole accumulated batch (all processes when
        averaging across them): the denominator that makes batch x accumulation not matter."""
        if not batch_samples or "shift_labels" not in batch_samples[0]:
            return None
        count = sum(torch.as_tensor(self.objective.count_items(b)) for b in batch_samples).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def _count(self, out: LossOutput) -> None:
        self.tokens_seen += int(sum(out.lengths))
        self.supervised_seen += int(out.supervised)
        self.example_lengths.extend(out.lengths)
        self.forward_tokens_seen += int(sum(out.forward_lengths))
        self.forward_supervised_seen += int(out.forward_supervised)
        self.forward_example_lengths.extend(out.forward_lengths)

    def _sum_over_processes(self, values: list[float]) -> list[float]:
        if self.args.world_size <= 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.args.device)
        return self.accelerator.reduce(t, reduction="sum").tolist()

    def global_counts(self) -> tuple[int, int, int, int]:
        """(tokens trained on, supervised tokens, tokens run forward only, their supervised positions), all
        processes; a collective call under DDP."""
        values = [self.tokens_seen, self.supervised_seen, self.forward_tokens_seen, self.forward_supervised_seen]
        return tuple(int(v) for v in self._sum_over_processes([float(v) for v in values]))

    def log(self, logs: dict, start_time=None) -> None:
        """Adds the objective's metrics, averaged over the window since the last log: to a training log
        (it has "loss") as they are, to an evaluation's with the eval_ prefix."""
        if "loss" in logs:
            logs.update(self.window.take("train", self._sum_over_processes))
        elif "eval_loss" in logs:
            logs.update({f"eval_{k}": v for k, v in self.window.take("eval", self._sum_over_processes).items()})
        super().log(logs, start_time)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """The loss over the eval data, plus the scores of generated answers when predict_with_generate."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.generation_eval is not None:
            scores = self.generation_eval(self.model)
            output.metrics.update({f"{metric_key_prefix}_{name}": value for name, value in scores.items()})
        return output

    def get_train_dataloader(self):
        if self.batch_sampler is None:
            return super().get_train_dataloader()
        from torch.utils.data import DataLoader

        loader = DataLoader(self.train_dataset, batch_sampler=self.batch_sampler, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        return self.accelerator.prepare(loader)

    def _get_train_sampler(self, *args, **kwargs):
        if self.length_sampler is not None:
            return self.length_sampler
        return super()._get_train_sampler(*args, **kwargs)
