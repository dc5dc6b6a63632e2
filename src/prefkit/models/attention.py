"""Attention back-ends for packed batches: which one runs, and the flex-attention block mask.

Three ways to run the same packed rows (:mod:`prefkit.models.packing`):

* ``sdpa`` (the CPU path and the reference): the dense ``[R, 1, L, L]`` mask that
  :func:`~prefkit.models.packing.pack_groups` builds, passed as ``attention_mask``.
* ``flex`` (GPUs): torch's ``flex_attention`` with a :class:`BlockMask` built here from the
  pack's per-token segment ids (``token_group``, ``token_part``) WITHOUT any ``L x L`` tensor:
  a ``mask_mod`` closure evaluates the segment rule per (query, key) inside the kernel, and the
  block structure (which ``block x block`` tiles hold any allowed pair, and which hold only
  allowed pairs) is computed from the segment boundaries, ``O(R * L)`` work plus
  ``O(R * (L / block)^2)`` block-level bookkeeping (:func:`packed_block_mask`).
* ``flash_attention_2`` without prefix sharing: one padding-free row whose ``position_ids``
  restart at 0 per sequence (:func:`~prefkit.models.packing.pack_sequences`); transformers'
  FA2 integration reads the sequence boundaries from the restarts. No mask at all.

The segment rule (the same as the dense mask's): in row ``r``, query ``q`` may attend key
``k`` iff ``group[q] == group[k] >= 0``, ``k <= q`` and (``part[k] == 0`` (a prompt token) or
``part[k] == part[q]`` (its own response)); a padding query (``group == -1``) sees itself only.

Selection (:func:`select_attention`): ``"auto"`` is ``flex`` on a CUDA device when torch has
``flex_attention``, else ``sdpa``; ``"sdpa"`` / ``"flex"`` force one. :func:`use_attention`
switches a loaded model with transformers' public ``set_attn_implementation``. The flex
implementation is registered with transformers as ``"prefkit_flex"``
(:func:`flex_attention_forward`): it calls ``flex_attention`` eagerly on the CPU (torch's
reference kernel: forward only, it materializes the ``[R, H, L, L]`` scores) and a
``torch.compile``-d ``flex_attention`` (compiled lazily, on first use) on other devices. It is
ours rather than transformers' ``"flex_attention"`` because transformers compiles
``flex_attention`` on every device (about 20 s per new shape on the CPU here).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "ATTENTION_CHOICES",
    "FLEX_IMPLEMENTATION",
    "flex_attention_forward",
    "flex_available",
    "packed_block_mask",
    "segment_mask_mod",
    "select_attention",
    "use_attention",
    "uses_flex",
]

ATTENTION_CHOICES = ("auto", "sdpa", "flex")
"""Values of the ``attention`` option (Python and ``--attention`` on the training commands)."""

FLEX_IMPLEMENTATION = "prefkit_flex"
"""The name :func:`flex_attention_forward` is registered under in transformers."""

DEFAULT_BLOCK_SIZE = 128
"""flex_attention's default tile (``torch.nn.attention.flex_attention``)."""

Attention = Literal["sdpa", "flex"]


@functools.cache
def flex_available() -> bool:
    """Whether this torch has ``torch.nn.attention.flex_attention`` (torch >= 2.5)."""
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def select_attention(device: torch.device | str | None, choice: str = "auto") -> Attention:
    """The attention back-end for a model on ``device``: ``choice`` unless it is ``"auto"``,
    which means ``"flex"`` on CUDA with ``flex_attention`` available and ``"sdpa"`` elsewhere
    (flex_attention has no backward on the CPU). ``ValueError`` for an unknown choice or
    ``"flex"`` without ``flex_attention``."""
    if choice not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_CHOICES)}, "
                         f"got {choice!r}")
    if choice == "flex" and not flex_available():
        raise ValueError("attention='flex' needs torch.nn.attention.flex_attention (torch >= "
                         "2.5); use attention='sdpa'")
    if choice != "auto":
        return choice  # type: ignore[return-value]
    device_type = torch.device(device).type if device is not None else "cpu"
    return "flex" if device_type == "cuda" and flex_available() else "sdpa"


# --------------------------------------------------------------------------- the block mask


