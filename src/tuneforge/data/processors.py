"""Conversations to training examples: one function per row shape.

Each returns a dict of columns for one example, or a drop reason (str) saying why the row cannot be used.
Labels are aligned with input_ids (-100 where not trained); shifting for next-token prediction is the
collator's job, done per example so no label ever crosses into the next packed example.
"""

from __future__ import annotations

from dataclasses import dataclass

from .conversation import Conversation, Message
from .encode import TokenTurn, encode_rendered
from .templates.base import Template
from .truncate import cut_keeping_tail, fit_turns, proportional_lengths
from tuneforge.labels import IGNORE


@dataclass
class ProcessorOptions:
    cutoff_len: int
    train_on_prompt: bool = False
    mask_history: bool = False


def encode_conversation(template: Template, tokenizer, conv: Conversation, messages: list[Message]):
    rendered = template.render(messages, conv.system, conv.tools, tokenizer)
    return encode_rendered(tokenizer, rendered)


def _assemble(turns: list[TokenTurn], opts: ProcessorOptions) -> tuple[list[int], list[int]]:
    input_ids, labels = [], []
    last = len(turns) - 1
    for i, t in enumerate(turns):
        input_ids += t.prompt + t.response
        labels += list(t.prompt) if opts.train_on_prompt else [IGNORE] * len(t.prompt)
        trained = not opts.mask_history or i == last
        labels += list(t.response) if trained else [IGNORE] * len(t.response)
    return input_ids, labels


def supervised_example(template, tokenizer, conv: Conversation, opts: ProcessorOptions):
    """sft: every response trained (or only the last with mask_history); returns (example, truncated)."""
    if len(conv.messages) < 2 or len(conv.messages) % 2:
        return "no response to train on", False
    turns, _suffix = encode_conversation(template, tokenizer, conv, conv.messages)
    if opts.mask_history:
        # Keep the last turn: drop history from the front rather than losing the trained turn.
        turns = _drop_front_history(turns, opts.cutoff_len)
    kept, truncated = fit_turns(turns, opts.cutoff_len)
    if not kept:
        return "does not fit cutoff_len", truncated
    input_ids, labels = _assemble(kept, opts)
    if all(label == IGNORE for label in labels):
        return "no supervised token left after truncation", truncated
    return {"input_ids": input_ids, "labels": labels}, truncated


def _drop_front_history(turns: list[TokenTurn], budget: int) -> list[TokenTurn]:
    while len(turns) > 1 and sum(len(t.prompt) + len(t.response) for t in turns) > budget:
        turns = turns[1:]
    return turns


def unsupervised_example(template, tokenizer, conv: Conversation, opts: ProcessorOptions):
    """Prompt only (for generation-based stages); the response, if any, becomes the labels, and the row's
    other columns travel along as JSON text (`extra`) for reward functions."""
    if len(conv.messages) % 2 == 0:
        prompt_msgs, response = conv.messages[:-1], conv.messages[-1]
    else:
        prompt_msgs, response = conv.messages, Message("assistant", "")
    turns, _ = encode_conversation(template, tokenizer, conv, prompt_msgs + [response])
    kept, truncated = fit_turns(turns, opts.cutoff_len)
    if not kept:
        return "does not fit cutoff_len", truncated
    history = [i for t in kept[:-1] for i in t.prompt + t.response]
    extra = conv.extra or "{}"
    return {"input_ids": history + kept[-1].prompt, "labels": kept[-1].response, "extra": extra}, truncated


def prediction_example(template, tokenizer, conv: Conversation, opts: ProcessorOptions):
    """Batch prediction (sft's do_predict): the prompt of the last turn, rendered as training renders it, and
    the reference response token ids (whole, to score against). The prompt fits cutoff_len the way a trained
    last turn does: earlier turns are dropped from the front, then the last turn's prompt is cut in proportion
    to its response, keeping the generation header."""
    if len(conv.messages) < 2 or len(conv.messages) % 2:
        return "no response to score against", False
    turns, _suffix = encode_conversation(template, tokenizer, conv, conv.messages)
    last = turns[-1]
    history, cut = _fit_last_turn(turns[:-1], last, len(last.response), opts.cutoff_len)
    truncated = len(history) < len(turns) - 1 or len(cut.prompt) < len(last.prompt)
    prompt = [i for t in history for i in t.prompt + t.response] + cut.prompt
    return {"input_ids": prompt, "labels": list(last.response)}, truncated


