"""`tuneforge train`: wires config, tokenizer, template, data, model and Trainer together, top to bottom."""

from __future__ import annotations

import glob
import logging
import os

from ..config.parser import build_args, read_sources
from ..config.validate import training_arguments, validate
from ..errors import ConfigError

logger = logging.getLogger("tuneforge")


def parse_train_args(argv: list[str]):
    raw = read_sources(argv)
    args, train_kwargs = build_args(raw, with_training=True)
    validate(args, train_kwargs, args.sources)
    args.training = training_arguments(args, train_kwargs)
    args.extra = train_kwargs["_extra"]
    return args


def check_output_dir(training, overwrite: bool) -> None:
    out = training.output_dir
    if not os.path.isdir(out) or training.resume_from_checkpoint or overwrite:
        return
    markers = glob.glob(os.path.join(out, "checkpoint-*")) + [
        p for p in ("trainer_log.jsonl", "adapter_config.json", "model.safetensors", "all_results.json")
        if os.path.exists(os.path.join(out, p))
    ]
    if markers:
        raise ConfigError(
            f"output_dir {out} already holds a run; set overwrite_output_dir=true to start over, or "
            "resume_from_checkpoint=true to continue it"
        )


def use_padding_free(args, model) -> bool:
    """On unless asked off, and only where attention honours restarting position_ids."""
    attn = getattr(model.config, "_attn_implementation", None)
    supported = attn in ("sdpa", "flash_attention_2", "flash_attention_3", "eager")
    if args.data.padding_free and not supported:
        logger.warning("padding_free is not supported with attention %s; using padded batches", attn)
    return supported if args.data.padding_free is None else (args.data.padding_free and supported)


def needs_gradient_checkpointing(config, tokens_per_batch: int, available_bytes: int) -> bool:
    """True when the activations one batch keeps for the backward pass would take over 40% of the memory
    available. Rough fp32 count per token and layer: ~10 hidden-sized and ~3 intermediate-sized tensors
    (attention inputs and outputs, norms, residuals, the MLP's gate/up/activation)."""
    hidden = getattr(config, "hidden_size", 0) or 0
    inter = getattr(config, "intermediate_size", 0) or 4 * hidden
    layers = getattr(config, "num_hidden_layers", 0) or 0
    estimate = tokens_per_batch * layers * (10 * hidden + 3 * inter) * 4
    return estimate > 0.4 * available_bytes


def throughput_meter(trainer, model, args):
    """The callback that turns counted tokens into tokens/s and MFU (FLOP counts in throughput.py)."""
    from .callbacks import ThroughputLogCallback
    from .throughput import body_parameters, dense_flops_per_token, head_flops_per_supervised_token, machine_peak_flops

    cfg = model.config
    hidden, layers = getattr(cfg, "hidden_size", 0) or 0, getattr(cfg, "num_hidden_layers", 0) or 0
    body_total, body_trainable = body_parameters(model)
    head = model.get_output_embeddings()
    head_trained = head is not None and any(p.requires_grad for p in head.parameters())
    peak = args.finetune.peak_tflops * 1e12 if args.finetune.peak_tflops else machine_peak_flops(compute_dtype(args, model))
    return ThroughputLogCallback(
        trainer, dense_flops_per_token(body_total, body_trainable, args.finetune.finetuning_type == "full"), peak,
        layers, hidden, head_flops_per_supervised_token(getattr(cfg, "vocab_size", 0) or 0, hidden, head_trained),
    )


def compute_dtype(args, model) -> str:
    """The dtype the matrix products run in: the mixed-precision flag's, else the weights'."""
    if args.training.bf16:
        return "bfloat16"
    if args.training.fp16:
        return "float16"
    return str(getattr(model, "dtype", "torch.float32")).removeprefix("torch.")


