"""The GRPO reward functions: built-ins, resolving reward_funcs, weights, checked calls and combining."""

import sys

import pytest
import torch

from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.train.rewards import (
    BUILTIN,
    DEFAULT_FORMAT_PATTERN,
    RewardError,
    accuracy,
    call_reward,
    combine,
    extract_answer,
    format_reward,
    parse_reward_weights,
    required_columns,
    resolve_reward_funcs,
)


@pytest.mark.parametrize("completion, expected", [
    (r"so the answer is \boxed{42}.", "42"),
    (r"first \boxed{1} then \boxed{7}", "7"),
    (r"half: \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{3} and an unclosed \boxed{4", "3"),
    ("I think 3 apples, then 5 pears. Total 8.", "8"),
    ("the temperature is -12 degrees", "-12"),
    ("pi is about 3.14", "3.14"),
    ("it costs $1,234 in total", "1,234"),
    ("items 1,2,3", "3"),
    ("5-3=2", "2"),
    ("no digits at all", None),
])
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize("completion, answer, reward", [
    (r"\boxed{42}", "42", 1.0),
    (r"\boxed{42}", 42, 1.0),
    (r"\boxed{41}", 42, 0.0),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}", 1.0),  # not numbers: compared as strings
    (r"\boxed{ \frac{1}{2} }", r" \frac{1}{2}", 1.0),
    (r"\boxed{\frac{1}{3}}", r"\frac{1}{2}", 0.0),
    ("the answer is 12.0", 12, 1.0),
    ("the answer is 12", "12.0", 1.0),
    ("the answer is 12.", 12.0, 1.0),
    ("so -7", "-7", 1.0),
    ("total 1,234", 1234, 1.0),
    ("total 1,234", "1,234", 1.0),
    ("0.5 of it", 0.5000000001, 1.0),
    ("no number here", "12", 0.0),
    ("no number here", None, 0.0),
    (r"\boxed{Paris}", " Paris ", 1.0),
])
def test_accuracy(completion, answer, reward):
    assert accuracy(["prompt"], [completion], answer=[answer]) == [reward]


def test_accuracy_scores_each_completion_against_its_answer():
    completions = ["1", r"\boxed{2}", r"\boxed{x}"]
    assert accuracy(["p"] * 3, completions, answer=[1, 3, "x"], other=[0, 0, 0]) == [1.0, 0.0, 1.0]


def test_format_reward_default_and_custom_pattern():
    default = BUILTIN["format"]
    assert default(["p", "p", "p"], [r"so \boxed{4}", "so 4", r"\boxed{}"]) == [1.0, 0.0, 0.0]
    assert format_reward(DEFAULT_FORMAT_PATTERN)(["p"], ["a\n\\boxed{x\ny}"]) == [1.0]  # . spans lines
    custom = format_reward(r"^<think>.*</think>\s*<answer>.+</answer>$")
    assert custom(["p", "p"], ["<think>a\nb</think> <answer>3</answer>", "<answer>3</answer>"]) == [1.0, 0.0]


def test_resolve_builtins_with_spaces_and_empty_items():
    resolved = resolve_reward_funcs(" accuracy, ,format ,", None)
    assert [name for name, _ in resolved] == ["accuracy", "format"]
    assert resolved[0][1] is accuracy
    assert resolve_reward_funcs("", None) == []


def test_resolve_format_uses_format_pattern():
    [(name, fn)] = resolve_reward_funcs("format", r"ANSWER: \d+")
    assert name == "format"
    assert fn(["p", "p"], ["ANSWER: 5", r"\boxed{5}"]) == [1.0, 0.0]


def test_invalid_format_pattern_names_the_key():
    with pytest.raises(ConfigError, match=r"^format_pattern: .*not a valid regular expression"):
        resolve_reward_funcs("format", r"\boxed{(")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder holding my_rewards_<test>.py, as the working directory; sys.path restored after."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    name = f"my_rewards_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{name}.py").write_text(
        "LIMIT = 5\n"
        "def length_reward(prompts, completions, **columns):\n"
        "    return [float(len(c) <= LIMIT) for c in completions]\n"
        "def helper():\n"
        "    pass\n"
    )
    (tmp_path / "broken_rewards_mod.py").write_text("import not_a_real_package_xyz\n")
    yield name
    sys.modules.pop(name, None)
    sys.modules.pop("broken_rewards_mod", None)


def test_resolve_module_function_from_working_directory(project):
    resolved = resolve_reward_funcs(f"accuracy, {project}:length_reward", None)
    assert [name for name, _ in resolved] == ["accuracy", f"{project}:length_reward"]
    assert resolved[1][1](["p", "p"], ["short", "much too long"]) == [1.0, 0.0]


def test_unknown_builtin_name_lists_builtins_and_colon_form():
    with pytest.raises(ConfigError, match=r"^reward_funcs: unknown reward 'acuracy'") as info:
        resolve_reward_funcs("acuracy", None)
    assert "accuracy, format" in str(info.value)
    assert "module.path:function" in str(info.value)


def test_dotted_path_without_colon_is_rejected(project):
    with pytest.raises(ConfigError, match="module.path:function"):
        resolve_reward_funcs(f"{project}.length_reward", None)


