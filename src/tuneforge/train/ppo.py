"""Recipe for stage ppo: RLHF with a reward model (Ziegler et al. 2019, Ouyang et al. 2022).

Each rollout buffer: one response sampled per prompt (ppo_buffer_size optimizer steps' worth), scored by
the reward model at its last token. Per token, the reward is -kl_coef x (log p_policy - log p_reference),
plus the score on the response's last token; a value head on the policy estimates the return before each
token, and generalised advantage estimation (ppo_gamma, ppo_lam) turns rewards and values into advantages
(whitened over the buffer). The buffer is trained on for ppo_epochs passes with the clipped policy
objective and the clipped value loss (weight ppo_vf_coef), averaged over response tokens. With ppo_target
set, the KL coefficient adapts so the KL per response tracks it.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from ..models.value_head import CRITIC_HEAD_FILE
from . import common
from .forward import sequence_lengths
from .loss import LogitsWorkspace
from .rl_loss import (AdaptiveKLController, FixedKLController, gae, kl_penalty, masked_whiten, ppo_policy_losses,
                      ppo_value_losses)
from .reference import check_reference_source
from .rl_setup import RolloutSetup
from .rollout_trainer import Buffer, RolloutTrainer, rollout_sequences
from .token_scores import completion_scores
from .trainer import LossOutput
from .value_head_saving import ValueHeadSaving

METRICS = ("reward", "kl", "kl_coef", "completion_length", "truncated_ratio", "policy_loss", "value_loss",
           "entropy", "clip_fraction", "value_clip_fraction", "approx_kl")
PLOTS = {"training_rewards.png": ["reward"], "training_kl.png": ["kl"],
         "training_ppo_losses.png": ["policy_loss", "value_loss"], "training_entropy.png": ["entropy"]}


def _padded(parts: list[torch.Tensor]) -> torch.Tensor:
    return pad_sequence(parts, batch_first=True)


class PPOExperience:
    completions_per_prompt = 1
    reduce = None  # the trainer sets it to its sum over processes

    def __init__(self, generator, scorer, reference, rl, pack, temperature: float, micro_batch: int, chunk_size: int):
        self.generator, self.scorer, self.reference, self.rl = generator, scorer, reference, rl
        self.pack, self.temperature, self.micro_batch, self.chunk_size = pack, temperature, micro_batch, chunk_size
        self.kl = AdaptiveKLController(rl.ppo_kl_coef, rl.ppo_target, rl.ppo_horizon) if rl.ppo_target \
            else FixedKLController(rl.ppo_kl_coef)

    def make(self, model, prompt_ids: list[list[int]], extra: list[str]) -> Buffer:
        rl = self.rl
        sampled = self.generator.sample(model, prompt_ids, 1)
        scores = self.scorer.score(model, sampled.prompts, sampled.completions)
        rollouts = [{"prompt": p, "completion": c} for p, c in zip(sampled.prompts, sampled.completions)]
        buffer = Buffer(0, rollouts)
        old, values, ref = self._score_without_gradient(model, buffer)
        mask = _padded([torch.ones(len(r["completion"])) for r in rollouts]).bool()
        kl = kl_penalty(old, ref, "k1") * mask
        normed = scores
        if rl.ppo_score_norm:
            normed = masked_whiten(scores, torch.ones_like(scores, dtype=torch.bool), reduce=self.reduce)
        rewards = -self.kl.value * kl
        last = mask.sum(dim=1) - 1
        rewards[torch.arange(len(rollouts)), last] += normed
        if rl.ppo_whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False, reduce=self.reduce)
        advantages, returns = gae(rewards, values, mask, rl.ppo_gamma, rl.ppo_lam)
        advantages = masked_whiten(advantages, mask, reduce=self.reduce)
        for i, r in enumerate(rollouts):
            n = len(r["completion"])
            r.update(old_logps=old[i, :n], old_values=values[i, :n], advantages=advantages[i, :n],
                     returns=returns[i, :n])
        kl_per_response = kl.sum(dim=1)
        count = len(rollouts)
        buffer.metrics = {"reward": (float(scores.sum()), count), "kl": (float(kl_per_response.sum()), count),
                          "kl_coef": (self.kl.value, 1),
                          "completion_length": (float(mask.sum()), count),
                          "truncated_ratio": (float(count - sum(sampled.stopped)), count)}
        sums = [float(kl_per_response.sum()), float(count)]
        kl_sum, total = self.reduce(sums) if self.reduce else sums
        self.kl.update(kl_sum / total, int(total))  # the same on every process
        return buffer

    @torch.no_grad()
    def _score_without_gradient(self, model, buffer: Buffer):
        """(old log-probabilities, old values, reference log-probabilities) as right-padded (n, T) matrices."""
        old, values, ref = [], [], []
        device = next(model.parameters()).device
        for start in range(0, len(buffer.rollouts), self.micro_batch):
            part = buffer.rollouts[start : start + self.micro_batch]
            batch = {k: v.to(device) for k, v in self.pack(rollout_sequences(part)).items()}
            sizes = [len(r["completion"]) for r in part]
            policy = completion_scores(model, batch, self.temperature, self.chunk_size, values=True)
            with self.reference.scoring_model(model) as reference:
                ref_logps = completion_scores(reference, batch, self.temperature, self.chunk_size).logps
            old += policy.logps.cpu().split(sizes)
            values += policy.values.float().cpu().split(sizes)
            ref += ref_logps.cpu().split(sizes)
            buffer.forward_lengths += sequence_lengths(batch) * 2
            buffer.forward_supervised += 2 * sum(sizes)
        return _padded(old), _padded(values), _padded(ref)

    def batch(self, rollouts: list[dict]) -> dict:
        out = self.pack(rollout_sequences(rollouts))
        for key in ("old_logps", "old_values", "advantages", "returns"):
            out[key] = torch.cat([r[key] for r in rollouts])
        return out

    def count_items(self, rollouts: list[dict]) -> int:
        return sum(len(r["completion"]) for r in rollouts)  # the loss is a mean over response tokens

    def state_dict(self) -> dict:
        return {"kl": self.kl.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.kl.load_state_dict(state["kl"])


class PPOObjective:
    def __init__(self, rl, temperature: float, chunk_size: int = 1024):
        self.clip, self.clip_value, self.vf_coef = rl.ppo_cliprange, rl.ppo_cliprange_value, rl.ppo_vf_coef
        self.temperature, self.chunk_size = temperature, chunk_size
        self.sharded = False  # set by the Trainer
        self.workspace = LogitsWorkspace()

    def __call__(self, model, inputs: dict) -> LossOutput:
        s = completion_scores(model, inputs, self.temperature, self.chunk_size, values=True, entropy=True,
                              workspace=self.workspace)
        policy, clipped = ppo_policy_losses(s.logps, inputs["old_logps"], inputs["advantages"], self.clip)
        value, value_clipped = ppo_value_losses(s.values, inputs["old_values"], inputs["returns"], self.clip_value)
        total = (policy + self.vf_coef * value).sum()
        n = int(s.logps.shape[0])
        drift = 0.5 * (s.logps.detach() - inputs["old_logps"]) ** 2
        metrics = {name: (float(v.detach().sum()), n) for name, v in (
            ("policy_loss", policy), ("value_loss", value), ("entropy", s.entropy), ("clip_fraction", clipped),
            ("value_clip_fraction", value_clipped), ("approx_kl", drift))}
        return LossOutput(total, n, sequence_lengths(inputs), supervised=n, metrics=metrics)


class PPOTrainer(ValueHeadSaving, RolloutTrainer):
    head_file = CRITIC_HEAD_FILE


def run(args) -> dict:

    rl, training = args.rl, args.training
    tokenizer, template = common.start(args)
    check_reference_source(args)
    data = common.load_data(args, tokenizer, template)
    setup = RolloutSetup(args, tokenizer, template, value_head=True)
    pack = setup.pack
    scorer = setup.reward_scorer()
    temperature = setup.sampling.logit_temperature
    experience = PPOExperience(setup.generator, scorer, setup.reference(), rl, pack, temperature,
                               training.per_device_train_batch_size, args.finetune.loss_chunk_size)
    objective = PPOObjective(rl, temperature, args.finetune.loss_chunk_size)
    head_meta = {"base_model": args.model.model_name_or_path, "role": "ppo critic", "reward_model": rl.reward_model}
    trainer = setup.trainer(data, objective, experience, passes=rl.ppo_epochs, steps_per_pass=rl.ppo_buffer_size,
                            metric_names=METRICS, trainer_class=PPOTrainer, head_meta=head_meta)
    return setup.train(trainer, PLOTS)
