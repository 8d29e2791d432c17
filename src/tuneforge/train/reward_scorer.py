"""Scores sampled responses with a reward model written by `stage: rm` (for ppo, and grpo's reward_model).

reward_model_type lora: the reward model's adapter is loaded as a second adapter ("reward") on the
policy's own base weights, and switched on only while scoring, so one copy of the base serves the policy,
the reference (adapters off) and the reward model. full: the reward model is loaded as a model of its own.
Either way the score is the value head applied to the last token's final hidden state, as stage rm trained
it. The sequence scored is the one stage rm would have seen for this reply: the prompt and completion ids as
sampled (the reward model must share the policy's tokenizer), the completion's stop token replaced by the
template's end of reply (`suffix`, e.g. "<|im_end|>\n"), which a reply cut by max_new_tokens gets too.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import ModelError
from ..models.adapters import unwrap
from ..models.value_head import hidden_size, load_value_head, score
from .logps import last_token_hidden

ADAPTER = "reward"


@contextmanager
def active_adapter(peft_model, name: str):
    """Runs with adapter `name` active. peft's set_adapter also changes which parameters require
    gradients, so the flags are put back afterwards: the policy's adapter must stay trainable."""
    flags = [(p, p.requires_grad) for p in peft_model.parameters()]
    previous = peft_model.active_adapter
    peft_model.set_adapter(name)
    try:
        yield peft_model
    finally:
        peft_model.set_adapter(previous)
        for p, flag in flags:
            p.requires_grad_(flag)


class RewardScorer:
    def __init__(self, head, model=None, pack=None, batch_size: int = 8, suffix=(), stop_ids=()):
        self.head = head
        self.model = model  # None: the policy's "reward" adapter
        self.pack = pack  # list of (ids, labels) -> batch (data.collator.pack_sequences with its settings)
        self.batch_size = batch_size
        self.suffix, self.stop_ids = list(suffix), set(stop_ids)

    def sequence(self, prompt: list[int], completion: list[int]) -> list[int]:
        content = completion[:-1] if completion and completion[-1] in self.stop_ids else completion
        return prompt + content + self.suffix

    @torch.no_grad()
    def score(self, policy, prompts: list[list[int]], completions: list[list[int]]) -> torch.Tensor:
        """One float32 score per reply, on the CPU."""
        sequences = [self.sequence(p, c) for p, c in zip(prompts, completions)]
        out = []
        with self._model(policy) as model:  # one adapter switch for all of them
            device = next(model.parameters()).device
            for start in range(0, len(sequences), self.batch_size):
                batch = self.pack([(ids, ids) for ids in sequences[start : start + self.batch_size]])
                batch = {k: v.to(device) for k, v in batch.items()}
                out.append(score(self.head, last_token_hidden(model, batch)).float().cpu())
        return torch.cat(out)

    @contextmanager
    def _model(self, policy):
        if self.model is not None:
            yield self.model
            return
        with active_adapter(unwrap(policy), ADAPTER) as model:
            yield model


def load_reward_scorer(args, policy, tokenizer, pack, suffix: list[int], stop_ids: list[int]) -> RewardScorer:
    """The RewardScorer of args.rl.reward_model (see the module docstring)."""
    from ..models.value_head import load_reward_model
    from ..models.varlen_attention import use_varlen_attention

    folder, device = args.rl.reward_model, args.training.device
    batch = args.training.per_device_train_batch_size
    if args.rl.reward_model_type == "lora":
        head, _ = load_value_head(folder)
        peft = unwrap(policy)
        peft.load_adapter(folder, adapter_name=ADAPTER, is_trainable=False)
        if head.in_features != hidden_size(peft):
            raise ModelError(f"reward_model: its value head takes {head.in_features} features but the policy's hidden "
                             f"size is {hidden_size(peft)}; the reward adapter must belong to the policy's base model")
        base = json.loads((Path(folder).expanduser() / "adapter_config.json").read_text()).get("base_model_name_or_path")
        print(f"[reward] {folder} as a second adapter on the policy's base (trained on {base})")
        return RewardScorer(head.to(device), None, pack, batch, suffix, stop_ids)
    model, head, reward_tokenizer = load_reward_model(folder, infer_dtype=args.model.torch_dtype)
    if reward_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ModelError("reward_model: its tokenizer differs from the policy's, so it cannot score the sampled ids; "
                         "train the reward model on the policy's base model")
    model.to(device)
    model.requires_grad_(False)
    if getattr(unwrap(policy).config, "_attn_implementation", None) == "tuneforge_varlen_sdpa":
        use_varlen_attention(model)
    print(f"[reward] {folder} (its own model)")
    return RewardScorer(head.to(device), model, pack, batch, suffix, stop_ids)
