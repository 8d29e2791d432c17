"""Run by test_zero3.py in its own process: the dpo/orpo/rm objectives under real DeepSpeed ZeRO-3
partitioning (one CPU gloo process), against the same objective on the model loaded without DeepSpeed.

Under ZeRO-3 the LM head and the value head are whole only inside their own forward calls: the sharded
path lets the model compute logits at the supervised positions, and the value head is called as a
module. Prints one JSON line: the two losses and how far apart the gradients are.
"""

import json
import sys

import torch


def _pairs(tokenizer):
    from tuneforge.data.collator import PairwiseCollator
    from tuneforge.data.conversation import Conversation, Message
    from tuneforge.data.processors import ProcessorOptions, pairwise_example
    from tuneforge.data.templates.auto import AutoTemplate

    examples = []
    for q, good, bad in (("Who are you?", "I am Forge.", "Hello!"), ("Translate", "bonjour", "It is fine.")):
        conv = Conversation(messages=[Message("user", q)], chosen=Message("assistant", good),
                            rejected=Message("assistant", bad))
        examples.append(pairwise_example(AutoTemplate(), tokenizer, conv, ProcessorOptions(cutoff_len=64))[0])
    return PairwiseCollator(True, tokenizer.pad_token_id)(examples)


def _objective(kind: str, sharded: bool):
    from tuneforge.config.args import PreferenceArgs
    from tuneforge.train.dpo import DPOObjective
    from tuneforge.train.reference import Reference
    from tuneforge.train.rm import PairwiseRewardObjective

    if kind == "rm":
        objective = PairwiseRewardObjective()
    else:
        reference = Reference(None, chunk_size=5) if kind == "dpo" else None
        pref_loss = "sigmoid" if kind == "dpo" else kind
        objective = DPOObjective(PreferenceArgs(pref_loss=pref_loss, pref_ftx=0.5), reference, chunk_size=5)
    objective.sharded = sharded
    return objective


def _load(args, tokenizer, kind):
    from tuneforge.models.loader import load_model
    from tuneforge.models.value_head import attach_value_head, new_value_head
    from tuneforge.models.varlen_attention import use_varlen_attention

    torch.manual_seed(0)
    model = load_model(args.model, args.finetune, tokenizer, is_trainable=True)
    if kind == "rm":
        attach_value_head(model, new_value_head(64, seed=3))
    use_varlen_attention(model)
    return model


def main(model_dir: str, out_dir: str, finetuning_type: str, kind: str) -> None:
    from tests.train.zero3_worker import full_grads, zero3_engine, zero3_setup
    from tuneforge.config.validate import training_arguments

    args, train_kwargs, tokenizer = zero3_setup(model_dir, out_dir, finetuning_type)
    batch = _pairs(tokenizer)

    plain = _load(args, tokenizer, kind)  # before DeepSpeed is configured
    plain_out = _objective(kind, sharded=False)(plain, batch)
    (plain_out.total / plain_out.items).backward()
    want = {n: p.grad.clone() for n, p in plain.named_parameters() if p.requires_grad}

    training = training_arguments(args, train_kwargs)  # registers ZeRO-3: from_pretrained now partitions
    engine = zero3_engine(training, _load(args, tokenizer, kind))
    out = _objective(kind, sharded=True)(engine, batch)
    engine.backward(out.total / out.items)
    got = full_grads(engine)
    print(json.dumps({
        "zero_stage": engine.zero_optimization_stage(),
        "loss": [plain_out.total.item(), out.total.item()],
        "grad_names": sorted(want) == sorted(got),
        "grad_diff": max((want[k] - got[k]).abs().max().item() for k in want),
        "grad_scale": max(g.abs().max().item() for g in want.values()),
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
