"""BLEU-4 and ROUGE-1/2/L of generated answers against reference answers, as LLaMA-Factory reports them.

Per row, both texts are segmented into words with jieba (so Chinese, written without spaces, has words):
- ROUGE-N and ROUGE-L are the F-scores of the `rouge-chinese` package's `Rouge().get_scores` on the
  space-joined words: ROUGE-N counts *distinct* n-grams (a set on each side), ROUGE-L is the longest common
  subsequence of the two word lists; F = 2PR / (P + R + 1e-8). A side with no word scores 0.
- BLEU-4 is NLTK's `sentence_bleu([list(label)], list(predict), smoothing_function=method3)` on
  *characters*: the geometric mean of the clipped 1..4-gram precisions times the brevity penalty, where
  the k-th precision with no match (k = 1, 2, ...) counts as 1 / (2^k x its n-gram count) (NIST's
  geometric smoothing); no matching character at all scores 0.
Each score is x100 and rounded to 4 decimals per row, then averaged over the rows (LLaMA-Factory's order).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter

METRIC_NAMES = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")

# rouge-chinese splits a text into sentences after these marks before counting; only the whitespace that
# this leaves (a sentence of spaces becomes one empty word) changes the scores, and is kept for equality.
_SENTENCE_ENDS = (
    (re.compile("([。！？?])([^”’])"), r"\1\n\2"),
    (re.compile(r"(\.{6})([^”’])"), r"\1\n\2"),
    (re.compile("(…{2})([^”’])"), r"\1\n\2"),
    (re.compile("([。！？?][”’])([^，。！？?])"), r"\1\n\2"),
)


def _jieba():
    import jieba

    # jieba logs "Building prefix dict ..." at DEBUG on first use; shown only when tuneforge logs DEBUG.
    if not logging.getLogger("tuneforge").isEnabledFor(logging.DEBUG):
        jieba.setLogLevel(logging.WARNING)
    return jieba


def segment(text: str) -> list[str]:
    """Words of `text` as jieba cuts them (spaces and newlines are words too, as jieba returns them)."""
    return list(_jieba().cut(text))


def rouge_words(words: list[str]) -> list[str]:
    """The word list rouge-chinese scores for a text given as `words`: joined with spaces, cut into
    sentences, whitespace collapsed inside each, then split on single spaces."""
    text = " ".join(words)
    for pattern, repl in _SENTENCE_ENDS:
        text = pattern.sub(repl, text)
    sentences = [" ".join(s.split()) for s in text.rstrip().split("\n") if s]
    return [w for s in sentences for w in s.split(" ")]


def _f_score(overlap: int, n_hyp: int, n_ref: int) -> float:
    precision = overlap / n_hyp if n_hyp else 0.0
    recall = overlap / n_ref if n_ref else 0.0
    return 2.0 * (precision * recall) / (precision + recall + 1e-8)


def _distinct_ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _lcs_length(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, 1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(above, row[j - 1])
            diagonal = above
    return row[-1]


def rouge_scores(hyp_words: list[str], ref_words: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L F-scores in [0, 1] of segmented texts; 0 when either has no non-blank word."""
    if not "".join(hyp_words).split() or not "".join(ref_words).split():
        return {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    hyp, ref = rouge_words(hyp_words), rouge_words(ref_words)
    out = {}
    for n in (1, 2):
        h, r = _distinct_ngrams(hyp, n), _distinct_ngrams(ref, n)
        out[f"rouge-{n}"] = _f_score(len(h & r), len(h), len(r))
    out["rouge-l"] = _f_score(_lcs_length(ref, hyp), len(hyp), len(ref))
    return out


def sentence_bleu4(reference: str, hypothesis: str) -> float:
    """Character BLEU-4 in [0, 1] with NIST geometric smoothing (NLTK's method3), one reference."""
    hyp, ref = list(hypothesis), list(reference)
    precisions = []  # (clipped matches, n-grams in the hypothesis, at least 1)
    for n in range(1, 5):
        hyp_counts = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
        ref_counts = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        matches = sum(min(count, ref_counts[gram]) for gram, count in hyp_counts.items())
        precisions.append((matches, max(1, sum(hyp_counts.values()))))
    if precisions[0][0] == 0:
        return 0.0
    logs, zeros = [], 0
    for matches, total in precisions:
        if matches == 0:
            zeros += 1
            logs.append(0.25 * math.log(1 / (2 ** zeros * total)))
        else:
            logs.append(0.25 * math.log(matches / total))
    if len(hyp) > len(ref):
        brevity = 1.0
    else:  # len(hyp) >= 1 here, since a unigram matched
        brevity = math.exp(1 - len(ref) / len(hyp))
    return brevity * math.exp(math.fsum(logs))


def row_scores(predict: str, label: str) -> dict[str, float]:
    """The four scores of one row, x100 and rounded to 4 decimals."""
    scores = rouge_scores(segment(predict), segment(label))
    scores["bleu-4"] = sentence_bleu4(label, predict)
    return {name: round(scores[name] * 100, 4) for name in METRIC_NAMES}


def nlg_metrics(predicts: list[str], labels: list[str]) -> dict[str, float]:
    """Mean of each score over the rows ({} for no rows): bleu-4, rouge-1, rouge-2, rouge-l."""
    if len(predicts) != len(labels):
        raise ValueError(f"{len(predicts)} predictions for {len(labels)} labels")
    if not predicts:
        return {}
    rows = [row_scores(p, l) for p, l in zip(predicts, labels)]
    return {name: math.fsum(r[name] for r in rows) / len(rows) for name in METRIC_NAMES}
