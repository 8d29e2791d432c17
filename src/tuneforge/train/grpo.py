"""Recipe for stage grpo: group relative policy optimisation (Shao et al. 2024) with reward functions
and/or a reward model.

Each rollout buffer holds num_generations completions of each of its prompts (per_device_train_batch_size x
gradient_accumulation_steps completions: one optimizer step's worth), sampled in one batch. Their rewards
(a weighted sum of reward_funcs and the reward model) are compared within each prompt's group: the
advantage is the reward minus the group mean, over the group std when scale_rewards. The loss is the
clipped importance-ratio objective per completion token, plus beta x the k3 KL to the reference, averaged
as loss_type says; num_iterations optimizer steps reuse each buffer (the ratio then moves away from 1).
"""

from __future__ import annotations

import json

import torch

from . import common
from .reference import check_reference_source
from .rl_setup import RolloutSetup, check_reward_columns
from .loss import LogitsWorkspace
from .rl_loss import grpo_token_losses, kl_penalty, reduce_token_losses
from .rollout_trainer import Buffer, rollout_sequences
from .token_scores import completion_scores, rows
from .trainer import LossOutput
from .forward import sequence_lengths

METRICS = ("reward", "reward_std", "completion_length", "truncated_ratio", "zero_std_ratio", "kl", "clip_ratio",
           "approx_kl")


def metric_names(rewards) -> list[str]:
    """A reward's name in the logs: the function's name (mypkg.rewards:exact_match -> exact_match), unless
    two rewards share it."""
    short = [name.split(":")[-1] for name, _ in rewards]
    return [s if short.count(s) == 1 else name for s, (name, _) in zip(short, rewards)]


class GRPOExperience:
    def __init__(self, generator, tokenizer, rewards, weights, scorer, reference, rl, pack, temperature: float,
                 micro_batch: int, keep_old_logps: bool, chunk_size: int):
        self.generator, self.tokenizer = generator, tokenizer
        self.rewards, self.weights, self.scorer, self.reference = rewards, weights, scorer, reference
        self.completions_per_prompt = rl.num_generations
        self.scale, self.beta, self.loss_type = rl.scale_rewards, rl.beta, rl.loss_type
        self.pack, self.temperature, self.micro_batch = pack, temperature, micro_batch
        self.keep_old_logps, self.chunk_size = keep_old_logps, chunk_size

    def make(self, model, prompt_ids: list[list[int]], extra: list[str]) -> Buffer:
        from .rewards import call_reward, combine
        from .rl_loss import group_advantages

        g = self.completions_per_prompt
        sampled = self.generator.sample(model, prompt_ids, g)
        texts = self.tokenizer.batch_decode(sampled.completions, skip_special_tokens=True)
        row_columns = [row for row in map(json.loads, extra) for _ in range(g)]
        prompts = [c.get("prompt", "") for c in row_columns]
        names = sorted({k for c in row_columns for k in c} - {"prompt"})
        columns = {k: [c.get(k) for c in row_columns] for k in names}
        scores = [call_reward(name, fn, prompts, texts, columns) for name, fn in self.rewards]
        names = metric_names(self.rewards)
        if self.scorer is not None:
            scores.append(self.scorer.score(model, sampled.prompts, sampled.completions))
            names.append("reward_model")
        total = combine(scores, self.weights)
        advantages, group_std = group_advantages(total, g, self.scale)
        rollouts = [{"prompt": p, "completion": c, "advantage": float(a)}
                    for p, c, a in zip(sampled.prompts, sampled.completions, advantages)]
        buffer = Buffer(0, rollouts, self._metrics(names, scores, total, group_std, sampled))
        self._score_without_gradient(model, buffer)
        return buffer

    def _metrics(self, names, scores, total, group_std, sampled) -> dict:
        n = len(total)
        lengths = torch.tensor([len(c) for c in sampled.completions], dtype=torch.float32)
        metrics = {"reward": (float(total.sum()), n), "reward_std": (float(group_std.sum()), n),
                   "completion_length": (float(lengths.sum()), n),
                   "truncated_ratio": (float(n - sum(sampled.stopped)), n),
                   "zero_std_ratio": (float((group_std == 0).sum()), n)}
        for name, values in zip(names, scores):
            metrics[f"rewards/{name}/mean"] = (float(values.sum()), n)
            metrics[f"rewards/{name}/std"] = (float(values.std()) if n > 1 else 0.0, 1)
        return metrics

    @torch.no_grad()
    def _score_without_gradient(self, model, buffer: Buffer) -> None:
        """The old policy's log-probabilities (needed when a buffer trains more than one step) and the
        reference's (when beta > 0), in micro-batches, stored with each rollout."""
        if not (self.keep_old_logps or self.beta):
            return
        for start in range(0, len(buffer.rollouts), self.micro_batch):
            part = buffer.rollouts[start : start + self.micro_batch]
            batch = self._to(model, self.batch(part))
            sizes = [len(r["completion"]) for r in part]
            if self.keep_old_logps:
                logps = completion_scores(model, batch, self.temperature, self.chunk_size).logps
                for r, lp in zip(part, logps.cpu().split(sizes)):
                    r["old_logps"] = lp
            if self.beta:
                with self.reference.scoring_model(model) as ref:
                    logps = completion_scores(ref, batch, self.temperature, self.chunk_size).logps
                for r, lp in zip(part, logps.cpu().split(sizes)):
                    r["ref_logps"] = lp
                buffer.forward_lengths += sequence_lengths(batch)
                buffer.forward_supervised += sum(sizes)

    @staticmethod
    def _to(model, batch: dict) -> dict:
        device = next(model.parameters()).device
        return {k: v.to(device) for k, v in batch.items()}

    def batch(self, rollouts: list[dict]) -> dict:
        out = self.pack(rollout_sequences(rollouts))
        out["advantages"] = torch.tensor([r["advantage"] for r in rollouts], dtype=torch.float32)
        for key in ("old_logps", "ref_logps"):
            if key in rollouts[0]:
                out[key] = torch.cat([r[key] for r in rollouts])
        return out

    def count_items(self, rollouts: list[dict]) -> int:
        """Tokens for dapo's per-token mean, sequences for grpo and dr_grpo (see rl_loss.reduce_token_losses)."""
        return sum(len(r["completion"]) for r in rollouts) if self.loss_type == "dapo" else len(rollouts)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class GRPOObjective:
    def __init__(self, rl, temperature: float, max_new_tokens: int, chunk_size: int = 1024):
        self.eps_low, self.eps_high = rl.epsilon, rl.epsilon_high if rl.epsilon_high is not None else rl.epsilon
        self.beta, self.loss_type, self.max_new_tokens = rl.beta, rl.loss_type, max_new_tokens
        self.temperature, self.chunk_size = temperature, chunk_size
        self.sharded = False  # set by the Trainer
        self.workspace = LogitsWorkspace()

    def __call__(self, model, inputs: dict) -> LossOutput:
        n = inputs["advantages"].shape[0]
        scores = completion_scores(model, inputs, self.temperature, self.chunk_size, workspace=self.workspace)
        logp, mask = rows(scores.logps, scores.sequence_index, n)
        old = rows(inputs["old_logps"], scores.sequence_index, n)[0] if "old_logps" in inputs else logp.detach()
        ref = rows(inputs["ref_logps"], scores.sequence_index, n)[0] if "ref_logps" in inputs else None
        losses, clipped = grpo_token_losses(logp, old, inputs["advantages"], self.eps_low, self.eps_high, ref,
                                            self.beta)
        total, items = reduce_token_losses(losses, mask, self.loss_type, self.max_new_tokens)
        tokens = int(mask.sum())
        drift = 0.5 * (logp.detach() - old) ** 2  # ~KL(old || current): 0 on a buffer's first step
        metrics = {"clip_ratio": (float(clipped[mask].sum()), tokens), "approx_kl": (float(drift[mask].sum()), tokens)}
        if ref is not None:
            metrics["kl"] = (float(kl_penalty(logp.detach(), ref, "k3")[mask].sum()), tokens)
        return LossOutput(total, items, sequence_lengths(inputs), supervised=tokens, metrics=metrics)


