"""Packed/padded batch layouts and truncation (no model needed)."""

import pytest
import torch

from prefkit.models.packing import (
    PromptGroup,
    pack_groups,
    pad_groups,
    truncate_group,
    truncate_groups,
)

PAD = 0


def _groups():
    return [
        PromptGroup([11, 12, 13], [[21, 22], [23, 24, 25]]),
        PromptGroup([31], [[41, 42, 43, 44]]),
        PromptGroup([51, 52], [[61], [62, 63], [64], [65, 66, 67]]),
        PromptGroup([71, 72, 73, 74, 75], [[81, 82]]),
    ]


def test_pack_layout_positions_and_targets():
    groups = _groups()
    batch = pack_groups(groups, max_length=16, pad_id=PAD)
    # Every group is contiguous [prompt | r1 | r2 ...] at its recorded row / offset.
    for g, group in enumerate(groups):
        row, off = int(batch.group_rows[g]), int(batch.group_offsets[g])
        flat = group.prompt_ids + sum(group.response_ids, [])
        assert batch.input_ids[row, off : off + len(flat)].tolist() == flat
        expected_pos = list(range(len(group.prompt_ids)))
        for resp in group.response_ids:
            start = len(group.prompt_ids)
            expected_pos += list(range(start, start + len(resp)))
        assert batch.position_ids[row, off : off + len(flat)].tolist() == expected_pos
    # Targets: all completion tokens, in group order, with matching segments.
    k_max = batch.k_max
    assert k_max == 4
    expected_targets, expected_segments = [], []
    for g, group in enumerate(groups):
        for k, resp in enumerate(group.response_ids):
            expected_targets += resp
            expected_segments += [g * k_max + k] * len(resp)
    assert batch.target_ids.tolist() == expected_targets
    assert batch.segment.tolist() == expected_segments
    # The logit position of each target holds the token just before it in its own sequence.
    rows, cols = batch.logit_positions.T
    for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        g, k = divmod(expected_segments[i], k_max)
        group = groups[g]
        seq = group.prompt_ids + group.response_ids[k]
        j = seq.index(expected_targets[i], len(group.prompt_ids))
        assert batch.input_ids[r, c].item() == seq[j - 1]
    assert batch.completion_lengths.tolist() == [
        [2, 3, 0, 0],
        [4, 0, 0, 0],
        [1, 2, 1, 3],
        [2, 0, 0, 0],
    ]
    assert batch.k.tolist() == [2, 1, 4, 1]
    assert batch.response_mask.tolist()[1] == [True, False, False, False]
    moved = batch.to("cpu")
    assert type(moved) is type(batch) and torch.equal(moved.attention_mask, batch.attention_mask)
    assert moved.n_tokens == batch.n_tokens


def test_pack_uses_no_padding_except_row_tails_and_counts_prompt_once():
    groups = _groups()
    batch = pack_groups(groups, max_length=16, pad_id=PAD)
    unique_tokens = sum(len(g.prompt_ids) + sum(len(r) for r in g.response_ids) for g in groups)
    assert batch.n_tokens == unique_tokens == 29
    assert int((batch.input_ids != PAD).sum()) == unique_tokens
    assert batch.input_ids.shape[0] == 2  # 29 tokens in rows of 16: first-fit needs 2 rows
    for row in batch.input_ids.tolist():
        n_real = sum(t != PAD for t in row)
        assert all(t != PAD for t in row[:n_real]) and all(t == PAD for t in row[n_real:])
    padded = pad_groups(groups, pad_id=PAD)
    # The padded layout repeats each prompt K times.
    assert int(padded.attention_mask.sum()) == unique_tokens + 3 * 1 + 2 * 3
    assert padded.target_ids.tolist() == batch.target_ids.tolist()
    assert padded.segment.tolist() == batch.segment.tolist()


def test_mask_blocks_sibling_responses_and_other_groups():
    groups = [PromptGroup([1, 2], [[3, 4], [5]]), PromptGroup([6], [[7, 8]])]
    batch = pack_groups(groups, max_length=20, pad_id=PAD, mask_dtype=torch.bool, rows=2)
    assert batch.input_ids.shape == (2, 8)
    allowed = batch.attention_mask[0, 0]
    # columns: 0,1 prompt A | 2,3 resp A1 | 4 resp A2 | 5 prompt B | 6,7 resp B1
    expect = torch.zeros(8, 8, dtype=torch.bool)
    for q, keys in {
        0: [0], 1: [0, 1], 2: [0, 1, 2], 3: [0, 1, 2, 3], 4: [0, 1, 4],
        5: [5], 6: [5, 6], 7: [5, 6, 7],
    }.items():  # fmt: skip
        expect[q, keys] = True
    assert torch.equal(allowed, expect)
    # An all-padding row: each pad query sees only itself (no empty softmax row).
    assert torch.equal(batch.attention_mask[1, 0], torch.eye(8, dtype=torch.bool))
    additive = pack_groups(groups, max_length=20, pad_id=PAD).attention_mask[0, 0]
    assert additive.dtype == torch.float32
    assert torch.equal(additive == 0, expect)
    assert torch.all(additive[~expect] == torch.finfo(torch.float32).min)


