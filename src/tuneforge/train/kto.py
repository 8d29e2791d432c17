"""Recipe for stage kto: Kahneman-Tversky optimisation on responses tagged desirable or undesirable.

Each example's policy/reference log-ratio is compared with an estimate of KL(policy || reference) taken
as the KTO paper does: from mismatched pairs, each prompt with another example's response (fixed once for
the dataset, processors.add_kl_pairs), averaged over the micro-batch, with no gradient.
"""

from __future__ import annotations

import torch

from ..stages import row_shape
from . import common
from .logps import sequence_logps
from .loss import LogitsWorkspace
from .preference_loss import kto_kl_estimate, kto_loss
from .forward import sequence_lengths
from .trainer import LossOutput

METRICS = ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "kl", "sft_loss")
PLOTS = {"training_rewards.png": ["rewards/chosen", "rewards/rejected", "kl", "eval_rewards/chosen",
                                  "eval_rewards/rejected"]}


class KTOObjective:
    def __init__(self, pref, reference, chunk_size: int = 1024):
        self.beta, self.ftx = pref.pref_beta, pref.pref_ftx
        self.weights = (pref.kto_chosen_weight, pref.kto_rejected_weight)
        self.reference = reference  # None once its log-probabilities are precomputed into the data
        self.chunk_size = chunk_size
        self.sharded = False  # set by the Trainer
        self.workspace = LogitsWorkspace()

    def count_items(self, batch: dict) -> torch.Tensor:
        return batch["num_items"]

    def reference_columns(self, model, inputs: dict) -> dict:
        """Reference log-probabilities of the examples and of their KL pairs: precomputed with the batch,
        or from a reference pass (see reference.precompute_into)."""
        if "ref_logps" in inputs:
            return {k: inputs[k] for k in ("ref_logps", "ref_kl_logps")}
        n = int(inputs["num_items"])
        return {"ref_logps": self.reference.logps(model, inputs, n, sharded=self.sharded).sums,
                "ref_kl_logps": self.reference.logps(model, inputs, n, prefix="kl_", sharded=self.sharded).sums}

    def __call__(self, model, inputs: dict) -> LossOutput:
        n = int(inputs["num_items"])
        desirable = inputs["kto_tag"].bool()
        lengths, kl_lengths = sequence_lengths(inputs), sequence_lengths(inputs, "kl_")
        policy = sequence_logps(model, inputs, n, self.chunk_size, self.sharded, workspace=self.workspace)
        with torch.no_grad():
            policy_kl = sequence_logps(model, inputs, n, self.chunk_size, self.sharded, prefix="kl_",
                                       workspace=self.workspace)
        # Run without gradient: the policy's KL pairs, and the reference's examples and KL pairs when they
        # are not precomputed (the same sequences and positions as the policy's).
        forward_lengths, forward_supervised = list(kl_lengths), policy_kl.supervised
        if "ref_logps" not in inputs:
            forward_lengths += lengths + kl_lengths
            forward_supervised += policy.supervised + policy_kl.supervised
        ref = self.reference_columns(model, inputs)
        kl = kto_kl_estimate(policy_kl.sums, ref["ref_kl_logps"])
        losses, rewards = kto_loss(policy.sums, ref["ref_logps"], desirable, kl, self.beta, *self.weights)
        sft = -policy.sums / policy.counts.clamp(min=1)
        if self.ftx:
            losses = losses + self.ftx * torch.where(desirable, sft, torch.zeros_like(sft))
        good, bad = desirable.float(), (~desirable).float()
        logps = policy.sums.detach()
        stats = torch.stack([(rewards * good).sum(), (rewards * bad).sum(), (logps * good).sum(),
                             (logps * bad).sum(), kl, (sft.detach() * good).sum(), good.sum(), bad.sum()]).tolist()
        values, (n_good, n_bad) = stats[:6], stats[6:]
        counts = [n_good, n_bad, n_good, n_bad, 1, n_good]
        names = METRICS if self.ftx else METRICS[:-1]
        metrics = {k: (v, c) for k, v, c in zip(names, values, counts)}
        return LossOutput(losses.sum(), n, lengths, policy.supervised, forward_lengths, forward_supervised, metrics)


def run(args) -> dict:
    from ..data.collator import make_collator
    from ..data.processors import add_kl_pairs
    from ..models.loader import load_model
    from ..models.varlen_attention import restore_sdpa, use_varlen_attention
    from .reference import build_reference, check_reference_source, precompute_into
    from .trainer import TuneforgeTrainer

    training, pref = args.training, args.preference
    tokenizer, template = common.start(args)
    check_reference_source(args)
    data = common.load_data(args, tokenizer, template)
    cutoff = args.data.cutoff_len
    train = add_kl_pairs(data.train, cutoff, training.seed) if data.train is not None else None
    evalset = add_kl_pairs(data.eval, cutoff, training.seed) if data.eval is not None else None
    if train is not None and training.process_index == 0:
        tags = train["kto_tag"]
        print(f"[data] kto: {sum(tags)} desirable and {len(tags) - sum(tags)} undesirable examples")

    model = load_model(args.model, args.finetune, tokenizer, is_trainable=True)
    common.decide_gradient_checkpointing(args, model)
    padding_free = common.use_padding_free(args, model)
    collator = make_collator(row_shape("kto").collator, padding_free, tokenizer.pad_token_id)
    if padding_free:
        use_varlen_attention(model)
    objective = KTOObjective(pref, build_reference(args, model, tokenizer), args.finetune.loss_chunk_size)
    sampler, batch_sampler = common.length_samplers(args, train)

    trainer = TuneforgeTrainer(
        model=model, args=training, train_dataset=train, eval_dataset=evalset, data_collator=collator,
        processing_class=tokenizer, objective=objective, length_sampler=sampler, batch_sampler=batch_sampler,
        metric_names=METRICS,
    )
    if pref.precompute_ref_logps:
        precompute_into(trainer)
    meter = common.attach_meter(trainer, model, args)
    common.report_model(args, model, padding_free)

    results = common.train_and_evaluate(trainer, args, meter)
    restore_sdpa(model)
    common.finish(args, trainer, tokenizer, template, results, PLOTS)
    return results
