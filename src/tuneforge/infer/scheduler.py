"""The one owner of a served model: a thread that batches the requests waiting for it and generates.

Requests are submitted from any thread (HTTP handlers, the web chat, the REPL). The scheduler thread takes
what is waiting (up to `max_batch_size` answers; a request with n choices counts n), prefills them as one
left-padded batch and decodes them step by step with the KV cache, each row with its own sampling settings,
stop tokens, stop strings and token budget. Rows that end, or whose request was cancelled (a client that
disconnected), leave the batch at once, so the batch only computes live rows. Requests that arrive meanwhile
are prefilled on their own and join the running batch at the next step (their cache is left-padded to the
batch's length), so a short question is not kept waiting behind a long answer; for models whose cache is not
a plain growing one (sliding-window layers) they wait for the next batch instead. Every answer is delivered through its request's sink as events, in order, so
answers never cross. At most `max_waiting` requests queue; beyond that `submit` raises Busy (HTTP 429).

Nothing here is module-level state: two schedulers on two models do not share anything.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

import torch

from .detokenize import TextStream
from .sampling import SamplingParams, next_tokens, row_generator

logger = logging.getLogger(__name__)


class Busy(Exception):
    """Too many requests are waiting; try again later."""


class _ShuttingDown(Exception):
    """close() was called while a batch was generating."""


@dataclass
class Delta:
    index: int  # choice
    text: str


@dataclass
class Finished:
    index: int
    reason: str  # "stop" | "length"
    completion_tokens: int
    text: str  # the whole answer


@dataclass
class Failed:
    error: BaseException


class Request:
    """One submitted prompt with n answers; events go to `sink` (called from the scheduler thread)."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, n: int, sink):
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.n = n
        self.sink = sink
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stops generating for this request; its rows leave the batch at the next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class _Row:
    def __init__(self, request: Request, index: int, stream: TextStream, device="cpu"):
        self.request = request
        self.index = index
        self.params = request.params
        self.prompt = torch.tensor(request.prompt_ids, dtype=torch.long)
        self.answer: list[int] = []
        self.stream = stream
        self.generator = row_generator(request.params.seed, index, device)

    def take(self, token: int) -> bool:
        """Records a generated token, sends what became showable; True when the answer has ended."""
        self.answer.append(token)
        piece = self.stream.push(token)
        if piece:
            self.request.sink(Delta(self.index, piece))
        if self.stream.finish_reason is None and len(self.answer) >= self.params.max_new_tokens:
            piece = self.stream.close("length")
            if piece:
                self.request.sink(Delta(self.index, piece))
        if self.stream.finish_reason is not None:
            self.request.sink(Finished(self.index, self.stream.finish_reason, len(self.answer), self.stream.text))
            return True
        return False


