"""Training attention over prompt-shared packed rows, computed segment by segment.

A packed row (:mod:`prefkit.models.packing`) holds groups ``[prompt | resp_1 | ... | resp_K]``;
its dense ``[R, 1, L, L]`` mask lets a prompt token see its prompt causally and a response
token its group's whole prompt plus, causally, its own response. sdpa on the CPU computes every
``L x L`` pair of a row and masks most of them: with 8 groups of a ~47-token prompt and 4
responses of 64 tokens, ~60% of a 310-token row's pairs are masked.

Here the row is cut into its segments (a prompt, a response) and sdpa runs twice over gathered
blocks: the prompts, each over itself (causal), and the responses, each over its group's prompt
and itself (causal):

    prompts:   q = P[s, :n_s],  k = v = P[s, :n_s]                       [S_p, N_p] x [S_p, N_p]
    responses: q = R[s, :n_s],  k = v = [P[g(s), :m_s] | R[s, :n_s]]     [S_r, N_r] x [S_r, M + N_r]

padded to the longest segment (pad slots are masked; a padded query row sees its segment's
first keys and its output is dropped), then scattered back to ``[R, L]``. Every query sees the
same keys with the same weights as under the dense mask, so the outputs agree up to the order
of float sums (tests/test_segment_attention.py: values and gradients against the dense mask).
The gathers are ``index_select`` over flattened positions (their backward an ``index_add``).

How it is reached: :func:`prefkit.models.logprobs.model_attention_mask` hands the model a
fresh alias of the pack's dense mask carrying its :class:`SegmentLayout` (attribute
:data:`SEGMENTS`) when the segments hold at most :data:`MAX_PAIR_SHARE` of the dense pairs and
no sliding window applies; the ``"sdpa"`` function prefkit registers
(:func:`prefkit.models.prefix_attention.sdpa_or_shared_prefix`) calls
:func:`segment_attention` for such a mask and transformers' own sdpa for any other call
(the pruned last layer's sliced mask; soft-capping, sinks, dropout: :func:`segments_usable`).
Other attention implementations read the alias as the plain mask it is. Nothing global changes
state. On the online bench (8 groups of 4 x 64 tokens a row) the update is ~10 ms faster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MAX_PAIR_SHARE", "SEGMENTS", "SegmentLayout", "attend", "segment_attention",
           "segment_layout", "segments_usable", "with_segments"]

SEGMENTS = "_prefkit_segments"
"""The attribute of a mask tensor that carries its :class:`SegmentLayout`."""

MAX_PAIR_SHARE = 0.6
"""The segmented path is taken when its (padded) query-key pairs are at most this share of the
dense mask's ``R * L * L``: below it the two smaller sdpa calls and the gathers cost less
(2 CPU threads, 8 rows of 310 tokens: 0.38 of the pairs, forward + backward 12.2 instead of
16.4 ms a layer)."""


@dataclass(frozen=True)
class _Block:
    """One sdpa call over gathered segments: queries at flat positions ``q_index [S * N]``,
    keys/values at ``kv_index [S * M]``, ``mask [S, 1, N, M]`` (True = attend)."""

    q_index: torch.Tensor
    kv_index: torch.Tensor
    mask: torch.Tensor
    segments: int
    queries: int
    keys: int


@dataclass(frozen=True)
class SegmentLayout:
    """A pack's prompt block, response block (either may be None when empty) and
    ``out_index [R * L]``: for each flat position its row in the concatenated block outputs
    (the last row, zeros, for padding)."""

    prompts: _Block | None
    responses: _Block | None
    out_index: torch.Tensor
    pairs: int

    def to(self, device: torch.device | str) -> SegmentLayout:
        def move(b: _Block | None) -> _Block | None:
            return None if b is None else _Block(b.q_index.to(device), b.kv_index.to(device),
                                                 b.mask.to(device), b.segments, b.queries,
                                                 b.keys)
        return SegmentLayout(move(self.prompts), move(self.responses),
                             self.out_index.to(device), self.pairs)


def _spans(starts: torch.Tensor, lengths: torch.Tensor, width: int) -> torch.Tensor:
    """``[S, width]`` flat positions ``start + j``, pad slots ``j >= length`` clamped to the
    segment's last position (always a real token; masked or dropped)."""
    j = torch.arange(width, device=starts.device)
    return starts[:, None] + torch.minimum(j[None, :], (lengths - 1).clamp(min=0)[:, None])


