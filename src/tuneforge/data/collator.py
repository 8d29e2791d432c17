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
from tuneforge.labels import IGNORE


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


def pack_sequences(sequences: list[tuple[list[int], list[int]]], padding_free: bool, pad_token_id: int,
                   prefix: str = "") -> dict[str, torch.Tensor]:
    """Several (input_ids, labels) sequences as one batch for the preference stages: padding-free (one row,
    position_ids restarting per sequence) or right-padded with an attention mask, plus `sequence_index`,
    the number of the sequence each position belongs to, so per-sequence sums need no Python loop."""
    if padding_free:
        ids, pos, targets, index = [], [], [], []
        for i, (seq_ids, seq_labels) in enumerate(sequences):
            ids += seq_ids
            pos += range(len(seq_ids))
            targets += _shifted(seq_labels)
            index += [i] * len(seq_ids)
        out = {"input_ids": [ids], "position_ids": [pos], "shift_labels": [targets], "sequence_index": [index]}
    else:
        longest = max(len(seq_ids) for seq_ids, _ in sequences)
        out = {"input_ids": [], "attention_mask": [], "shift_labels": [], "sequence_index": []}
        for i, (seq_ids, seq_labels) in enumerate(sequences):
            pad = longest - len(seq_ids)
            out["input_ids"].append(list(seq_ids) + [pad_token_id] * pad)
            out["attention_mask"].append([1] * len(seq_ids) + [0] * pad)
            out["shift_labels"].append(_shifted(seq_labels) + [IGNORE] * pad)
            out["sequence_index"].append([i] * longest)
    return {prefix + k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


def _floats(examples: list[dict], key: str) -> torch.Tensor:
    return torch.tensor([float(e[key]) for e in examples], dtype=torch.float32)


class PairwiseCollator:
    """rm/dpo: all chosen sequences, then all rejected ones (sequence i and i + n are a pair); carries
    reference log-probabilities when they were precomputed."""

    REFERENCE = ("ref_chosen_logps", "ref_rejected_logps")

    def __init__(self, padding_free: bool, pad_token_id: int):
        self.padding_free, self.pad_token_id = padding_free, pad_token_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        sequences = [(e[f"{side}_input_ids"], e[f"{side}_labels"]) for side in ("chosen", "rejected") for e in examples]
        batch = pack_sequences(sequences, self.padding_free, self.pad_token_id)
        batch["num_items"] = torch.tensor(len(examples))
        batch.update({k: _floats(examples, k) for k in self.REFERENCE if k in examples[0]})
        return batch


class KTOCollator:
    """kto: the examples, their desirable/undesirable tags, and the mismatched prompt/response pairs of
    their KL estimate (kl_* keys, built once for the dataset by processors.add_kl_pairs)."""

    REFERENCE = ("ref_logps", "ref_kl_logps")

    def __init__(self, padding_free: bool, pad_token_id: int):
        self.padding_free, self.pad_token_id = padding_free, pad_token_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = pack_sequences([(e["input_ids"], e["labels"]) for e in examples], self.padding_free, self.pad_token_id)
        batch.update(pack_sequences([(e["kl_input_ids"], e["kl_labels"]) for e in examples], self.padding_free,
                                    self.pad_token_id, prefix="kl_"))
        batch["kto_tag"] = torch.tensor([bool(e["kto_tag"]) for e in examples])
        batch["num_items"] = torch.tensor(len(examples))
        batch.update({k: _floats(examples, k) for k in self.REFERENCE if k in examples[0]})
        return batch


class PromptCollator:
    """ppo/grpo: the prompts of a rollout buffer as they are (ids and the row's other columns); the
    trainer samples completions for them and packs the rollouts itself (see train.rollout_trainer)."""

    def __call__(self, examples: list[dict]) -> dict:
        return {"prompt_ids": [list(e["input_ids"]) for e in examples], "extra": [e.get("extra") or "{}" for e in examples]}


def make_collator(family: str, padding_free: bool, pad_token_id: int):
    """The collator of a row shape's family (see stages.RowShape.collator)."""
    if family == "supervised":
        return PaddingFreeCollator() if padding_free else PaddedCollator(pad_token_id)
    if family == "pairwise":
        return PairwiseCollator(padding_free, pad_token_id)
    if family == "kto":
        return KTOCollator(padding_free, pad_token_id)
    if family == "prompt":
        return PromptCollator()
    raise ValueError(f"no collator for row family {family!r}")


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
