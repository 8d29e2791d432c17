"""Cross-entropy and log-probabilities computed only at supervised positions, chunk by chunk.

The hidden states of the supervised positions (N x H) are projected by the LM head in chunks of
`chunk_size` rows, so the N x V logits are never held at once. `LinearCrossEntropy` computes the gradients
during the forward pass (the loss is a plain sum, so its gradient does not depend on what comes after),
which saves recomputing the projection in the backward pass. `token_logprobs` returns one log-probability
per position for losses that weigh tokens differently (preference optimisation); its backward recomputes
each chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class LogitsWorkspace:
    """A float32 (rows, vocab) buffer kept from one call to the next by its owner (a training objective, a
    reference), for CPU float32 logits.

    A fresh block of this size (120 MB for 620 rows of a 49,152 vocabulary) is mapped anew by the C
    allocator on every step and paid for in page faults: ~40 ms of a ~1 s step on the tiny benchmark
    model. GPU allocators cache blocks themselves, so there it is not used. Owned by an object rather than
    the module, so two models in one process (a server, a test) never share one."""

    def __init__(self):
        self.buffer: torch.Tensor | None = None

    def logits(self, rows: int, vocab: int, like: torch.Tensor) -> torch.Tensor | None:
        if like.device.type != "cpu" or like.dtype != torch.float32:
            return None
        if self.buffer is None or self.buffer.shape[0] < rows or self.buffer.shape[1] != vocab:
            self.buffer = None
            self.buffer = torch.empty(rows, vocab, dtype=torch.float32)
        return self.buffer


def _logits_buffer(workspace, rows: int, vocab: int, like: torch.Tensor) -> torch.Tensor | None:
    return workspace.logits(rows, vocab, like) if workspace is not None else None


def _chunks(n: int, size: int):
    for start in range(0, n, max(size, 1)):
        yield start, min(start + size, n)


class LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T, target_i), computed chunkwise, fp32 logits."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, workspace):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        same_dtype = hidden.dtype == weight.dtype
        buf = _logits_buffer(workspace, min(chunk_size, hidden.shape[0]), weight.shape[0], hidden) if same_dtype \
            else None
        for a, b in _chunks(hidden.shape[0], chunk_size):
            h = hidden[a:b]
            logits = torch.mm(h, weight.t(), out=buf[: b - a]) if buf is not None else (h @ weight.t()).float()
            picked = logits.gather(1, targets[a:b, None]).squeeze(1)
            # Softmax in place in the logits buffer: the chunk is read four times, never copied.
            peak = logits.amax(dim=-1, keepdim=True)
            norm = logits.sub_(peak).exp_().sum(dim=-1, keepdim=True)
            total += (peak.squeeze(1) + norm.squeeze(1).log() - picked).sum()
            if need_h or need_w:
                g = logits.div_(norm)  # d(CE)/d(logits) = softmax - onehot
                g[torch.arange(b - a, device=g.device), targets[a:b]] -= 1
                g = g.to(hidden.dtype)
                if need_h:
                    grad_h[a:b] = g @ weight
                if need_w:
                    grad_w += (g.t() @ h).float()
        ctx.save_for_backward(grad_h if need_h else None, grad_w if need_w else None)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None


def linear_cross_entropy(hidden, weight, targets, chunk_size: int = 1024, workspace=None) -> torch.Tensor:
    """Sum of token cross-entropies; hidden (N, H), weight (V, H), targets (N,). workspace: the caller's
    LogitsWorkspace, to reuse its buffer."""
    if hidden.shape[0] == 0:
        return hidden.sum() * 0 + weight.sum() * 0
    return LinearCrossEntropy.apply(hidden, weight, targets, chunk_size, workspace)


class TokenLogprobs(torch.autograd.Function):
    """log p(target_i | hidden_i) per position, chunkwise.

    A loss built on these values weighs each position by a factor known only after the forward pass (in
    DPO, a function of the whole pair's log-probabilities), so the gradient cannot be folded in as
    LinearCrossEntropy does. When the LM head is frozen (LoRA, freeze tuning) the gradient of each value
    with respect to its hidden state, W[target] - softmax @ W, is computed in the forward pass while the
    chunk's probabilities are at hand, and the backward pass only scales it: no second projection. When
    the head itself trains, the backward pass recomputes each chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, workspace):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad_base = torch.empty_like(hidden) if need_h and not need_w else None
        same_dtype = hidden.dtype == weight.dtype
        buf = _logits_buffer(workspace, min(chunk_size, hidden.shape[0]), weight.shape[0], hidden) if same_dtype \
            else None
        for a, b in _chunks(hidden.shape[0], chunk_size):
            h = hidden[a:b]
            logits = torch.mm(h, weight.t(), out=buf[: b - a]) if buf is not None else (h @ weight.t()).float()
            picked = logits.gather(1, targets[a:b, None]).squeeze(1)
            peak = logits.amax(dim=-1, keepdim=True)
            norm = logits.sub_(peak).exp_().sum(dim=-1, keepdim=True)
            out[a:b] = picked - peak.squeeze(1) - norm.squeeze(1).log()
            if grad_base is not None:
                probs = logits.div_(norm).to(hidden.dtype)
                grad_base[a:b] = weight[targets[a:b]] - probs @ weight  # d log p / d hidden
        if grad_base is not None:
            ctx.save_for_backward(grad_base)
        elif need_h or need_w:
            ctx.save_for_backward(hidden, weight, targets)
        ctx.precomputed = grad_base is not None
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.precomputed:
            (grad_base,) = ctx.saved_tensors
            return grad_base * grad_out[:, None].to(grad_base.dtype), None, None, None, None
        hidden, weight, targets = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gh = torch.empty_like(hidden) if need_h else None
        gw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for a, b in _chunks(hidden.shape[0], ctx.chunk_size):
            h = hidden[a:b]
            logits = (h @ weight.t()).float()
            g = -torch.softmax(logits, dim=-1)  # d(logp)/d(logits) = onehot - softmax
            g[torch.arange(b - a, device=g.device), targets[a:b]] += 1
            g = (g * grad_out[a:b, None]).to(hidden.dtype)
            if need_h:
                gh[a:b] = g @ weight
            if need_w:
                gw += (g.t() @ h).float()
        return gh, (gw.to(weight.dtype) if gw is not None else None), None, None, None


def token_logprobs(hidden, weight, targets, chunk_size: int = 1024, workspace=None) -> torch.Tensor:
    """log p(target_i | hidden_i); hidden (N, H), weight (V, H), targets (N,)."""
    if hidden.shape[0] == 0:
        return hidden.sum(dim=-1) * 0 + weight.sum() * 0
    return TokenLogprobs.apply(hidden, weight, targets, chunk_size, workspace)


def reference_cross_entropy(hidden, weight, targets) -> torch.Tensor:
    """The plain full-logits computation the chunked ones must equal (used by tests)."""
    return F.cross_entropy((hidden @ weight.t()).float(), targets, reduction="sum")
