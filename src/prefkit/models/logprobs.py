"""Sequence log-probabilities of completions: the training hot path.

:func:`sequence_logps` runs the transformer body once over a :class:`PackedBatch` (prompts
shared by their K responses) or a :class:`PaddedBatch`, keeps the hidden states only at the
positions that predict completion tokens (computing the last layer only there:
:mod:`prefkit.models.prune`), and applies the LM head to those positions in
chunks, computing ``logit[target] - logsumexp(logits)`` per chunk -- a ``[N, L, vocab]``
log-softmax is never built and the head never runs on prompt positions. With gradients on
and more than one chunk, each chunk is recomputed in the backward pass (activation
checkpointing) so the ``[chunk, vocab]`` logits are not kept alive between forward and
backward. Per-token values are summed into ``[G, Kmax]`` by segment; gradients flow.

:func:`sequence_logps_padded` is the plain reference (full logits, ``log_softmax``) the
tests compare against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from prefkit.models.arch import attention_window, decoder_attention_mask, sliding_layer_types
from prefkit.models.attention import FLEX_IMPLEMENTATION, packed_block_mask
from prefkit.models.head_logps import fused_head, linear_token_logps, pack_head
from prefkit.models.packing import (
    PackedBatch,
    PaddedBatch,
    additive_mask,
    pack_sequences,
    packed_groups,
    segment_mask,
)
from prefkit.models.prefix_attention import sdpa_or_shared_prefix  # noqa: F401 (registers it)
from prefkit.models.prune import full_hidden_at, hidden_at
from prefkit.models.segment_attention import with_segments

__all__ = ["KEEP_LOGITS_BYTES", "SequenceLogps", "sequence_logps", "sequence_logps_padded",
           "token_logps"]

Batch = PackedBatch | PaddedBatch


@dataclass
class SequenceLogps:
    """Completion log-probs of a batch of G groups with up to Kmax responses each.

    Fields:
        sum: ``[G, Kmax]`` float32, summed log-probs of each completion (0 where absent).
        count: ``[G, Kmax]`` long, completion token counts (0 where absent).
        mask: ``[G, Kmax]`` bool, True where response k of group g exists.
        per_token: ``[N]`` float32, log-prob of every completion token (batch order).
        segment: ``[N]`` long, ``group * Kmax + response`` of each entry of ``per_token``.
        average: whether :attr:`logps` is the per-token mean (True) or the sum (False).
        hidden: ``[N, H]`` final hidden states at the positions that predict each completion
            token (``with_hidden=True``; e.g. for a value head), else None.
    """

    sum: torch.Tensor
    count: torch.Tensor
    mask: torch.Tensor
    per_token: torch.Tensor
    segment: torch.Tensor
    average: bool = False
    hidden: torch.Tensor | None = None

    @property
    def mean(self) -> torch.Tensor:
        """``[G, Kmax]`` per-token mean log-prob (0 where absent)."""
        return self.sum / self.count.clamp(min=1).to(self.sum.dtype)

    @property
    def logps(self) -> torch.Tensor:
        """The value losses use: :attr:`mean` if ``average`` else :attr:`sum`."""
        return self.mean if self.average else self.sum


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[target]`` per row as ``gather - logsumexp`` in float32."""
    logits = logits.float()
    picked = logits.gather(-1, targets[:, None]).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


KEEP_LOGITS_BYTES = 64 << 20
"""With gradients on, the head's float32 logits are kept for the backward pass when all of them
take at most this much memory (64 MiB: 4,096 positions of a 4,096-word vocabulary), and each
chunk's are recomputed there when they would take more (a 150k vocabulary: ~450 positions).
Keeping them saves the product a recompute repeats (~3% of the online bench's update)."""


def _logits_bytes(head: nn.Module, hidden: torch.Tensor) -> int:
    """Bytes of the float32 logits of ``hidden``'s rows under ``head`` (its output size read
    from its weight; a head without one counts as too large to keep)."""
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return KEEP_LOGITS_BYTES + 1
    return 4 * hidden.shape[0] * weight.shape[0]


