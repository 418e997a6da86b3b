"""Metrics of generated predictions against references: BLEU-4, ROUGE-1/2/L and exact match.

Not hand-written: BLEU is ``sacrebleu.sentence_bleu`` and ROUGE is Google's ``rouge-score``
(``pip install -e '.[eval]'``). Like LLaMA-Factory's ``do_predict`` (``ComputeSimilarity``), each
metric is computed per example, scaled to 0..100 and averaged over the examples, so the figures
are comparable to its ``predict_bleu-4`` / ``predict_rouge-*``; the smoothing is the same
(sacrebleu's ``exp`` is the NIST geometric-sequence smoothing that NLTK calls ``method3``). The
tokenization differs: LLaMA-Factory segments every text with jieba (a Chinese word segmenter,
also applied to English) before NLTK and rouge-chinese; here English goes through sacrebleu's
``13a`` tokenizer and rouge-score's own, and ``lang="zh"`` uses sacrebleu's ``zh`` tokenizer and
one ROUGE token per CJK character (rouge-score's default tokenizer drops non-ASCII text). These
are the libraries' standard settings, which is why they were chosen over jieba: a score anyone
recomputes with the same library and defaults gets the same number.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

LANGS = ("en", "zh")


def _require():
    try:
        import sacrebleu
        from rouge_score import rouge_scorer
    except ImportError as exc:
        raise ImportError(
            f"prediction metrics need sacrebleu and rouge-score ({exc}): pip install -e '.[eval]'"
        ) from None
    return sacrebleu, rouge_scorer


class _CharTokenizer:
    """ROUGE tokens for Chinese: each CJK character alone, other runs of letters/digits whole."""

    _TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[A-Za-z0-9]+")

    def tokenize(self, text: str) -> list[str]:
        return self._TOKEN.findall(text.lower())


def similarity(
    predictions: Sequence[str], references: Sequence[str], lang: str = "en"
) -> dict[str, float]:
    """``bleu-4``, ``rouge-1``, ``rouge-2``, ``rouge-l`` (F-measure) and ``exact_match``, each the
    mean over examples of a 0..100 per-example score."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if lang not in LANGS:
        raise ValueError(f"lang {lang!r}: choose one of {', '.join(LANGS)}")
    sacrebleu, rouge_scorer = _require()
    tokenizer = _CharTokenizer() if lang == "zh" else None
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=tokenizer)
    bleu_tokenize = "zh" if lang == "zh" else "13a"
    totals = dict.fromkeys(("bleu-4", "rouge-1", "rouge-2", "rouge-l", "exact_match"), 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        bleu = sacrebleu.sentence_bleu(pred, [ref], smooth_method="exp", tokenize=bleu_tokenize)
        totals["bleu-4"] += bleu.score
        rouge = scorer.score(ref, pred)
        totals["rouge-1"] += rouge["rouge1"].fmeasure * 100
        totals["rouge-2"] += rouge["rouge2"].fmeasure * 100
        totals["rouge-l"] += rouge["rougeL"].fmeasure * 100
        totals["exact_match"] += 100.0 * (pred.strip() == ref.strip())
    count = max(len(predictions), 1)
    return {name: value / count for name, value in totals.items()}
