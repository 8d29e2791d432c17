"""Where a reply ends, computed in one place: training writes these ids to generation_config.json, and
chat, the API and ppo/grpo's sampling stop on the same ones.

A template's stop words (its end-of-turn marker, such as "<|im_end|>") come first, then every EOS id the
tokenizer and the model's generation config know of. A stop word that the tokenizer keeps as one token stops
generation by id (exact and cheap); one it splits into several tokens can only be matched on the text, so
it is returned as a stop string.
"""

from __future__ import annotations


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def stop_tokens(tokenizer, template, generation_config=None) -> tuple[list[int], list[str]]:
    """(stop ids, stop strings), without repeats, template words first."""
    ids, strings = [], []
    for word in template.stop_words(tokenizer):
        word_ids = tokenizer.encode(word, add_special_tokens=False)
        if len(word_ids) == 1:
            ids.append(word_ids[0])
        elif word_ids:
            strings.append(word)
    ids += _ids(tokenizer.eos_token_id)
    ids += _ids(getattr(generation_config, "eos_token_id", None))
    return list(dict.fromkeys(ids)), list(dict.fromkeys(strings))
