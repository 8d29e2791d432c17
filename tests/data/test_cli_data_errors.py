"""Bad data through `tuneforge data preview`: one `error: ...` line on stderr saying what, where and how to
fix it, exit status 1, no traceback (unless --debug)."""

import json

import pytest

from tuneforge.cli import main
from tuneforge.errors import DataError

TOOLS = [{"name": "get_weather", "description": "Weather of a city", "parameters": {"type": "object", "properties": {}}}]


def write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def jsonl(*rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "data"
    d.mkdir()
    write(d / "ok.jsonl", jsonl({"instruction": "hi", "output": "hello"}))
    write(d / "bad.jsonl", jsonl({"instruction": "a", "output": "b"}) + '{"instruction": "c", "output": \n')
    write(d / "roles.jsonl", jsonl({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}))
    write(d / "empty.jsonl", jsonl({"instruction": "a", "output": ""}, {"instruction": "b", "output": "  "}))
    write(d / "tools.jsonl", jsonl({
        "conversations": [{"from": "human", "value": "weather in Paris?"},
                          {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
                          {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "It is sunny."}],
        "tools": json.dumps(TOOLS),
    }))  # fmt: skip
    info = {"ok": {"file_name": "ok.jsonl"}, "typo": {"file_name": "ok.jsonl", "columns": {"prompt": "question"}}}
    write(d / "dataset_info.json", json.dumps(info))
    return d


def is_progress_bar(line: str) -> bool:
    return "examples/s" in line or "%|" in line or " examples [" in line


def preview_error(capsys, model_dir, data_dir, *overrides) -> str:
    code = main(["data", "preview", f"model_name_or_path={model_dir}", f"dataset_dir={data_dir}", "output_dir=unused",
                 *overrides])
    out, err = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not is_progress_bar(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


CASES = {
    "malformed jsonl line": (["dataset={d}/bad.jsonl"], ["{d}/bad.jsonl line 2", "invalid JSON", "one JSON object"]),
    "missing column": (["dataset=typo"], ["entry 'typo'", "prompt column 'question' not found",
                                         "columns present: instruction, output", "Set columns.prompt"]),
    "roles out of order": (["dataset={d}/roles.jsonl"], ["row 0 (roles.jsonl line 1)", "roles out of order",
                                                        "message 1 is 'human' but gpt or function_call was expected"]),
    "unknown dataset name": (["dataset=nosuch"], ["dataset 'nosuch' is not in", "known names: ok, typo"]),
    "empty after filtering": (["dataset={d}/empty.jsonl"], ["none of its 2 rows is usable for stage sft",
                                                           "empty response: 2"]),
    "empty after tokenizing": (["dataset=ok", "cutoff_len=1"], ["no training example is left",
                                                               "no supervised token left after truncation: 1",
                                                               "raise cutoff_len (now 1)"]),
    "unknown template": (["dataset=ok", "template=qwen9"], ["unknown template 'qwen9'", "Did you mean 'qwen'",
                                                           "Available templates: auto,", "llama3", "chatglm3"]),
    "template without tool support": (["dataset={d}/tools.jsonl"], ["does not render tool lists",
                                                                   "'get_weather'", "named template with tool support"]),
    "stage needs ranking data": (["dataset=ok", "stage=dpo"], ["stage dpo needs a ranking dataset", '"ranking": true']),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_line(case, data, tiny_model_dir, capsys):
    overrides, expected = CASES[case]
    line = preview_error(capsys, tiny_model_dir, data, *[o.format(d=data) for o in overrides])
    for fragment in expected:
        assert fragment.format(d=data) in line, (case, line)


def test_config_mistakes(data, tiny_model_dir, capsys):
    line = preview_error(capsys, tiny_model_dir, data, "dataset=ok", "cutof_len=4")
    assert "unknown key 'cutof_len'" in line and "cutoff_len" in line
    code = main(["data", "preview", "dataset=ok", f"dataset_dir={data}"])
    assert code == 1 and "model_name_or_path is not set" in capsys.readouterr().err


def test_debug_shows_the_traceback(data, tiny_model_dir):
    with pytest.raises(DataError, match="known names"):
        main(["data", "preview", f"model_name_or_path={tiny_model_dir}", f"dataset_dir={data}", "dataset=nosuch",
              "--debug"])


def test_a_chat_template_that_raises_is_a_clear_error(data, tmp_path, capsys):
    from tests.tiny import build_tokenizer, save_tiny_model

    no_system = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    tok = build_tokenizer(["<|im_start|>", "<|im_end|>"], no_system, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    model_dir = save_tiny_model(tmp_path / "no-system-model", tok)
    write(data / "sys.jsonl", jsonl({"instruction": "hi", "output": "hello", "system": "be brief"}))
    line = preview_error(capsys, model_dir, data, f"dataset={data}/sys.jsonl")
    assert "chat template refused a conversation with roles system, user, assistant: System role not supported" in line
    assert "set `template` to a named template" in line
