"""Examples to batches.

Both collators emit `shift_labels`: the label of position t is the token at t+1 of the same example, and
-100 at each example's last position, so no prediction ever crosses into the next example. The Trainer
counts `shift_labels` as they are for its accumulation-wide token count.

PaddingFreeCollator concatenates the whole batch into one row: `position_ids` restart at 0 for every
example and there is no attention_mask, which transformers reads as packed sequences (attention stays
inside each example). PaddedCollator is the classic right-padded batch with an attention mask.
An example may carry `segments` (lengths of the documents packed into it by `neat_packing`); each segment
is treated as an example of its own.
"""

from __future__ import annotations

import torch

IGNORE = -100


def _shifted(labels: list[int]) -> list[int]:
    return list(labels[1:]) + [IGNORE]


def _pieces(example: dict) -> list[tuple[list[int], list[int]]]:
    ids, labels = example["input_ids"], example["labels"]
    segments = example.get("segments") or [len(ids)]
    out, start = [], 0
    for n in segments:
        out.append((ids[start : start + n], labels[start : start + n]))
        start += n
    return out


class PaddingFreeCollator:
    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        ids, pos, targets = [], [], []
        for example in examples:
            for piece_ids, piece_labels in _pieces(example):
                ids += piece_ids
                pos += range(len(piece_ids))
                targets += _shifted(piece_labels)
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "position_ids": torch.tensor([pos], dtype=torch.long),
            "shift_labels": torch.tensor([targets], dtype=torch.long),
        }


class PaddedCollator:
    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        for e in examples:
            if e.get("segments") and len(e["segments"]) > 1:
                raise ValueError("packed examples with segments need the padding-free collator")
        longest = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        ids, mask, targets = [], [], []
        for e in examples:
            pad = longest - len(e["input_ids"])
            ids.append(list(e["input_ids"]) + [self.pad_token_id] * pad)
            mask.append([1] * len(e["input_ids"]) + [0] * pad)
            targets.append(_shifted(e["labels"]) + [IGNORE] * pad)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
            "shift_labels": torch.tensor(targets, dtype=torch.long),
        }


def pack_examples(dataset, cutoff_len: int, neat: bool, seed: int = 42):
    """Greedy first-fit packing of examples into rows of at most cutoff_len tokens (longest first). With
    `neat`, a row remembers its examples' lengths in `segments` so attention never crosses them; without,
    the row is one sequence (LLaMA-Factory's plain `packing`)."""
    from datasets import Dataset

    lengths = [len(x) for x in dataset["input_ids"]]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = min(lengths[i], cutoff_len)
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(cutoff_len - n)
    rows = {"input_ids": [], "labels": [], "segments": []}
    all_ids, all_labels = dataset["input_ids"], dataset["labels"]
    for b in bins:
        rows["input_ids"].append([t for i in b for t in all_ids[i][:cutoff_len]])
        rows["labels"].append([t for i in b for t in all_labels[i][:cutoff_len]])
        seg = [min(lengths[i], cutoff_len) for i in b]
        rows["segments"].append(seg if neat else [sum(seg)])
    return Dataset.from_dict(rows).shuffle(seed=seed)
