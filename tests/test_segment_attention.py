"""Segment-by-segment training attention (prefkit.models.segment_attention) against sdpa under
the pack's dense mask: the attention output at every real position, sequence log-probs and the
parameters' gradients of a tiny Llama (multi-head and grouped-query), and the cases that must
fall back to the dense path."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from transformers import AutoModelForCausalLM

from prefkit.models import logprobs, segment_attention
from prefkit.models.load import tiny_llama_config
from prefkit.models.packing import PromptGroup, pack_groups
from prefkit.models.segment_attention import (
    SEGMENTS,
    segment_layout,
    segments_usable,
    with_segments,
)

VOCAB = 50


def _groups(seed: int) -> list[PromptGroup]:
    """Prompts of 3-9 tokens with 1-4 responses of 5-20 tokens: several groups per row,
    responses of different lengths, padded row tails."""
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(3, VOCAB, (n,), generator=g).tolist()

    return [PromptGroup(ids(int(torch.randint(3, 10, (1,), generator=g))),
                        [ids(int(torch.randint(5, 21, (1,), generator=g)))
                         for _ in range(int(torch.randint(1, 5, (1,), generator=g)))])
            for _ in range(7)]


def test_layout_outputs_equal_sdpa_under_the_dense_mask():
    batch = pack_groups(_groups(0), max_length=96, pad_id=0)
    layout = segment_layout(batch.token_group, batch.token_part)
    rows, width = batch.input_ids.shape
    assert layout.pairs < rows * width * width
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(rows, 4, width, 8, generator=g, dtype=torch.float64)
               for _ in range(3))
    mask = batch.attention_mask == 0  # the pack's additive mask as sdpa's bool one
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    setattr(mask, SEGMENTS, layout)
    got, _ = segment_attention.segment_attention(None, q, k, v, mask)
    real = batch.token_group >= 0
    torch.testing.assert_close(got[real], want.transpose(1, 2)[real], atol=1e-12, rtol=1e-12)
    assert (got[~real] == 0).all()


def _model(kv_heads: int) -> AutoModelForCausalLM:
    torch.manual_seed(0)
    config = tiny_llama_config(VOCAB, hidden_size=32, num_layers=2, num_heads=4,
                               intermediate_size=64, num_key_value_heads=kv_heads)
    config._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_sequence_logps_and_gradients_equal_the_dense_path(monkeypatch, kv_heads):
    model = _model(kv_heads)
    batch = pack_groups(_groups(2), max_length=96, pad_id=0)
    calls = []
    original = segment_attention.segment_attention
    monkeypatch.setattr("prefkit.models.prefix_attention.segment_attention",
                        lambda *a, **k: calls.append(1) or original(*a, **k))

    def run():
        out = logprobs.sequence_logps(model, batch)
        (out.per_token * torch.linspace(-1, 1, out.per_token.numel())).sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return out.per_token.detach(), grads

    got, got_grads = run()
    assert len(calls) == 1  # the first layer; the pruned last layer reads a sliced mask
    monkeypatch.setattr(segment_attention, "MAX_PAIR_SHARE", 0.0)
    calls.clear()
    want, want_grads = run()
    assert not calls
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_falls_back_where_the_layout_does_not_apply():
    batch = pack_groups(_groups(3), max_length=96, pad_id=0)
    mask = with_segments(batch.attention_mask, batch.token_group, batch.token_part)
    assert mask is not batch.attention_mask and getattr(mask, SEGMENTS, None) is not None
    assert getattr(batch.attention_mask, SEGMENTS, None) is None  # the pack is not touched
    q = torch.zeros(mask.shape[0], 4, mask.shape[-1], 8)
    assert segments_usable(q, mask, 0.0, {})
    assert not segments_usable(q[:, :, :5], mask, 0.0, {})  # a pruned layer's queries
    assert not segments_usable(q, mask, 0.1, {})
    assert not segments_usable(q, mask, 0.0, {"sliding_window": 16})
    assert not segments_usable(q, mask, 0.0, {"softcap": 50.0})
    assert not segments_usable(q, mask, 0.0, {"a_future_argument": 1})
    assert segments_usable(q, mask, 0.0, {"sliding_window": None, "scaling": 0.3,
                                          "position_ids": q, "use_cache": False})
    assert not segments_usable(q, batch.attention_mask, 0.0, {})
    # a row per group of a long prompt and one short response: segments save little (37 x 37
    # + 2 x 39 of 39 x 39 pairs), the dense mask stays
    short = [PromptGroup(list(range(3, 40)), [[5, 6]]) for _ in range(3)]
    dense = pack_groups(short, max_length=40, pad_id=0)
    assert with_segments(dense.attention_mask, dense.token_group,
                         dense.token_part) is dense.attention_mask
