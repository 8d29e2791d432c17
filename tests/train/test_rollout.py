"""The pieces of the ppo/grpo loop: batched sampling, per-token scores, the prompt sampler, and scoring
with a reward model loaded as a second adapter."""

import types

import pytest
import torch

from tests.tiny import save_tiny_model
from tests.train.test_train_e2e import base_args
from tuneforge.data.collator import pack_sequences
from tuneforge.errors import ConfigError
from tuneforge.train.rollout import HFGenerator, Sampling, cut_at_stop
from tuneforge.train.rollout_trainer import EpochDataLoader, RolloutBatchSampler
from tuneforge.train.token_scores import completion_scores, rows

GREEDY = Sampling(do_sample=False, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = save_tiny_model(tmp_path_factory.mktemp("rollout-tiny"), initializer_range=0.2)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return path, model, AutoTokenizer.from_pretrained(path)


def prompts(tokenizer):
    texts = ["Hello! How are you today?", "Who are you?", "The quick brown fox jumps over the lazy dog again."]
    return [tokenizer(t).input_ids for t in texts]


def test_cut_at_stop():
    assert cut_at_stop([5, 6, 2, 7, 2], {2}) == ([5, 6, 2], True)
    assert cut_at_stop([5, 6, 7], {2, 3}) == ([5, 6, 7], False)
    assert cut_at_stop([3], {2, 3}) == ([3], True)


def test_batched_left_padded_sampling_equals_one_prompt_at_a_time(tiny):
    _, model, tokenizer = tiny
    generator = HFGenerator(GREEDY, [tokenizer.eos_token_id], tokenizer.pad_token_id)
    together = generator.sample(model, prompts(tokenizer), n=2)
    assert len(together) == 6 and together.prompts[0] == together.prompts[1] == prompts(tokenizer)[0]
    for i, prompt in enumerate(prompts(tokenizer)):
        alone = generator.sample(model, [prompt])
        assert together.completions[2 * i] == together.completions[2 * i + 1] == alone.completions[0]
        assert len(alone.completions[0]) == 6 and alone.stopped == [False]


def test_each_sequence_stops_at_its_own_stop_token(tiny):
    _, model, tokenizer = tiny
    plain = HFGenerator(GREEDY, [tokenizer.eos_token_id], tokenizer.pad_token_id).sample(model, prompts(tokenizer))
    stop = plain.completions[1][2]  # the third token the second prompt gets: make it a stop token
    stopping = HFGenerator(GREEDY, [tokenizer.eos_token_id, stop], tokenizer.pad_token_id).sample(model, prompts(tokenizer))
    for before, after, done in zip(plain.completions, stopping.completions, stopping.stopped):
        expected, hit = cut_at_stop(before, {stop, tokenizer.eos_token_id})
        assert after == expected and done == hit
    assert stopping.completions[1] == plain.completions[1][:3] and stopping.stopped[1]


@pytest.mark.parametrize("padding_free", [True, False])
def test_completion_scores_are_the_log_softmax_at_completion_tokens(tiny, padding_free):
    _, model, tokenizer = tiny
    pairs = [(p, p[-2:] + [7, 9]) for p in prompts(tokenizer)]  # (prompt, completion)
    batch = pack_sequences([(p + c, [-100] * len(p) + c) for p, c in pairs], padding_free, tokenizer.pad_token_id)
    with torch.no_grad():
        scores = completion_scores(model, batch, temperature=0.7, values=False, entropy=False)
        expected = []
        for p, c in pairs:
            logits = model(torch.tensor([p + c])).logits[0].float() / 0.7
            picked = torch.log_softmax(logits[len(p) - 1 : -1], dim=-1).gather(1, torch.tensor(c)[:, None])
            expected.append(picked.squeeze(1))
    assert torch.allclose(scores.logps, torch.cat(expected), atol=1e-5)
    assert scores.sequence_index.tolist() == [i for i in range(3) for _ in range(4)]


def test_rows_lays_out_per_token_values_and_keeps_the_gradient():
    flat = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], requires_grad=True)
    matrix, mask = rows(flat, torch.tensor([0, 0, 0, 1, 2, 2]), 3)
    assert matrix.tolist() == [[1, 2, 3], [4, 0, 0], [5, 6, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    (matrix * torch.arange(9.0).view(3, 3)).sum().backward()
    assert flat.grad.tolist() == [0, 1, 2, 3, 6, 7]


def test_prompt_sampler_repeats_each_buffer_and_deals_processes_apart():
    s0 = RolloutBatchSampler(10, prompts_per_buffer=2, repeats=3, seed=1, rank=0, world=2)
    s1 = RolloutBatchSampler(10, prompts_per_buffer=2, repeats=3, seed=1, rank=1, world=2)
    b0, b1 = list(s0), list(s1)
    assert len(s0) == len(b0) == 6  # 10 // (2 x 2) = 2 buffers of 3 micro-steps
    assert b0[0] == b0[1] == b0[2] != b0[3] == b0[4] == b0[5]
    seen = [tuple(b) for b in b0[::3] + b1[::3]]
    assert len({i for b in seen for i in b}) == 8  # no prompt twice in an epoch, across processes
    loader = EpochDataLoader(list(range(10)), batch_sampler=s0, collate_fn=lambda rows: rows)
    loader.set_epoch(1)  # the Trainer reaches the sampler through the loader
    assert list(s0) != b0 and list(loader) == list(s0)
    with pytest.raises(ConfigError, match="the dataset has 3 prompts, fewer than the 4 one rollout buffer"):
        RolloutBatchSampler(3, prompts_per_buffer=4, repeats=1, seed=1)


def test_reward_adapter_scores_like_the_reward_model_alone_and_leaves_the_policy_trainable(tiny, tmp_path):
    from tuneforge.config.args import FinetuneArgs, ModelArgs
    from tuneforge.data.templates import get_template
    from tuneforge.models.loader import load_model
    from tuneforge.models.value_head import load_reward_model
    from tuneforge.train.reward_scorer import RewardScorer, load_reward_scorer
    from tuneforge.train.rl_setup import reply_suffix
    from tuneforge.train.runner import run_train
    from tests.train.rl_data import favoured_token_pairs, write

    path, _, tokenizer = tiny
    data = write(tmp_path, "pairs.json", favoured_token_pairs(tokenizer, 16))
    rm = str(tmp_path / "rm")
    run_train(base_args(path, data, rm, stage="rm", max_steps=3, learning_rate=0.05))

    policy = load_model(ModelArgs(model_name_or_path=path), FinetuneArgs(lora_rank=4), tokenizer, is_trainable=True)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    args = types.SimpleNamespace(
        rl=types.SimpleNamespace(reward_model=rm, reward_model_type="lora"), model=ModelArgs(),
        training=types.SimpleNamespace(device=torch.device("cpu"), per_device_train_batch_size=2))
    template = get_template("auto", tokenizer, None, True)
    suffix = reply_suffix(template, tokenizer)
    assert tokenizer.convert_ids_to_tokens(suffix) == ["<|im_end|>", "Ċ"]
    pack = lambda seqs: pack_sequences(seqs, True, tokenizer.pad_token_id)  # noqa: E731
    stop = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    shared = load_reward_scorer(args, policy, tokenizer, pack, suffix, stop)
    model, head, _ = load_reward_model(rm)
    alone = RewardScorer(head, model, pack, 2, suffix, stop)
    replies = [[30, 40, 50], [60, 70, stop[0]], [80]]
    asked = [prompts(tokenizer)[i] for i in range(3)]
    a, b = shared.score(policy, asked, replies), alone.score(None, asked, replies)
    assert torch.allclose(a, b, atol=1e-5) and a.std() > 0
    assert shared.sequence([1, 2], [60, 70, stop[0]]) == shared.sequence([1, 2], [60, 70]) == [1, 2, 60, 70, *suffix]
    assert {n for n, p in policy.named_parameters() if p.requires_grad} == trainable
    assert policy.active_adapter == "default"


@pytest.mark.parametrize("dtype,tolerance", [(None, 1e-4), (torch.bfloat16, 0.25)])
def test_sampling_weights_match_the_policy_and_leave_its_weights_untouched(tiny, dtype, tolerance):
    from tuneforge.config.args import FinetuneArgs, ModelArgs
    from tuneforge.models.loader import load_model
    from tuneforge.train.rollout import sampling_weights

    path, _, tokenizer = tiny
    policy = load_model(ModelArgs(model_name_or_path=path), FinetuneArgs(lora_rank=4), tokenizer, is_trainable=True)
    torch.manual_seed(0)
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # a trained-looking adapter
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    ids = torch.tensor([prompts(tokenizer)[0]])
    with torch.no_grad():
        expected = policy(ids).logits
        with sampling_weights(policy, dtype) as sampler:
            got = sampler(ids).logits.float()
            assert all(p.dtype == (dtype or torch.float32) for p in policy.parameters())
        after = policy(ids).logits
        with policy.disable_adapter():
            base = policy(ids).logits
    assert torch.allclose(got, expected, atol=tolerance)  # logits of magnitude ~4: bf16 keeps 2-3 digits
    assert (base - expected).abs().max() > 1.0  # the adapter does change the output
    assert torch.equal(after, expected)
    assert all(p.dtype == torch.float32 and torch.equal(p, before[n]) for n, p in policy.named_parameters())
