"""Batch prediction (stage sft, do_predict + predict_with_generate) and generated-answer scores during
evaluation, on a tiny model: the answers are the ones the generator gives each prompt alone, the files are
LLaMA-Factory's, and its predict config runs with only the model, adapter, template and data folder changed."""

import json
import logging
import os

import pytest
import yaml

from tuneforge.cli import main
from tuneforge.train.nlg_metrics import nlg_metrics
from tuneforge.train.runner import run_train

ANCHORS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "anchors")
LF_PREDICT = os.path.join(ANCHORS, "llamafactory-examples", "extras", "nlg_eval", "llama3_lora_predict.yaml")
METRICS = ("predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l")

ROWS = [  # prompts of different lengths, so batches mix them and need left padding
    {"instruction": "Who are you?", "input": "", "output": "I am Forge, an assistant built with tuneforge."},
    {"instruction": "你是谁？", "input": "", "output": "我是 Forge。"},
    {"instruction": "Translate to French", "input": "good morning and thank you", "output": "bonjour et merci"},
    {"instruction": "Add", "input": "2 and 2", "output": "4"},
    {"instruction": "Write code", "input": "a function that adds two numbers a and b",
     "output": "def add(a, b):\n    return a + b"},
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict-data")
    (d / "identity.json").write_text(json.dumps(ROWS[:2], ensure_ascii=False), encoding="utf-8")
    (d / "alpaca_en_demo.json").write_text(json.dumps(ROWS[2:4], ensure_ascii=False), encoding="utf-8")
    (d / "rows.json").write_text(json.dumps(ROWS, ensure_ascii=False), encoding="utf-8")
    (d / "prompts_only.json").write_text(json.dumps([{"instruction": "Hi"}]), encoding="utf-8")
    info = {"identity": {"file_name": "identity.json"}, "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
            "prompts_only": {"file_name": "prompts_only.json"}}
    (d / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return str(d)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def short_answer_model(tmp_path_factory):
    """A tiny chatml model that answers every prompt "I am" and then its end-of-turn token (a random one would
    use all of the 512 new tokens the predict config allows): the embeddings are large next to what the random
    layers add, so the next token depends on the last one alone, and the LM head maps the generation header's
    last token to "I", "I" to " am" and " am" to <|im_end|>."""
    import torch

    from tests.tiny import chatml_tokenizer, tiny_llama

    tokenizer = chatml_tokenizer()
    model = tiny_llama(tokenizer)
    chain = [tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)[-1],
             *tokenizer.encode("I am", add_special_tokens=False), tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert len(chain) == 4
    with torch.no_grad():
        embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        embed.mul_(50)
        for token, successor in zip(chain, chain[1:]):
            head[successor] += 5 * embed[token] / embed[token].norm()  # logit ~5 x sqrt(hidden) after it
    path = tmp_path_factory.mktemp("short-answer-model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def lora_adapter(short_answer_model, tmp_path_factory):
    """A LoRA adapter with non-zero weights, saved as a LoRA run saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(short_answer_model)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    path = str(tmp_path_factory.mktemp("adapter"))
    get_peft_model(model, config).save_pretrained(path)
    return path


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_predictions_are_each_prompts_own_greedy_answer(tiny_model_dir, data_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.data.conversation import Message
    from tuneforge.data.stops import stop_tokens
    from tuneforge.data.templates import get_template
    from tuneforge.train.rollout import HFGenerator, Sampling

    out = str(tmp_path / "pred")
    results = run_train([f"model_name_or_path={tiny_model_dir}", f"eval_dataset={data_dir}/rows.json",
                         "do_predict=true", "predict_with_generate=true", "per_device_eval_batch_size=3",
                         "max_new_tokens=12", f"output_dir={out}", "cutoff_len=64"])
    rows = read_jsonl(os.path.join(out, "generated_predictions.jsonl"))
    # As LLaMA-Factory's labels: the trained response without special tokens, chatml's newline after <|im_end|> kept
    assert [r["label"] for r in rows] == [r["output"] + "\n" for r in ROWS]

    # each prompt alone (batch of one, no padding), rendered the way chat renders it
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    template = get_template("auto", tokenizer, None, True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    stop_ids, _ = stop_tokens(tokenizer, template, model.generation_config)
    generator = HFGenerator(Sampling(False, 1.0, 1.0, 0, 12), stop_ids, tokenizer.pad_token_id)
    for row, source in zip(rows, ROWS):
        user = source["instruction"] + ("\n" + source["input"] if source["input"] else "")
        prompt = template.render_prompt([Message("user", user)], None, None, tokenizer)
        assert row["prompt"] == prompt
        ids = generator.sample(model, [tokenizer.encode(prompt, add_special_tokens=False)]).completions[0]
        ids = ids[:-1] if ids and ids[-1] in stop_ids else ids
        assert row["predict"] == tokenizer.decode(ids, skip_special_tokens=True)

    saved = json.load(open(os.path.join(out, "predict_results.json")))
    expected = nlg_metrics([r["predict"] for r in rows], [r["label"] for r in rows])
    assert {k: saved[f"predict_{k}"] for k in expected} == pytest.approx(expected)
    assert saved["predict_samples_per_second"] > 0 and saved["predict_steps_per_second"] > 0
    assert {k: results[k] for k in saved} == saved
    assert not os.path.exists(os.path.join(out, "adapter_model.safetensors"))  # nothing was trained


@pytest.mark.skipif(not os.path.isfile(LF_PREDICT), reason="../shared/anchors is not beside this clone")
def test_llamafactory_predict_config_runs_with_model_template_and_data_changed(
        short_answer_model, lora_adapter, data_dir, tmp_path, monkeypatch, caplog):
    config = yaml.safe_load(open(LF_PREDICT))
    assert "do_train" not in config and config["do_predict"] and config["predict_with_generate"]
    monkeypatch.chdir(tmp_path)  # its output_dir is relative
    with caplog.at_level(logging.INFO, logger="tuneforge"):
        code = main(["train", LF_PREDICT, f"model_name_or_path={short_answer_model}",
                     f"adapter_name_or_path={lora_adapter}", "template=auto", f"dataset_dir={data_dir}"])
    assert code == 0 and f"merged adapter {lora_adapter}" in caplog.text
    out = tmp_path / config["output_dir"]
    rows = read_jsonl(out / "generated_predictions.jsonl")
    assert [r["label"] for r in rows] == [r["output"] + "\n" for r in ROWS[:4]]  # identity, then alpaca_en_demo
    assert [r["predict"] for r in rows] == ["I am"] * 4  # the end-of-turn token is not part of the answer
    assert all(r["prompt"].startswith("<|im_start|>user\n") and r["prompt"].endswith("<|im_start|>assistant\n")
               for r in rows)
    saved = json.load(open(out / "predict_results.json"))
    assert set(METRICS) <= set(saved)
    assert saved["predict_rouge-1"] == pytest.approx(nlg_metrics(["I am"] * 4, [r["label"] for r in rows])["rouge-1"])
    assert saved["predict_rouge-1"] > 0
    assert json.load(open(out / "all_results.json"))["predict_bleu-4"] == saved["predict_bleu-4"]
    assert not (out / "trainer_log.jsonl").exists()


def test_train_evaluate_with_generation_then_predict(tiny_model_dir, data_dir, tmp_path):
    out = str(tmp_path / "run")
    results = run_train([
        f"model_name_or_path={tiny_model_dir}", f"dataset={data_dir}/rows.json", f"eval_dataset={data_dir}/rows.json",
        "do_train=true", "do_predict=true", "predict_with_generate=true", "max_new_tokens=6", "max_steps=2",
        "eval_strategy=steps", "eval_steps=1", "per_device_train_batch_size=4", "per_device_eval_batch_size=4",
        "learning_rate=5e-3", "logging_steps=1", "save_strategy=no", "lora_rank=4", "cutoff_len=64",
        f"output_dir={out}", "peak_tflops=0.05"])
    evals = [r for r in read_jsonl(os.path.join(out, "trainer_log.jsonl")) if "eval_loss" in r]
    assert len(evals) == 2
    for record in evals:
        assert {"eval_bleu-4", "eval_rouge-1", "eval_rouge-2", "eval_rouge-l"} <= set(record)
    final = json.load(open(os.path.join(out, "all_results.json")))
    assert {"train_loss", "eval_loss", "eval_bleu-4", "eval_rouge-l", *METRICS} <= set(final)
    assert len(read_jsonl(os.path.join(out, "generated_predictions.jsonl"))) == len(ROWS)
    assert os.path.exists(os.path.join(out, "adapter_model.safetensors"))
    # the trained adapter is what answered: its last evaluation and the prediction saw the same weights
    assert final["eval_bleu-4"] == pytest.approx(final["predict_bleu-4"])
    assert results["predict_rouge-1"] == final["predict_rouge-1"]


@pytest.mark.parametrize("extra,message", [
    (["stage=dpo", "do_predict=true", "predict_with_generate=true"], "do_predict"),
    (["stage=pt", "predict_with_generate=true"], "predict_with_generate"),
    (["do_predict=true"], "needs predict_with_generate: true"),
    (["do_predict=true", "predict_with_generate=true", "dataset=null"], "set eval_dataset (or dataset)"),
    (["do_predict=true", "predict_with_generate=true", "num_beams=4"], "num_beams"),
    (["do_predict=true", "predict_with_generate=true", "eval_num_beams=2"], "eval_num_beams"),
    (["do_predict=true", "predict_with_generate=true", "generation_max_length=64"], "max_new_tokens"),
])
def test_prediction_mistakes_are_one_line_config_errors(tiny_model_dir, data_dir, tmp_path, capsys, extra, message):
    code = main(["train", f"model_name_or_path={tiny_model_dir}", f"dataset={data_dir}/rows.json",
                 f"output_dir={tmp_path / 'x'}", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 1 and message in err and len(err.splitlines()) == 1 and err.startswith("error:"), err


def test_rows_without_responses_are_a_one_line_error(tiny_model_dir, data_dir, tmp_path, capsys):
    code = main(["train", f"model_name_or_path={tiny_model_dir}", "eval_dataset=prompts_only",
                 f"dataset_dir={data_dir}",
                 "do_predict=true", "predict_with_generate=true", f"output_dir={tmp_path / 'x'}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "response column" in err and "eval_dataset" in err, err



def test_processes_answer_disjoint_shares_and_each_gets_every_answer(tiny_model_dir, monkeypatch):
    """DDP without spawning processes: rank 0 and rank 1 of 2 are run one after the other, and the gather
    hands each the answers of the ranks run so far (the last one sees all)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.config.args import GenerateArgs
    from tuneforge.data.templates import get_template
    from tuneforge.train import predict

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    generator = predict.AnswerGenerator(tokenizer, get_template("auto", tokenizer, None, True),
                                        GenerateArgs(max_new_tokens=6), batch_size=2)
    prompts = [tokenizer.encode(f"<|im_start|>user\n{r['instruction']} {r['input']}<|im_end|>\n<|im_start|>assistant\n")
               for r in ROWS]
    alone = generator.answer(model, prompts)
    shares, seen = [], {}

    def gather(answers, world):
        shares.append(dict(answers))
        seen.update(answers)
        return dict(seen)

    monkeypatch.setattr(predict, "_gather", gather)
    answers = []
    for rank in (0, 1):
        monkeypatch.setattr(predict, "_rank_and_world", lambda rank=rank: (rank, 2))
        if rank == 0:
            with pytest.raises(KeyError):  # rank 1's answers are not there yet
                generator.answer(model, prompts)
        else:
            answers = generator.answer(model, prompts)
    assert not set(shares[0]) & set(shares[1]) and set(shares[0]) | set(shares[1]) == set(range(len(ROWS)))
    assert answers == alone


def test_prompts_fit_cutoff_len_dropping_history_first_and_keeping_the_header(chatml_tok):
    from tuneforge.data.conversation import Conversation, Message
    from tuneforge.data.processors import ProcessorOptions, encode_conversation, prediction_example
    from tuneforge.data.templates import get_template

    template = get_template("auto", chatml_tok, None, True)
    conv = Conversation(messages=[Message("user", "Who are you? " * 3), Message("assistant", "I am Forge."),
                                  Message("user", "Translate to French: good morning and thank you"),
                                  Message("assistant", "bonjour et merci")])
    turns, _ = encode_conversation(template, chatml_tok, conv, conv.messages)
    whole = sum(len(t.prompt) + len(t.response) for t in turns)
    example, cut = prediction_example(template, chatml_tok, conv, ProcessorOptions(whole))
    assert not cut and example["input_ids"] == turns[0].prompt + turns[0].response + turns[1].prompt
    assert example["labels"] == turns[1].response
    last = len(turns[1].prompt) + len(turns[1].response)
    example, cut = prediction_example(template, chatml_tok, conv, ProcessorOptions(last))  # history dropped
    assert cut and example["input_ids"] == turns[1].prompt and example["labels"] == turns[1].response
    example, cut = prediction_example(template, chatml_tok, conv, ProcessorOptions(last - 6))  # prompt cut too
    header = chatml_tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    assert cut and len(example["input_ids"]) < len(turns[1].prompt) and example["input_ids"][-len(header):] == header
    assert example["labels"] == turns[1].response  # the reference is never cut
