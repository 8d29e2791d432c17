"""Wiring ppo and grpo share: the policy (with a value head for ppo), the generator, the reference and the
reward model, the rollout trainer, and the train/save sequence. Recipes (ppo.py, grpo.py) use it top to
bottom; what differs between the two stays in the recipe."""

from __future__ import annotations

from functools import partial

from ..data.collator import pack_sequences
from ..data.stops import stop_tokens
from ..errors import ConfigError, TemplateError
from . import common


def check_reward_columns(rewards: list, data_args) -> None:
    """Every column a built-in reward reads is in the rows of every dataset, checked on their first rows
    before anything is tokenized or loaded."""
    from ..data.loader import sample_columns
    from .rewards import required_columns

    needed = required_columns([name for name, _ in rewards])
    if not needed:
        return
    for dataset, rows in sample_columns(data_args).items():
        for column in sorted(needed):
            if rows and not all(column in row for row in rows):
                users = ", ".join(n for n, _ in rewards if column in required_columns([n]))
                present = sorted(set().union(*rows))
                raise ConfigError(
                    f"reward_funcs: {users} needs an '{column}' column in every row, but dataset '{dataset}' has "
                    f"{', '.join(present)}; add '{column}' to its rows or remove {users}")


def reply_suffix(template, tokenizer) -> list[int]:
    """The ids the template puts after a reply's text (its end of turn, such as "<|im_end|>\n"): the
    response ids of an empty assistant message."""
    from ..data.conversation import Conversation, Message
    from ..data.processors import encode_conversation

    conv = Conversation(messages=[Message("user", "?")])
    try:
        turns, _ = encode_conversation(template, tokenizer, conv, conv.messages + [Message("assistant", "")])
    except (TemplateError, ValueError, IndexError):  # a template that cannot render an empty reply
        return []
    return list(turns[-1].response)


def rollout_dtype(name: str):
    """The dtype of the weights while sampling, None for the training dtype. auto: bfloat16 where the
    hardware computes it natively (a GPU with bf16, a CPU with AVX-512 BF16 or AMX), since decoding reads
    every weight once per token; the loss's log-probabilities always come from the training weights."""
    import torch

    from ..config.validate import _cpu_has_bf16

    if name == "auto":
        native = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else _cpu_has_bf16()
        return torch.bfloat16 if native else None
    return getattr(torch, name)


class RolloutSetup:
    def __init__(self, args, tokenizer, template, value_head: bool = False):
        from ..models.loader import load_model
        from ..models.varlen_attention import use_varlen_attention
        from .rollout import HFGenerator, Sampling

        self.args, self.tokenizer, self.template = args, tokenizer, template
        self.model = load_model(args.model, args.finetune, tokenizer, is_trainable=True)
        if value_head:
            from ..models.value_head import attach_value_head, hidden_size, new_value_head

            attach_value_head(self.model, new_value_head(hidden_size(self.model), seed=args.training.seed))
        common.decide_gradient_checkpointing(args, self.model)
        self.padding_free = common.use_padding_free(args, self.model)
        # list of (ids, labels) -> a batch, padding-free or padded as the run trains
        self.pack = partial(pack_sequences, padding_free=self.padding_free, pad_token_id=tokenizer.pad_token_id)
        if self.padding_free:
            use_varlen_attention(self.model)
        self.sampling = Sampling.from_args(args.generate, args.sources, rollout_dtype(args.rl.rollout_dtype))
        self.stop_ids = stop_tokens(tokenizer, template)[0]
        self.generator = HFGenerator(self.sampling, self.stop_ids, tokenizer.pad_token_id)

    def reference(self):
        from .reference import build_reference

        return build_reference(self.args, self.model, self.tokenizer)

    def reward_scorer(self):
        from .reward_scorer import load_reward_scorer

        suffix = reply_suffix(self.template, self.tokenizer) or self.stop_ids[:1]
        return load_reward_scorer(self.args, self.model, self.tokenizer, self.pack, suffix, self.stop_ids)

    def trainer(self, data, objective, experience, passes: int, steps_per_pass: int, metric_names=(),
                trainer_class=None, **kwargs):
        from ..data.collator import make_collator
        from ..stages import row_shape
        from .rollout_trainer import RolloutTrainer

        collator = make_collator(row_shape(self.args.finetune.stage).collator, self.padding_free,
                                 self.tokenizer.pad_token_id)
        return (trainer_class or RolloutTrainer)(
            model=self.model, args=self.args.training, train_dataset=data.train, data_collator=collator,
            processing_class=self.tokenizer, objective=objective, experience=experience, passes=passes,
            steps_per_pass=steps_per_pass, metric_names=metric_names, **kwargs)

    def train(self, trainer, plots: dict) -> dict:
        from ..models.varlen_attention import restore_sdpa

        meter = common.attach_meter(trainer, self.model, self.args)
        common.report_model(self.args, self.model, self.padding_free)
        s = self.sampling
        print(f"[rollout] {trainer.rollouts_per_buffer()} rollouts of {trainer.prompts_per_buffer()} prompts per "
              f"buffer, {trainer.steps_per_buffer} optimizer steps each; "
              + (f"sampling at temperature {s.temperature}, top_p {s.top_p}, top_k {s.top_k}" if s.do_sample
                 else "greedy") + f", up to {s.max_new_tokens} new tokens")
        results = common.train_and_evaluate(trainer, self.args, meter)
        restore_sdpa(self.model)
        common.finish(self.args, trainer, self.tokenizer, self.template, results, plots)
        return results
