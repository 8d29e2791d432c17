"""Checks of the keys of the stages that generate (ppo, grpo), run before any model loads: the reward
model folder, the reward functions (imported here, so a wrong name is reported at once), the batch
arithmetic of groups, and the settings these stages cannot honour."""

from __future__ import annotations

import logging
import os

from ..errors import ConfigError
from ..stages import RL

logger = logging.getLogger("tuneforge")

PPO_KEYS = ("ppo_epochs", "ppo_buffer_size", "ppo_target", "ppo_kl_coef", "ppo_horizon", "ppo_score_norm",
            "ppo_whiten_rewards", "ppo_gamma", "ppo_lam", "ppo_cliprange", "ppo_cliprange_value", "ppo_vf_coef")
GRPO_KEYS = ("num_generations", "scale_rewards", "epsilon", "epsilon_high", "beta", "loss_type", "num_iterations",
             "reward_funcs", "reward_weights", "format_pattern")
SHARED_KEYS = ("reward_model", "reward_model_type", "rollout_dtype")
ROLLOUT_DTYPES = ("auto", "float32", "bfloat16", "float16")


def validate_rl_keys(args, train_kwargs: dict, at) -> None:
    f, r = args.finetune, args.rl
    given = set(args.sources)
    if f.stage not in RL:
        unused = [k for k in PPO_KEYS + GRPO_KEYS + SHARED_KEYS if k in given]
        if unused:
            logger.warning("%s: no effect with stage %s (they are keys of ppo and grpo)", ", ".join(unused), f.stage)
        return
    _refuse_unsupported(args, train_kwargs, at)
    if r.reward_model_type not in ("lora", "full"):
        raise ConfigError(f"reward_model_type{at('reward_model_type')}: {r.reward_model_type!r} is not lora or full "
                          "(a reward served over an API is not supported)")
    if r.rollout_dtype not in ROLLOUT_DTYPES:
        raise ConfigError(f"rollout_dtype{at('rollout_dtype')}: {r.rollout_dtype!r} is not one of {', '.join(ROLLOUT_DTYPES)}")
    if r.reward_model:
        _check_reward_model(args, at)
    if f.stage == "ppo":
        _check_ppo(args, at)
        unused = [k for k in GRPO_KEYS if k in given]
    else:
        _check_grpo(args, train_kwargs, at)
        unused = [k for k in PPO_KEYS if k in given]
    if unused:
        logger.warning("%s: no effect with stage %s", ", ".join(unused), f.stage)


def _refuse_unsupported(args, train_kwargs: dict, at) -> None:
    from .validate import fsdp_value

    d, f = args.data, args.finetune
    stage = f.stage
    if train_kwargs.get("deepspeed") or fsdp_value(train_kwargs.get("fsdp")) is not None:
        key = "deepspeed" if train_kwargs.get("deepspeed") else "fsdp"
        raise ConfigError(f"{key}{at(key)}: stage {stage} generates with the whole model in each process, which "
                          "DeepSpeed and FSDP do not support here yet; use DDP (nproc_per_node) or one process")
    for key in ("packing", "neat_packing", "train_on_prompt", "streaming"):
        if getattr(d, key):
            raise ConfigError(f"{key}{at(key)}: stage {stage} trains on the responses it samples for each prompt, "
                              f"so {key} has no meaning; remove it")
    if f.token_budget:
        raise ConfigError(f"token_budget{at('token_budget')}: stage {stage} batches rollouts by count "
                          "(per_device_train_batch_size); remove token_budget")
    if d.val_size or d.eval_dataset or train_kwargs.get("do_eval") or \
            str(train_kwargs.get("eval_strategy", "no")).lower() not in ("no", "false"):
        raise ConfigError(f"stage {stage} has no evaluation loop (its loss needs fresh rollouts); remove val_size, "
                          "eval_dataset, do_eval and eval_strategy, and evaluate the saved model with tuneforge chat")
    if train_kwargs.get("_extra", {}).get("group_by_length"):
        raise ConfigError(f"group_by_length{at('group_by_length')}: stage {stage} batches rollouts by prompt group; "
                          "remove group_by_length")
    if args.generate.num_beams != 1:
        raise ConfigError(f"num_beams{at('num_beams')}: stage {stage} samples its rollouts; set num_beams: 1")
    if "length_penalty" in args.sources:
        raise ConfigError(f"length_penalty{at('length_penalty')}: it weighs beam-search hypotheses, and stage "
                          f"{stage} samples without beams; remove length_penalty")


