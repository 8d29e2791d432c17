"""DPO/KTO/RM objectives: padded and padding-free batches give the same losses and gradients, the LoRA
reference is the model with its adapters off, and the first DPO step of a fresh LoRA is ln 2."""

import math

import pytest
import torch

from tests.train.preference_data import separable_pairs
from tuneforge.config.args import FinetuneArgs, ModelArgs, PreferenceArgs
from tuneforge.data.collator import KTOCollator, PairwiseCollator
from tuneforge.data.conversation import Conversation, Message
from tuneforge.data.processors import ProcessorOptions, add_kl_pairs, kto_example, pairwise_example
from tuneforge.data.templates.auto import AutoTemplate


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    """The tiny model with LoRA whose B matrices are random, so policy and reference differ."""
    from tuneforge.models.loader import load_model, load_tokenizer
    from tuneforge.models.varlen_attention import use_varlen_attention

    tokenizer = load_tokenizer(ModelArgs(model_name_or_path=tiny_model_dir))
    model = load_model(ModelArgs(model_name_or_path=tiny_model_dir), FinetuneArgs(lora_rank=4), tokenizer,
                       is_trainable=True)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    use_varlen_attention(model)
    return model, tokenizer


def pair_examples(tokenizer, n=4):
    out = []
    for row in separable_pairs(n, seed=5):
        conv = Conversation(messages=[Message("user", row["instruction"])],
                            chosen=Message("assistant", row["chosen"]), rejected=Message("assistant", row["rejected"]))
        example, _ = pairwise_example(AutoTemplate(), tokenizer, conv, ProcessorOptions(cutoff_len=256))
        out.append(example)
    return out


def loss_and_grads(model, objective, batch):
    model.zero_grad()
    out = objective(model, batch)
    (out.total / out.items).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out, grads


def assert_same(a, b):
    (out_a, grads_a), (out_b, grads_b) = a, b
    assert out_a.total.item() == pytest.approx(out_b.total.item(), abs=1e-5)
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6), name
    for key in out_a.metrics:
        assert out_a.metrics[key][0] == pytest.approx(out_b.metrics[key][0], abs=1e-4), key


@pytest.mark.parametrize("pref_loss", ["sigmoid", "ipo", "orpo"])
def test_dpo_padded_and_padding_free_give_the_same_loss_and_gradients(lora_model, pref_loss):
    from tuneforge.train.dpo import DPOObjective
    from tuneforge.train.reference import Reference

    model, tokenizer = lora_model
    examples = pair_examples(tokenizer)
    objective = DPOObjective(PreferenceArgs(pref_loss=pref_loss, pref_ftx=0.5), Reference(None, 16), chunk_size=16)
    free = loss_and_grads(model, objective, PairwiseCollator(True, tokenizer.pad_token_id)(examples))
    padded = loss_and_grads(model, objective, PairwiseCollator(False, tokenizer.pad_token_id)(examples))
    assert_same(free, padded)
    assert free[0].items == 4 and free[0].total.item() > 0
    assert any(g.abs().max() > 0 for g in free[1].values())


def test_dpo_reference_is_the_model_with_adapters_off(lora_model):
    from tuneforge.train.logps import sequence_logps
    from tuneforge.train.reference import Reference

    model, tokenizer = lora_model
    batch = PairwiseCollator(True, tokenizer.pad_token_id)(pair_examples(tokenizer))
    ref = Reference(None).logps(model, batch, 8).sums
    with model.disable_adapter(), torch.no_grad():
        base = sequence_logps(model, batch, 8).sums
    policy = sequence_logps(model, batch, 8).sums.detach()
    assert torch.allclose(ref, base) and not torch.allclose(ref, policy)
    # The plain computation over full logits gives the same sums.
    with model.disable_adapter(), torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits.float()
    targets = batch["shift_labels"][0]
    mask = targets != -100
    token = torch.log_softmax(logits[0][mask], -1).gather(1, targets[mask][:, None]).squeeze(1)
    plain = torch.zeros(8).index_add(0, batch["sequence_index"][0][mask], token)
    assert torch.allclose(ref, plain, atol=1e-4)


def test_fresh_lora_dpo_loss_is_ln2(tiny_model_dir):
    from tuneforge.models.loader import load_model, load_tokenizer
    from tuneforge.train.dpo import DPOObjective
    from tuneforge.train.reference import Reference

    tokenizer = load_tokenizer(ModelArgs(model_name_or_path=tiny_model_dir))
    model = load_model(ModelArgs(model_name_or_path=tiny_model_dir), FinetuneArgs(), tokenizer, is_trainable=True)
    batch = PairwiseCollator(True, tokenizer.pad_token_id)(pair_examples(tokenizer))
    out = DPOObjective(PreferenceArgs(), Reference(None))(model, batch)
    assert out.total.item() / out.items == pytest.approx(math.log(2), abs=1e-6)
    assert out.metrics["rewards/chosen"][0] == 0 and out.metrics["rewards/margins"][0] == 0


def test_kto_padded_and_padding_free_give_the_same_loss_and_gradients(lora_model):
    from datasets import Dataset

    from tuneforge.train.kto import KTOObjective
    from tuneforge.train.reference import Reference

    model, tokenizer = lora_model
    rows = []
    for i, row in enumerate(separable_pairs(4, seed=9)):
        conv = Conversation(messages=[Message("user", row["instruction"]), Message("assistant", row["chosen"])],
                            kto_tag=i % 2 == 0)
        rows.append(kto_example(AutoTemplate(), tokenizer, conv, ProcessorOptions(cutoff_len=256))[0])
    data = add_kl_pairs(Dataset.from_list(rows), cutoff_len=256, seed=0)
    examples = list(data)
    for e in examples:  # a KL pair is the example's prompt and another example's response
        assert e["kl_input_ids"] != e["input_ids"] and e["kl_labels"].count(-100) == e["labels"].count(-100)
    objective = KTOObjective(PreferenceArgs(pref_beta=0.5, pref_ftx=0.2), Reference(None, 8), chunk_size=8)
    free = loss_and_grads(model, objective, KTOCollator(True, tokenizer.pad_token_id)(examples))
    padded = loss_and_grads(model, objective, KTOCollator(False, tokenizer.pad_token_id)(examples))
    assert_same(free, padded)
    assert free[0].metrics["kl"][0] >= 0 and free[0].forward_lengths


def test_reward_scores_padded_and_padding_free_agree(lora_model):
    from tuneforge.models.value_head import attach_value_head, new_value_head
    from tuneforge.train.rm import PairwiseRewardObjective

    model, tokenizer = lora_model
    attach_value_head(model, new_value_head(model.config.hidden_size, seed=1))
    try:
        examples = pair_examples(tokenizer)
        objective = PairwiseRewardObjective()
        free = loss_and_grads(model, objective, PairwiseCollator(True, tokenizer.pad_token_id)(examples))
        padded = loss_and_grads(model, objective, PairwiseCollator(False, tokenizer.pad_token_id)(examples))
        assert_same(free, padded)
        assert free[1]["v_head.weight"].abs().max() > 0
    finally:
        del model.v_head
