"""What a chat template is to the rest of the pipeline: a renderer from a Conversation to text pieces.

A template only produces strings. Turning them into token ids (in one tokenizer call, so the ids are
exactly those of `tokenizer.apply_chat_template`) is `data.encode`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..conversation import Message


@dataclass
class RenderedTurn:
    """One prompt-side message and the response that follows it.

    prompt: everything before the response (on the first turn also BOS, system prompt and tool list), ending
        with the generation header (e.g. "<|im_start|>assistant\n").
    response: the response content and its end-of-turn text (e.g. "Hi<|im_end|>\n"); trained.
    prompt_tail: how many trailing characters of `prompt` are the generation header, kept when a long
        prompt is cut.
    response_tail: how many trailing characters of `response` are the end-of-turn text, kept when a long
        response is cut so the model still learns to stop.
    """

    prompt: str
    response: str
    prompt_tail: int = 0
    response_tail: int = 0


@dataclass
class Rendered:
    turns: list[RenderedTurn]
    suffix: str = ""  # text some templates put after the last turn; never trained


class Template(Protocol):
    name: str

    def render(
        self, messages: list[Message], system: str | None, tools: str | None, tokenizer
    ) -> Rendered:
        """messages alternate prompt-side and response-side roles and end with a response."""

    def render_prompt(
        self, messages: list[Message], system: str | None, tools: str | None, tokenizer
    ) -> str:
        """messages end with a prompt-side message; returns the text to generate from (ends with the
        generation header)."""

    def stop_words(self, tokenizer) -> list[str]:
        """End-of-turn strings that stop generation (each a single token of the tokenizer, if possible)."""

    def jinja(self, tokenizer) -> str | None:
        """A Jinja chat template equivalent to this template, saved with the trained tokenizer so that
        serving tools render the same prompts; None when the tokenizer's own template is used."""
