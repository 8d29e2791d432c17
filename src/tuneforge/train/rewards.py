"""Reward functions of the GRPO stage: the built-ins, resolving `reward_funcs`, weights and safe calls.

A reward function is `fn(prompts, completions, **columns) -> list[float]`: `columns` holds the dataset's
other columns, each a list aligned with the completions (columns["answer"][i]); one float per completion.
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
import re
import sys

import torch

from tuneforge.data.registry import split_names
from tuneforge.errors import ConfigError, TuneforgeError

DEFAULT_FORMAT_PATTERN = r"\\boxed\{.+\}"
_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
_NUMBER_IN_TEXT = re.compile(r"(?<![A-Za-z\d_.])" + _NUMBER)  # a trailing period is never part of it
_BOXED = re.compile(r"\\boxed\s*\{")


class RewardError(TuneforgeError):
    """A reward function that raised or returned something other than one float per completion."""


def _one_line(text) -> str:  # messages stay on one line
    return " ".join(str(text).split())


def extract_answer(completion: str) -> str | None:
    """The content of the last balanced \\boxed{...} (nested braces kept), else the last number, else None."""
    for match in reversed(list(_BOXED.finditer(completion))):
        depth, start = 1, match.end()
        for i in range(start, len(completion)):
            depth += {"{": 1, "}": -1}.get(completion[i], 0)
            if depth == 0:
                return completion[start:i].strip()
    found = _NUMBER_IN_TEXT.findall(completion)
    return found[-1] if found else None


def _as_number(value) -> float | None:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if re.fullmatch(_NUMBER, text):
        return float(text.replace(",", ""))
    return None


def answers_match(predicted: str | None, answer) -> bool:
    """Numerically equal (abs diff < 1e-6) when both are numbers, else equal as stripped strings."""
    if predicted is None or answer is None:
        return False
    a, b = _as_number(predicted), _as_number(answer)
    if a is not None and b is not None:
        return abs(a - b) < 1e-6
    return predicted.strip() == str(answer).strip()


def accuracy(prompts, completions, answer, **_) -> list[float]:
    """1.0 when the completion's final answer equals the `answer` column, else 0.0."""
    return [1.0 if answers_match(extract_answer(c), a) else 0.0 for c, a in zip(completions, answer)]


def format_reward(pattern: str):
    """A reward giving 1.0 when `pattern` is found in the completion (re.DOTALL), else 0.0."""
    try:
        regex = re.compile(pattern, re.DOTALL)
    except re.error as e:
        raise ConfigError(f"format_pattern: {pattern!r} is not a valid regular expression ({_one_line(e)}); "
                          f"fix it or remove the key to use the default {DEFAULT_FORMAT_PATTERN!r}") from e

    def format_match(prompts, completions, **_) -> list[float]:
        return [1.0 if regex.search(c) else 0.0 for c in completions]
    return format_match


BUILTIN = {"accuracy": accuracy, "format": format_reward(DEFAULT_FORMAT_PATTERN)}
REQUIRED_COLUMNS = {"accuracy": {"answer"}}


def _import_function(item: str):
    module_name, _, func_name = (part.strip() for part in item.partition(":"))
    if not module_name or not func_name:
        raise ConfigError(f"reward_funcs: {item!r} needs both parts of module.path:function; "
                          f"write e.g. my_rewards:length_reward")
    if os.getcwd() not in sys.path:  # users run `tuneforge train` from their project folder
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ConfigError(f"reward_funcs: cannot import module {module_name!r} for {item!r} "
                          f"({type(e).__name__}: {_one_line(e)}); the module must be importable from the "
                          f"working directory ({os.getcwd()}) or PYTHONPATH") from e
    if not hasattr(module, func_name):
        available = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        listed = ", ".join(available[:10]) or "none"
        raise ConfigError(f"reward_funcs: module {module_name!r} has no function {func_name!r}; "
                          f"its callables are: {listed}")
    fn = getattr(module, func_name)
    if not callable(fn):
        raise ConfigError(f"reward_funcs: {item!r} is not a function (its type is {type(fn).__name__}); point it "
                          f"at a function fn(prompts, completions, **columns) -> list[float]")
    return fn