def stop_token_ids(tokenizer, template) -> list[int]:
    ids = []
    for word in template.stop_words(tokenizer):
        tid = tokenizer.convert_tokens_to_ids(word)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid not in ids:
            ids.append(tid)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def run_train(argv: list[str]) -> dict:
    from transformers import set_seed

    from ..data.collator import PaddedCollator, PaddingFreeCollator
    from ..data.prepare import prepare_datasets
    from ..data.templates import get_template
    from ..models.adapters import count_parameters
    from ..models.loader import load_model, load_tokenizer
    from ..models.varlen_attention import restore_sdpa, use_varlen_attention
    from .outputs import finish_outputs, print_summary
    from .sampler import LengthGroupedSampler, TokenBudgetBatchSampler
    from .callbacks import CheckpointingPolicy
    from .throughput import mfu
    from .trainer import TuneforgeTrainer

    args = parse_train_args(argv)
    training = args.training
    check_output_dir(training, args.extra.get("overwrite_output_dir", False))
    set_seed(training.seed)
    tokenizer = load_tokenizer(args.model)
    template = get_template(args.data.template, tokenizer, args.data.default_system, args.data.enable_thinking)
    with training.main_process_first(desc="preprocessing"):
        data = prepare_datasets(args.data, args.finetune.stage, tokenizer, template, seed=training.seed,
                                num_proc=args.data.preprocessing_num_workers)
    if training.process_index == 0:
        for line in data.summary_lines():
            print(f"[data] {line}")

    model = load_model(args.model, args.finetune, tokenizer, is_trainable=True)  # adapters/freezing applied
    if "gradient_checkpointing" not in args.sources and not args.finetune.disable_gradient_checkpointing:
        # Off by default: it costs ~30% speed and measured runs here fit without it; on when memory needs it.
        import psutil

        tokens = args.finetune.token_budget or training.per_device_train_batch_size * args.data.cutoff_len
        if needs_gradient_checkpointing(model.config, tokens, psutil.virtual_memory().available):
            training.gradient_checkpointing = True
            print("[model] gradient checkpointing on: a batch's activations would not fit comfortably in memory")
    if training.gradient_checkpointing:
        model.config.use_cache = False
    padding_free = use_padding_free(args, model)
    collator = PaddingFreeCollator() if padding_free else PaddedCollator(tokenizer.pad_token_id)
    if padding_free:
        use_varlen_attention(model)  # per-example attention instead of a masked whole-row product
    sampler, batch_sampler = None, None
    sized = data.train is not None and hasattr(data.train, "__len__")
    if sized and (args.extra.get("group_by_length") or args.finetune.token_budget):
        lengths = [len(x) for x in data.train["input_ids"]]
        if args.finetune.token_budget:
            batch_sampler = TokenBudgetBatchSampler(lengths, args.finetune.token_budget, seed=training.seed)
        else:
            sampler = LengthGroupedSampler(lengths, training.per_device_train_batch_size * training.world_size,
                                           seed=training.seed)

    trainer = TuneforgeTrainer(
        model=model, args=training, train_dataset=data.train, eval_dataset=data.eval, data_collator=collator,
        processing_class=tokenizer, loss_chunk_size=args.finetune.loss_chunk_size, length_sampler=sampler,
        batch_sampler=batch_sampler,
    )
    trainable, total = count_parameters(model)
    meter = throughput_meter(trainer, model, args)
    trainer.add_callback(meter)
    trainer.add_callback(CheckpointingPolicy())
    if training.process_index == 0:
        print(f"[model] trainable parameters {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.3f}%), "
              f"{'padding-free' if padding_free else 'padded'} batches")

    results = {}
    if training.do_train:
        resume = training.resume_from_checkpoint
        if isinstance(resume, str) and resume.lower() == "true":
            resume = True
        out = trainer.train(resume_from_checkpoint=resume)
        metrics = dict(out.metrics)
        metrics["train_tokens"], metrics["train_supervised_tokens"] = trainer.global_counts()
        if metrics.get("train_runtime"):
            runtime = metrics["train_runtime"]
            metrics["train_tokens_per_second"] = round(metrics["train_tokens"] / runtime, 2)
            metrics["train_supervised_tokens_per_second"] = round(metrics["train_supervised_tokens"] / runtime, 2)
            metrics["train_mfu"] = round(mfu(meter.total_flops, runtime, meter.peak_flops * max(training.world_size, 1)), 4)
        trainer.save_model()
        trainer.save_state()
        trainer.save_metrics("train", metrics)
        results.update(metrics)
    if training.do_eval and data.eval is not None:
        done = [h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == trainer.state.global_step]
        metrics = {k: v for k, v in done[-1].items() if k.startswith("eval_")} if done else trainer.evaluate()
        if "eval_loss" in metrics:
            import math

            metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50))
        trainer.save_metrics("eval", metrics)
        results.update(metrics)
    restore_sdpa(model)
    if training.process_index == 0:
        finish_outputs(args, trainer, tokenizer, template, stop_token_ids(tokenizer, template))
        print_summary(args, results)
    return results