def test_pack_keeps_group_order_rows_option_and_rejects_oversize():
    groups = _groups()
    batch = pack_groups(groups, max_length=16, pad_id=PAD, rows=4)
    assert batch.input_ids.shape[0] == 4
    assert int((batch.input_ids != PAD).sum()) == 29
    with pytest.raises(ValueError, match="rows=1"):
        pack_groups(groups, max_length=16, pad_id=PAD, rows=1)
    with pytest.raises(ValueError, match=r"group 2 needs 9 tokens .* max_length 8"):
        pack_groups(groups, max_length=8, pad_id=PAD)
    with pytest.raises(ValueError, match="group 1: .*response 0 is empty"):
        pack_groups([groups[0], PromptGroup([1], [[]])], max_length=16, pad_id=PAD)
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        pad_groups([PromptGroup([], [[1]])], pad_id=PAD)


def test_truncate_prompt_from_left_then_responses_from_right():
    group = PromptGroup(list(range(1, 11)), [[101, 102, 103, 104], [201, 202]])
    out = truncate_group(group, max_length=7, max_prompt_length=4)
    assert out is not None
    assert out.prompt_ids == [7, 8, 9, 10]  # last 4 prompt tokens kept
    assert out.response_ids == [[101, 102, 103], [201, 202]]  # 4 + 3 <= 7
    # Without a prompt budget the long prompt leaves no room: skipped, never empty.
    assert truncate_group(group, max_length=10) is None
    assert truncate_group(group, max_length=11).response_ids == [[101], [201]]
    assert truncate_group(group, max_length=None, max_packed_length=15) is None
    assert truncate_group(group, max_length=None, max_packed_length=16) == group


def test_truncate_groups_reports_skipped_indices_and_ids():
    groups = [
        PromptGroup([1, 2, 3], [[4, 5], [6]]),  # fits
        PromptGroup(list(range(1, 30)), [[4], [5]]),  # prompt too long, no prompt budget
        PromptGroup([1], [[4], []]),  # empty response in the input
        PromptGroup([1, 2], [[3] * 8, [4] * 8]),  # per-seq ok after cut, packed too big
        PromptGroup([9] * 6, [[4, 5, 6]]),  # prompt cut to 5 then response cut
    ]
    kept, report = truncate_groups(
        groups, max_length=8, max_prompt_length=None, max_packed_length=12,
        ids=["a", "b", "c", "d", "e"],
    )  # fmt: skip
    assert report.n_total == 5
    assert [s.index for s in report.skipped] == [1, 2, 3]
    assert [s.id for s in report.skipped] == ["b", "c", "d"]
    assert "no room" in report.skipped[0].reason
    assert "empty response" in report.skipped[1].reason
    assert "max_packed_length 12" in report.skipped[2].reason
    assert report.kept_indices == [0, 4]
    assert kept[1].response_ids == [[4, 5]]
    assert all(len(r) > 0 for g in kept for r in g.response_ids)
    summary = report.summary()
    assert "kept 2/5" in summary and "#1 (id 'b')" in summary and "#3 (id 'd')" in summary

    kept, report = truncate_groups(groups[1:2], max_length=8, max_prompt_length=5)
    assert report.n_prompt_truncated == 1 and report.n_skipped == 0
    assert kept[0].prompt_ids == [25, 26, 27, 28, 29]


def test_truncated_batch_has_no_empty_completion_and_packs():
    groups = [PromptGroup(list(range(1, 1 + p)), [[7] * r for r in rs])
              for p, rs in [(20, [9, 3]), (2, [1]), (15, [30, 30, 30])]]  # fmt: skip
    kept, report = truncate_groups(groups, max_length=16, max_prompt_length=8,
                                   max_packed_length=32)  # fmt: skip
    assert report.n_skipped == 0
    batch = pack_groups(kept, max_length=32, pad_id=PAD)
    assert (batch.completion_lengths[batch.response_mask] > 0).all()
    assert batch.n_tokens == sum(g.packed_length for g in kept)
