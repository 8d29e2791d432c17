"""The training loop of the stages that sample from the policy (ppo, grpo), on transformers.Trainer.

Work goes in rollout buffers. A buffer is the completions of a fixed set of prompts, sampled and scored
once (no gradient), then trained on for `passes` passes (ppo_epochs, or grpo's num_iterations) of
`steps_per_pass` optimizer steps each, every optimizer step being gradient_accumulation_steps micro-batches
of per_device_train_batch_size rollouts (shuffled anew for each pass).

The Trainer keeps counting optimizer steps, logging, scheduling and checkpointing as for any stage. Its
data loader yields, for every micro-step, the prompts of the buffer that micro-step trains on (see
RolloutBatchSampler); `training_step` samples a new buffer when the step count reaches one, and hands the
Trainer the micro-batch of rollouts instead. A checkpoint saved in the middle of a buffer keeps the buffer
(and the stage's own state, such as the adaptive KL coefficient), so a resumed run trains on the same
rollouts as an uninterrupted one.

A stage brings an *experience* object:
- `make(model, prompt_ids, extra) -> Buffer`: samples and scores the rollouts of these prompts;
- `batch(rollouts) -> dict`: the tensors of a micro-batch for the stage's objective;
- `count_items(rollouts) -> int`: what the objective's loss sum is divided by (tokens or sequences);
- `state_dict()` / `load_state_dict(state)`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from ..errors import ConfigError
from .trainer import TuneforgeTrainer
from ..labels import IGNORE

STATE_FILE = "rollout_state.pt"


@dataclass
class Buffer:
    number: int  # which buffer of the run (a step count / steps per buffer)
    rollouts: list[dict]
    metrics: dict[str, tuple[float, int]] = field(default_factory=dict)
    forward_lengths: list[int] = field(default_factory=list)  # sequences run without gradient to score them
    forward_supervised: int = 0


def rollout_sequences(rollouts: list[dict]) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of each rollout for data.collator.pack_sequences: prompt + completion, the completion
    supervised."""
    return [(r["prompt"] + r["completion"], [IGNORE] * len(r["prompt"]) + r["completion"]) for r in rollouts]


