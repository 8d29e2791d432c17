"""Fitting turns into `cutoff_len`.

Rules: whole turns are kept while they fit; a later turn that does not fit is dropped with everything after
it (cutting inside a later turn would train on a fragment); only the first turn is ever cut, with prompt and
response cut in proportion to their lengths (the seed's rule), and a cut keeps the generation header at the
end of the prompt and the end-of-turn tokens at the end of the response.
"""

from __future__ import annotations

from .encode import TokenTurn


def proportional_lengths(source_len: int, target_len: int, budget: int) -> tuple[int, int]:
    """How many prompt and response tokens to keep of a turn that does not fit into `budget`.

    A short response (under half the budget) is kept whole; otherwise a short prompt is kept whole;
    otherwise both are cut in proportion to their lengths.
    """
    if target_len * 2 < budget:
        target_cap = budget
    elif source_len * 2 < budget:
        target_cap = budget - source_len
    else:
        target_cap = int(budget * target_len / (source_len + target_len))
    new_target = min(target_cap, target_len)
    new_source = min(max(budget - new_target, 0), source_len)
    return new_source, new_target


def cut_keeping_tail(ids: list[int], keep: int, tail: int) -> list[int]:
    """The first tokens of `ids` plus its last `tail` tokens, `keep` in all."""
    if keep >= len(ids):
        return list(ids)
    if keep <= 0:
        return []
    tail = min(tail, keep - 1) if keep > 1 else 0
    return list(ids[: keep - tail]) + (list(ids[len(ids) - tail:]) if tail else [])


def fit_turns(turns: list[TokenTurn], budget: int) -> tuple[list[TokenTurn], bool]:
    """Returns the turns that fit and whether anything was cut or dropped."""
    kept: list[TokenTurn] = []
    used = 0
    for i, turn in enumerate(turns):
        size = len(turn.prompt) + len(turn.response)
        if used + size <= budget:
            kept.append(turn)
            used += size
            continue
        if i == 0:
            n_src, n_tgt = proportional_lengths(len(turn.prompt), len(turn.response), budget)
            kept.append(
                TokenTurn(
                    cut_keeping_tail(turn.prompt, n_src, turn.prompt_tail),
                    cut_keeping_tail(turn.response, n_tgt, turn.response_tail),
                    turn.prompt_tail,
                    turn.response_tail,
                )
            )
        return kept, True
    return kept, False
