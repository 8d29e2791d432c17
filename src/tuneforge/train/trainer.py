"""transformers.Trainer with this project's loss: supervised positions only, chunked LM head, normalised by
the supervised-token count of the whole accumulated batch (so batch x accumulation does not change it)."""

from __future__ import annotations

import math

import torch
from transformers import Trainer

from ..errors import TuneforgeError
from ..models.varlen_attention import example_bounds
from .loss import linear_cross_entropy

_NO_LOGITS = torch.tensor([], dtype=torch.long)


class NonFiniteLossError(TuneforgeError):
    pass


def output_head(model):
    while hasattr(model, "module"):  # DDP / accelerate wrappers
        model = model.module
    return model.get_output_embeddings(), model.config


def supervised_hidden(model, inputs: dict):
    """Runs the model without its LM head; returns (hidden states at supervised positions, their targets)."""
    inputs = dict(inputs)
    targets = inputs.pop("shift_labels")
    out = model(**inputs, output_hidden_states=True, logits_to_keep=_NO_LOGITS, use_cache=False)
    mask = targets != -100
    return out.hidden_states[-1][mask], targets[mask]


def supervised_loss_sum(model, inputs: dict, chunk_size: int) -> tuple[torch.Tensor, int]:
    hidden, targets = supervised_hidden(model, inputs)
    head, config = output_head(model)
    softcap = getattr(config, "final_logit_softcapping", None)
    if isinstance(head, torch.nn.Linear) and head.bias is None and not softcap:
        return linear_cross_entropy(hidden, head.weight, targets, chunk_size), targets.numel()
    logits = head(hidden).float()  # odd heads (bias, softcap, adapters on the head): the plain way
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum"), targets.numel()


def supervised_loss_sum_sharded(model, inputs: dict) -> tuple[torch.Tensor, int]:
    """For DeepSpeed ZeRO-3 and FSDP, where the LM head's weight is only whole inside the model's own
    forward: the model computes logits itself, at the supervised positions only (`logits_to_keep` as a
    tensor of positions; for a padded batch, the union of its rows' positions)."""
    inputs = dict(inputs)
    targets = inputs.pop("shift_labels")
    positions = (targets != -100).any(dim=0).nonzero().flatten()
    logits = model(**inputs, logits_to_keep=positions, use_cache=False).logits.float()
    picked = targets[:, positions]
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), picked.flatten(), ignore_index=-100, reduction="sum")
    return loss, int((picked != -100).sum())


class TuneforgeTrainer(Trainer):
    def __init__(self, *args, loss_chunk_size: int = 1024, length_sampler=None, batch_sampler=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_chunk_size = loss_chunk_size
        self.length_sampler = length_sampler
        self.batch_sampler = batch_sampler  # token-budget batches replace the fixed batch size
        self.loss_is_scaled_for_ga = True
        self.tokens_seen = 0  # real (non-padding) input tokens on this process
        self.supervised_seen = 0
        self.example_lengths: list[int] = []  # since the last log, for attention FLOPs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            loss_sum, n_sup = supervised_loss_sum_sharded(model, inputs)
        else:
            loss_sum, n_sup = supervised_loss_sum(model, inputs, self.loss_chunk_size)
        if model.training:
            self._count(inputs, n_sup)
        denom = num_items_in_batch if num_items_in_batch is not None else max(n_sup, 1)
        loss = loss_sum / denom
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
        """Supervised targets in the whole accumulated batch (all processes when averaging across them), the
        denominator that makes batch x accumulation not matter. Counted here because the Trainer only
        counts batches that carry `labels`."""
        if not batch_samples or "shift_labels" not in batch_samples[0]:
            return None
        count = sum(b["shift_labels"].ne(-100).sum() for b in batch_samples).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def _count(self, inputs, n_sup: int):
        if "attention_mask" in inputs:
            lengths = inputs["attention_mask"].sum(dim=1).tolist()
        else:
            bounds = example_bounds(inputs["position_ids"])
            lengths = [b - a for a, b in zip(bounds, bounds[1:])]
        self.tokens_seen += int(sum(lengths))
        self.supervised_seen += int(n_sup)
        self.example_lengths.extend(int(n) for n in lengths)

    def global_counts(self) -> tuple[int, int]:
        """(real tokens, supervised tokens) seen by all processes; a collective call under DDP."""
        counts = torch.tensor([self.tokens_seen, self.supervised_seen], dtype=torch.long, device=self.args.device)
        if self.args.world_size > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        return int(counts[0]), int(counts[1])

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