def _cache_keyword(model) -> str:
    """transformers renamed forward's `past_key_values` to `cache` during 5.x; the name this model takes."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


class Scheduler:
    def __init__(self, model, tokenizer, stop_ids, stop_strings=(), pad_token_id: int | None = None,
                 max_batch_size: int = 16, max_waiting: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = list(stop_ids)
        self.stop_strings = list(stop_strings)
        self.pad_token_id = pad_token_id if pad_token_id is not None else self.stop_ids[0]
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
        self._cache_key = _cache_keyword(model)
        self._waiting: queue.Queue[Request] = queue.Queue()
        self._carry: Request | None = None  # taken from the queue but did not fit the last batch
        self._failed_requests: set[Request] = set()  # whom to tell when the running batch fails
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tuneforge-scheduler", daemon=True)
        self._thread.start()

    # -- called from any thread ------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams, n: int = 1, sink=None) -> Request:
        if self._closed.is_set():
            raise RuntimeError("the scheduler is closed")
        if n > self.max_batch_size:
            raise ValueError(f"n={n} is more than max_batch_size={self.max_batch_size}")
        if self._waiting.qsize() >= self.max_waiting and self._live_waiting() >= self.max_waiting:
            raise Busy(f"{self.max_waiting} requests are already waiting")
        request = Request(prompt_ids, params, n, sink or (lambda event: None))
        self._waiting.put(request)
        return request

    def _live_waiting(self) -> int:
        """Waiting requests whose client still wants them (cancelled ones are dropped when reached)."""
        with self._waiting.mutex:
            waiting = list(self._waiting.queue)
        return sum(1 for r in waiting if r is not None and not r.cancelled)

    def close(self) -> None:
        """Stops after the current step; every request not finished by then gets Failed (shutting down)."""
        self._closed.set()
        self._waiting.put(None)  # wakes the thread
        self._thread.join()
        left = [self._carry] if self._carry is not None else []
        while not self._waiting.empty():
            left.append(self._waiting.get_nowait())
        for request in left:
            if request is not None and not request.cancelled:
                request.sink(Failed(RuntimeError("the server is shutting down")))

    # -- the scheduler thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._closed.is_set():
            self._failed_requests = set()
            try:
                rows = self._take(self.max_batch_size, block=True)
                if rows:
                    self._generate(rows)
            except BaseException as e:  # noqa: BLE001 -- reported to the requests; the server keeps serving
                if not isinstance(e, _ShuttingDown):
                    logger.exception("generation failed")
                for request in self._failed_requests:
                    request.sink(Failed(RuntimeError("the server is shutting down") if isinstance(e, _ShuttingDown)
                                        else e))

    def _take(self, room: int, block: bool) -> list[_Row]:
        """Rows of the waiting requests that fit in `room` (a request's n rows are never split)."""
        rows: list[_Row] = []
        while True:
            request, self._carry = self._carry, None
            if request is None:
                try:
                    request = self._waiting.get() if block and not rows else self._waiting.get_nowait()
                except queue.Empty:
                    return rows
            if request is None:  # close() woke us
                return rows
            if request.cancelled:
                continue
            if len(rows) + request.n > room:
                self._carry = request
                return rows
            rows += [self._row(request, i) for i in range(request.n)]

    def _row(self, request: Request, index: int) -> _Row:
        stream = TextStream(self.tokenizer, self.stop_ids, self.stop_strings + list(request.params.stop))
        return _Row(request, index, stream, next(self.model.parameters()).device)

    @torch.inference_mode()
    def _generate(self, rows: list[_Row]) -> None:
        """Runs until no row is left; waiting requests join the running batch between steps when the model's
        cache allows it (every layer a plain growing cache), otherwise they wait for the next batch."""
        self._failed_requests = {r.request for r in rows}
        batch = self._prefill(rows)
        while batch is not None:
            if self._closed.is_set():
                raise _ShuttingDown
            room = self.max_batch_size - len(batch.rows)
            if room > 0 and batch.joinable and (self._carry is not None or not self._waiting.empty()):
                joining = self._take(room, block=False)
                if joining:
                    self._failed_requests |= {r.request for r in joining}
                    batch = _Batch.merge(batch, self._prefill(joining))
            batch = self._step(batch)

    def _forward(self, ids, mask, positions, cache):
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **{self._cache_key: cache})  # the cache grows in place
        return out.logits[:, -1]

    def _prefill(self, rows: list[_Row]) -> "_Batch | None":
        from transformers import DynamicCache

        device = next(self.model.parameters()).device
        width = max(len(r.request.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding: every prompt ends where its answer starts
            prompt = row.request.prompt_ids
            ids[i, width - len(prompt):] = torch.tensor(prompt)
            mask[i, width - len(prompt):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, mask, positions, cache)
        return _Batch(rows, cache, mask, positions[:, -1:]).advance(logits)

    def _step(self, batch: "_Batch") -> "_Batch | None":
        mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=1)
        positions = batch.positions + 1
        logits = self._forward(batch.pending, mask, positions, batch.cache)
        return _Batch(batch.rows, batch.cache, mask, positions).advance(logits)


class _Batch:
    """Rows being decoded together: their KV cache, the attention mask over the cached positions, each row's
    last position, and the token each row feeds next (`pending`)."""

    def __init__(self, rows: list[_Row], cache, mask: torch.Tensor, positions: torch.Tensor):
        self.rows, self.cache, self.mask, self.positions = rows, cache, mask, positions
        self.pending: torch.Tensor | None = None

    @property
    def joinable(self) -> bool:
        from transformers.cache_utils import DynamicLayer

        return all(type(layer) is DynamicLayer for layer in getattr(self.cache, "layers", [None]))

    def advance(self, logits: torch.Tensor) -> "_Batch | None":
        """Chooses each row's next token; drops rows that ended or were cancelled; None when none is left."""
        chosen = next_tokens(logits, self.rows)
        keep = [i for i, (row, token) in enumerate(zip(self.rows, chosen))
                if not row.request.cancelled and not row.take(token)]
        if not keep:
            return None
        if len(keep) < len(self.rows):
            index = torch.tensor(keep, device=self.mask.device)
            self.cache.batch_select_indices(index)
            self.mask, self.positions = self.mask[index], self.positions[index]
            self.rows, chosen = [self.rows[i] for i in keep], [chosen[i] for i in keep]
            self._trim()
        self.pending = torch.tensor(chosen, device=self.mask.device).unsqueeze(1)
        return self

    def _trim(self) -> None:
        """Drops the leading cache positions no row attends to any more (left padding of rows that left), so a
        batch that never empties under steady load does not grow without bound."""
        if not self.joinable:
            return
        used = self.mask.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else 0
        if first > 0:
            self.mask = self.mask[:, first:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    @staticmethod
    def merge(a: "_Batch | None", b: "_Batch | None") -> "_Batch | None":
        """One batch of both: the shorter cache and mask are padded on the left (masked out) to equal length."""
        if a is None or b is None:
            return a or b
        width = max(a.mask.shape[1], b.mask.shape[1])

        def left_pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - t.shape[dim]
            if not missing:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        for mine, theirs in zip(a.cache.layers, b.cache.layers):
            mine.keys = torch.cat([left_pad(mine.keys, 2), left_pad(theirs.keys, 2)])
            mine.values = torch.cat([left_pad(mine.values, 2), left_pad(theirs.values, 2)])
        a.mask = torch.cat([left_pad(a.mask, 1), left_pad(b.mask, 1)])
        a.positions = torch.cat([a.positions, b.positions])
        a.pending = torch.cat([a.pending, b.pending])
        a.rows = a.rows + b.rows
        a._trim()
        return a
