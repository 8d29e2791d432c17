"""What output_dir ends with besides the weights: tokenizer with the chat template used in training, a
generation config that stops on the end-of-turn token, the plots, and the end-of-run summary."""

from __future__ import annotations

import os

from ..models.adapters import base_model


def finish_outputs(args, trainer, tokenizer, template, eos_ids: list[int], plots: dict | None = None) -> None:
    out = args.training.output_dir
    jinja = template.jinja(tokenizer)
    if jinja:
        tokenizer.chat_template = jinja
    tokenizer.save_pretrained(out)
    model = trainer.model
    base = base_model(model)
    gen = base.generation_config
    gen.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    if tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    gen.save_pretrained(out)
    if args.finetune.plot_loss:
        from .plotting import plot_losses, plot_metrics

        for path in plot_losses(out) + plot_metrics(out, plots or {}):
            print(f"[plot] {path}")


def print_summary(args, results: dict) -> None:
    out = args.training.output_dir
    keys = [
        ("train_loss", "final training loss"), ("train_runtime", "runtime (s)"),
        ("train_tokens_per_second", "real tokens/s"), ("train_supervised_tokens_per_second", "supervised tokens/s"),
        ("train_mfu", "MFU"), ("eval_loss", "eval loss"),
        ("eval_perplexity", "eval perplexity"), ("eval_accuracy", "eval accuracy"),
        ("eval_rewards/accuracies", "eval reward accuracy"), ("eval_rewards/margins", "eval reward margin"),
    ]
    print("[done] " + ", ".join(f"{label} {results[k]:.4g}" for k, label in keys if k in results))
    kind = "adapter" if args.finetune.finetuning_type == "lora" else "model"
    if args.finetune.stage == "rm":
        kind += " and value head"
    print(f"[done] {kind} saved to {os.path.abspath(out)}")
