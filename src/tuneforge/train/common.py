"""Wiring every recipe shares: arguments, the output folder lock and check, gradient checkpointing and
padding-free decisions, samplers, the throughput meter and clean stop, the train/evaluate/save sequence and
the final outputs.

Recipes (sft.py, rm.py, dpo.py, kto.py) call these in order, top to bottom; anything a stage does
differently stays in its recipe.
"""

from __future__ import annotations

import glob
import logging
import os
from contextlib import contextmanager

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


def claim_output_dir(args) -> None:
    """Locks output_dir for this run (run_lock.py): a second run into it is refused at once, before it reads
    or writes anything there. Done before check_output_dir, which would otherwise report a running run as a
    finished one."""
    from . import run_lock

    if run_lock.should_hold():
        run_lock.acquire(args.training.output_dir)


def release_output_dir(args) -> None:
    from . import run_lock

    run_lock.release(args.training.output_dir)


@contextmanager
def output_dir_claimed(args):
    """claim_output_dir for the length of a block (prediction-only runs)."""
    claim_output_dir(args)
    try:
        yield
    finally:
        release_output_dir(args)


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


def start(args):
    """Output folder lock and check, seed, tokenizer and template: the first lines of every recipe."""
    from transformers import set_seed

    from ..data.templates import get_template
    from ..models.loader import load_tokenizer

    claim_output_dir(args)
    check_output_dir(args.training, args.extra.get("overwrite_output_dir", False))
    set_seed(args.training.seed)
    tokenizer = load_tokenizer(args.model)
    template = get_template(args.data.template, tokenizer, args.data.default_system, args.data.enable_thinking)
    return tokenizer, template


def load_data(args, tokenizer, template):
    """Tokenized train/eval data (rank 0 first under DDP), with the data summary printed once."""
    from ..data.prepare import prepare_datasets

    training = args.training
    with training.main_process_first(desc="preprocessing"):
        data = prepare_datasets(args.data, args.finetune.stage, tokenizer, template, seed=training.seed,
                                num_proc=args.data.preprocessing_num_workers)
    if training.process_index == 0:
        for line in data.summary_lines():
            print(f"[data] {line}")
    from ..estimate.command import check_fits

    check_fits(args, data.train)  # refuse a run that clearly cannot fit, before the model loads
    return data


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


def decide_gradient_checkpointing(args, model, sequences_per_example: int = 1) -> None:
    """Off by default: it costs ~30% speed and measured runs here fit without it; on when memory needs it.
    sequences_per_example: 2 for a chosen/rejected pair, which trains both."""
    training = args.training
    if "gradient_checkpointing" not in args.sources and not args.finetune.disable_gradient_checkpointing:
        import psutil

        per_batch = training.per_device_train_batch_size * args.data.cutoff_len * sequences_per_example
        tokens = args.finetune.token_budget or per_batch
        if needs_gradient_checkpointing(model.config, tokens, psutil.virtual_memory().available):
            training.gradient_checkpointing = True
            print("[model] gradient checkpointing on: a batch's activations would not fit comfortably in memory")
    if training.gradient_checkpointing:
        model.config.use_cache = False


def length_samplers(args, dataset, length_columns=("input_ids",)):
    """(sampler, batch_sampler) for group_by_length / token_budget, else (None, None). An example's length
    is the sum of its sequences' (chosen and rejected for a pair)."""
    from .sampler import LengthGroupedSampler, TokenBudgetBatchSampler

    training = args.training
    if dataset is None or not hasattr(dataset, "__len__"):
        return None, None
    if not (args.extra.get("group_by_length") or args.finetune.token_budget):
        return None, None
    columns = [dataset[c] for c in length_columns]
    lengths = [sum(len(col[i]) for col in columns) for i in range(len(dataset))]
    if args.finetune.token_budget:
        return None, TokenBudgetBatchSampler(lengths, args.finetune.token_budget, seed=training.seed)
    return LengthGroupedSampler(lengths, training.per_device_train_batch_size * training.world_size,
                                seed=training.seed), None


def compute_dtype(args, model) -> str:
    """The dtype the matrix products run in: the mixed-precision flag's, else the weights'."""
    if args.training.bf16:
        return "bfloat16"
    if args.training.fp16:
        return "float16"
    return str(getattr(model, "dtype", "torch.float32")).removeprefix("torch.")


