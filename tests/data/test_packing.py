"""Packing: best-fit decreasing bins, restarted position ids, and attention isolation on a model.

The isolation test is the contract the trainer relies on: a packed row run with a block-diagonal
causal mask (built here from ``cu_seqlens``, independently of the trainer's own) and the row's
``position_ids`` gives every example the logits it gets alone, within 1e-5.
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from services.data.packing import best_fit_decreasing, make_row, pack, padding_fraction


def test_best_fit_decreasing_fills_rows_and_keeps_every_item():
    lengths = [7, 5, 5, 4, 3, 3, 2, 2, 1]
    bins = best_fit_decreasing(lengths, capacity=8)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 8 for b in bins)
    assert len(bins) == 4  # 32 tokens need at least 4 rows of 8
    with pytest.raises(ValueError):
        best_fit_decreasing([9], capacity=8)


def test_rows_restart_positions_and_mark_segments():
    row = make_row([("a", [1, 2, 3], [-100, 2, 3]), ("b", [4, 5], [4, -100])])
    assert list(row["input_ids"]) == [1, 2, 3, 4, 5]
    assert list(row["labels"]) == [-100, 2, 3, 4, -100]
    assert list(row["position_ids"]) == [0, 1, 2, 0, 1]
    assert list(row["cu_seqlens"]) == [0, 3, 5]
    assert row["example_ids"] == ["a", "b"]


def test_padding_fraction_on_a_realistic_length_mix_is_under_two_percent():
    # A long-tailed SFT length mix (log-normal, median ~300 tokens, clipped to the cutoff).
    rng = random.Random(0)
    lengths = [min(2048, max(16, int(rng.lognormvariate(5.7, 0.8)))) for _ in range(20_000)]
    items = [(str(i), [0] * n, [0] * n) for i, n in enumerate(lengths)]
    rows = pack(items, 2048)
    packed = padding_fraction([len(r["input_ids"]) for r in rows], 2048)
    unpacked = padding_fraction(lengths, 2048)
    assert packed < 0.02, packed
    assert unpacked > 0.7  # the same data padded per example


def block_diagonal_causal_mask(cu_seqlens: list[int], dtype: torch.dtype) -> torch.Tensor:
    """(1, 1, T, T) additive mask: position i sees j iff same segment and j <= i."""
    total = cu_seqlens[-1]
    segment = torch.zeros(total, dtype=torch.long)
    for k, (start, end) in enumerate(zip(cu_seqlens[:-1], cu_seqlens[1:], strict=True)):
        segment[start:end] = k
    same = segment[:, None] == segment[None, :]  # (T, T)
    causal = torch.ones(total, total, dtype=torch.bool).tril()
    allowed = same & causal
    mask = torch.zeros(total, total, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_logits_equal_each_example_alone(model_dir, attn):
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn)
    model.eval()
    rng = random.Random(1)
    vocab = model.config.vocab_size
    items = []
    for i, n in enumerate([37, 5, 61, 12, 23, 40, 9]):
        ids = [rng.randrange(5, vocab) for _ in range(n)]
        items.append((str(i), ids, ids))
    rows = pack(items, capacity=96)
    assert len(rows) < len(items)  # something really was packed together
    by_id = {eid: ids for eid, ids, _ in items}
    checked = 0
    with torch.no_grad():
        for row in rows:
            input_ids = torch.tensor([list(row["input_ids"])])
            position_ids = torch.tensor([list(row["position_ids"])])
            mask = block_diagonal_causal_mask(list(row["cu_seqlens"]), torch.float32)
            packed = model(
                input_ids=input_ids, position_ids=position_ids, attention_mask=mask
            ).logits
            cu = list(row["cu_seqlens"])
            bounds = list(zip(cu[:-1], cu[1:], strict=True))
            for eid, (start, end) in zip(row["example_ids"], bounds, strict=True):
                alone = model(input_ids=torch.tensor([by_id[eid]])).logits
                torch.testing.assert_close(packed[:, start:end], alone, atol=1e-5, rtol=0)
                checked += 1
    assert checked == len(items)
