"""The baseline: the same LoRA SFT workload as throughput.py gives tuneforge, written the plain way with a
transformers Trainer and PEFT.

Tokenizes with the tokenizer's own chat template (apply_chat_template), masks the prompt tokens with -100,
cuts each example at --cutoff, right-pads batches with DataCollatorForSeq2Seq and lets the model compute its
standard loss over the full logits. Logs every step, times trainer.train() itself, and writes
OUTPUT/plain_hf_results.json:
  train_runtime (own timing of trainer.train()), trainer_train_runtime (the Trainer's), tokens,
  supervised_tokens, padded_tokens, examples, truncated_examples, steps, first_loss, log_history.

usage: python plain_hf.py --model DIR --data alpaca_en_demo.json --examples N --output DIR [--gc on|off]
"""

from __future__ import annotations

import argparse
import json
import os
import time

IGNORE = -100


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF model folder")
    p.add_argument("--data", required=True, help="alpaca-format json file (alpaca_en_demo.json)")
    p.add_argument("--examples", type=int, required=True, help="use the first N rows")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--cutoff", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--gc", choices=("on", "off"), default="off", help="gradient checkpointing")
    p.add_argument("--logging-steps", type=int, default=1)
    return p.parse_args(argv)


def encode_row(tokenizer, row: dict, cutoff: int) -> dict:
    """One alpaca row -> input_ids and labels with the prompt (system + user + assistant header) masked."""
    user = "\n".join(x for x in (row["instruction"], row.get("input", "")) if x)
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt_text = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(full_text, add_special_tokens=False).input_ids
    n_prompt = len(tokenizer(prompt_text, add_special_tokens=False).input_ids)
    if ids[:n_prompt] != tokenizer(prompt_text, add_special_tokens=False).input_ids:
        raise ValueError("the rendered prompt is not a token prefix of the rendered conversation")
    truncated = len(ids) > cutoff
    ids = ids[:cutoff]  # the plain way: cut the end (the end-of-turn token of a long example is lost)
    labels = [IGNORE] * min(n_prompt, len(ids)) + ids[n_prompt:]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels, "truncated": truncated}


class CountingCollator:
    """Counts the token slots (real + padding) of the batches the Trainer draws."""

    def __init__(self, inner):
        self.inner, self.padded_tokens = inner, 0

    def __call__(self, features):
        batch = self.inner(features)
        self.padded_tokens += batch["input_ids"].numel()
        return batch


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainingArguments, set_seed)

    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    with open(args.data, encoding="utf-8") as f:
        rows = json.load(f)[: args.examples]
    examples = [encode_row(tokenizer, row, args.cutoff) for row in rows]
    tokens = sum(len(e["input_ids"]) for e in examples)
    supervised = sum(sum(1 for t in e["labels"] if t != IGNORE) for e in examples)
    truncated = sum(e.pop("truncated") for e in examples)
    dataset = Dataset.from_list(examples)

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa")
    lora = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    if args.gc == "on":
        model.config.use_cache = False

    training = TrainingArguments(
        output_dir=args.output, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        learning_rate=args.lr, num_train_epochs=args.epochs, seed=args.seed, logging_steps=args.logging_steps,
        save_strategy="no", report_to="none", bf16=False, fp16=False, dataloader_num_workers=0,
        gradient_checkpointing=args.gc == "on", gradient_checkpointing_kwargs={"use_reentrant": False},
        remove_unused_columns=False, disable_tqdm=True,
    )
    collator = CountingCollator(DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE))
    trainer = Trainer(model=model, args=training, train_dataset=dataset, data_collator=collator)

    start = time.perf_counter()
    out = trainer.train()
    runtime = time.perf_counter() - start

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    results = {
        "train_runtime": runtime,
        "trainer_train_runtime": out.metrics.get("train_runtime"),
        "tokens": tokens,
        "supervised_tokens": supervised,
        "padded_tokens": collator.padded_tokens,
        "examples": len(examples),
        "truncated_examples": truncated,
        "steps": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "train_loss": out.metrics.get("train_loss"),
        "log_history": trainer.state.log_history,
    }
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "plain_hf_results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    print(f"[plain_hf] {len(examples)} examples, {tokens} tokens ({supervised} supervised, {collator.padded_tokens} with padding), "
          f"{runtime:.2f} s, {tokens / runtime:.1f} tokens/s, first loss {results['first_loss']}")
    return results


if __name__ == "__main__":
    main()