def _head_logps(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return token_logps(head(hidden), targets)


def _chunked_logps(
    head: nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int,
    recompute: bool,
) -> torch.Tensor:
    parts = []
    linear = fused_head(head)  # a plain linear head: its own backward (head_logps)
    packed = None if linear is None else pack_head(linear[0], hidden, chunk_size)
    for start in range(0, hidden.shape[0], chunk_size):
        h = hidden[start : start + chunk_size]
        t = targets[start : start + chunk_size]
        if linear is not None:
            parts.append(linear_token_logps(h, *linear, t, recompute=recompute, packed=packed))
        elif recompute:
            parts.append(checkpoint(_head_logps, head, h, t, use_reentrant=False))
        else:
            parts.append(_head_logps(head, h, t))
    return torch.cat(parts)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _is_wrapper(model: nn.Module) -> bool:
    """True for data-parallel wrappers whose own forward must run (DDP, FSDP1, FSDP2), and for
    models whose parameters are stored sharded (e.g. a peft wrapper around an FSDP2 model:
    only the sharded model's forward gathers them)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return True
    name = type(model).__name__
    if name == "FullyShardedDataParallel" or name.startswith("FSDP"):
        return True
    first = next(model.parameters(), None)
    return first is not None and type(first).__name__ == "DTensor"


class SoftcappedHead(nn.Module):
    """``cap * tanh(head(h) / cap)``: the final logit soft-capping Gemma 2's (and Gemma 3's,
    when set) ``ForCausalLM.forward`` applies after the LM head, the same operations in the
    same order, so the decoder path keeps its chunked head for these models."""

    def __init__(self, head: nn.Module, cap: float) -> None:
        super().__init__()
        self.head = head
        self.cap = float(cap)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(hidden) / self.cap) * self.cap


def _decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """The transformer body and the LM head, or None when calling them apart is unsafe."""
    if _is_wrapper(model):
        return None
    config = getattr(model, "config", None)
    # Heads with other post-processing inside the CausalLM forward (Cohere's logit scale).
    if getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        return None
    try:
        decoder = model.get_decoder()
        head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError, ValueError):
        return None
    if decoder is None or head is None or decoder is model or decoder is _unwrap(model):
        return None
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        head = SoftcappedHead(head, cap)
    return decoder, head


def _compute_dtype(model: nn.Module) -> torch.dtype:
    embeddings = _unwrap(model).get_input_embeddings()
    return embeddings.weight.dtype


def _attn_implementation(model: nn.Module) -> str:
    config = getattr(_unwrap(model), "config", None)
    return getattr(config, "_attn_implementation", None) or "eager"


def model_attention_mask(model: nn.Module, batch: Batch
                         ) -> torch.Tensor | dict[str, torch.Tensor]:
    """The batch's mask in the form the model's attention needs.

    A 4D bool mask is only correct with sdpa (eager ADDS the mask), so it is converted to an
    additive one for any other implementation; an additive mask is re-built in the model's
    compute dtype (sdpa requires the mask dtype to match the queries). Models with sliding-window
    layers get the window added (a mapping per layer type where layers differ:
    :func:`prefkit.models.arch.decoder_attention_mask`).

    Packed batches on other back-ends (:mod:`prefkit.models.attention`): a flex model gets a
    ``BlockMask`` built from the segment ids (no dense mask is read or built); a
    FlashAttention model gets no mask (a one-row :func:`~prefkit.models.packing.pack_sequences`
    batch, whose ``position_ids`` restarts mark the sequences; a prefix-shared pack raises
    ``ValueError``); a pack built without its dense mask gets it built from the segment ids.
    """
    mask = batch.attention_mask
    if isinstance(batch, PackedBatch):
        impl = _attn_implementation(model)
        if impl == FLEX_IMPLEMENTATION:
            return _flex_mask(model, batch)
        if "flash" in impl:
            return _flash_mask(batch, impl)
        if mask is None:
            mask = segment_mask(batch.token_group, batch.token_part, _compute_dtype(model))
    if mask.dim() != 4:
        return mask
    dtype = _compute_dtype(model)
    if mask.dtype == torch.bool:
        if _attn_implementation(model) != "sdpa":
            mask = additive_mask(mask, dtype)
    elif mask.dtype != dtype:
        mask = additive_mask(mask == 0, dtype)
    full = decoder_attention_mask(model, mask, batch.position_ids)
    if full is mask and isinstance(batch, PackedBatch) and _attn_implementation(model) == "sdpa":
        # no sliding window: sdpa may run segment by segment (segment_attention)
        return with_segments(mask, batch.token_group, batch.token_part)
    return full


def _flex_mask(model: nn.Module, batch: PackedBatch) -> Any:
    """The pack's ``BlockMask``; for sliding-window layers (when a row is longer than the
    window) a windowed one, per layer type as :func:`~prefkit.models.arch.decoder_attention_mask`
    does for the dense mask."""
    mask = packed_block_mask(batch.token_group, batch.token_part)
    config = getattr(_unwrap(model), "config", None)
    kind = sliding_layer_types(config)
    window = attention_window(config)
    if kind == "none" or int(batch.position_ids.max()) < window:
        return mask
    windowed = packed_block_mask(batch.token_group, batch.token_part,
                                 window=(batch.position_ids, window))
    return windowed if kind == "all" else {"full_attention": mask,
                                           "sliding_attention": windowed}


def _is_sequence_pack(batch: PackedBatch) -> bool:
    """One row of independent sequences (:func:`~prefkit.models.packing.pack_sequences`)."""
    return batch.input_ids.shape[0] == 1 and not bool((batch.token_part != 0).any())


def _flash_mask(batch: PackedBatch, impl: str) -> None:
    """FlashAttention takes no 4D mask: only a one-row pack of independent sequences, whose
    ``position_ids`` restarts transformers turns into sequence boundaries, can run on it."""
    if not _is_sequence_pack(batch):
        raise ValueError(f"{impl} cannot take a prefix-shared pack (it has no custom mask): "
                         "build the batch with pack_sequences (no prefix sharing), or use "
                         "attention 'sdpa' / 'flex'")
    return None


def _completion_logps_decoder(
    decoder: nn.Module,
    head: nn.Module,
    batch: Batch,
    mask: torch.Tensor,
    chunk_size: int,
    recompute: bool | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = batch.logit_positions[:, 0], batch.logit_positions[:, 1]
    inputs = {"input_ids": batch.input_ids, "attention_mask": mask,
              "position_ids": batch.position_ids, "use_cache": False}
    if mask is None and isinstance(batch, PackedBatch):
        # sequences marked by position_ids restarts only (FlashAttention): the pruned last
        # layer would read "no mask" as one causal sequence, so the whole decoder runs
        selected = full_hidden_at(decoder, rows, cols, **inputs)
    else:
        # [N, H]: completion-predicting positions only (the last layer runs only there)
        selected = hidden_at(decoder, rows, cols, **inputs)
    if recompute is None:
        recompute = torch.is_grad_enabled() and _logits_bytes(head, selected) > KEEP_LOGITS_BYTES
    return _chunked_logps(head, selected, batch.target_ids, chunk_size, recompute), selected


def _completion_logps_forward(
    model: nn.Module, batch: Batch, mask: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """Fallback through ``model(...)`` itself, with ``logits_to_keep`` as a bool mask."""
    rows, cols = batch.logit_positions[:, 0], batch.logit_positions[:, 1]
    width = batch.input_ids.shape[1]
    keep = torch.zeros_like(batch.input_ids, dtype=torch.bool)
    keep[rows, cols] = True
    # Positions repeat (K responses share the last prompt token); the model returns each
    # kept position once, in row-major order, which is the order of the sorted flat ids.
    unique, inverse = torch.unique(rows * width + cols, sorted=True, return_inverse=True)
    out = model(
        input_ids=batch.input_ids,
        attention_mask=mask,
        position_ids=batch.position_ids,
        logits_to_keep=keep,
        use_cache=False,
    )
    logits = out.logits.reshape(unique.numel(), -1)
    lse = torch.cat(
        [
            torch.logsumexp(logits[s : s + chunk_size].float(), dim=-1)
            for s in range(0, logits.shape[0], chunk_size)
        ]
    )
    return logits[inverse, batch.target_ids].float() - lse[inverse]


def sequence_logps(
    model: nn.Module,
    batch: Batch,
    *,
    chunk_size: int = 1024,
    average: bool = False,
    recompute: bool | None = None,
    path: Literal["auto", "decoder", "forward"] = "auto",
    with_hidden: bool = False,
) -> SequenceLogps:
    """Completion log-probs of every (group, response) in ``batch`` under ``model``.

    Args:
        model: any ``AutoModelForCausalLM`` model, a peft model wrapping one, or a DDP/FSDP
            wrapper. Gradients flow to its parameters when grad mode is on.
        batch: from :func:`~prefkit.models.packing.pack_groups`,
            :func:`~prefkit.models.packing.pack_sequences` or
            :func:`~prefkit.models.packing.pad_groups` (on the model's device). The mask follows
            the model's attention implementation (:func:`model_attention_mask`); on a
            FlashAttention model a prefix-shared pack is re-laid out first with
            :func:`~prefkit.models.packing.pack_sequences` (no sharing, no padding).
        chunk_size: completion positions per LM-head chunk (bounds the ``[chunk, vocab]``
            logits in memory); any value gives the same result.
        average: make :attr:`SequenceLogps.logps` the per-token mean instead of the sum.
        recompute: recompute each chunk's logits in backward instead of storing them;
            default: when grad mode is on and the logits of all positions would take more
            than :data:`KEEP_LOGITS_BYTES`.
        path: ``"decoder"`` runs ``model.get_decoder()`` and applies
            ``model.get_output_embeddings()`` itself (hidden states only at completion
            positions, chunked head); ``"forward"`` calls ``model(...)`` with a bool
            ``logits_to_keep`` (the head still skips prompt positions, but runs unchunked);
            ``"auto"`` (default) picks ``"decoder"`` unless the model is a data-parallel
            wrapper (whose own forward must run) or its forward post-processes logits with a
            ``logit_scale`` (Gemma's ``final_logit_softcapping`` is applied by the decoder path
            itself: :class:`SoftcappedHead`).
        with_hidden: also return the hidden states at the completion-predicting positions
            (:attr:`SequenceLogps.hidden`; decoder path only).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if (isinstance(batch, PackedBatch) and "flash" in _attn_implementation(model)
            and not _is_sequence_pack(batch)):
        # FlashAttention-2 has no custom mask: the groups are re-laid out without prefix
        # sharing, one padding-free row (same group order, so the outputs are unchanged)
        batch = pack_sequences(packed_groups(batch)).to(batch.input_ids.device)
    mask = model_attention_mask(model, batch)
    parts = None if path == "forward" else _decoder_and_head(model)
    if path == "decoder" and parts is None:
        raise ValueError(f"cannot split {type(model).__name__} into decoder and LM head")
    if with_hidden and parts is None:
        raise ValueError(f"with_hidden needs the decoder path; {type(model).__name__} cannot be "
                         "split into decoder and LM head (call it inside the wrapper's forward)")
    hidden = None
    if parts is not None:
        per_token, hidden = _completion_logps_decoder(*parts, batch, mask, chunk_size, recompute)
    else:
        per_token = _completion_logps_forward(model, batch, mask, chunk_size)
    out = _reduce(per_token, batch, average)
    if with_hidden:
        out.hidden = hidden
    return out


def _reduce(per_token: torch.Tensor, batch: Batch, average: bool) -> SequenceLogps:
    n_groups, k_max = batch.completion_lengths.shape
    sums = torch.zeros(n_groups * k_max, dtype=per_token.dtype, device=per_token.device)
    sums = sums.index_add(0, batch.segment, per_token).view(n_groups, k_max)
    return SequenceLogps(
        sum=sums,
        count=batch.completion_lengths,
        mask=batch.response_mask.to(per_token.device),
        per_token=per_token,
        segment=batch.segment,
        average=average,
    )


def sequence_logps_padded(
    model: nn.Module, batch: PaddedBatch, *, average: bool = False
) -> SequenceLogps:
    """Reference implementation: full forward, full logits, ``log_softmax``, gather.

    Simple and memory-hungry (``[R, L, vocab]`` float32); for tests and debugging.
    """
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    rows, cols = batch.logit_positions[:, 0], batch.logit_positions[:, 1]
    per_token = logp[rows, cols, batch.target_ids]
    return _reduce(per_token, batch, average)
