"""Prediction metrics against independent references: hand-counted ROUGE n-gram overlaps, NLTK's
``sentence_bleu`` with ``method3`` smoothing (what LLaMA-Factory computes, on the same tokens),
and sacrebleu / rouge-score called directly."""

from __future__ import annotations

import pytest
import sacrebleu
from llamafleet.eval_metrics import similarity
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_score import rouge_scorer

PAIRS = [  # (prediction, reference); no punctuation, so 13a tokens are the words
    ("the cat sat on the mat", "the cat is on the mat"),
    ("a b c d e f g", "a b c x e f g"),
    ("the quick brown fox jumps", "the quick brown dog jumps over"),
]


def test_rouge_equals_hand_counted_overlaps():
    scores = similarity(["the cat sat on the mat", "hello"], ["the cat is on the mat", "hello"])
    # unigrams: the x2, cat, on, mat shared of 6 and 6 -> F = 5/6; "hello" = 1
    assert scores["rouge-1"] == pytest.approx(100 * (5 / 6 + 1) / 2)
    # bigrams: "the cat", "on the", "the mat" of 5 and 5 -> 3/5; "hello" has none -> 0
    assert scores["rouge-2"] == pytest.approx(100 * (3 / 5 + 0) / 2)
    # LCS: the cat _ on the mat = 5 of 6 and 6
    assert scores["rouge-l"] == pytest.approx(100 * (5 / 6 + 1) / 2)
    assert scores["exact_match"] == 50.0


def test_bleu_4_equals_nltk_method3_and_sacrebleu():
    for pred, ref in PAIRS:
        ours = similarity([pred], [ref])["bleu-4"]
        nltk = 100 * sentence_bleu(
            [ref.split()], pred.split(), smoothing_function=SmoothingFunction().method3
        )
        assert ours == pytest.approx(nltk, abs=1e-9)
        own = sacrebleu.sentence_bleu(pred, [ref], smooth_method="exp").score
        assert ours == pytest.approx(own)
    mean = similarity([p for p, _ in PAIRS], [r for _, r in PAIRS])["bleu-4"]
    assert mean == pytest.approx(sum(similarity([p], [r])["bleu-4"] for p, r in PAIRS) / len(PAIRS))


def test_rouge_equals_rouge_score_and_chinese_is_scored_by_character():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    for pred, ref in PAIRS:
        ours = similarity([pred], [ref])
        own = scorer.score(ref, pred)
        assert ours["rouge-1"] == pytest.approx(100 * own["rouge1"].fmeasure)
        assert ours["rouge-2"] == pytest.approx(100 * own["rouge2"].fmeasure)
        assert ours["rouge-l"] == pytest.approx(100 * own["rougeL"].fmeasure)
    zh = similarity(["我爱北京天安门"], ["我爱北京"], lang="zh")
    # 4 of 7 and 4 of 4 characters: P = 4/7, R = 1 -> F = 8/11; bigrams 3 of 6 and 3 -> 2/3
    assert zh["rouge-1"] == pytest.approx(100 * 8 / 11)
    assert zh["rouge-2"] == pytest.approx(100 * 2 / 3)
    assert zh["bleu-4"] == pytest.approx(
        sacrebleu.sentence_bleu(
            "我爱北京天安门", ["我爱北京"], smooth_method="exp", tokenize="zh"
        ).score
    )
    assert similarity(["北京"], ["北京"], lang="zh")["rouge-1"] == 100.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        similarity(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="lang"):
        similarity(["a"], ["a"], lang="fr")
