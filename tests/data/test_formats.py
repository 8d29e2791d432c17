"""Row conversion (alpaca / sharegpt / openai / text), format detection and dataset_info.json entries."""

import json

import pytest

from tuneforge.data.formats import check_columns, convert_row
from tuneforge.data.registry import DatasetSpec, detect_format, parse_entry
from tuneforge.errors import DataError


def spec_for(entry: dict, name: str = "demo") -> DatasetSpec:
    return parse_entry(name, {"file_name": "x.json", **entry}, "data")


def convert(row: dict, entry: dict, stage: str = "sft"):
    return convert_row(row, spec_for(entry), stage, 7, "x.json item 7")


def roles(conv):
    return [(m.role, m.content) for m in conv.messages]


SHAREGPT = {"formatting": "sharegpt"}
OPENAI = {"formatting": "openai"}


# ---- alpaca -------------------------------------------------------------------------------------------------


def test_alpaca_joins_instruction_and_input_and_keeps_history_and_system():
    row = {"instruction": "Translate", "input": "bonjour", "output": "hello", "sys": "Be brief.", "hist": [["hi", "hey"]]}
    conv = convert(row, {"columns": {"system": "sys", "history": "hist"}})
    assert roles(conv) == [("user", "hi"), ("assistant", "hey"), ("user", "Translate\nbonjour"), ("assistant", "hello")]
    assert conv.system == "Be brief." and conv.source == "demo:7"


def test_alpaca_empty_input_is_left_out_and_history_may_be_json_text():
    conv = convert({"instruction": "Hi", "input": "", "output": "Hello", "history": '[["a", "b"]]'}, {"columns": {"history": "history"}})
    assert roles(conv) == [("user", "a"), ("assistant", "b"), ("user", "Hi"), ("assistant", "Hello")]


def test_alpaca_bad_history_names_row_and_key():
    with pytest.raises(DataError, match=r"dataset 'demo' row 7 \(x.json item 7\): 'history' must be a list of \[prompt, response\] pairs"):
        convert({"instruction": "Hi", "output": "o", "history": [["only one"]]}, {"columns": {"history": "history"}})


def test_alpaca_for_pt_joins_prompt_and_response_into_text():
    conv = convert({"instruction": "Title", "input": "", "output": "Body"}, {}, stage="pt")
    assert conv.text == "Title\nBody" and conv.messages == []
    assert convert({"text": "a document"}, {"columns": {"prompt": "text"}}, stage="pt").text == "a document"
    assert convert({"text": "  "}, {"columns": {"prompt": "text"}}, stage="pt") == "empty text"


def test_alpaca_pairwise_and_kto():
    conv = convert({"instruction": "Q", "chosen": "good", "rejected": "bad"}, {"ranking": True}, stage="dpo")
    assert roles(conv) == [("user", "Q")]
    assert (conv.chosen.role, conv.chosen.content, conv.rejected.content) == ("assistant", "good", "bad")
    kto = {"columns": {"prompt": "prompt", "response": "completion", "kto_tag": "label"}}
    conv = convert({"prompt": "Q", "completion": "A", "label": "false"}, kto, stage="kto")
    assert conv.kto_tag is False and roles(conv)[-1] == ("assistant", "A")
    with pytest.raises(DataError, match="'label' must be true or false"):
        convert({"prompt": "Q", "completion": "A", "label": "maybe"}, kto, stage="kto")


def test_alpaca_unusable_rows_give_a_reason():
    assert convert({"instruction": "Q", "output": ""}, {}) == "empty response"
    assert convert({"instruction": "", "input": "", "output": "A"}, {}) == "empty prompt"
    assert convert({"instruction": "Q"}, {}) == "no response (conversation ends with a prompt)"
    assert convert({"instruction": "Q", "chosen": "", "rejected": "b"}, {"ranking": True}, "rm") == "empty chosen or rejected response"
    assert convert({"instruction": "Q", "output": "A"}, {"columns": {"kto_tag": "label"}}, "kto") == "no kto_tag"


def test_non_text_value_is_an_error():
    with pytest.raises(DataError, match="'output' should be text but is a dict"):
        convert({"instruction": "Q", "output": {"a": 1}}, {})


# ---- sharegpt / openai --------------------------------------------------------------------------------------


def turn(frm, value):
    return {"from": frm, "value": value}


def test_sharegpt_roles_system_and_tools():
    tools = [{"name": "f", "parameters": {}}]
    row = {
        "conversations": [turn("system", "S"), turn("human", "q"), turn("function_call", '{"name": "f"}'),
                          turn("observation", "42"), turn("gpt", "It is 42.")],
        "tools": tools,
    }  # fmt: skip
    conv = convert(row, {**SHAREGPT, "columns": {"messages": "conversations", "tools": "tools"}})
    assert conv.system == "S"
    assert [m.role for m in conv.messages] == ["user", "function_call", "observation", "assistant"]
    assert json.loads(conv.tools) == tools
    assert convert(dict(row, tools={"name": "f"}), {**SHAREGPT, "columns": {"tools": "tools"}}).tools == '{"name": "f"}'


