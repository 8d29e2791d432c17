import torch

from tuneforge.train.loss import linear_cross_entropy, reference_cross_entropy, token_logprobs


def _inputs(seed=0, n=37, h=16, v=50):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, targets


def test_chunked_cross_entropy_equals_full_value_and_grads():
    for chunk in (1, 5, 37, 100):
        h1, w1, t = _inputs()
        h2, w2, _ = _inputs()
        a = linear_cross_entropy(h1, w1, t, chunk) * 0.5
        b = reference_cross_entropy(h2, w2, t) * 0.5
        a.backward()
        b.backward()
        assert torch.allclose(a, b, atol=1e-4)
        assert torch.allclose(h1.grad, h2.grad, atol=1e-5)
        assert torch.allclose(w1.grad, w2.grad, atol=1e-5)


def test_frozen_head_gets_no_gradient():
    h, w, t = _inputs()
    w.requires_grad_(False)
    linear_cross_entropy(h, w, t, 8).backward()
    assert h.grad is not None and w.grad is None


def test_token_logprobs_equal_log_softmax_with_weighted_grads():
    h1, w1, t = _inputs(1)
    h2, w2, _ = _inputs(1)
    weights = torch.linspace(-1, 2, t.numel())
    a = token_logprobs(h1, w1, t, 6)
    b = torch.log_softmax(h2 @ w2.t(), -1).gather(1, t[:, None]).squeeze(1)
    assert torch.allclose(a, b, atol=1e-5)
    (a * weights).sum().backward()
    (b * weights).sum().backward()
    assert torch.allclose(h1.grad, h2.grad, atol=1e-5)
    assert torch.allclose(w1.grad, w2.grad, atol=1e-5)


def test_reused_logits_buffer_never_leaks_between_calls():
    # The CPU float32 path keeps its logits buffer from call to call in its owner's workspace; sizes that
    # shrink and grow must not read what an earlier call left behind.
    from tuneforge.train.loss import LogitsWorkspace

    workspace = LogitsWorkspace()
    for n, chunk in ((37, 100), (5, 100), (37, 8), (60, 64), (3, 2)):
        g = torch.Generator().manual_seed(n)
        h1 = torch.randn(n, 16, generator=g, requires_grad=True)
        h2 = h1.detach().clone().requires_grad_(True)
        w = torch.randn(50, 16, generator=g)
        t = torch.randint(0, 50, (n,), generator=g)
        a, b = linear_cross_entropy(h1, w, t, chunk, workspace), reference_cross_entropy(h2, w, t)
        a.backward()
        b.backward()
        assert torch.allclose(a, b, atol=1e-4) and torch.allclose(h1.grad, h2.grad, atol=1e-5)
        assert workspace.buffer is not None and workspace.buffer.shape[1] == 50  # it was used, and kept
        assert torch.equal(token_logprobs(h1.detach(), w, t, chunk, workspace),
                           token_logprobs(h1.detach(), w, t, chunk))


def test_token_logprobs_with_a_frozen_head_precompute_the_hidden_gradient():
    # LoRA's case: the head is frozen, so d log p / d hidden is formed in the forward pass and the backward
    # only scales it. Values and gradients must equal the plain computation, for any chunking.
    for chunk in (1, 6, 37, 100):
        h1, w, t = _inputs(2)
        w = w.detach()
        h2 = h1.detach().clone().requires_grad_(True)
        weights = torch.linspace(-1, 2, t.numel())
        a = token_logprobs(h1, w, t, chunk)
        b = torch.log_softmax(h2 @ w.t(), -1).gather(1, t[:, None]).squeeze(1)
        assert torch.allclose(a, b, atol=1e-5)
        (a * weights).sum().backward()
        (b * weights).sum().backward()
        assert torch.allclose(h1.grad, h2.grad, atol=1e-5)


def test_token_logprobs_without_gradient_and_empty():
    h, w, t = _inputs(3)
    with torch.no_grad():
        a = token_logprobs(h, w, t, 4)
    assert not a.requires_grad
    assert torch.allclose(a, torch.log_softmax(h @ w.t(), -1).gather(1, t[:, None]).squeeze(1), atol=1e-5)
    empty = token_logprobs(h[:0], w, t[:0], 4)
    assert empty.shape == (0,)