class RolloutBatchSampler:
    """For every micro-step, the indices of its buffer's prompts: a new set of `prompts_per_buffer` for each
    buffer (a seeded shuffle per epoch, each process its own share), repeated `repeats` times (the buffer's
    micro-steps). An epoch covers the dataset once, less a remainder too small for a buffer."""

    def __init__(self, num_prompts: int, prompts_per_buffer: int, repeats: int, seed: int, rank: int = 0,
                 world: int = 1):
        self.num_prompts, self.size, self.repeats = num_prompts, prompts_per_buffer, repeats
        self.seed, self.rank, self.world = seed, rank, world
        self.buffers = num_prompts // (prompts_per_buffer * world)
        if self.buffers == 0:
            raise ConfigError(
                f"the dataset has {num_prompts} prompts, fewer than the {prompts_per_buffer * world} one rollout buffer "
                "samples from; add prompts or lower per_device_train_batch_size, gradient_accumulation_steps or "
                "ppo_buffer_size")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.buffers * self.repeats

    def __iter__(self):
        order = torch.randperm(self.num_prompts, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        for b in range(self.buffers):
            start = (b * self.world + self.rank) * self.size
            indices = order[start : start + self.size].tolist()
            for _ in range(self.repeats):
                yield indices


class EpochDataLoader(DataLoader):
    """A DataLoader whose set_epoch reaches its batch sampler (the Trainer calls set_epoch on the loader),
    so every epoch deals the prompts in a new order."""

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


class RolloutTrainer(TuneforgeTrainer):
    def __init__(self, *args, experience, passes: int, steps_per_pass: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.experience = experience
        if hasattr(experience, "reduce"):
            experience.reduce = self._sum_over_processes  # buffer-wide statistics span every process
        self.passes, self.steps_per_pass = passes, steps_per_pass
        self.buffer: Buffer | None = None
        self.micro_step: int | None = None  # micro-steps taken, this run (set from global_step on the first)
        self._step_cache: tuple = (None, [], 0.0)  # (optimizer step, its rollouts, its item count)

    @property
    def steps_per_buffer(self) -> int:
        return self.passes * self.steps_per_pass

    def rollouts_per_buffer(self) -> int:
        args = self.args
        return args.per_device_train_batch_size * args.gradient_accumulation_steps * self.steps_per_pass

    def get_train_dataloader(self):
        args = self.args
        sampler = RolloutBatchSampler(len(self.train_dataset), self.prompts_per_buffer(), self.micro_steps_per_buffer(),
                                      args.seed, args.process_index, args.world_size)
        # Not prepared by accelerate: the sampler already gives each process its own prompts, and its
        # repeated batches must not be dealt out among processes.
        return EpochDataLoader(self.train_dataset, batch_sampler=sampler, collate_fn=self.data_collator)

    def micro_steps_per_buffer(self) -> int:
        return self.steps_per_buffer * self.args.gradient_accumulation_steps

    def prompts_per_buffer(self) -> int:
        return self.rollouts_per_buffer() // getattr(self.experience, "completions_per_prompt", 1)

    def training_step(self, model, inputs, num_items_in_batch=None):
        accumulation, size = self.args.gradient_accumulation_steps, self.args.per_device_train_batch_size
        if self.micro_step is None:
            self.micro_step = self.state.global_step * accumulation
        number = self.state.global_step // self.steps_per_buffer
        if self.buffer is None or self.buffer.number != number:
            self.buffer = self._new_buffer(model, inputs, number)
        rollouts, items = self._step_rollouts()
        micro = self.micro_step % accumulation
        self.micro_step += 1
        batch = self.experience.batch(rollouts[micro * size : (micro + 1) * size])
        return super().training_step(model, batch, torch.tensor(items, device=self.args.device))

    def _step_rollouts(self) -> tuple[list[dict], float]:
        """This optimizer step's rollouts, in micro-batch order, and the item count its loss is divided by
        (over every process): worked out once per step, not per micro-batch."""
        step = self.state.global_step
        if self._step_cache[0] != step:
            pass_index, step_in_pass = divmod(step % self.steps_per_buffer, self.steps_per_pass)
            per_step = self.args.gradient_accumulation_steps * self.args.per_device_train_batch_size
            chosen = self._order(pass_index)[step_in_pass * per_step : (step_in_pass + 1) * per_step]
            rollouts = [self.buffer.rollouts[i] for i in chosen]
            items = self._sum_over_processes([float(self.experience.count_items(rollouts))])[0]
            self._step_cache = (step, rollouts, items)
        return self._step_cache[1], self._step_cache[2]

    def _new_buffer(self, model, inputs: dict, number: int) -> Buffer:
        with self.compute_loss_context_manager():
            buffer = self.experience.make(self.accelerator.unwrap_model(model), inputs["prompt_ids"], inputs["extra"])
        buffer.number = number
        self.window.add("train", buffer.metrics)
        self.forward_tokens_seen += sum(buffer.forward_lengths)
        self.forward_supervised_seen += buffer.forward_supervised
        self.forward_example_lengths.extend(buffer.forward_lengths)
        return buffer

    def _order(self, pass_index: int) -> list[int]:
        """The buffer's rollouts in the order of this pass: a shuffle seeded by run seed, buffer and pass."""
        seed = self.args.seed * 1_000_003 + self.buffer.number * 1009 + pass_index
        return torch.randperm(len(self.buffer.rollouts), generator=torch.Generator().manual_seed(seed)).tolist()

    def _state_path(self, folder: str) -> str:
        name = STATE_FILE if self.args.world_size <= 1 else f"rollout_state-{self.args.process_index}.pt"
        return os.path.join(folder, name)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        torch.save({"buffer": self.buffer, "experience": self.experience.state_dict()}, self._state_path(folder))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = self._state_path(resume_from_checkpoint)
        if os.path.isfile(path):
            state = torch.load(path, weights_only=False)
            self.buffer = state["buffer"]
            self.experience.load_state_dict(state["experience"])

    def _save(self, output_dir=None, state_dict=None):
        with policy_adapter_only(self.model):
            super()._save(output_dir, state_dict)


@contextmanager
def policy_adapter_only(model):
    """Saving a PEFT model writes every adapter it holds; a reward model loaded as a second adapter
    (reward_model_type: lora) is not part of the result, so it is hidden while saving."""
    from ..models.adapters import unwrap

    inner = unwrap(model)
    configs = getattr(inner, "peft_config", None)
    hidden = {k: configs.pop(k) for k in list(configs) if k != "default"} if isinstance(configs, dict) else {}
    try:
        yield
    finally:
        if hidden:
            configs.update(hidden)
