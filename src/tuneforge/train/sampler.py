"""group_by_length: batches of similar length (less padding) in a shuffled order."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler):
    """Shuffles, then sorts by length inside groups of `group_batches` batches, so each batch holds
    examples of similar length while the order across groups stays random (reseeded per epoch)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 42, group_batches: int = 50):
        self.lengths, self.batch_size, self.seed, self.group = lengths, batch_size, seed, group_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.batch_size * self.group
        out = []
        for start in range(0, len(order), size):
            chunk = sorted(order[start : start + size], key=lambda i: -self.lengths[i])
            out.extend(chunk)
        return iter(out)


class TokenBudgetBatchSampler:
    """Batches of shuffled examples holding at most `budget` real tokens each (an example longer than the
    budget gets a batch of its own), so a batch's cost, not its example count, is fixed."""

    def __init__(self, lengths: list[int], budget: int, seed: int = 42):
        self.lengths, self.budget, self.seed = lengths, budget, seed
        self._batches = self._make(0)

    def set_epoch(self, epoch: int) -> None:
        self._batches = self._make(epoch)

    def _make(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        batches, current, used = [], [], 0
        for i in torch.randperm(len(self.lengths), generator=g).tolist():
            n = self.lengths[i]
            if current and used + n > self.budget:
                batches.append(current)
                current, used = [], 0
            current.append(i)
            used += n
        if current:
            batches.append(current)
        return batches

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self):
        return iter(self._batches)