def _check_reward_model(args, at) -> None:
    from ..models.value_head import VALUE_HEAD_FILE

    r, key = args.rl, "reward_model"
    folder = os.path.expanduser(r.reward_model)
    if not os.path.isdir(folder):
        raise ConfigError(f"{key}{at(key)}: {r.reward_model} is not a folder; give the output_dir of a stage: rm run")
    if not os.path.isfile(os.path.join(folder, VALUE_HEAD_FILE)):
        raise ConfigError(f"{key}{at(key)}: {r.reward_model} has no {VALUE_HEAD_FILE}, so it is not a reward model; "
                          "give the output_dir of a stage: rm run")
    is_adapter = os.path.isfile(os.path.join(folder, "adapter_config.json"))
    if r.reward_model_type == "lora":
        if not is_adapter:
            raise ConfigError(f"reward_model_type{at('reward_model_type')}: lora needs a LoRA reward model, but "
                              f"{r.reward_model} holds a full model; set reward_model_type: full")
        if args.finetune.finetuning_type != "lora":
            raise ConfigError(f"reward_model_type{at('reward_model_type')}: lora shares the policy's base weights, "
                              f"which finetuning_type {args.finetune.finetuning_type} changes; set "
                              "reward_model_type: full")


def _check_ppo(args, at) -> None:
    r = args.rl
    if not r.reward_model:
        raise ConfigError("stage ppo needs reward_model: the output_dir of a stage: rm run (train one with "
                          "examples/rm_lora.yaml)")
    positive = {"ppo_epochs": r.ppo_epochs, "ppo_buffer_size": r.ppo_buffer_size, "ppo_horizon": r.ppo_horizon,
                "ppo_cliprange": r.ppo_cliprange, "ppo_cliprange_value": r.ppo_cliprange_value}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}{at(key)}: must be above 0, got {value}")
    if r.ppo_target is not None and r.ppo_target <= 0:
        raise ConfigError(f"ppo_target{at('ppo_target')}: must be above 0 (or null for a fixed KL coefficient)")
    for key in ("ppo_gamma", "ppo_lam"):
        if not 0 <= getattr(r, key) <= 1:
            raise ConfigError(f"{key}{at(key)}: must be in [0, 1], got {getattr(r, key)}")
    if r.ppo_kl_coef < 0 or r.ppo_vf_coef < 0:
        raise ConfigError("ppo_kl_coef and ppo_vf_coef must not be negative")


def _check_grpo(args, train_kwargs: dict, at) -> None:
    from ..train.rewards import parse_reward_weights, resolve_reward_funcs
    from ..train.rl_loss import LOSS_TYPES

    r, g = args.rl, args.generate
    if not r.reward_funcs and not r.reward_model:
        raise ConfigError("stage grpo needs rewards: set reward_funcs (accuracy, format or module:function) and/or "
                          "reward_model (the output_dir of a stage: rm run)")
    funcs = resolve_reward_funcs(r.reward_funcs, r.format_pattern) if r.reward_funcs else []
    parse_reward_weights(r.reward_weights, len(funcs) + (1 if r.reward_model else 0))
    if r.num_generations < 2:
        raise ConfigError(f"num_generations{at('num_generations')}: grpo compares completions of one prompt, so it "
                          f"needs at least 2, got {r.num_generations}")
    batch = train_kwargs.get("per_device_train_batch_size", 8) * train_kwargs.get("gradient_accumulation_steps", 1)
    if batch % r.num_generations:
        raise ConfigError(
            f"num_generations{at('num_generations')}: {r.num_generations} does not divide the {batch} completions of "
            "an optimizer step (per_device_train_batch_size x gradient_accumulation_steps); make it a divisor")
    if "do_sample" in args.sources and not g.do_sample:
        raise ConfigError(f"do_sample{at('do_sample')}: greedy decoding gives every completion of a prompt the same "
                          "reward, so grpo learns nothing; remove do_sample: false")
    if r.epsilon <= 0 or (r.epsilon_high is not None and r.epsilon_high < r.epsilon):
        raise ConfigError(f"epsilon{at('epsilon')} must be above 0 and epsilon_high{at('epsilon_high')} at least "
                          f"epsilon; got {r.epsilon} and {r.epsilon_high}")
    if r.beta < 0:
        raise ConfigError(f"beta{at('beta')}: must not be negative, got {r.beta}")
    if r.loss_type not in LOSS_TYPES:
        raise ConfigError(f"loss_type{at('loss_type')}: {r.loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
    if r.num_iterations < 1:
        raise ConfigError(f"num_iterations{at('num_iterations')}: must be at least 1, got {r.num_iterations}")