def test_missing_module_names_module_and_paths(project):
    with pytest.raises(ConfigError) as info:
        resolve_reward_funcs("no_such_module_abc:fn", None)
    message = str(info.value)
    assert message.startswith("reward_funcs: cannot import module 'no_such_module_abc'")
    assert "ModuleNotFoundError" in message and "PYTHONPATH" in message and "working directory" in message
    assert "\n" not in message


def test_module_failing_to_import_reports_its_error(project):
    with pytest.raises(ConfigError, match="broken_rewards_mod.*not_a_real_package_xyz"):
        resolve_reward_funcs("broken_rewards_mod:fn", None)


def test_missing_function_lists_module_callables(project):
    with pytest.raises(ConfigError) as info:
        resolve_reward_funcs(f"{project}:lenght_reward", None)
    message = str(info.value)
    assert message.startswith(f"reward_funcs: module '{project}' has no function 'lenght_reward'")
    assert "helper, length_reward" in message and "LIMIT" not in message


def test_attribute_that_is_not_callable(project):
    with pytest.raises(ConfigError, match=r"^reward_funcs: .*:LIMIT' is not a function \(its type is int\)"):
        resolve_reward_funcs(f"{project}:LIMIT", None)


@pytest.mark.parametrize("spec", [":fn", "mod:", " : "])
def test_colon_form_needs_both_parts(spec):
    with pytest.raises(ConfigError, match=r"^reward_funcs: .*needs both parts"):
        resolve_reward_funcs(spec, None)


def test_required_columns():
    assert required_columns(["accuracy", "format"]) == {"answer"}
    assert required_columns("format, mod:fn") == set()
    assert required_columns([]) == set()


@pytest.mark.parametrize("value, count, expected", [
    (None, 3, [1.0, 1.0, 1.0]),
    ("1, 0.5", 2, [1.0, 0.5]),
    ("2", 1, [2.0]),
    ([1, 0.25, -1], 3, [1.0, 0.25, -1.0]),
    (0.5, 1, [0.5]),
    (["1", "2e-1"], 2, [1.0, 0.2]),
])
def test_parse_reward_weights(value, count, expected):
    assert parse_reward_weights(value, count) == pytest.approx(expected)


@pytest.mark.parametrize("value, count, fragment", [
    ("1,2,3", 2, "got 3 weights but 2 are needed"),
    ([1.0], 2, "got 1 weights but 2 are needed"),
    ("1,abc", 2, "'abc' is not a number"),
    ([1.0, None], 2, "None is not a number"),
    ([True], 1, "True is not a number"),
    ("nan", 1, "'nan' is not a number"),
])
def test_parse_reward_weights_errors(value, count, fragment):
    with pytest.raises(ConfigError) as info:
        parse_reward_weights(value, count)
    message = str(info.value)
    assert message.startswith("reward_weights: ") and fragment in message
    assert f"give {count} numbers, one per reward function in the order of reward_funcs then the reward model" \
        in message


def test_call_reward_returns_float32_tensor():
    out = call_reward("accuracy", accuracy, ["p", "p"], [r"\boxed{1}", "2"], {"answer": [1, 3]})
    assert out.dtype == torch.float32 and out.shape == (2,)
    assert out.tolist() == [1.0, 0.0]
    from_tensor = call_reward("t", lambda p, c, **_: torch.tensor([1, 2]), ["p"] * 2, ["a", "b"], {})
    assert from_tensor.tolist() == [1.0, 2.0] and from_tensor.dtype == torch.float32


def test_call_reward_wraps_raising_function():
    def picky(prompts, completions, **columns):
        raise KeyError("solution")

    with pytest.raises(RewardError, match=r"^reward function picky raised KeyError: 'solution'; .*answer") as info:
        call_reward("picky", picky, ["p"], ["c"], {"answer": [1]})
    assert isinstance(info.value, TuneforgeError) and isinstance(info.value.__cause__, KeyError)


def test_call_reward_missing_column_for_accuracy():
    with pytest.raises(RewardError, match="reward function accuracy raised TypeError"):
        call_reward("accuracy", accuracy, ["p"], ["1"], {})


@pytest.mark.parametrize("result, fragment", [
    ([1.0], "returned 1 values for 2 completions"),
    ([1.0, 2.0, 3.0], "returned 3 values for 2 completions"),
    (None, "returned NoneType; expected a list of 2 floats"),
    (1.0, "returned float; expected a list of 2 floats"),
    ("10", "returned str; expected a list of 2 floats"),
    (torch.zeros(2, 1), "returned Tensor of shape (2, 1)"),
    ([1.0, None], "returned None at index 1"),
    ([float("nan"), 1.0], "returned nan at index 0"),
    ([1.0, "0.5"], "returned '0.5' at index 1"),
])
def test_call_reward_rejects_bad_results(result, fragment):
    with pytest.raises(RewardError) as info:
        call_reward("my_mod:score", lambda p, c, **_: result, ["p", "p"], ["a", "b"], {})
    message = str(info.value)
    assert message.startswith("reward function my_mod:score returned") and fragment in message


def test_combine_weighted_sum():
    a, b = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.5, 1.0, 0.0])
    assert combine([a, b], [1.0, 2.0]).tolist() == pytest.approx([2.0, 2.0, 1.0])
    assert combine([a], [0.5]).tolist() == pytest.approx([0.5, 0.0, 0.5])
    assert combine([a, b], [1.0, 2.0]).shape == (3,)