def run(args) -> dict:
    from .rewards import parse_reward_weights, resolve_reward_funcs

    rl, training = args.rl, args.training
    tokenizer, template = common.start(args)
    if rl.beta:
        check_reference_source(args)
    rewards = resolve_reward_funcs(rl.reward_funcs, rl.format_pattern) if rl.reward_funcs else []
    check_reward_columns(rewards, args.data)
    data = common.load_data(args, tokenizer, template)
    weights = parse_reward_weights(rl.reward_weights, len(rewards) + (1 if rl.reward_model else 0))
    names = metric_names(rewards) + (["reward_model"] if rl.reward_model else [])
    per_reward = [f"rewards/{name}/{k}" for name in names for k in ("mean", "std")]

    setup = RolloutSetup(args, tokenizer, template)
    pack = setup.pack
    scorer = setup.reward_scorer() if rl.reward_model else None
    reference = setup.reference() if rl.beta else None
    keep_old = rl.num_iterations > 1
    experience = GRPOExperience(setup.generator, tokenizer, rewards, weights, scorer, reference, rl, pack,
                                setup.sampling.logit_temperature, training.per_device_train_batch_size, keep_old,
                                args.finetune.loss_chunk_size)
    objective = GRPOObjective(rl, setup.sampling.logit_temperature, setup.sampling.max_new_tokens,
                              args.finetune.loss_chunk_size)
    trainer = setup.trainer(data, objective, experience, passes=rl.num_iterations, steps_per_pass=1,
                            metric_names=METRICS + tuple(per_reward))
    plots = {"training_rewards.png": ["reward"] + [k for k in per_reward if k.endswith("/mean")],
             "training_completion_length.png": ["completion_length"], "training_kl.png": ["kl"]}
    return setup.train(trainer, plots)