def segment_mask_mod(token_group: torch.Tensor, token_part: torch.Tensor,
                     length: int | None = None,
                     window: tuple[torch.Tensor, int] | None = None) -> Callable:
    """flex ``mask_mod(b, h, q, kv)`` of the segment rule (module docstring) over the
    ``[R, L]`` segment ids. The ids are padded with ``-1`` groups to ``length`` (>= L) so a
    compiled kernel that evaluates indices up to the last tile's end reads defined values.
    ``window=(position_ids, W)`` also blocks keys ``W`` or more positions before the query (a
    sliding-window layer; positions restart per response, so this is the unpacked window)."""
    rows, width = token_group.shape
    pad = max(0, (length or width) - width)

    def padded(x: torch.Tensor, fill: int) -> torch.Tensor:
        return torch.cat([x, x.new_full((rows, pad), fill)], 1) if pad else x

    token_group, token_part = padded(token_group, -1), padded(token_part, 0)
    positions, size = (padded(window[0], 0), window[1]) if window is not None else (None, 0)

    def mask_mod(b, h, q_idx, kv_idx):
        gq, gk = token_group[b, q_idx], token_group[b, kv_idx]
        pk = token_part[b, kv_idx]
        seen = (gq == gk) & (gq >= 0) & (kv_idx <= q_idx)
        seen = seen & ((pk == 0) | (pk == token_part[b, q_idx]))
        if positions is not None:
            seen = seen & (positions[b, q_idx] - positions[b, kv_idx] < size)
        return seen | (q_idx == kv_idx)

    return mask_mod


def _check_layout(token_group: torch.Tensor, token_part: torch.Tensor) -> None:
    """The block structure assumes the packed layout: in each row a group's tokens are
    contiguous and its parts non-decreasing (prompt first, then response 1, 2, ...)."""
    same = token_group[:, 1:] == token_group[:, :-1]
    if bool((same & (token_part[:, 1:] < token_part[:, :-1])).any()):
        raise ValueError("segment ids: parts of a group must be non-decreasing along the row")
    starts = torch.ones_like(token_group, dtype=torch.bool)
    starts[:, 1:] = ~same
    real = token_group >= 0
    runs = int((starts & real).sum())
    key = token_group + (token_group.max() + 1) * torch.arange(
        token_group.shape[0], device=token_group.device)[:, None]
    if runs != int(torch.unique(key[real]).numel()):
        raise ValueError("segment ids: each group must be contiguous in its row")