def test_sharegpt_custom_tags():
    entry = {**SHAREGPT, "columns": {"messages": "msgs"}, "tags": {"role_tag": "who", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"}}
    conv = convert({"msgs": [{"who": "me", "text": "a"}, {"who": "bot", "text": "b"}]}, entry)
    assert roles(conv) == [("user", "a"), ("assistant", "b")]


def test_sharegpt_roles_out_of_order_names_dataset_row_and_expected_role():
    row = {"conversations": [turn("human", "a"), turn("human", "b")]}
    with pytest.raises(DataError) as err:
        convert(row, SHAREGPT)
    msg = str(err.value)
    assert "dataset 'demo' row 7" in msg and "roles out of order: message 1 is 'human'" in msg
    assert "gpt or function_call was expected" in msg
    with pytest.raises(DataError, match="message 0 is 'gpt' but human or observation was expected"):
        convert({"conversations": [turn("gpt", "a")]}, SHAREGPT)


def test_sharegpt_unknown_role_and_missing_role_key():
    with pytest.raises(DataError, match="message 0 has unknown role 'bot'"):
        convert({"conversations": [turn("bot", "a")]}, SHAREGPT)
    with pytest.raises(DataError, match="message 0 has unknown role ''"):
        convert({"conversations": [turn("", "a")]}, SHAREGPT)
    with pytest.raises(DataError, match="message 0 has no 'from' key \\(keys: role, content\\); set tags.role_tag"):
        convert({"conversations": [{"role": "user", "content": "a"}]}, SHAREGPT)


def test_sharegpt_stage_shapes():
    two = {"conversations": [turn("human", "q"), turn("gpt", "a")]}
    one = {"conversations": [turn("human", "q")]}
    assert convert(one, SHAREGPT) == "no response (conversation ends with a prompt)"
    assert roles(convert(two, SHAREGPT, "ppo")) == [("user", "q")]  # ppo keeps only the prompt
    assert convert({"conversations": []}, SHAREGPT) == "no messages"
    assert convert({"conversations": [turn("human", "q"), turn("gpt", " ")]}, SHAREGPT) == "empty response"
    ranking = {**SHAREGPT, "ranking": True}
    conv = convert({**one, "chosen": turn("gpt", "c"), "rejected": turn("gpt", "r")}, ranking, "dpo")
    assert (conv.chosen.content, conv.rejected.content) == ("c", "r")
    assert convert({**two, "chosen": turn("gpt", "c"), "rejected": turn("gpt", "r")}, ranking, "rm").startswith("conversation ends with a response")
    assert convert({**one, "chosen": [], "rejected": turn("gpt", "r")}, ranking, "dpo") == "empty chosen or rejected response"
    last_turn = {**one, "chosen": [turn("human", "q"), turn("gpt", "c")], "rejected": "r"}  # whole conversations, plain text
    assert (convert(last_turn, ranking, "dpo").chosen.content, convert(last_turn, ranking, "dpo").rejected.content) == ("c", "r")
    with pytest.raises(DataError, match="'chosen' has role 'human' but a response role"):
        convert({**one, "chosen": turn("human", "c"), "rejected": turn("gpt", "r")}, ranking, "dpo")


def test_openai_messages_tool_calls_and_content_parts():
    row = {"messages": [
        {"role": "system", "content": "S"},
        {"role": "user", "content": [{"type": "text", "text": "weather "}, {"type": "text", "text": "in Paris?"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    ]}  # fmt: skip
    conv = convert(row, OPENAI)
    assert conv.system == "S"
    assert roles(conv) == [
        ("user", "weather in Paris?"),
        ("function_call", '{"name": "w", "arguments": {"city": "Paris"}}'),
        ("observation", "sunny"),
        ("assistant", "Sunny."),
    ]
    row["messages"][2]["content"] = "Let me look."
    assert convert(row, OPENAI) == "assistant message with both text and tool_calls (not supported yet)"


def test_openai_image_part_is_multimodal_error():
    row = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x.png"}]}]}
    with pytest.raises(DataError, match="multimodal columns are not supported yet"):
        convert(row, OPENAI)


# ---- dataset_info.json entries ------------------------------------------------------------------------------


def test_entry_defaults_follow_llamafactory():
    spec = spec_for({})
    assert spec.formatting == "alpaca" and spec.columns == {"prompt": "instruction", "query": "input", "response": "output"}
    spec = spec_for(SHAREGPT)
    assert spec.columns["messages"] == "conversations" and spec.tags["role_tag"] == "from" and spec.tags["assistant_tag"] == "gpt"
    assert spec.path.endswith("x.json") and spec.load_from == "file" and spec.split == "train"
    assert spec_for({"ranking": True}).columns["chosen"] == "chosen"


def test_entry_reads_every_schema_key():
    entry = {"formatting": "sharegpt", "ranking": True, "subset": "en", "split": "validation", "folder": "python",
             "num_samples": 12, "columns": {"messages": "m", "chosen": "c", "rejected": "r", "system": "s", "tools": "t"},
             "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                      "observation_tag": "tool", "function_tag": "fc", "system_tag": "sys"}}  # fmt: skip
    spec = spec_for(entry)
    assert (spec.subset, spec.split, spec.folder, spec.num_samples, spec.ranking) == ("en", "validation", "python", 12, True)
    assert spec.columns["messages"] == "m" and spec.tags["function_tag"] == "fc"
    assert spec.explicit_columns == {"messages", "chosen", "rejected", "system", "tools"}


def test_hub_address_wins_over_file_name():
    spec = parse_entry("a", {"file_name": "a.json", "hf_hub_url": "org/a"}, "data")
    assert (spec.load_from, spec.path) == ("hf_hub", "org/a")
    assert parse_entry("b", {"ms_hub_url": "org/b"}, "data").load_from == "ms_hub"
    assert parse_entry("c", {"script_url": "c"}, "data").load_from == "script"


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"file_name": "a.json", "fromatting": "sharegpt"}, "entry 'bad': unknown key 'fromatting'; allowed: file_name"),
        ({"file_name": "a.json", "columns": {"answer": "x"}}, "entry 'bad': unknown column 'answer'"),
        ({"file_name": "a.json", "tags": {"bot_tag": "x"}}, "entry 'bad': unknown tag 'bot_tag'"),
        ({"file_name": "a.json", "formatting": "chatml"}, "formatting 'chatml' is not one of alpaca, sharegpt, openai"),
        ({"file_name": "a.json", "columns": {"images": "images"}}, "multimodal columns are not supported yet \\(images\\)"),
        ({"file_name": "a.json", "num_samples": 0}, "num_samples must be a positive integer"),
        ({"formatting": "alpaca"}, "needs one of file_name, hf_hub_url"),
    ],
)
def test_bad_entries(entry, message):
    with pytest.raises(DataError, match=message):
        parse_entry("bad", entry, "data")


# ---- detection and column checks ----------------------------------------------------------------------------


def detected(*rows):
    return detect_format(DatasetSpec(name="f.jsonl", path="f.jsonl", formatting=None, where="f.jsonl"), list(rows))


def test_detects_each_format_from_columns():
    spec = detected({"instruction": "a", "input": "", "output": "b", "system": "s"})
    assert spec.formatting == "alpaca" and spec.columns == {"system": "system", "prompt": "instruction", "query": "input", "response": "output"}
    spec = detected({"conversations": [turn("human", "a")], "tools": "[]"})
    assert spec.formatting == "sharegpt" and spec.columns == {"tools": "tools", "messages": "conversations"}
    spec = detected({"messages": [{"role": "user", "content": "a"}]})
    assert spec.formatting == "openai" and spec.tags["observation_tag"] == "tool"
    spec = detected({"conversations": [turn("human", "q")], "chosen": turn("gpt", "a"), "rejected": turn("gpt", "b")})
    assert spec.ranking and spec.formatting == "sharegpt"
    spec = detected({"prompt": "q", "chosen": "a", "rejected": "b"})
    assert spec.ranking and spec.formatting == "alpaca" and spec.columns["prompt"] == "prompt"
    spec = detected({"messages": [{"role": "user", "content": "q"}], "label": True})
    assert spec.is_kto and spec.columns["kto_tag"] == "label"
    assert detected({"text": "doc"}).formatting == "text"


def test_detection_failure_lists_columns():
    with pytest.raises(DataError, match="cannot tell the dataset format from its columns \\(foo, bar\\)"):
        detected({"foo": 1, "bar": 2})
    with pytest.raises(DataError, match="holds messages with keys \\['speaker', 'words'\\]"):
        detected({"messages": [{"speaker": "a", "words": "b"}]})
    with pytest.raises(DataError, match="multimodal columns are not supported yet \\(images\\)"):
        detected({"messages": [], "images": []})


def test_missing_column_names_it_and_lists_present():
    with pytest.raises(DataError, match="response column 'output' not found .*columns present: text. Set columns.response"):
        check_columns(spec_for({"columns": {"prompt": "text"}}), "sft", ["text"])
    check_columns(spec_for({"columns": {"prompt": "text"}}), "pt", ["text"])  # pt needs no response
    with pytest.raises(DataError, match="messages column 'conversations' not found; columns present: messages"):
        check_columns(spec_for(SHAREGPT), "sft", ["messages"])
