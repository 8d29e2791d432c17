"""ChatEngine on tiny random Llamas: greedy equals model.generate, stopping, streaming."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import chatml_tokenizer, tiny_llama
from tuneforge.config.args import GenerateArgs
from tuneforge.data.conversation import Message
from tuneforge.data.templates.auto import AutoTemplate
from tuneforge.infer.engine import ChatEngine

QUESTION = [Message("user", "Who are you?")]


@pytest.fixture(scope="module")
def tok():
    return chatml_tokenizer()


def make_engine(tok, template=None, model=None, **generate):
    model = model or tiny_llama(tok)
    model.eval()
    return ChatEngine(model, tok, template or AutoTemplate(), GenerateArgs(**generate))


def script(model, prompt_len: int, token_ids: list[int]):
    """Makes the model emit token_ids[t] as its t-th new token (the last one repeated after that), so a
    test knows exactly what a correct engine must return."""

    def force(module, args, kwargs, output):
        step = int(kwargs["position_ids"][0, -1]) + 1 - prompt_len
        wanted = token_ids[min(step, len(token_ids) - 1)]
        output.logits[:, -1, :] = -1e4
        output.logits[:, -1, wanted] = 1e4
        return output

    model.register_forward_hook(force, with_kwargs=True)
    return model


def scripted_engine(tok, text_ids: list[int], template=None, **generate):
    engine = make_engine(tok, template=template, max_new_tokens=40, **generate)
    script(engine.model, len(engine.prompt_ids(QUESTION)), text_ids)
    return engine


def ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_greedy_is_deterministic_and_equals_model_generate(tok):
    engine = make_engine(tok, max_new_tokens=12)
    first, second = engine.chat(QUESTION), engine.chat(QUESTION)
    assert first == second and first

    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Who are you?"}], tokenize=False, add_generation_prompt=True
    )
    input_ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
    with torch.inference_mode():
        out = engine.model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=12, do_sample=False,
            eos_token_id=[tok.convert_tokens_to_ids("<|im_end|>")], pad_token_id=tok.pad_token_id,
        )
    new = [i for i in out[0, input_ids.shape[1]:].tolist() if i != tok.convert_tokens_to_ids("<|im_end|>")]
    assert first == tok.decode(new, skip_special_tokens=True)


def test_prompt_is_the_chat_template_without_extra_special_tokens(tok):
    engine = make_engine(tok)
    expected = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who are you?"}],
        tokenize=False, add_generation_prompt=True,
    )
    assert tok.decode(engine.prompt_ids(QUESTION, system="Be brief.")) == expected


def test_stop_ids_cover_end_of_turn_tokenizer_and_model_eos(tok):
    model = tiny_llama(tok)
    model.generation_config.eos_token_id = [7, tok.convert_tokens_to_ids("<|endoftext|>")]
    engine = make_engine(tok, model=model)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert set(engine.stop_ids) == {im_end, 7, tok.convert_tokens_to_ids("<|endoftext|>")}
    assert engine.stop_strings == []


def test_generation_stops_at_end_of_turn_and_hides_it(tok):
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    engine = scripted_engine(tok, ids(tok, "Hello world") + [im_end] + ids(tok, " junk after the stop"))
    answer = engine.chat(QUESTION)
    assert answer == "Hello world"
    assert "".join(engine.stream(QUESTION)) == answer


def test_generation_stops_at_model_generation_config_eos(tok):
    stop = ids(tok, "!")[0]
    engine = make_engine(tok, max_new_tokens=40)
    engine.model.generation_config.eos_token_id = stop
    engine = ChatEngine(engine.model, tok, AutoTemplate(), engine.generate_args)  # re-reads the stop ids
    script(engine.model, len(engine.prompt_ids(QUESTION)), ids(tok, "Hello") + [stop] + ids(tok, " more"))
    assert engine.chat(QUESTION) == "Hello"


class StopStringTemplate(AutoTemplate):
    """A stand-in for a named template whose end-of-turn marker is several tokens of plain text."""

    def stop_words(self, tokenizer):
        return ["\nUser:", *super().stop_words(tokenizer)]


def test_multi_token_stop_word_is_cut_and_never_streamed(tok):
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert len(ids(tok, "\nUser:")) > 1
    engine = scripted_engine(tok, ids(tok, "Hi there\nUser: more text") + [im_end], template=StopStringTemplate())
    assert engine.stop_strings == ["\nUser:"]
    assert engine.chat(QUESTION) == "Hi there"
    pieces = list(engine.stream(QUESTION))
    assert "".join(pieces) == "Hi there"
    assert not any("User" in p or "\n" in p for p in pieces)


def test_stream_pieces_join_to_chat_answer(tok):
    engine = make_engine(tok, max_new_tokens=20)
    pieces = list(engine.stream(QUESTION))
    assert len(pieces) > 1
    assert "".join(pieces) == engine.chat(QUESTION)


def test_stream_never_splits_a_utf8_character(tok):
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    text = "你好，我是一个助手。"
    engine = scripted_engine(tok, ids(tok, text) + [im_end])
    pieces = list(engine.stream(QUESTION))
    assert "".join(pieces) == text == engine.chat(QUESTION)
    assert not any("\ufffd" in p for p in pieces)


def test_sampling_uses_sampling_args_and_greedy_does_not(tok):
    greedy = make_engine(tok).default_params()
    assert greedy.greedy and greedy.temperature == 0
    sampled = make_engine(tok, do_sample=True, temperature=0.5, top_p=0.9, top_k=5).default_params()
    assert (sampled.temperature, sampled.top_p, sampled.top_k) == (0.5, 0.9, 5)


def test_beam_search_streams_its_whole_answer_once(tok):
    engine = make_engine(tok, num_beams=2, max_new_tokens=6)
    pieces = list(engine.stream(QUESTION))
    assert len(pieces) == 1 and pieces[0] == engine.chat(QUESTION)


def test_closing_a_stream_early_cancels_its_generation(tok):
    engine = make_engine(tok, max_new_tokens=400)
    steps = []
    engine.model.register_forward_hook(lambda *a: steps.append(1))
    stream = engine.stream(QUESTION)
    next(stream)
    stream.close()
    engine.close()  # waits for the scheduler thread, which must have dropped the row long before 400 steps
    assert len(steps) < 50


def test_generation_errors_reach_the_caller_and_the_engine_keeps_serving(tok):
    engine = make_engine(tok, max_new_tokens=5)
    healthy = engine.chat(QUESTION)
    hook = engine.model.register_forward_pre_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        list(engine.stream(QUESTION))
    hook.remove()
    assert engine.chat(QUESTION) == healthy


def test_training_writes_the_stop_ids_the_engine_stops_on(tiny_model_dir, tmp_path):
    """One computation of where a reply ends: the generation_config.json a run writes holds exactly the ids
    ChatEngine (and ppo/grpo sampling) stop on, end-of-turn first."""
    import json

    from tests.train.rl_data import prompt_rows, write
    from tests.train.test_train_e2e import base_args
    from tuneforge.train.runner import run_train

    out = str(tmp_path / "run")
    run_train(base_args(tiny_model_dir, write(tmp_path, "rows.json", prompt_rows(8)), out, max_steps=1))
    written = json.load(open(f"{out}/generation_config.json"))["eos_token_id"]
    written = written if isinstance(written, list) else [written]
    tok_ = chatml_tokenizer()
    model = tiny_llama(tok_)
    model.generation_config.eos_token_id = written
    engine = make_engine(tok_, model=model)
    assert written == engine.stop_ids == [tok_.convert_tokens_to_ids("<|im_end|>")]


def test_a_stop_word_split_into_several_tokens_is_matched_as_text(tok):
    from tuneforge.data.stops import stop_tokens

    class Words:
        def stop_words(self, tokenizer):
            return ["<|im_end|>", "Observation:"]

    ids, strings = stop_tokens(tok, Words())
    assert ids == [tok.convert_tokens_to_ids("<|im_end|>")] and strings == ["Observation:"]