def attach_meter(trainer, model, args, lm_head: bool = True):
    """Adds the callbacks every run has: the throughput meter (tokens/s, MFU, trainer_log.jsonl), the
    checkpointing policy and the clean stop on SIGTERM/SIGINT (stop.py). lm_head: whether the loss runs the LM
    head at supervised positions (a reward model's does not). Returns the meter."""
    from .callbacks import CheckpointingPolicy, ThroughputLogCallback
    from .stop import StopOnSignal
    from .throughput import FlopModel, body_parameters, dense_flops_per_token, head_flops_per_supervised_token
    from .throughput import machine_peak_flops

    cfg = model.config
    hidden, layers = getattr(cfg, "hidden_size", 0) or 0, getattr(cfg, "num_hidden_layers", 0) or 0
    vocab = (getattr(cfg, "vocab_size", 0) or 0) if lm_head else 0
    body_total, body_trainable = body_parameters(model)
    head = model.get_output_embeddings()
    head_trained = head is not None and any(p.requires_grad for p in head.parameters())
    flops = FlopModel(
        per_token=dense_flops_per_token(body_total, body_trainable, args.finetune.finetuning_type == "full"),
        per_supervised=head_flops_per_supervised_token(vocab, hidden, head_trained),
        forward_per_token=2.0 * body_total, forward_per_supervised=2.0 * vocab * hidden, layers=layers, hidden=hidden,
    )
    peak = args.finetune.peak_tflops * 1e12 if args.finetune.peak_tflops else machine_peak_flops(compute_dtype(args, model))
    meter = ThroughputLogCallback(trainer, flops, peak)
    trainer.add_callback(meter)
    trainer.add_callback(CheckpointingPolicy())
    trainer.add_callback(StopOnSignal())
    return meter


def report_model(args, model, padding_free: bool) -> None:
    from ..models.adapters import count_parameters

    if args.training.process_index == 0:
        trainable, total = count_parameters(model)
        print(f"[model] trainable parameters {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.3f}%), "
              f"{'padding-free' if padding_free else 'padded'} batches")


def train_and_evaluate(trainer, args, meter) -> dict:
    """Trains (resuming when asked), saves the weights, state and metrics, then evaluates when asked
    (reusing an evaluation the last step already ran). Returns the train_ and eval_ metrics. A run stopped by
    a signal ends here, after its checkpoint (stop.py)."""
    from .stop import exit_stopped, stopper_of
    from .throughput import mfu

    training = args.training
    results = {}
    if training.do_train:
        resume = training.resume_from_checkpoint
        if isinstance(resume, str) and resume.lower() == "true":
            resume = True
        stopper = stopper_of(trainer)
        try:
            out = trainer.train(resume_from_checkpoint=resume)
        except BaseException:
            if stopper is not None:
                stopper.uninstall()
            raise
        if stopper is not None and stopper.stopped_at is not None:
            stopper.uninstall()
            release_output_dir(args)
            exit_stopped(trainer, stopper)
        metrics = dict(out.metrics)
        metrics["train_tokens"], metrics["train_supervised_tokens"], *_ = trainer.global_counts()
        if metrics.get("train_runtime"):
            runtime = metrics["train_runtime"]
            metrics["train_tokens_per_second"] = round(metrics["train_tokens"] / runtime, 2)
            metrics["train_supervised_tokens_per_second"] = round(metrics["train_supervised_tokens"] / runtime, 2)
            metrics["train_mfu"] = round(mfu(meter.total_flops, runtime, meter.peak_flops * max(training.world_size, 1)), 4)
        trainer.save_model()
        trainer.save_state()
        trainer.save_metrics("train", metrics)
        results.update(metrics)
    if training.do_eval and trainer.eval_dataset is not None:
        done = [h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == trainer.state.global_step]
        metrics = {k: v for k, v in done[-1].items() if k.startswith("eval_")} if done else trainer.evaluate()
        results.update(metrics)
    return results


def save_eval_metrics(trainer, results: dict) -> None:
    metrics = {k: v for k, v in results.items() if k.startswith("eval_")}
    if metrics:
        trainer.save_metrics("eval", metrics)


def finish(args, trainer, tokenizer, template, results: dict, plots: dict | None = None) -> None:
    """Tokenizer, generation config, plots (the loss and the stage's `plots`: file name -> metric keys)
    and the end-of-run summary, on rank 0."""
    from ..data.stops import stop_tokens
    from .outputs import finish_outputs, print_summary

    save_eval_metrics(trainer, results)
    if args.training.process_index == 0:
        finish_outputs(args, trainer, tokenizer, template, stop_tokens(tokenizer, template)[0], plots or {})
        print_summary(args, results)
    from .stop import stopper_of

    stopper = stopper_of(trainer)
    if stopper is not None:
        stopper.uninstall()  # kept through the final save, so a late stop could not cut it short
    release_output_dir(args)
