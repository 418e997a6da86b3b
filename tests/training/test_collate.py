"""Collation of packed rows: shifted labels stay inside examples, attention never crosses them."""

from __future__ import annotations

import pytest
import torch
from llamafleet.data.v1 import data_pb2

from services.training.loop.collate import block_causal_mask, collate, row_shift_labels, segment_ids


def packed_row() -> data_pb2.TokenRow:
    # Two examples: [10, 11, 12] and [20, 21]; labels only on 12, 20 and 21.
    return data_pb2.TokenRow(
        input_ids=[10, 11, 12, 20, 21],
        labels=[-100, -100, 12, 20, 21],
        position_ids=[0, 1, 2, 0, 1],
        cu_seqlens=[0, 3, 5],
        example_ids=["a", "b"],
    )


def test_shift_labels_stop_at_example_boundaries():
    # Token t predicts label t+1 of its own example; the last token of each example predicts
    # nothing (12 must not predict 20, the next example's first token).
    assert row_shift_labels([-100, -100, 12, 20, 21], [0, 3, 5]) == [-100, 12, -100, 21, -100]


def test_block_causal_mask_isolates_examples_and_pads():
    segments = torch.tensor([segment_ids([0, 3, 5], 7)])  # 2 pads
    assert segments.tolist() == [[0, 0, 0, 1, 1, 3, 4]]
    mask = block_causal_mask(segments)[0, 0].int()
    expected = [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 1, 0],  # a pad sees only itself: no fully masked row
        [0, 0, 0, 0, 0, 0, 1],
    ]
    assert mask.tolist() == expected


def test_collate_pads_rows_and_counts_tokens():
    short = data_pb2.TokenRow(
        input_ids=[7, 8], labels=[7, 8], position_ids=[0, 1], cu_seqlens=[0, 2]
    )
    x = collate([packed_row(), short], pad_id=2, attention="sdpa_mask")
    assert x.input_ids.tolist() == [[10, 11, 12, 20, 21], [7, 8, 2, 2, 2]]
    assert x.position_ids.tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 0, 0]]
    assert x.shift_labels.tolist() == [[-100, 12, -100, 21, -100], [8, -100, -100, -100, -100]]
    assert x.attention_mask.dtype == torch.bool and x.attention_mask.shape == (2, 1, 5, 5)
    assert (x.num_tokens, x.num_trained) == (7, 3)


def test_eager_mask_is_additive():
    x = collate([packed_row()], pad_id=2, attention="eager", mask_dtype=torch.float32)
    mask = x.attention_mask[0, 0]
    assert mask[3, 3] == 0 and mask[3, 2] == torch.finfo(torch.float32).min


def test_pretraining_trains_every_token_but_never_across_examples():
    x = collate([packed_row()], pad_id=2, train_all_tokens=True)
    assert x.shift_labels.tolist() == [[11, 12, -100, 21, -100]]


@pytest.mark.parametrize("attention", ["flash_attention_2", "sdpa"])
def test_varlen_concatenates_rows_without_padding(attention):
    short = data_pb2.TokenRow(input_ids=[7, 8], labels=[7, 8], position_ids=[0, 1])
    x = collate([packed_row(), short], pad_id=2, attention=attention)
    assert x.input_ids.tolist() == [[10, 11, 12, 20, 21, 7, 8]]
    assert x.attention_mask is None
    assert x.flash_kwargs["cu_seq_lens_q"].tolist() == [0, 3, 5, 7]
    assert x.flash_kwargs["max_length_q"] == 3
    assert x.shift_labels.tolist() == [[-100, 12, -100, 21, -100, 8, -100]]


def test_broken_rows_are_refused_with_the_field():
    bad = data_pb2.TokenRow(input_ids=[1, 2], labels=[1], position_ids=[0, 1])
    with pytest.raises(ValueError, match="row 0: labels"):
        collate([bad], pad_id=0)
    bad = data_pb2.TokenRow(input_ids=[1, 2], labels=[1, 2], position_ids=[0, 1], cu_seqlens=[0, 3])
    with pytest.raises(ValueError, match="cu_seqlens"):
        collate([bad], pad_id=0)