def _token_intervals(token_group: torch.Tensor, token_part: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per query token the keys it sees as two half-open intervals ``[lo1, hi1)`` (its group's
    prompt, cut at the query) and ``[lo2, hi2)`` (its own part up to itself), ``[R, L]`` each;
    an empty interval has ``lo == hi``. Prompt tokens: ``[group start, q]`` (twice); responses:
    the whole prompt and ``[response start, q]``; padding: ``[q, q]``."""
    rows, width = token_group.shape
    device = token_group.device
    col = torch.arange(width, device=device).expand(rows, width)
    new_group = torch.ones_like(token_group, dtype=torch.bool)
    new_group[:, 1:] = token_group[:, 1:] != token_group[:, :-1]
    new_part = new_group.clone()
    new_part[:, 1:] |= token_part[:, 1:] != token_part[:, :-1]
    zero = torch.zeros_like(col)
    group_start = torch.where(new_group, col, zero).cummax(dim=1).values
    part_start = torch.where(new_part, col, zero).cummax(dim=1).values
    is_prompt = (token_part == 0) & (token_group >= 0)
    prompt_before = torch.cumsum(is_prompt.long(), dim=1) - is_prompt.long()  # strictly before
    # prompt tokens of the group = prompt tokens in [group start, q] (the prompt comes first)
    n_prompt = prompt_before + is_prompt.long() - prompt_before.gather(1, group_start)
    pad = token_group < 0
    lo1 = torch.where(pad, col, group_start)
    hi1 = torch.where(pad, col + 1, torch.where(is_prompt, col + 1, group_start + n_prompt))
    lo2 = torch.where(pad, col, part_start)
    hi2 = col + 1
    return lo1, hi1, lo2, hi2


def _block_counts(q_block: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor,
                  rows: int, n_q: int, n_kv: int) -> torch.Tensor:
    """``[R, n_q, n_kv]``: for each (query tile, key tile) the number of (query, interval)
    pairs whose key-tile range ``[start, end)`` holds that key tile (a difference array summed
    along the key tiles; pairs with ``start >= end`` add nothing)."""
    keep = starts < ends
    row = torch.arange(rows, device=starts.device)[:, None, None].expand_as(starts)[keep]
    base = (row * n_q + q_block.expand_as(starts)[keep]) * (n_kv + 1)
    diff = torch.zeros(rows * n_q * (n_kv + 1), dtype=torch.int32, device=starts.device)
    ones = torch.ones_like(base, dtype=torch.int32)
    diff.index_put_((base + starts[keep],), ones, accumulate=True)
    diff.index_put_((base + ends[keep],), -ones, accumulate=True)
    return diff.view(rows, n_q, n_kv + 1).cumsum(dim=2)[:, :, :n_kv]


def _ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(count [R, 1, n_q], indices [R, 1, n_q, n_kv])`` int32 of a ``[R, n_q, n_kv]`` bool
    tile map: the selected key tiles first, in increasing order."""
    count = blocks.sum(dim=2, dtype=torch.int32)
    order = torch.argsort((~blocks).to(torch.int8), dim=2, stable=True).to(torch.int32)
    return count[:, None], order[:, None]


def packed_block_mask(token_group: torch.Tensor, token_part: torch.Tensor, *,
                      block_size: int | None = None,
                      window: tuple[torch.Tensor, int] | None = None) -> Any:
    """flex_attention ``BlockMask`` of the segment rule for ``[R, L]`` segment ids, built at
    tile granularity from the segment boundaries (no ``L x L`` tensor; see the module doc).
    ``block_size``: the square tile (default :data:`DEFAULT_BLOCK_SIZE`).

    Each query sees at most two key intervals (:func:`_token_intervals`). A key tile is
    *touched* by a query tile when some query's interval overlaps it, and *full* when every
    query of the tile (all ``block_size`` of them: a trailing partial tile is never full, as in
    ``create_block_mask``) covers the whole key tile with one interval (the prompt and the
    first response are adjacent, so their intervals are merged first). Touched-but-not-full
    tiles are the partial ones on which ``mask_mod`` runs; untouched tiles are skipped. Exact:
    the structure only decides which tiles are computed, and the tiles skipped hold no allowed
    pair while a full tile holds only allowed pairs. ``window=(position_ids, W)``: a
    sliding-window mask (:func:`segment_mask_mod`); the window only removes pairs, so the same
    touched tiles are kept, all of them partial.
    """
    from torch.nn.attention.flex_attention import BlockMask

    if token_group.shape != token_part.shape or token_group.dim() != 2:
        raise ValueError("token_group and token_part must both be [R, L]")
    block_size = block_size or DEFAULT_BLOCK_SIZE
    _check_layout(token_group, token_part)
    rows, width = token_group.shape
    n_blocks = -(-width // block_size)
    lo1, hi1, lo2, hi2 = _token_intervals(token_group, token_part)
    q_block = (torch.arange(width, device=token_group.device) // block_size)[None, :]
    b = block_size
    # touched: tiles floor(lo / b) .. floor((hi - 1) / b) of every non-empty interval
    starts = torch.stack([lo1 // b, lo2 // b], dim=-1)
    ends = torch.stack([torch.where(hi1 > lo1, (hi1 - 1) // b + 1, lo1 // b),
                        torch.where(hi2 > lo2, (hi2 - 1) // b + 1, lo2 // b)], dim=-1)
    touched = _block_counts(q_block[..., None], starts, ends, rows, n_blocks, n_blocks) > 0
    # full: tiles ceil(lo / b) .. floor(hi / b) - 1 inside one (merged) interval
    merge = (hi1 >= lo2) & (hi1 > lo1)
    f_lo1, f_hi1 = lo1, torch.where(merge, torch.maximum(hi1, hi2), hi1)
    f_lo2 = torch.where(merge, hi2, lo2)  # merged: the second interval is emptied
    full_starts = torch.stack([(f_lo1 + b - 1) // b, (f_lo2 + b - 1) // b], dim=-1)
    full_ends = torch.stack([f_hi1 // b, torch.where(merge, f_lo2 // b, hi2 // b)], dim=-1)
    covered = _block_counts(q_block[..., None], full_starts, full_ends, rows, n_blocks,
                            n_blocks)
    full = (covered == b) & (window is None)
    partial = touched & ~full
    kv_num, kv_idx = _ordered(partial)
    full_num, full_idx = _ordered(full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size,
        mask_mod=segment_mask_mod(token_group, token_part, n_blocks * block_size, window),
        seq_lengths=(width, width))


# --------------------------------------------------------------------------- the model side


_compiled: Callable | None = None


def _flex_function(device: torch.device) -> Callable:
    """Eager ``flex_attention`` on the CPU; a ``torch.compile``-d one elsewhere (compiled once,
    on first use: the fused kernel that never forms the scores matrix)."""
    from torch.nn.attention.flex_attention import flex_attention

    global _compiled
    if device.type == "cpu":
        return flex_attention
    if _compiled is None:
        _compiled = torch.compile(flex_attention)
    return _compiled


def flex_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                           value: torch.Tensor, attention_mask: Any,
                           scaling: float | None = None, dropout: float = 0.0,
                           softcap: float | None = None, **kwargs: Any
                           ) -> tuple[torch.Tensor, None]:
    """transformers attention function (``AttentionInterface``) running ``flex_attention``
    with the ``BlockMask`` given as ``attention_mask``: ``query [B, Hq, L, D]``, ``key`` /
    ``value [B, Hkv, L, D]`` (grouped-query attention when ``Hkv < Hq``); returns the output
    as ``[B, L, Hq, D]`` and no weights. Attention logit soft-capping (``softcap``) is a
    ``score_mod``; dropout, attention sinks and position biases are refused."""
    from torch.nn.attention.flex_attention import BlockMask

    if dropout:
        raise ValueError("flex attention runs without attention dropout: call model.eval() or "
                         "set the config's attention_dropout to 0")
    if kwargs.get("s_aux") is not None or kwargs.get("position_bias") is not None:
        raise ValueError("prefkit's flex attention supports no attention sinks or position "
                         "biases; use attention='sdpa'")
    if not isinstance(attention_mask, BlockMask):
        raise ValueError(f"flex attention needs a BlockMask as attention_mask, got "
                         f"{type(attention_mask).__name__}")
    score_mod = None
    if softcap:
        def score_mod(score, b, h, q_idx, kv_idx):
            return softcap * torch.tanh(score / softcap)

    out = _flex_function(query.device)(
        query, key, value, score_mod=score_mod, block_mask=attention_mask,
        scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


@functools.cache
def _register() -> None:
    """Register :func:`flex_attention_forward` (and transformers' flex mask builder, used when
    a model gets a 2D mask, e.g. in generation) under :data:`FLEX_IMPLEMENTATION`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(FLEX_IMPLEMENTATION, flex_attention_forward)
    AttentionMaskInterface.register(FLEX_IMPLEMENTATION,
                                    ALL_MASK_ATTENTION_FUNCTIONS["flex_attention"])


def _base(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # peft


def implementation(model: nn.Module) -> str:
    """The model's transformers attention implementation (``"eager"`` when unset)."""
    config = getattr(_base(model), "config", None)
    return getattr(config, "_attn_implementation", None) or "eager"


def use_attention(model: nn.Module, choice: str = "auto",
                  device: torch.device | str | None = None) -> Attention:
    """Switch ``model`` (a transformers model, a peft or DDP wrapper of one) to the back-end
    :func:`select_attention` picks for ``device`` (default: the model's parameters' device)
    and return it. ``"flex"`` sets :data:`FLEX_IMPLEMENTATION`; ``"sdpa"`` switches a model
    set to flex back to ``sdpa`` and leaves any other implementation (eager, FA2) as loaded."""
    if device is None:
        device = next(iter(model.parameters())).device
    chosen = select_attention(device, choice)
    base = _base(model)
    current = implementation(base)
    if chosen == "flex" and current != FLEX_IMPLEMENTATION:
        _register()
        base.set_attn_implementation(FLEX_IMPLEMENTATION)
    elif chosen == "sdpa" and current == FLEX_IMPLEMENTATION:
        base.set_attn_implementation("sdpa")
    return chosen


def uses_flex(model: nn.Module) -> bool:
    """Whether ``model`` runs :func:`flex_attention_forward` (set by :func:`use_attention`)."""
    return implementation(model) == FLEX_IMPLEMENTATION
