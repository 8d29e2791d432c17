"""Generation for `tuneforge chat` (and the API server): a rendered prompt in, the assistant's answer out.

The prompt is rendered by the same Template object that training uses and tokenized without extra special
tokens (the template already wrote BOS where the model wants one), so serving sees byte-identical prompts.
Generation stops on the template's end-of-turn token as well as on every EOS id the tokenizer and the model's
generation_config know of; the stop token itself is never part of the answer.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..data.conversation import Message
from ..data.stops import stop_tokens


class _TokenQueue(BaseStreamer):
    """Receives the token ids `generate` produces (in its own thread) and hands them to the reader thread.

    Ids rather than text cross the thread boundary so that the reader decides what is text and what is a
    stop token; TextIteratorStreamer would print a stop word that the tokenizer does not mark as special.
    """

    END = object()

    def __init__(self):
        self.items: queue.Queue = queue.Queue()
        self.prompt_seen = False

    def put(self, value):
        if not self.prompt_seen:  # generate() first hands over the prompt
            self.prompt_seen = True
            return
        self.items.put(value.reshape(-1).tolist())

    def end(self):
        self.items.put(self.END)


class _CancelFlag(StoppingCriteria):
    """Lets the reader stop a generation it no longer wants (Ctrl-C in the REPL, a closed HTTP stream)."""

    def __init__(self):
        self.event = threading.Event()

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class ChatEngine:
    def __init__(self, model, tokenizer, template, generate_args):
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.generate_args = generate_args
        self.stop_ids, self.stop_strings = stop_tokens(tokenizer, template, getattr(model, "generation_config", None))

    @classmethod
    def from_args(cls, args) -> "ChatEngine":
        """Loads tokenizer, model (in infer_dtype), adapters and template from parsed Args."""
        from ..data.templates import get_template
        from ..models.loader import load_model, load_tokenizer

        tokenizer = load_tokenizer(args.model)
        model = load_model(args.model, args.finetune, tokenizer, is_trainable=False)
        model.eval()
        template = get_template(
            args.data.template,
            tokenizer,
            default_system=args.data.default_system,
            enable_thinking=args.data.enable_thinking,
        )
        return cls(model, tokenizer, template, args.generate)

    def _generate_kwargs(self) -> dict:
        g = self.generate_args
        kwargs = dict(
            max_new_tokens=g.max_new_tokens,
            do_sample=g.do_sample,
            num_beams=g.num_beams,
            repetition_penalty=g.repetition_penalty,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0],
        )
        # Sampling knobs are passed only when sampling, so a greedy run is exactly greedy and transformers does
        # not warn about flags it ignores.
        if g.do_sample:
            kwargs.update(temperature=g.temperature, top_p=g.top_p, top_k=g.top_k)
        if g.num_beams > 1:
            kwargs["length_penalty"] = g.length_penalty
        if self.stop_strings:
            kwargs.update(stop_strings=self.stop_strings, tokenizer=self.tokenizer)
        return kwargs

    def prompt_ids(self, messages: list[Message], system: str | None = None, tools: str | None = None) -> list[int]:
        text = self.template.render_prompt(messages, system, tools, self.tokenizer)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _inputs(self, messages, system, tools) -> dict:
        ids = torch.tensor([self.prompt_ids(messages, system, tools)], device=self.model.device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def _decode(self, ids: list[int]) -> str:
        """The answer text: stop ids dropped, cut before the first multi-token stop word."""
        stops = set(self.stop_ids)
        text = self.tokenizer.decode([i for i in ids if i not in stops], skip_special_tokens=True)
        for word in self.stop_strings:
            text = text.split(word, 1)[0]
        return text

    def chat(self, messages: list[Message], system: str | None = None, tools: str | None = None) -> str:
        inputs = self._inputs(messages, system, tools)
        with torch.inference_mode():
            output = self.model.generate(**inputs, **self._generate_kwargs())
        return self._decode(output[0, inputs["input_ids"].shape[1]:].tolist())

    def stream(self, messages: list[Message], system: str | None = None, tools: str | None = None) -> Iterator[str]:
        """Yields the answer piece by piece; the pieces join to what chat() returns for the same input."""
        if self.generate_args.num_beams > 1:  # transformers cannot stream beam search
            yield self.chat(messages, system, tools)
            return
        inputs = self._inputs(messages, system, tools)
        tokens, cancel = _TokenQueue(), _CancelFlag()
        failure: list[BaseException] = []

        def run():
            try:
                with torch.inference_mode():
                    self.model.generate(
                        **inputs,
                        **self._generate_kwargs(),
                        streamer=tokens,
                        stopping_criteria=StoppingCriteriaList([cancel]),
                    )
            except BaseException as e:  # re-raised in the reader's thread, where the caller can see it
                failure.append(e)
                tokens.end()

        worker = threading.Thread(target=run, name="tuneforge-generate", daemon=True)
        worker.start()
        ids: list[int] = []
        sent = ""
        try:
            while True:
                try:
                    item = tokens.items.get(timeout=0.1)
                except queue.Empty:
                    if worker.is_alive():
                        continue
                    break
                if item is _TokenQueue.END:
                    break
                ids.extend(item)
                text = self._ready_text(ids)
                if len(text) > len(sent) and text.startswith(sent):
                    yield text[len(sent):]
                    sent = text
            if failure:
                raise failure[0]
            final = self._decode(ids)
            if final.startswith(sent) and len(final) > len(sent):
                yield final[len(sent):]
        finally:
            cancel.event.set()
            worker.join()

    def _ready_text(self, ids: list[int]) -> str:
        """The part of the answer so far that is safe to show: not ending in half a UTF-8 character (shown
        as U+FFFD until the next byte arrives) and not ending in what may be the start of a stop word."""
        text = self._decode(ids).rstrip("\ufffd")
        for word in self.stop_strings:
            for size in range(min(len(word) - 1, len(text)), 0, -1):
                if text.endswith(word[:size]):
                    text = text[:-size]
                    break
        return text
