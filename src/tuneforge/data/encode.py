"""Rendered text to token ids, in one tokenizer call so the ids equal `apply_chat_template`'s exactly.

Each token is assigned to the segment (prompt or response of a turn, or the suffix) in which it starts,
using the fast tokenizer's character offsets. Slow tokenizers have no offsets: their segments are
tokenized one by one, which can differ from a whole-text tokenization at segment borders.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from .templates.base import Rendered


@dataclass
class TokenTurn:
    prompt: list[int]
    response: list[int]
    prompt_tail: int = 0  # trailing prompt tokens that form the generation header
    response_tail: int = 0  # trailing response tokens that close the turn


def _segments(rendered: Rendered):
    for turn in rendered.turns:
        yield turn.prompt, turn.prompt_tail
        yield turn.response, turn.response_tail
    yield rendered.suffix, 0


def encode_rendered(tokenizer, rendered: Rendered) -> tuple[list[TokenTurn], list[int]]:
    """Returns the turns as token ids and the ids of the trailing suffix."""
    segments = list(_segments(rendered))
    texts = [s for s, _ in segments]
    if getattr(tokenizer, "is_fast", False):
        pieces = _split_by_offsets(tokenizer, texts)
    else:
        pieces = [tokenizer.encode(t, add_special_tokens=False) if t else [] for t in texts]
    tails = [_tail_tokens(tokenizer, text, ids, tail) for (text, tail), ids in zip(segments, pieces)]
    turns = [
        TokenTurn(pieces[i], pieces[i + 1], tails[i], tails[i + 1]) for i in range(0, len(pieces) - 1, 2)
    ]
    return turns, pieces[-1]


def _split_by_offsets(tokenizer, texts: list[str]) -> list[list[int]]:
    starts, pos = [], 0
    for t in texts:
        starts.append(pos)
        pos += len(t)
    enc = tokenizer("".join(texts), add_special_tokens=False, return_offsets_mapping=True)
    pieces: list[list[int]] = [[] for _ in texts]
    for tid, (begin, _end) in zip(enc["input_ids"], enc["offset_mapping"]):
        # bisect_right - 1 picks the last segment starting at or before the token; empty segments share a
        # start with the next one and are skipped that way.
        pieces[bisect.bisect_right(starts, begin) - 1].append(tid)
    return pieces


def _tail_tokens(tokenizer, text: str, ids: list[int], tail_chars: int) -> int:
    if tail_chars <= 0 or not ids:
        return 0
    tail = tokenizer.encode(text[len(text) - tail_chars:], add_special_tokens=False)
    return min(len(tail), len(ids))
