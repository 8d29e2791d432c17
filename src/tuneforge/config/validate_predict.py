"""Checks of batch prediction (`do_predict`, `predict_with_generate`), run before any model loads: only stage
sft predicts, predictions are always generated, there must be rows to predict on, and the generation keys
must be ones the generator honours."""

from __future__ import annotations

import logging

from ..errors import ConfigError

logger = logging.getLogger("tuneforge")

# Seq2SeqTrainingArguments' own generation keys: generation here reads the tuneforge keys instead.
SEQ2SEQ_GENERATION_KEYS = {"generation_max_length": "max_new_tokens", "generation_num_beams": "num_beams",
                           "generation_config": "do_sample, temperature, top_p, top_k, max_new_tokens"}


def default_do_train(train_kwargs: dict) -> bool:
    """do_train when the config does not say: true, except in a prediction config (LLaMA-Factory's predict
    configs set do_predict and leave do_train out, meaning no training)."""
    return bool(train_kwargs.get("do_train", not train_kwargs.get("do_predict")))


def default_do_eval(args, train_kwargs: dict) -> bool:
    """do_eval when the config does not say: true when there is evaluation data or an eval_strategy, except
    in a prediction-only run (do_predict without do_train), which does not also compute a loss."""
    if "do_eval" in train_kwargs:
        return bool(train_kwargs["do_eval"])
    has_eval = (str(train_kwargs.get("eval_strategy", "no")).lower() not in ("no", "false")
                or bool(args.data.val_size) or bool(args.data.eval_dataset))
    return has_eval and not (train_kwargs.get("do_predict") and not default_do_train(train_kwargs))


def validate_predict_keys(args, train_kwargs: dict, at) -> None:
    d, f, g = args.data, args.finetune, args.generate
    predict, generate = bool(train_kwargs.get("do_predict")), bool(train_kwargs.get("predict_with_generate"))
    if f.stage != "sft" and (predict or generate):
        key = "do_predict" if predict else "predict_with_generate"
        raise ConfigError(
            f"{key}{at(key)}: batch prediction (generated answers scored with BLEU and ROUGE) is for stage sft, not "
            f"{f.stage}; remove {key}, or predict in a separate run with stage: sft and this run's output as "
            "adapter_name_or_path (LoRA) or model_name_or_path")
    if predict and not generate:
        raise ConfigError(
            f"do_predict{at('do_predict')}: predictions are generated answers, so it needs predict_with_generate: "
            "true; add it (or use do_eval for the loss on the evaluation data)")
    if not generate:
        if d.eval_num_beams is not None and "eval_num_beams" in args.sources:
            logger.warning("eval_num_beams: no effect without predict_with_generate")
        return
    if not predict and not default_do_eval(args, train_kwargs):
        logger.warning("predict_with_generate: no effect without do_predict or evaluation (do_eval with "
                       "eval_dataset or val_size)")
    if predict and not d.eval_dataset and not d.dataset:
        raise ConfigError(f"do_predict{at('do_predict')}: there are no rows to predict on; set eval_dataset (or "
                          "dataset) to rows whose responses the generated answers are scored against")
    for key in ("eval_num_beams", "num_beams"):
        value = getattr(d if key == "eval_num_beams" else g, key)
        if value is not None and value != 1:
            raise ConfigError(f"{key}{at(key)}: beam search is not implemented for predict_with_generate (answers "
                              f"are greedy, or sampled with do_sample: true); set {key}: 1")
    for key, instead in SEQ2SEQ_GENERATION_KEYS.items():
        if train_kwargs.get(key) is not None:
            raise ConfigError(f"{key}{at(key)}: not read by tuneforge's generation; remove it and set {instead}")
    if g.max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens{at('max_new_tokens')}: must be at least 1, got {g.max_new_tokens}")
    if g.do_sample and (g.temperature <= 0 or not 0 < g.top_p <= 1 or g.top_k < 0):
        raise ConfigError(f"do_sample{at('do_sample')}: sampling needs temperature > 0, top_p in (0, 1] and "
                          f"top_k >= 0; got {g.temperature}, {g.top_p}, {g.top_k}")
    if g.repetition_penalty <= 0:
        raise ConfigError(f"repetition_penalty{at('repetition_penalty')}: must be above 0, "
                          f"got {g.repetition_penalty}")
    _refuse_sharded_generation(train_kwargs, at)


def _refuse_sharded_generation(train_kwargs: dict, at) -> None:
    from .validate import _zero_stage, fsdp_value

    if fsdp_value(train_kwargs.get("fsdp")) is not None or _zero_stage(train_kwargs.get("deepspeed")) == 3:
        key = "deepspeed" if train_kwargs.get("deepspeed") else "fsdp"
        raise ConfigError(
            f"{key}{at(key)}: predict_with_generate generates with the whole model in each process, which "
            "DeepSpeed ZeRO-3 and FSDP shard; use ZeRO-2 or DDP (nproc_per_node) for a run that predicts, or "
            "predict in a separate run")
