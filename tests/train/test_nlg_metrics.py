"""BLEU-4 and ROUGE as LLaMA-Factory reports them, against values worked out by hand. (The module was also
compared with rouge-chinese and NLTK themselves on ~400 strings, English, Chinese and random, outside this
suite: equal to the 4 decimals reported.)"""

import pytest

from tuneforge.train.nlg_metrics import nlg_metrics, rouge_words, row_scores, segment, sentence_bleu4


def test_english_row_worked_by_hand():
    # words: [the, cat] vs [the, cat, sat]
    # ROUGE-1: distinct unigrams 2 vs 3, overlap 2: P = 1, R = 2/3, F = 2PR/(P+R+1e-8) = 0.8 -> 80.0
    # ROUGE-2: {the cat} vs {the cat, cat sat}: P = 1, R = 1/2, F = 2/3 -> 66.6667
    # ROUGE-L: LCS 2: P = 2/2, R = 2/3 -> 80.0
    # BLEU-4 on characters: "the cat" (7) is a prefix of "the cat sat" (11), so every 1..4-gram precision
    # is 1 (7/7, 6/6, 5/5, 4/4); brevity penalty exp(1 - 11/7) = exp(-4/7) = 0.564718... -> 56.4718
    assert row_scores("the cat", "the cat sat") == {
        "bleu-4": 56.4718, "rouge-1": 80.0, "rouge-2": 66.6667, "rouge-l": 80.0}


def test_bleu_counts_characters_and_smooths_missing_ngrams():
    # "abcd" vs "abce": 1-grams 3/4, 2-grams (ab, bc | cd) 2/3, 3-grams (abc | bcd) 1/2, 4-grams 0/1 -> the
    # first zero precision is smoothed to 1/(2^1 x 1) = 1/2; equal lengths, so no brevity penalty:
    # (3/4 x 2/3 x 1/2 x 1/2)^(1/4) = (1/8)^(1/4) = 0.594604 -> 59.4604
    assert sentence_bleu4("abce", "abcd") == pytest.approx(0.125 ** 0.25, abs=1e-12)
    # one matching character: 1-gram 1/1; 2, 3, 4-grams have 0 of a minimum count of 1 -> 1/2, 1/4, 1/8:
    # (1 x 1/2 x 1/4 x 1/8)^(1/4) = 2^(-6/4) = 0.353553
    assert sentence_bleu4("a", "a") == pytest.approx(2 ** -1.5, abs=1e-12)
    assert sentence_bleu4("xyz", "abc") == 0.0  # no character in common


def test_chinese_row_where_jieba_segmentation_matters():
    assert segment("研究生命的起源") == ["研究", "生命", "的", "起源"]
    assert segment("研究生命起源") == ["研究", "生命", "起源"]
    # ROUGE-1 on words: {研究, 生命, 的, 起源} vs {研究, 生命, 起源}: P = 3/4, R = 1, F = 6/7 -> 85.7143
    #   (on characters it would be P = 6/7, R = 1, F = 12/13 -> 92.3077)
    # ROUGE-2: {研究生命, 生命的, 的起源} vs {研究生命, 生命起源}: P = 1/3, R = 1/2, F = 2/5 -> 40.0
    # ROUGE-L: LCS 3 (研究 生命 起源): P = 3/4, R = 1 -> 85.7143
    # BLEU-4 on characters (7 vs 6, hypothesis longer: no brevity penalty):
    #   1-grams 6/7 (all but 的); 2-grams 研究 究生 生命 起源 of 6 -> 4/6; 3-grams 研究生 究生命 of 5 -> 2/5;
    #   4-grams 研究生命 of 4 -> 1/4; (6/7 x 4/6 x 2/5 x 1/4)^(1/4) = (2/35)^(1/4) = 0.488923 -> 48.8923
    assert row_scores("研究生命的起源", "研究生命起源") == {
        "bleu-4": 48.8923, "rouge-1": 85.7143, "rouge-2": 40.0, "rouge-l": 85.7143}


def test_empty_prediction_scores_zero_and_exact_match_scores_100():
    assert row_scores("", "我是 Forge。") == {"bleu-4": 0.0, "rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    assert row_scores("  \n", "hello") == {"bleu-4": 0.0, "rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    assert row_scores("南京市长江大桥", "南京市长江大桥") == {
        "bleu-4": 100.0, "rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0}


def test_rouge_counts_distinct_ngrams_and_whitespace_like_rouge_chinese():
    # "the the the the" vs "the cat": distinct unigrams {the} vs {the, cat}: P = 1, R = 1/2 -> 66.6667;
    # LCS 1 over 4 and 2 words: P = 1/4, R = 1/2, F = 1/3 -> 33.3333
    scores = row_scores("the the the the", "the cat")
    assert (scores["rouge-1"], scores["rouge-2"], scores["rouge-l"]) == (66.6667, 0.0, 33.3333)
    # sentences are cut after 。！？?, spaces collapsed; a blank line leaves one empty word
    assert rouge_words(["你好", "。", "我"]) == ["你好", "。", "我"]
    assert rouge_words(["a", "\n", "\n", "b"]) == ["a", "", "b"]


def test_rows_are_rounded_then_averaged():
    # rows: (80.0, 66.6667, 80.0, 56.4718) and all zeros -> means 40.0, 33.33335, 40.0, 28.2359
    means = nlg_metrics(["the cat", ""], ["the cat sat", "x"])
    assert means == pytest.approx({"rouge-1": 40.0, "rouge-2": 33.33335, "rouge-l": 40.0, "bleu-4": 28.2359},
                                  abs=1e-9)
    assert nlg_metrics([], []) == {}