def _causal(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """``[S, width, width]``: key ``u`` visible to query ``j`` iff ``u <= j`` and ``u`` real."""
    j = torch.arange(width, device=lengths.device)
    return (j[None, None, :] <= j[None, :, None]) & (j[None, None, :] < lengths[:, None, None])


def segment_layout(token_group: torch.Tensor, token_part: torch.Tensor) -> SegmentLayout:
    """The layout of a pack from its segment ids (``token_group`` ``[R, L]``, -1 = padding;
    ``token_part``: 0 = prompt, ``k + 1`` = response ``k``)."""
    rows, width = token_group.shape
    group, part = token_group.reshape(-1), token_part.reshape(-1)
    valid = group >= 0
    new = valid.clone()  # a segment starts where (group, part) changes or a row starts
    new[1:] &= (group[1:] != group[:-1]) | (part[1:] != part[:-1]) | ~valid[:-1]
    new[::width] = valid[::width]
    starts = new.nonzero().squeeze(1)
    seg_of = (new.cumsum(0) - 1).clamp(min=0)
    lengths = torch.bincount(seg_of[valid], minlength=starts.numel())
    seg_group, seg_part = group[starts], part[starts]
    is_prompt = seg_part == 0
    prompt_seg = torch.full((int(group.max()) + 1 if valid.any() else 1,), -1,
                            dtype=torch.long, device=group.device)
    prompt_seg[seg_group[is_prompt]] = is_prompt.nonzero().squeeze(1)
    if (prompt_seg[seg_group[~is_prompt]] < 0).any():
        raise ValueError("a response segment has no prompt segment in its group")
    # each segment's row in the concatenated outputs: prompts first, then responses
    order = torch.cat([is_prompt.nonzero().squeeze(1), (~is_prompt).nonzero().squeeze(1)])
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    blocks, offset, pairs = {}, 0, 0
    for name, pick in (("prompts", is_prompt), ("responses", ~is_prompt)):
        idx = pick.nonzero().squeeze(1)
        if idx.numel() == 0:
            blocks[name] = None
            continue
        n_s = lengths[idx]
        n = int(n_s.max())
        q = _spans(starts[idx], n_s, n)
        own = _causal(n_s, n)
        if name == "prompts":
            kv, mask = q, own
        else:
            p = prompt_seg[seg_group[idx]]
            m_s = lengths[p]
            m = int(m_s.max())
            prefix = _spans(starts[p], m_s, m)
            seen = torch.arange(m, device=m_s.device)[None, :] < m_s[:, None]
            kv = torch.cat([prefix, q], 1)
            mask = torch.cat([seen[:, None, :].expand(-1, n, -1), own], 2)
        blocks[name] = _Block(q.reshape(-1), kv.reshape(-1), mask[:, None], idx.numel(), n,
                              kv.shape[1])
        offset += idx.numel() * n
        pairs += idx.numel() * n * kv.shape[1]
    out_index = torch.full((rows * width,), offset, dtype=torch.long, device=group.device)
    pos = valid.nonzero().squeeze(1)
    seg = seg_of[pos]
    n_p = blocks["prompts"].queries if blocks["prompts"] is not None else 0
    n_r = blocks["responses"].queries if blocks["responses"] is not None else 0
    n_prompts = int(is_prompt.sum())
    within = pos - starts[seg]
    r = rank[seg]
    out_index[pos] = torch.where(is_prompt[seg], r * n_p + within,
                                 n_prompts * n_p + (r - n_prompts) * n_r + within)
    return SegmentLayout(blocks["prompts"], blocks["responses"], out_index, pairs)


def with_segments(mask: torch.Tensor, token_group: torch.Tensor, token_part: torch.Tensor
                  ) -> torch.Tensor:
    """``mask`` itself, or a fresh alias of it carrying the pack's :class:`SegmentLayout` when
    the segments take at most :data:`MAX_PAIR_SHARE` of the dense pairs."""
    layout = segment_layout(token_group, token_part)
    rows, width = token_group.shape
    if not 0 < layout.pairs <= MAX_PAIR_SHARE * rows * width * width:
        return mask
    alias = mask.view(mask.shape)
    setattr(alias, SEGMENTS, layout.to(mask.device))
    return alias


def _block(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, b: _Block, scale: float | None
           ) -> torch.Tensor:
    heads, d = q.shape[1], q.shape[2]
    kv_heads = k.shape[1]
    qs = q.index_select(0, b.q_index).view(b.segments, b.queries, heads, d).transpose(1, 2)
    ks = k.index_select(0, b.kv_index).view(b.segments, b.keys, kv_heads, -1).transpose(1, 2)
    vs = v.index_select(0, b.kv_index).view(b.segments, b.keys, kv_heads, -1).transpose(1, 2)
    if kv_heads != heads:  # grouped-query attention: query head i reads key head i // rep
        ks = ks.repeat_interleave(heads // kv_heads, dim=1)
        vs = vs.repeat_interleave(heads // kv_heads, dim=1)
    out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=b.mask, scale=scale)
    return out.transpose(1, 2).reshape(b.segments * b.queries, heads * vs.shape[-1])


def segment_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: torch.Tensor,
                      scaling: float | None = None, **_: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract (``query [R, H, L, D]``, keys/values
    ``[R, H_kv, L, D]``; returns ``[R, L, H, D]`` and no weights) over the layout the mask
    carries (module docs)."""
    rows, heads, width, d = query.shape
    flat = [t.transpose(1, 2).reshape(rows * width, t.shape[1], t.shape[-1])
            for t in (query, key, value)]
    out = attend(*flat, getattr(attention_mask, SEGMENTS), scaling)
    return out.view(rows, width, heads, -1), None


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: SegmentLayout,
           scale: float | None) -> torch.Tensor:
    """The attention output ``[R * L, H * D]`` of flat ``query [R * L, H, D]`` over flat keys
    and values ``[R * L, H_kv, D]`` (zeros at padding)."""
    parts = [_block(query, key, value, b, scale) for b in (layout.prompts, layout.responses)
             if b is not None]
    parts.append(parts[0].new_zeros(1, parts[0].shape[1]))
    return torch.cat(parts).index_select(0, layout.out_index)


_PLAIN_KWARGS = frozenset({"dropout", "scaling", "position_ids", "use_cache", "cache_position",
                           "output_attentions", "is_causal", "past_key_values"})
"""Arguments a Llama-style attention passes that do not change sdpa's result under a full mask
(any other argument with a value -- a sliding window, soft-capping, sinks, one transformers
adds later -- sends the call to transformers' sdpa)."""


def segments_usable(query: torch.Tensor, attention_mask: Any, dropout: float,
                    kwargs: dict[str, Any]) -> bool:
    """Whether :func:`segment_attention` computes what transformers' sdpa would for this call:
    a mask carrying a layout, over all its query positions, no dropout, and no argument outside
    :data:`_PLAIN_KWARGS` with a value (a sliding window, soft-capping, attention sinks...)."""
    return (getattr(attention_mask, SEGMENTS, None) is not None
            and query.shape[2] == attention_mask.shape[-2]
            and not dropout
            and all(value is None for name, value in kwargs.items()
                    if name not in _PLAIN_KWARGS))
