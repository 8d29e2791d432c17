"""How big the batches of a run will be, from the tokenized data (no model needed), or from cutoff_len.

The micro-batches are laid out in the order the Trainer will draw them: its sampler is accelerate's
seeded random sampler (torch.randperm seeded with `seed + epoch`), or this project's length-grouped and
token-budget samplers, and under DDP process r takes micro-batches r, r + W, ... So a short run
(`max_steps`) is estimated at the batches it will really see, and a long one at its longest batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

IGNORE = -100
MAX_SIMULATED = 200_000  # micro-batches laid out; beyond this the epochs repeat the same sizes


@dataclass
class DataShape:
    """Per example: tokens (all its sequences), supervised positions, its longest sequence and the sum of its
    sequences' squared lengths (attention FLOPs). `lengths` is None when the data was not read."""

    source: str
    lengths: np.ndarray | None = None
    supervised: np.ndarray | None = None
    longest: np.ndarray | None = None
    squares: np.ndarray | None = None
    sequences: int = 1  # sequences per example: 2 for a chosen/rejected pair
    notes: list[str] = field(default_factory=list)

    @property
    def examples(self) -> int:
        return 0 if self.lengths is None else len(self.lengths)

    @property
    def tokens(self) -> int:
        return 0 if self.lengths is None else int(self.lengths.sum())

    @property
    def supervised_tokens(self) -> int:
        return 0 if self.supervised is None else int(self.supervised.sum())


@dataclass
class Batch:
    tokens: int  # positions computed (padding included for padded batches)
    supervised: int
    after_first_step: bool  # the optimizer state exists by then


def _pairs(dataset) -> list[tuple[str, str]]:
    names = dataset.column_names
    if "chosen_input_ids" in names:
        return [("chosen_input_ids", "chosen_labels"), ("rejected_input_ids", "rejected_labels")]
    pairs = [("input_ids", "labels")]
    return pairs + ([("kl_input_ids", "kl_labels")] if "kl_input_ids" in names else [])


def from_dataset(dataset, source: str = "tokenized data") -> DataShape:
    """Lengths of a tokenized (non-streamed) Dataset, read as Arrow columns."""
    import pyarrow.compute as pc

    pairs = _pairs(dataset)
    parts = {"len": [], "sup": [], "long": [], "sq": []}
    for table in dataset.with_format("arrow").iter(batch_size=10_000):
        lens, sups = [], []
        for ids_col, labels_col in pairs:
            lens.append(pc.list_value_length(table.column(ids_col)).to_numpy(zero_copy_only=False))
            labels = table.column(labels_col)
            aligned = pc.list_value_length(labels).to_numpy(zero_copy_only=False)
            flat = pc.list_flatten(labels).to_numpy(zero_copy_only=False)
            owner = np.repeat(np.arange(len(aligned)), aligned)
            sups.append(np.bincount(owner, weights=(flat != IGNORE), minlength=len(aligned)))
        lens = np.stack(lens).astype(np.int64)
        parts["len"].append(lens.sum(0))
        parts["sup"].append(np.stack(sups).sum(0).astype(np.int64))
        parts["long"].append(lens.max(0))
        parts["sq"].append((lens.astype(np.float64) ** 2).sum(0))
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    return DataShape(source, cat["len"], cat["sup"], cat["long"], cat["sq"], sequences=len(pairs))


def from_cutoff(cutoff_len: int, sequences: int = 1) -> DataShape:
    return DataShape(f"cutoff_len {cutoff_len} (every example assumed full length; the data was not read)",
                     sequences=sequences, notes=[f"cutoff_len={cutoff_len}"])


def epoch_order(n: int, seed: int, epoch: int, plan, lengths) -> list[list[int]]:
    """The global micro-batches of one epoch (all processes), as the Trainer's sampler draws them."""
    import torch

    from ..train.sampler import LengthGroupedSampler, TokenBudgetBatchSampler

    if plan.token_budget:
        sampler = TokenBudgetBatchSampler(lengths.tolist(), plan.token_budget, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)
    if plan.group_by_length:
        sampler = LengthGroupedSampler(lengths.tolist(), plan.batch_size * plan.world_size, seed=seed)
        sampler.set_epoch(epoch)
        order = list(sampler)
    else:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return [order[i:i + plan.batch_size] for i in range(0, n, plan.batch_size)]


def micro_batches(data: DataShape, plan) -> list[Batch]:
    """Process 0's micro-batches in training order (all of them, up to MAX_SIMULATED)."""
    first_step = plan.gradient_accumulation
    if data.lengths is None or data.examples == 0:
        tokens = plan.batch_size * plan.cutoff_len * data.sequences
        return [Batch(tokens, tokens, False), Batch(tokens, tokens, True)]
    n = data.examples
    per_epoch = max(1, math.ceil(n / plan.batch_size / plan.world_size))
    wanted = plan.max_steps * plan.gradient_accumulation if plan.max_steps > 0 else math.ceil(plan.epochs * per_epoch)
    wanted = max(1, min(wanted, MAX_SIMULATED))
    out, epoch = [], 0
    while len(out) < wanted:
        batches = epoch_order(n, plan.seed, epoch, plan, data.lengths)
        for index in batches[0::plan.world_size]:  # this process's share under DDP
            idx = np.asarray(index)
            if plan.padding_free:
                tokens = int(data.lengths[idx].sum())
            else:
                tokens = int(data.longest[idx].max()) * len(idx) * data.sequences
            out.append(Batch(tokens, int(data.supervised[idx].sum()), len(out) >= first_step))
            if len(out) >= wanted:
                break
        epoch += 1
    return out


def read_training_data(args) -> DataShape:
    """Tokenizes the training data as `tuneforge train` will (the result is cached, so the run reuses it)."""
    from ..data.prepare import prepare_datasets
    from ..data.templates import get_template
    from ..models.loader import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    template = get_template(args.data.template, tokenizer, args.data.default_system, args.data.enable_thinking)
    data = prepare_datasets(args.data, args.finetune.stage, tokenizer, template, seed=args.training.seed,
                            num_proc=args.data.preprocessing_num_workers)
    if data.train is None or not hasattr(data.train, "__len__"):
        return from_cutoff(args.data.cutoff_len)
    return from_dataset(data.train)