def resolve_reward_funcs(spec: str, format_pattern: str | None = None) -> list[tuple[str, object]]:
    """(name, function) for each comma-separated built-in name or module.path:function in `spec`."""
    format_fn = format_reward(format_pattern) if format_pattern is not None else BUILTIN["format"]
    resolved = []
    for item in split_names(spec):
        if item == "format":
            resolved.append((item, format_fn))
        elif item in BUILTIN:
            resolved.append((item, BUILTIN[item]))
        elif ":" not in item:
            raise ConfigError(f"reward_funcs: unknown reward {item!r}; the built-ins are "
                              f"{', '.join(BUILTIN)}, and your own functions are written module.path:function "
                              f"(e.g. my_rewards:length_reward)")
        else:
            resolved.append((item, _import_function(item)))
    return resolved


def required_columns(names) -> set[str]:
    """Dataset columns the named built-in rewards read (`names`: a list or a reward_funcs string)."""
    names = split_names(names) if isinstance(names, str) else names
    return set().union(*(REQUIRED_COLUMNS.get(name, set()) for name in names))


def parse_reward_weights(text_or_list, count: int) -> list[float]:
    """One weight per reward function (reward_funcs, then the reward model); None means all 1.0."""
    if text_or_list is None:
        return [1.0] * count
    how = (f"give {count} numbers, one per reward function in the order of reward_funcs then the reward "
           f"model, e.g. reward_weights: {','.join(['1.0'] * max(count, 1))}")
    items = (split_names(text_or_list) if isinstance(text_or_list, str)
             else list(text_or_list) if isinstance(text_or_list, (list, tuple)) else [text_or_list])
    weights = []
    for item in items:
        try:
            number = float(item) if isinstance(item, (str, numbers.Real)) and not isinstance(item, bool) else None
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):
            raise ConfigError(f"reward_weights: {item!r} is not a number; {how}")
        weights.append(number)
    if len(weights) != count:
        raise ConfigError(f"reward_weights: got {len(weights)} weights but {count} are needed; {how}")
    return weights


def call_reward(name: str, fn, prompts: list[str], completions: list[str], columns: dict) -> torch.Tensor:
    """Call a reward function and check it returned one finite number per completion; float32 (N,)."""
    expected = len(completions)
    try:
        result = fn(prompts, completions, **columns)
    except Exception as e:
        raise RewardError(f"reward function {name} raised {type(e).__name__}: {_one_line(e)}; fix the function "
                          f"or the dataset columns it reads (it gets prompts, completions and the columns "
                          f"{', '.join(sorted(columns)) or 'none'})") from e
    if hasattr(result, "ndim") and hasattr(result, "tolist") and result.ndim == 1:  # a tensor or numpy array
        result = result.tolist()
    if not isinstance(result, (list, tuple)):
        shape = f" of shape {tuple(result.shape)}" if hasattr(result, "shape") else ""
        raise RewardError(f"reward function {name} returned {type(result).__name__}{shape}; expected a list of "
                          f"{expected} floats, one per completion")
    if len(result) != expected:
        raise RewardError(f"reward function {name} returned {len(result)} values for {expected} completions; "
                          f"return one float per completion, in order")
    for i, value in enumerate(result):
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise RewardError(f"reward function {name} returned {value!r} at index {i}; expected a finite float "
                              f"for every completion (return 0.0 for completions it cannot score)")
    return torch.tensor([float(v) for v in result], dtype=torch.float32)


def combine(rewards: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Weighted sum of per-function rewards, each (N,), into one (N,) reward."""
    if not rewards or len(rewards) != len(weights):
        raise ValueError(f"combine needs one weight per reward, got {len(rewards)} rewards, {len(weights)} weights")
    stacked = torch.stack([r.to(torch.float32) for r in rewards])
    return (stacked * torch.tensor(weights, dtype=torch.float32, device=stacked.device)[:, None]).sum(0)
