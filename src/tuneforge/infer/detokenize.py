"""Turning one answer's token ids into text as they arrive, and deciding where the answer ends.

An answer ends at a stop token (never part of the text), at the first stop string (the template's
multi-token stop words and a request's `stop`; cut before it), or when its token budget runs out. While it is
still growing, the text shown so far never ends in half a UTF-8 character (decoded as U+FFFD until the next
byte arrives) or in what may be the beginning of a stop string, so streamed pieces always join to the final
answer.

Decoding is incremental: each token decodes a short window (the previous token's ids and the new ones) and
the difference is appended, so a long answer costs the same per token as a short one. The window keeps the
context a tokenizer needs (SentencePiece drops a word's leading space at the start of a decode).
"""

from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stop_ids, stop_strings=()):
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.stop_strings = [s for s in stop_strings if s]
        self.ids: list[int] = []
        self._decoded = ""  # text of ids[:_read]
        self._prefix = 0  # where the decode window starts
        self._read = 0  # ids already turned into text
        self.sent = ""  # text handed out so far
        self.finish_reason: str | None = None  # "stop" or "length" once the answer has ended

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _pending(self) -> str:
        """Text of the ids not yet settled (may end in U+FFFD)."""
        window = self.ids[self._prefix:]
        return self._decode(window)[len(self._decode(self.ids[self._prefix:self._read])):]

    def _emit(self, text: str) -> str:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            piece, self.sent = text[len(self.sent):], text
            return piece
        return ""

    def push(self, token: int) -> str:
        """Adds one generated token; returns the new text that is safe to show (maybe "")."""
        if token in self.stop_ids:
            self.finish_reason = "stop"
            return self._emit(self._decoded + self._pending())
        self.ids.append(token)
        new = self._pending()
        if new.endswith("\ufffd"):
            return ""  # half a character: wait for its next byte
        start = max(0, len(self._decoded) - max((len(s) for s in self.stop_strings), default=0))
        self._decoded += new
        self._prefix, self._read = self._read, len(self.ids)
        cut = min((i for i in (self._decoded.find(s, start) for s in self.stop_strings) if i >= 0), default=-1)
        if cut >= 0:
            self.finish_reason = "stop"
            return self._emit(self._decoded[:cut])
        return self._emit(self._held_back(self._decoded))

    def close(self, reason: str = "length") -> str:
        """Ends the answer (token budget spent); returns the text held back until now."""
        if self.finish_reason is None:
            self.finish_reason = reason
            return self._emit(self._decoded + self._pending())
        return ""

    @property
    def text(self) -> str:
        return self.sent

    def _held_back(self, text: str) -> str:
        for word in self.stop_strings:
            for size in range(min(len(word) - 1, len(text)), 0, -1):
                if text.endswith(word[:size]):
                    text = text[:-size]
                    break
        return text
