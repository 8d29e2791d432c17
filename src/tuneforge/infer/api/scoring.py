"""`POST /v1/score` for a reward model written by `stage: rm`: one scalar per conversation or text.

A conversation is rendered and tokenized exactly as the rm stage encoded its chosen/rejected answers (the
training template, one tokenizer call), and scored by the value head at its last token, as rm trained it.
Raw texts are scored as given (no special tokens added). One lock makes this the only code running the model.
"""

from __future__ import annotations

import threading

import torch

from ...data.conversation import ASSISTANT, FUNCTION, Conversation
from ...data.processors import encode_conversation
from ...models.value_head import score
from ...train.logps import last_token_hidden
from .errors import bad
from .protocol import _text, to_messages


class RewardService:
    def __init__(self, model, head, tokenizer, template, batch_size: int = 8):
        self.model, self.head, self.tokenizer, self.template = model, head, tokenizer, template
        self.batch_size = batch_size
        self._lock = threading.Lock()

    def conversation_ids(self, raw_messages) -> list[int]:
        """Token ids of a conversation that ends with the assistant answer to be scored."""
        if not isinstance(raw_messages, list) or not raw_messages:
            raise bad("each conversation must be a non-empty list of messages", "messages")
        last = raw_messages[-1]
        if not isinstance(last, dict) or last.get("role") != "assistant":
            raise bad("each conversation must end with the assistant message to score", "messages")
        messages, system = to_messages(raw_messages[:-1])
        answer = _text(last.get("content"), "the last message")
        conv = Conversation(messages=messages, system=system)
        turns, _ = encode_conversation(self.template, self.tokenizer, conv,
                                       messages + [_response(last, answer)])
        return [i for t in turns for i in t.prompt + t.response]

    def text_ids(self, text) -> list[int]:
        if not isinstance(text, str) or not text:
            raise bad("input must be a non-empty string or a list of them", "input")
        return self.tokenizer.encode(text, add_special_tokens=False)

    @torch.inference_mode()
    def score(self, sequences: list[list[int]]) -> list[float]:
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out: list[float] = []
        with self._lock:
            for start in range(0, len(sequences), self.batch_size):
                chunk = sequences[start : start + self.batch_size]
                width = max(len(s) for s in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, seq in enumerate(chunk):  # right padding: the score is read at each last real token
                    ids[row, : len(seq)] = torch.tensor(seq)
                    mask[row, : len(seq)] = 1
                batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
                out += score(self.head, last_token_hidden(self.model, batch)).float().cpu().tolist()
        return out


def _response(last: dict, answer: str):
    from ...data.conversation import Message
    from .protocol import _calls_json

    if last.get("tool_calls"):
        return Message(FUNCTION, _calls_json(last["tool_calls"], "the last message"))
    return Message(ASSISTANT, answer)
