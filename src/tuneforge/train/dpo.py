"""Recipe for stage dpo: preference optimisation on chosen/rejected pairs with pref_loss sigmoid (DPO),
hinge, ipo, orpo or simpo (the last two need no reference model).

A batch's chosen and rejected sequences go through the policy in one padding-free forward; the LM head
runs only at response positions. The reference pass (see reference.py) takes the same path without
gradient, or is replaced by log-probabilities precomputed once (precompute_ref_logps).
"""

from __future__ import annotations

import torch

from ..stages import row_shape
from . import common
from .logps import sequence_logps
from .loss import LogitsWorkspace
from .preference_loss import AVERAGED, dpo_loss
from .forward import sequence_lengths
from .trainer import LossOutput

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected", "sft_loss")
PLOTS = {"training_rewards.png": ["rewards/chosen", "rewards/rejected", "rewards/margins",
                                  "eval_rewards/margins"],
         "training_accuracy.png": ["rewards/accuracies", "eval_rewards/accuracies"]}


class DPOObjective:
    """Per pair: the pref_loss of the policy's and reference's log-probabilities of both responses, plus
    pref_ftx x the chosen response's per-token NLL."""

    def __init__(self, pref, reference, chunk_size: int = 1024):
        self.kind = pref.pref_loss
        self.beta, self.smoothing, self.gamma, self.ftx = pref.pref_beta, pref.dpo_label_smoothing, \
            pref.simpo_gamma, pref.pref_ftx
        self.needs_reference = reference is not None
        self.reference = reference  # None once its log-probabilities are precomputed into the data
        self.chunk_size = chunk_size
        self.sharded = False  # set by the Trainer
        self.workspace = LogitsWorkspace()

    def count_items(self, batch: dict) -> torch.Tensor:
        return batch["num_items"]

    def reference_columns(self, model, inputs: dict) -> dict:
        """The reference log-probabilities of a batch's responses, summed over each: precomputed with the
        batch, or from a reference pass (see reference.precompute_into)."""
        if "ref_chosen_logps" in inputs:
            return {k: inputs[k] for k in ("ref_chosen_logps", "ref_rejected_logps")}
        n = int(inputs["num_items"])
        sums = self.reference.logps(model, inputs, 2 * n, sharded=self.sharded).sums
        return {"ref_chosen_logps": sums[:n], "ref_rejected_logps": sums[n:]}

    def __call__(self, model, inputs: dict) -> LossOutput:
        n = int(inputs["num_items"])
        lengths = sequence_lengths(inputs)
        policy = sequence_logps(model, inputs, 2 * n, self.chunk_size, self.sharded, workspace=self.workspace)
        counts = policy.counts.clamp(min=1)
        logps = policy.averaged() if self.kind in AVERAGED else policy.sums
        ref_chosen = ref_rejected = None
        forward_lengths, forward_supervised = [], 0
        if self.needs_reference:
            if "ref_chosen_logps" not in inputs:  # a reference pass runs: the same sequences and positions
                forward_lengths, forward_supervised = lengths, policy.supervised
            ref = self.reference_columns(model, inputs)
            ref_chosen, ref_rejected = ref["ref_chosen_logps"], ref["ref_rejected_logps"]
            if self.kind in AVERAGED:
                ref_chosen, ref_rejected = ref_chosen / counts[:n], ref_rejected / counts[n:]
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            self.kind, logps[:n], logps[n:], ref_chosen, ref_rejected, self.beta, self.smoothing, self.gamma)
        sft = -policy.sums[:n] / counts[:n]
        if self.ftx:
            losses = losses + self.ftx * sft
        won = (chosen_rewards > rejected_rewards).float()
        values = torch.stack([chosen_rewards.sum(), rejected_rewards.sum(), won.sum(),
                              (chosen_rewards - rejected_rewards).sum(), policy.sums[:n].detach().sum(),
                              policy.sums[n:].detach().sum(), sft.detach().sum()]).tolist()
        names = METRICS if self.ftx else METRICS[:-1]
        return LossOutput(losses.sum(), n, lengths, policy.supervised, forward_lengths,
                          forward_supervised, {k: (v, n) for k, v in zip(names, values)})


def run(args) -> dict:
    from ..data.collator import make_collator
    from ..models.loader import load_model
    from ..models.varlen_attention import restore_sdpa, use_varlen_attention
    from .reference import build_reference, check_reference_source, precompute_into
    from .trainer import TuneforgeTrainer

    training, pref = args.training, args.preference
    tokenizer, template = common.start(args)
    check_reference_source(args)
    data = common.load_data(args, tokenizer, template)

    model = load_model(args.model, args.finetune, tokenizer, is_trainable=True)
    common.decide_gradient_checkpointing(args, model, sequences_per_example=2)
    padding_free = common.use_padding_free(args, model)
    collator = make_collator(row_shape("dpo").collator, padding_free, tokenizer.pad_token_id)
    if padding_free:
        use_varlen_attention(model)
    needs_reference = pref.pref_loss not in ("orpo", "simpo")
    objective = DPOObjective(pref, build_reference(args, model, tokenizer) if needs_reference else None,
                             args.finetune.loss_chunk_size)
    sampler, batch_sampler = common.length_samplers(args, data.train, ("chosen_input_ids", "rejected_input_ids"))

    trainer = TuneforgeTrainer(
        model=model, args=training, train_dataset=data.train, eval_dataset=data.eval, data_collator=collator,
        processing_class=tokenizer, objective=objective, length_sampler=sampler, batch_sampler=batch_sampler,
        metric_names=METRICS,
    )
    if needs_reference and pref.precompute_ref_logps:
        precompute_into(trainer)
    meter = common.attach_meter(trainer, model, args)
    common.report_model(args, model, padding_free)

    results = common.train_and_evaluate(trainer, args, meter)
    restore_sdpa(model)
    common.finish(args, trainer, tokenizer, template, results, PLOTS)
    return results
