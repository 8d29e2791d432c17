"""Recipe for stages pt and sft: next-token cross-entropy on supervised tokens (pt: on every token of
its blocks)."""

from __future__ import annotations

import math

from ..stages import row_shape
from . import common


def run(args) -> dict:
    from ..data.collator import make_collator
    from ..models.loader import load_model
    from ..models.varlen_attention import restore_sdpa, use_varlen_attention
    from .trainer import SupervisedObjective, TuneforgeTrainer

    from .predict import predicts_only, run_predict_only

    training = args.training
    if predicts_only(training):
        with common.output_dir_claimed(args):  # it writes there too, so no run may be writing at the same time
            return run_predict_only(args)  # LLaMA-Factory's predict configs: a model (and adapter) answers, scored
    tokenizer, template = common.start(args)
    data = common.load_data(args, tokenizer, template)

    model = load_model(args.model, args.finetune, tokenizer, is_trainable=True)  # adapters/freezing applied
    common.decide_gradient_checkpointing(args, model)
    padding_free = common.use_padding_free(args, model)
    collator = make_collator(row_shape(args.finetune.stage).collator, padding_free, tokenizer.pad_token_id)
    if padding_free:
        use_varlen_attention(model)  # per-example attention instead of a masked whole-row product
    sampler, batch_sampler = common.length_samplers(args, data.train)
    generator, generation_eval = None, None
    if training.predict_with_generate:
        from .predict import AnswerGenerator, GeneratedAnswerScores, load_prediction_set

        generator = AnswerGenerator(tokenizer, template, args.generate, training.per_device_eval_batch_size,
                                    getattr(model, "generation_config", None))
        if training.do_eval and data.eval is not None:  # each evaluation also scores generated answers
            generation_eval = GeneratedAnswerScores(generator, load_prediction_set(args, tokenizer, template, "eval"))

    trainer = TuneforgeTrainer(
        model=model, args=training, train_dataset=data.train, eval_dataset=data.eval, data_collator=collator,
        processing_class=tokenizer, objective=SupervisedObjective(args.finetune.loss_chunk_size),
        length_sampler=sampler, batch_sampler=batch_sampler, generation_eval=generation_eval,
        metric_names=generation_eval.names if generation_eval else (),  # eval_bleu-4 ... in trainer_log.jsonl
    )
    meter = common.attach_meter(trainer, model, args)
    common.report_model(args, model, padding_free)

    results = common.train_and_evaluate(trainer, args, meter)
    if "eval_loss" in results:
        results["eval_perplexity"] = math.exp(min(results["eval_loss"], 50))
    restore_sdpa(model)
    if training.do_predict:
        from .predict import load_prediction_set, predict_and_save

        rows = load_prediction_set(args, tokenizer, template, "predict")
        results.update(predict_and_save(args, model, tokenizer, rows, generator))
    common.finish(args, trainer, tokenizer, template, results)
    return results
