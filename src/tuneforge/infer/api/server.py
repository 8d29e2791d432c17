"""`tuneforge api`: the OpenAI API over a ChatEngine (or a reward model's RewardService), with FastAPI.

Handlers parse and check a request (protocol.py), render its prompt with the training template, submit it to
the engine's scheduler and relay the scheduler's events: collected into one response, or as server-sent
events ending with `data: [DONE]`. A client that disconnects cancels its request, which frees its rows in
the batch. Every error is OpenAI-shaped JSON and leaves the server serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

from ...errors import TuneforgeError
from ..scheduler import Busy, Delta, Failed, Finished
from .errors import APIError, bad
from .protocol import check_model, parse_chat, parse_completion
from .tool_calls import parse_tool_calls

logger = logging.getLogger("tuneforge")


class _Events:
    """The sink of one request: the scheduler thread's events, moved onto the event loop's queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()

    def __call__(self, event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


def _submit(engine, prompt_ids, params, n):
    events = _Events(asyncio.get_running_loop())
    try:
        return engine.submit(prompt_ids, params, n, events), events
    except Busy as e:
        raise APIError(429, f"the server is busy ({e}); retry shortly", code="rate_limit_exceeded") from None


def _fit_context(engine, prompt_ids: list[int], params, given: bool, what: str = "messages") -> None:
    context = engine.context_length
    if len(prompt_ids) >= context:
        raise bad(f"the prompt is {len(prompt_ids)} tokens, but the model's context length is {context}; "
                  f"shorten the {what}", what, "context_length_exceeded")
    room = context - len(prompt_ids)
    if params.max_new_tokens > room:
        if given:
            raise bad(f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({params.max_new_tokens}) exceeds the "
                      f"model's context length of {context}; ask for at most {room}", "max_tokens",
                      "context_length_exceeded")
        params.max_new_tokens = room


async def _collect(events: _Events, handle, n: int, request) -> dict[int, Finished]:
    """Waits for all n answers; cancels the request if the client goes away meanwhile."""
    done: dict[int, Finished] = {}
    checked = time.monotonic()
    try:
        while len(done) < n:
            if time.monotonic() - checked > 0.5:  # on a clock: events keep coming while the answer grows
                checked = time.monotonic()
                if await request.is_disconnected():
                    raise asyncio.CancelledError
            try:
                event = await asyncio.wait_for(events.queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                continue
            if isinstance(event, Finished):
                done[event.index] = event
            elif isinstance(event, Failed):
                raise APIError(500, f"generation failed: {event.error}", code="generation_failed")
    finally:
        if len(done) < n:
            handle.cancel()
    return done


def _sse(payload) -> str:
    return "data: " + (payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)) + "\n\n"


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Handlers:
    """The endpoints' logic, over one engine (chat models) or one reward service."""

    def __init__(self, settings, engine=None, reward=None):
        self.settings, self.engine, self.reward = settings, engine, reward

    def _need_engine(self):
        if self.engine is None:
            raise bad("this server serves a reward model: it answers POST /v1/score only")

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.settings.model_name, "object": "model",
                                            "created": int(time.time()), "owned_by": "tuneforge"}]}

    async def chat(self, body: dict, request):
        self._need_engine()
        check_model(body, self.settings.model_name)
        req = parse_chat(body, self.engine.default_params(), self.settings.max_batch_size)
        try:
            prompt_ids = self.engine.prompt_ids(req.messages, req.system, req.tools)
        except TuneforgeError as e:
            raise bad(str(e), "messages") from None
        _fit_context(self.engine, prompt_ids, req.params, req.max_tokens_given)
        handle, events = _submit(self.engine, prompt_ids, req.params, req.n)
        names = [t["name"] for t in json.loads(req.tools)] if req.tools else []
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.settings.model_name}
        if req.stream:
            return self._chat_stream(handle, events, req, len(prompt_ids), names, meta)
        finished = await _collect(events, handle, req.n, request)
        choices = []
        for i in range(req.n):
            message, reason = _message(finished[i].text, names), finished[i].reason
            if message.get("tool_calls"):
                reason = "tool_calls"
            choices.append({"index": i, "message": message, "finish_reason": reason, "logprobs": None})
        tokens = sum(f.completion_tokens for f in finished.values())
        return {**meta, "object": "chat.completion", "choices": choices, "usage": _usage(len(prompt_ids), tokens)}

    async def _chat_stream(self, handle, events, req, prompt_tokens, names, meta):
        chunk = {**meta, "object": "chat.completion.chunk"}

        def piece(index, delta, reason=None):
            return _sse({**chunk, "choices": [{"index": index, "delta": delta, "finish_reason": reason,
                                               "logprobs": None}]})

        finished = 0
        tokens = 0
        try:
            for i in range(req.n):
                yield piece(i, {"role": "assistant", "content": ""})
            while finished < req.n:
                event = await events.queue.get()
                if isinstance(event, Delta) and not names:  # with tools, the answer is read whole at the end
                    yield piece(event.index, {"content": event.text})
                elif isinstance(event, Finished):
                    finished += 1
                    tokens += event.completion_tokens
                    reason = event.reason
                    if names:
                        message = _message(event.text, names)
                        if message.get("tool_calls"):
                            reason = "tool_calls"
                            calls = [dict(c, index=k) for k, c in enumerate(message["tool_calls"])]
                            yield piece(event.index, {"tool_calls": calls})
                        else:
                            yield piece(event.index, {"content": message["content"]})
                    yield piece(event.index, {}, reason)
                elif isinstance(event, Failed):
                    yield _sse({"error": APIError(500, f"generation failed: {event.error}").body()["error"]})
                    break
            if req.include_usage:
                yield _sse({**chunk, "choices": [], "usage": _usage(prompt_tokens, tokens)})
            yield _sse("[DONE]")
        finally:
            if finished < req.n:
                handle.cancel()  # the client went away: free its rows

    async def completion(self, body: dict, request):
        self._need_engine()
        check_model(body, self.settings.model_name)
        req = parse_completion(body, self.engine.default_params(), self.settings.max_batch_size)
        prompt_ids = self.engine.tokenizer.encode(req.prompt)
        _fit_context(self.engine, prompt_ids, req.params, req.max_tokens_given, "prompt")
        handle, events = _submit(self.engine, prompt_ids, req.params, req.n)
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.settings.model_name}
        if req.stream:
            return self._completion_stream(handle, events, req, len(prompt_ids), meta)
        finished = await _collect(events, handle, req.n, request)
        choices = [{"index": i, "text": finished[i].text, "finish_reason": finished[i].reason, "logprobs": None}
                   for i in range(req.n)]
        tokens = sum(f.completion_tokens for f in finished.values())
        return {**meta, "choices": choices, "usage": _usage(len(prompt_ids), tokens)}

    async def _completion_stream(self, handle, events, req, prompt_tokens, meta):
        finished = tokens = 0
        try:
            while finished < req.n:
                event = await events.queue.get()
                if isinstance(event, Delta):
                    yield _sse({**meta, "choices": [{"index": event.index, "text": event.text,
                                                     "finish_reason": None, "logprobs": None}]})
                elif isinstance(event, Finished):
                    finished += 1
                    tokens += event.completion_tokens
                    yield _sse({**meta, "choices": [{"index": event.index, "text": "",
                                                     "finish_reason": event.reason, "logprobs": None}]})
                elif isinstance(event, Failed):
                    yield _sse({"error": APIError(500, f"generation failed: {event.error}").body()["error"]})
                    break
            if req.include_usage:
                yield _sse({**meta, "choices": [], "usage": _usage(prompt_tokens, tokens)})
            yield _sse("[DONE]")
        finally:
            if finished < req.n:
                handle.cancel()

    async def score(self, body: dict):
        from starlette.concurrency import run_in_threadpool

        if self.reward is None:
            raise bad("this server serves a chat model; /v1/score needs a reward model (the output of stage: rm)")
        check_model(body, self.settings.model_name)
        if body.get("messages") is not None:
            items = body["messages"]
            if not isinstance(items, list) or not items:
                raise bad("messages must be a non-empty list of conversations", "messages")
            if isinstance(items[0], dict):  # one conversation
                items = [items]
            sequences = [self.reward.conversation_ids(c) for c in items]
        else:
            items = body.get("input")
            items = [items] if isinstance(items, str) else items
            if not isinstance(items, list) or not items:
                raise bad("send `input` (a text or a list of texts) or `messages` (conversations ending with the "
                          "assistant answer to score)", "input")
            sequences = [self.reward.text_ids(t) for t in items]
        longest = max(len(s) for s in sequences)
        context = int(getattr(self.reward.model.config, "max_position_embeddings", 0) or longest)
        if longest > context:
            raise bad(f"an input is {longest} tokens, beyond the model's context length of {context}", "input",
                      "context_length_exceeded")
        scores = await run_in_threadpool(self.reward.score, sequences)
        return {"object": "list", "model": self.settings.model_name,
                "data": [{"object": "score", "index": i, "score": s} for i, s in enumerate(scores)],
                "usage": {"prompt_tokens": sum(map(len, sequences)), "total_tokens": sum(map(len, sequences))}}


def _message(text: str, names: list[str]) -> dict:
    if names:
        _, calls = parse_tool_calls(text, names)
        if calls:
            # Only the calls: a tool-calling turn is rendered from its calls alone, so text before them (rare
            # "let me check" preambles) could not be sent back in the next request anyway.
            return {"role": "assistant", "content": None, "tool_calls": [c.to_openai() for c in calls]}
    return {"role": "assistant", "content": text}
