import random

import pytest
import torch

from tests.tiny import tiny_llama
from tuneforge.data.collator import PaddedCollator, PaddingFreeCollator
from tuneforge.models.varlen_attention import restore_sdpa, use_varlen_attention
from tuneforge.train.trainer import supervised_loss_sum, supervised_loss_sum_sharded


def _examples(vocab: int, n=5, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(4, 20)
        ids = [rng.randrange(vocab) for _ in range(length)]
        cut = rng.randint(1, length - 1)
        out.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
    return out


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss, n = supervised_loss_sum(model, batch, chunk_size=7)
    (loss / n).backward()
    return (loss / n).item(), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("varlen", [False, True])
def test_padded_and_padding_free_give_same_loss_and_grads(chatml_tok, varlen):
    model = tiny_llama(chatml_tok)
    examples = _examples(len(chatml_tok))
    padded = PaddedCollator(chatml_tok.pad_token_id)(examples)
    free = PaddingFreeCollator()(examples)
    assert free["input_ids"].shape[0] == 1 and "attention_mask" not in free
    assert int((padded["shift_labels"] != -100).sum()) == int((free["shift_labels"] != -100).sum())
    loss_a, grads_a = _loss_and_grads(model, padded)
    if varlen:
        assert use_varlen_attention(model)
    loss_b, grads_b = _loss_and_grads(model, free)
    assert abs(loss_a - loss_b) < 1e-5
    for k in grads_a:
        assert torch.allclose(grads_a[k], grads_b[k], atol=1e-5), k


def test_pt_blocks_padded_vs_padding_free(chatml_tok):
    model = tiny_llama(chatml_tok)
    blocks = [{"input_ids": e["input_ids"], "labels": list(e["input_ids"])} for e in _examples(len(chatml_tok), seed=3)]
    a, _ = _loss_and_grads(model, PaddedCollator(chatml_tok.pad_token_id)(blocks))
    b, _ = _loss_and_grads(model, PaddingFreeCollator()(blocks))
    assert abs(a - b) < 1e-5


@pytest.mark.parametrize("attention", ["sdpa", "varlen", "eager"])
def test_packed_attention_never_crosses_examples(chatml_tok, attention):
    """Every attention the runner treats as padding-free-capable keeps packed examples apart."""
    model = tiny_llama(chatml_tok).eval()
    if attention == "varlen":
        assert use_varlen_attention(model)
    elif attention == "eager":
        model.set_attn_implementation("eager")
    examples = _examples(len(chatml_tok), n=3, seed=1)
    perturbed = [dict(e) for e in examples]
    perturbed[1] = {"input_ids": [(t + 1) % 300 for t in examples[1]["input_ids"]], "labels": examples[1]["labels"]}

    def logits(batch):
        b = PaddingFreeCollator()(batch)
        with torch.no_grad():
            return model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits[0]

    a, b = logits(examples), logits(perturbed)
    n0, n1 = len(examples[0]["input_ids"]), len(examples[1]["input_ids"])
    assert torch.allclose(a[:n0], b[:n0], atol=1e-6)
    assert torch.allclose(a[n0 + n1 :], b[n0 + n1 :], atol=1e-6)
    assert not torch.allclose(a[n0 : n0 + n1], b[n0 : n0 + n1])


def test_shift_never_crosses_into_next_example():
    batch = PaddingFreeCollator()([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]}])
    assert batch["shift_labels"].tolist() == [[2, 3, -100, 5, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    neat = PaddingFreeCollator()([{"input_ids": [1, 2, 3, 4, 5], "labels": [1, 2, 3, 4, 5], "segments": [3, 2]}])
    assert neat["shift_labels"].tolist() == batch["shift_labels"].tolist()


def test_varlen_attention_falls_back_and_restores(chatml_tok):
    model = tiny_llama(chatml_tok).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=False).logits
        assert use_varlen_attention(model)
        assert torch.allclose(model(input_ids=ids, use_cache=False).logits, ref, atol=1e-6)
        assert model.generate(ids, max_new_tokens=2, do_sample=False).shape == (1, 6)
    restore_sdpa(model)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("padding_free", [True, False])
def test_sharded_path_equals_chunked_path(chatml_tok, padding_free):
    """The path used under DeepSpeed ZeRO-3 / FSDP (logits inside the model's forward) gives the same loss."""
    model = tiny_llama(chatml_tok)
    examples = _examples(len(chatml_tok), seed=5)
    batch = PaddingFreeCollator()(examples) if padding_free else PaddedCollator(chatml_tok.pad_token_id)(examples)
    a, n_a = supervised_loss_sum(model, batch, chunk_size=7)
    b, n_b = supervised_loss_sum_sharded(model, batch)
    assert n_a == n_b and abs(a.item() - b.item()) < 1e-3
