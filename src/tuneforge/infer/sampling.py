"""Choosing each row's next token when the rows of one batch ask for different things.

Requests batched together keep their own settings: one may be greedy and the next sample at temperature 0.8
with top_p 0.9, a seed and a frequency penalty. The batch's logits are computed once; the choice is made row
by row, in float32, in this order: repetition penalty (Hugging Face's: over prompt and answer), presence and
frequency penalties (OpenAI's: over the answer only), then greedy argmax or temperature, top-k, min-p, top-p and a
draw from the row's own random generator (seeded per request and choice, so a seed reproduces an answer
whatever else shares the batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    min_p: float = 0.0  # drop tokens less likely than min_p times the most likely one
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # stop strings on top of the model's stop tokens

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    @classmethod
    def from_generate_args(cls, g) -> "SamplingParams":
        """The config's generation keys (what `tuneforge chat` uses)."""
        if not g.do_sample:
            return cls(g.max_new_tokens, repetition_penalty=g.repetition_penalty)
        return cls(g.max_new_tokens, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                   repetition_penalty=g.repetition_penalty)


def row_generator(seed: int | None, choice: int, device="cpu") -> torch.Generator | None:
    """The random source of one answer, on the logits' device: seed + choice index, so the n answers of a
    request differ."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed) + choice)


def _penalised(logits: torch.Tensor, params: SamplingParams, prompt: torch.Tensor, answer: list[int]) -> torch.Tensor:
    if params.repetition_penalty != 1.0:
        seen = torch.cat([prompt, torch.tensor(answer, dtype=torch.long)]).unique().to(logits.device)
        picked = logits[seen]
        logits[seen] = torch.where(picked < 0, picked * params.repetition_penalty, picked / params.repetition_penalty)
    if (params.presence_penalty or params.frequency_penalty) and answer:
        answer_ids = torch.tensor(answer, dtype=torch.long, device=logits.device)
        counts = torch.bincount(answer_ids, minlength=logits.shape[0]).to(logits.dtype)
        logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def _draw(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    logits = logits / params.temperature
    if 0 < params.top_k < logits.shape[0]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.min_p > 0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least the most likely token).
        drop = cumulative - ordered.softmax(-1) >= params.top_p
        logits = logits.scatter(0, order[drop], float("-inf"))
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def next_tokens(logits: torch.Tensor, rows: list) -> list[int]:
    """One token per row of `logits` (batch, vocab); each row has .params, .prompt (tensor), .answer (ids)
    and .generator."""
    logits = logits.float()
    chosen = logits.argmax(-1).tolist()
    for i, row in enumerate(rows):
        p = row.params
        plain_greedy = p.greedy and p.repetition_penalty == 1.0 and not (p.presence_penalty or p.frequency_penalty)
        if plain_greedy:
            continue
        scores = _penalised(logits[i].clone(), p, row.prompt, row.answer)
        chosen[i] = int(scores.argmax()) if p.greedy else _draw(scores, p, row.generator)
    return chosen