def pairwise_example(template, tokenizer, conv: Conversation, opts: ProcessorOptions):
    """rm/dpo: a chosen and a rejected response to one shared prompt; only the responses are supervised.

    Truncation follows SFT's rule for a conversation whose last turn is trained (mask_history): earlier
    turns are dropped from the front while the sequence is too long; a last turn that is still too long has
    its prompt and responses cut, the prompt and the longer response in proportion, so that both sequences
    keep the same prompt and each fits cutoff_len."""
    if conv.chosen is None or conv.rejected is None:
        return "no chosen/rejected pair", False
    sides = {key: encode_conversation(template, tokenizer, conv, conv.messages + [answer])[0]
             for key, answer in (("chosen", conv.chosen), ("rejected", conv.rejected))}
    longer = max(len(turns[-1].response) for turns in sides.values())
    out, truncated = {}, False
    for key, turns in sides.items():
        history, last = _fit_last_turn(turns[:-1], turns[-1], longer, opts.cutoff_len)
        truncated |= len(history) < len(turns) - 1 or len(last.prompt) + len(last.response) < \
            len(turns[-1].prompt) + len(turns[-1].response)
        input_ids, labels = _assemble(history + [last], ProcessorOptions(opts.cutoff_len, False, True))
        if all(label == IGNORE for label in labels):
            return "no response token left after truncation", truncated
        out[f"{key}_input_ids"], out[f"{key}_labels"] = input_ids, labels
    return out, truncated


def _fit_last_turn(history: list[TokenTurn], last: TokenTurn, response_len: int, budget: int):
    """(history, last turn) that fit `budget` when the last turn's response takes `response_len` tokens."""
    def size(turns):
        return sum(len(t.prompt) + len(t.response) for t in turns) + len(last.prompt) + response_len

    while history and size(history) > budget:
        history = history[1:]
    if size(history) <= budget:
        return history, last
    n_prompt, n_response = proportional_lengths(len(last.prompt), response_len, budget)
    return [], TokenTurn(cut_keeping_tail(last.prompt, n_prompt, last.prompt_tail),
                         cut_keeping_tail(last.response, n_response, last.response_tail),
                         last.prompt_tail, last.response_tail)


def kto_example(template, tokenizer, conv: Conversation, opts: ProcessorOptions):
    """kto: a prompt, one completion and whether it is desirable."""
    if conv.kto_tag is None:
        return "no kto_tag", False
    example, truncated = supervised_example(
        template, tokenizer, conv, ProcessorOptions(opts.cutoff_len, opts.train_on_prompt, True)
    )
    if isinstance(example, str):
        return example, truncated
    example["kto_tag"] = bool(conv.kto_tag)
    return example, truncated


def pretrain_documents(tokenizer, texts: list[str], cutoff_len: int, concatenate: bool) -> list[list[int]]:
    """pt: documents joined with EOS and cut into cutoff_len blocks (or, with `concatenate` off, each
    document cut into its own blocks, for neat packing that never attends across documents)."""
    return cut_blocks(encode_documents(tokenizer, texts), cutoff_len, concatenate)


def encode_documents(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each non-blank document as BOS (if the tokenizer has one) + its ids + EOS, all in one tokenizer call
    (a fast tokenizer encodes a batch in one pass; the ids are those of encoding each document alone)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []
    kept = [t for t in texts if t and t.strip()]
    if not kept:
        return []
    encoded = tokenizer(kept, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)
    return [bos + list(ids) + eos for ids in encoded["input_ids"]]


def cut_blocks(docs: list[list[int]], cutoff_len: int, concatenate: bool) -> list[list[int]]:
    """Encoded documents into blocks of at most cutoff_len ids (blocks of one token are dropped)."""
    if not concatenate:
        return [d[i : i + cutoff_len] for d in docs for i in range(0, len(d), cutoff_len) if len(d[i : i + cutoff_len]) > 1]
    stream = [i for d in docs for i in d]
    blocks = [stream[i : i + cutoff_len] for i in range(0, len(stream), cutoff_len)]
    return [b for b in blocks if len(b) > 1]


def response_start(labels: list[int]) -> int:
    """Where the supervised response of a one-response example (kto) begins."""
    return next((i for i, label in enumerate(labels) if label != IGNORE), len(labels))


def add_kl_pairs(dataset, cutoff_len: int, seed: int = 42):
    """kto: gives every example a mismatched pair for the KL estimate, its prompt with another example's
    response (kl_input_ids, kl_labels), cut to cutoff_len. The partner is the next example in a seeded
    shuffle of the dataset, fixed once so that precomputed reference log-probabilities stay valid."""
    import random

    ids, labels = dataset["input_ids"], dataset["labels"]
    order = list(range(len(ids)))
    random.Random(seed).shuffle(order)
    partner = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}
    kl_ids, kl_labels = [], []
    for i in range(len(ids)):
        j = partner[i]
        prompt = ids[i][: response_start(labels[i])]
        start = response_start(labels[j])
        room = max(cutoff_len - len(prompt), 1)
        kl_ids.append(prompt + ids[j][start:][:room])
        kl_labels.append([IGNORE] * len(prompt) + labels[j][start:][:room])
    return dataset.add_column("kl_input_ids", kl_ids).add_column("kl_labels", kl_labels)
