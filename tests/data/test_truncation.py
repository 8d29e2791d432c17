from tuneforge.data.conversation import Conversation, Message
from tuneforge.data.encode import TokenTurn
from tuneforge.data.processors import ProcessorOptions, pretrain_documents, supervised_example
from tuneforge.data.templates.auto import AutoTemplate
from tuneforge.data.truncate import cut_keeping_tail, fit_turns, proportional_lengths


def test_proportional_rule():
    assert proportional_lengths(10, 5, 100) == (10, 5)  # fits
    assert proportional_lengths(300, 20, 100) == (80, 20)  # short response kept whole
    assert proportional_lengths(20, 300, 100) == (20, 80)  # short prompt kept whole
    assert proportional_lengths(300, 100, 100) == (75, 25)  # in proportion


def test_cut_keeps_tail():
    assert cut_keeping_tail(list(range(10)), 5, 2) == [0, 1, 2, 8, 9]
    assert cut_keeping_tail(list(range(10)), 20, 2) == list(range(10))


def test_later_turns_dropped_whole():
    turns = [TokenTurn([1] * 4, [2] * 4), TokenTurn([3] * 4, [4] * 4), TokenTurn([5] * 4, [6] * 4)]
    kept, cut = fit_turns(turns, 20)
    assert cut and len(kept) == 2 and kept[1].response == [4] * 4


def test_first_turn_cut_keeps_end_of_turn(chatml_tok):
    conv = Conversation(messages=[Message("user", "hello " * 40), Message("assistant", "world " * 40)])
    example, truncated = supervised_example(AutoTemplate(), chatml_tok, conv, ProcessorOptions(cutoff_len=30))
    assert truncated and len(example["input_ids"]) == 30
    trained = [t for t in example["labels"] if t != -100]
    assert chatml_tok.decode(trained).endswith("<|im_end|>\n")
    assert chatml_tok.decode(example["input_ids"]).count("<|im_start|>assistant\n") == 1


def test_prompt_that_leaves_no_room_is_dropped_with_reason(chatml_tok):
    conv = Conversation(messages=[Message("user", "a"), Message("assistant", "b")])
    example, _ = supervised_example(AutoTemplate(), chatml_tok, conv, ProcessorOptions(cutoff_len=1))
    assert isinstance(example, str)


def test_pretrain_blocks(chatml_tok):
    blocks = pretrain_documents(chatml_tok, ["hello world " * 10, "the fox " * 10], 16, concatenate=True)
    assert all(len(b) <= 16 for b in blocks)
    flat = [i for b in blocks for i in b]
    assert flat.count(chatml_tok.eos_token_id) == 2
    separate = pretrain_documents(chatml_tok, ["hello world " * 10, "the fox"], 16, concatenate=False)
    assert separate[-1][-1] == chatml_tok.eos_token_id


def test_pairwise_truncation_keeps_one_prompt_and_cuts_in_proportion(chatml_tok):
    from tuneforge.data.processors import pairwise_example

    history = [Message("user", "hi"), Message("assistant", "hello"), Message("user", "pick one " * 20)]
    conv = Conversation(messages=history, chosen=Message("assistant", "a"),
                        rejected=Message("assistant", "the quick brown fox jumps over the lazy dog " * 3))
    whole, cut = pairwise_example(AutoTemplate(), chatml_tok, conv, ProcessorOptions(cutoff_len=4096))
    assert not cut
    assert chatml_tok.decode([t for t in whole["chosen_labels"] if t != -100]) == "a<|im_end|>\n"
    rejected_len = sum(t != -100 for t in whole["rejected_labels"])
    prompt_len = len(whole["chosen_input_ids"]) - sum(t != -100 for t in whole["chosen_labels"])

    row, cut = pairwise_example(AutoTemplate(), chatml_tok, conv, ProcessorOptions(cutoff_len=40))
    assert cut
    assert all(len(row[f"{k}_input_ids"]) <= 40 for k in ("chosen", "rejected"))
    prompts = [row[f"{k}_input_ids"][: row[f"{k}_labels"].index(next(t for t in row[f"{k}_labels"] if t != -100))]
               for k in ("chosen", "rejected")]
    assert prompts[0] == prompts[1]  # one prompt for both responses
    # The history turn went first; then the last prompt and the longer response were cut in proportion.
    assert chatml_tok.decode(prompts[0]).startswith("<|im_start|>user\npick one")
    assert chatml_tok.decode(prompts[0]).endswith("<|im_start|>assistant\n")  # generation header kept
    kept_rejected = [t for t in row["rejected_labels"] if t != -100]
    assert chatml_tok.decode(kept_rejected).endswith("<|im_end|>\n")  # end of turn kept
    last_prompt_len = prompt_len - len(chatml_tok.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
                                                         "hello<|im_end|>\n"))
    assert len(prompts[0]) + len(kept_rejected) == 40
    assert abs(len(prompts[0]) / 40 - last_prompt_len / (last_prompt_len + rejected_len)) < 0.05
    assert chatml_tok.decode([t for t in row["chosen_labels"] if t != -100]) == "a<|im_end|>\n"
