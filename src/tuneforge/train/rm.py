"""Recipe for stage rm: a reward model, the base model plus a scalar value head, trained on chosen/rejected
pairs with the pairwise loss -log s(r_chosen - r_rejected), the score taken at each sequence's last token.

The LM head never runs. The value head is saved beside the adapter or model as value_head.safetensors
(models/value_head.py), in checkpoints too, and loaded back when resuming or when the run starts from a
reward model folder.
"""

from __future__ import annotations

import os

import torch

from ..models.value_head import VALUE_HEAD_FILE, load_value_head, score, value_head_of
from ..stages import row_shape
from . import common
from .logps import last_token_hidden
from .preference_loss import pairwise_reward_loss
from .forward import sequence_lengths
from .trainer import LossOutput, TuneforgeTrainer
from .value_head_saving import ValueHeadSaving

METRICS = ("accuracy", "scores/chosen", "scores/rejected")
PLOTS = {"training_accuracy.png": ["accuracy", "eval_accuracy"],
         "training_scores.png": ["scores/chosen", "scores/rejected"]}


class PairwiseRewardObjective:
    def count_items(self, batch: dict) -> torch.Tensor:
        return batch["num_items"]

    def __call__(self, model, inputs: dict) -> LossOutput:
        n = int(inputs["num_items"])
        scores = score(value_head_of(model), last_token_hidden(model, inputs))
        chosen, rejected = scores[:n], scores[n:]
        losses = pairwise_reward_loss(chosen, rejected)
        values = torch.stack([(chosen > rejected).float().sum(), chosen.detach().sum(),
                              rejected.detach().sum()]).tolist()
        return LossOutput(losses.sum(), n, sequence_lengths(inputs), 0,
                          metrics={k: (v, n) for k, v in zip(METRICS, values)})


class RewardTrainer(ValueHeadSaving, TuneforgeTrainer):
    pass


def starting_head(args, model):
    """The value head to start from: the one of the reward model folder the run continues (an adapter
    given in adapter_name_or_path, or model_name_or_path itself), else a new one."""
    from ..models.loader import parse_names
    from ..models.value_head import hidden_size, is_reward_model_dir, new_value_head

    adapters = parse_names(args.model.adapter_name_or_path)
    for folder, key in ([(adapters[-1], "adapter_name_or_path")] if adapters else []) + \
            [(args.model.model_name_or_path, "model_name_or_path")]:
        if folder and is_reward_model_dir(folder):
            head, _ = load_value_head(folder, key)
            print(f"[model] value head continued from {os.path.join(folder, VALUE_HEAD_FILE)}")
            return head
    return new_value_head(hidden_size(model), seed=args.training.seed)


def run(args) -> dict:
    from ..data.collator import make_collator
    from ..models.loader import load_model
    from ..models.value_head import attach_value_head
    from ..models.varlen_attention import restore_sdpa, use_varlen_attention

    training = args.training
    tokenizer, template = common.start(args)
    data = common.load_data(args, tokenizer, template)

    model = load_model(args.model, args.finetune, tokenizer, is_trainable=True)
    attach_value_head(model, starting_head(args, model))
    common.decide_gradient_checkpointing(args, model, sequences_per_example=2)
    padding_free = common.use_padding_free(args, model)
    collator = make_collator(row_shape("rm").collator, padding_free, tokenizer.pad_token_id)
    if padding_free:
        use_varlen_attention(model)
    sampler, batch_sampler = common.length_samplers(args, data.train, ("chosen_input_ids", "rejected_input_ids"))

    head_meta = {"base_model": args.model.model_name_or_path, "finetuning_type": args.finetune.finetuning_type,
                 "score": "hidden state of each sequence's last token", "template": args.data.template}
    trainer = RewardTrainer(
        model=model, args=training, train_dataset=data.train, eval_dataset=data.eval, data_collator=collator,
        processing_class=tokenizer, objective=PairwiseRewardObjective(), length_sampler=sampler,
        batch_sampler=batch_sampler, metric_names=METRICS, head_meta=head_meta,
    )
    meter = common.attach_meter(trainer, model, args, lm_head=False)
    common.report_model(args, model, padding_free)

    results = common.train_and_evaluate(trainer, args, meter)
    restore_sdpa(model)
    common.finish(args, trainer, tokenizer, template, results, PLOTS)
    return results
