"""Reward functions for benchmarks/grpo_vs_trl.sh (`reward_funcs=grpo_rewards:brevity`).

`brevity` is the same reward as ../shared/bench/trl_grpo.py's: shorter completions score higher. tuneforge
hands reward functions the completion strings (TRL hands chat messages, hence its c[0]["content"]).
"""


def brevity(prompts, completions, **_):
    return [-len(c) / 100 for c in completions]
