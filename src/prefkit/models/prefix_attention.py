"""Decode-step attention over a prompt prefix shared by the samples drawn from it.

Online RL draws ``G`` completions of every prompt. A decode step of row ``r`` (sample ``j`` of
prompt ``p``, ``r = p * G + j`` after grouping) attends over the prompt's ``W`` prefilled key
slots and the ``t + 1`` slots it generated itself. The prompt part is the same for all ``G``
samples, so it is stored once per prompt (``[P, H_kv, W, D]``, not copied into ``G`` rows) and
read once per prompt, with the ``G`` samples' queries (times the ``H_q / H_kv`` query heads of a
key head, for grouped-query attention) as the rows of one matrix product:

    s_prefix[p, h, (j, g), w] = <q[p G + j, h g], K_prefix[p, h, w]>   (one [G*rep, W] product)
    s_own[r, h, g, u]         = <q[r, h g], K_own[r, h, u]>             (u <= t)
    a = softmax(scale * [s_prefix + bias_pad | s_own + bias_own]) over the W + t + 1 keys
    out[r] = a_prefix @ V_prefix[p] + a_own @ V_own[r]

which is exactly attention over the concatenated keys (one softmax over both parts), so the
result equals the padded per-row attention of :class:`prefkit.models.decode.StaticCacheBackend`'s
copy path up to float rounding (``bias_pad`` is ``-inf`` on a left-padded prompt's pad slots;
``bias_own`` closes the own slots after the step when a compiled step reads a rounded-up
number of them). The prompt's keys are stored once instead of G times, no per-step mask is
built, and the decode loop of bench/online_vs_trl.py (8 prompts x 4 samples x 64 tokens) takes
~10% less time (bench/RESULTS.md).

How it plugs into a transformers model without touching its code or its config: the decode
steps pass a :class:`SharedPrefixCache`, whose layers' ``update`` store the step's key/value and
hand the layer itself on as ``key`` / ``value``; the model calls its attention function through
transformers' ``AttentionInterface`` under the name ``"sdpa"``, where this module registers
:func:`sdpa_or_shared_prefix`: :func:`shared_prefix_attention` when the key is such a layer,
transformers' own sdpa function (unchanged) for anything else. Nothing global changes state
during a decode, so other threads may run the same model meanwhile (a model server does); a
model with another attention implementation decodes through the copy path. The steps pass a
placeholder 4D mask, which transformers hands on as is instead of building one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, Cache, StaticCache
from transformers.cache_utils import CacheLayerMixin

from prefkit.models import native
from prefkit.models.segment_attention import segment_attention, segments_usable

__all__ = ["SharedPrefixCache", "equal_groups", "sdpa_or_shared_prefix",
           "shared_prefix_attention", "shared_prefix_attention_reference",
           "shared_prefix_unsupported"]


class SharedPrefixLayer(CacheLayerMixin):
    """One layer's keys and values: the prompts' ``[P, H, W, D]`` (from the prefill, read-only)
    and the rows' own ``[B, H, N, D]`` generated slots, of which ``step + 1`` are written."""

    is_compileable = False
    is_sliding = False

    def __init__(self, prefix_keys: torch.Tensor, prefix_values: torch.Tensor,
                 prefix_bias: torch.Tensor, group: int, own_bias: torch.Tensor,
                 step_index: torch.Tensor) -> None:
        super().__init__()
        p, h, _, d = prefix_keys.shape
        new = own_bias.shape[-1]
        self.prefix_keys, self.prefix_values, self.prefix_bias = \
            prefix_keys, prefix_values, prefix_bias
        self.group = group
        self.keys = prefix_keys.new_zeros((p * group, h, new, d))
        self.values = prefix_values.new_zeros((p * group, h, new, prefix_values.shape[-1]))
        # shared by the cache's layers: 0 on the own slots written so far, -inf after; the
        # slot the next update writes (a tensor, so a compiled step is not specialized to it)
        self.own_bias, self.step_index = own_bias, step_index
        self.step, self.view = -1, 0
        self.is_initialized = True
        for t in (self.prefix_keys, self.prefix_values, self.prefix_bias, self.keys,
                  self.values):
            torch._dynamo.mark_static_address(t)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[SharedPrefixLayer, SharedPrefixLayer]:
        if key_states.shape[-2] != 1:
            raise ValueError(f"shared-prefix decoding takes one token per row per step, got "
                             f"{key_states.shape[-2]}")
        self.keys.index_copy_(2, self.step_index, key_states)
        self.values.index_copy_(2, self.step_index, value_states)
        return self, self

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.prefix_keys.shape[-2] + self.step + 1, 0

    def get_seq_length(self) -> int:
        return self.prefix_keys.shape[-2] + self.step + 1

    def get_max_length(self) -> int:
        return self.prefix_keys.shape[-2] + self.keys.shape[-2]


class SharedPrefixCache(Cache):
    """The decode cache of ``P`` prompts x ``group`` samples (rows prompt-major) for ``new``
    steps, built from a cache prefilled on the ``P`` distinct prompts (``W`` slots each) and
    their ``[P, W]`` real-token mask (False: left padding, never attended)."""

    def __init__(self, prefilled: StaticCache, prompt_mask: torch.Tensor, group: int,
                 new: int) -> None:
        device = prompt_mask.device
        bias = torch.zeros(prompt_mask.shape, dtype=torch.float32, device=device)
        bias = bias.masked_fill_(~prompt_mask.bool(), float("-inf"))[:, None, None, :]
        self.own_bias = torch.full((1, 1, 1, new), float("-inf"), device=device)
        self.step_index = torch.zeros(1, dtype=torch.long, device=device)
        for t in (bias, self.own_bias, self.step_index):
            torch._dynamo.mark_static_address(t)
        super().__init__(layers=[
            SharedPrefixLayer(layer.keys, layer.values, bias, group, self.own_bias,
                              self.step_index) for layer in prefilled.layers])

    def set_step(self, step: int, view: int | None = None) -> None:
        """The next forward writes own slot ``step`` and attends over the first ``view`` own
        slots (default ``step + 1``; a compiled step rounds it up, the slots after ``step``
        are closed by the bias)."""
        self.step_index.fill_(step)
        self.own_bias[..., step] = 0.0
        for layer in self.layers:
            layer.step, layer.view = step, step + 1 if view is None else view


def shared_prefix_attention(module: nn.Module, query: torch.Tensor, key: SharedPrefixLayer,
                            value: SharedPrefixLayer, attention_mask: Any = None, *,
                            scaling: float | None = None, dropout: float = 0.0,
                            softcap: float | None = None, **kwargs: Any
                            ) -> tuple[torch.Tensor, None]:
    """Attention of ``query`` ``[B, H_q, 1, D]`` over ``key``'s prompt prefix and its rows' own
    slots (module docs); returns ``([B, 1, H_q, D], None)`` as transformers' attention
    functions do. ``value`` is the same layer; ``attention_mask`` is unused (the layer holds
    the prompts' pad bias, and a row's own slots up to its step are all real).

    Float32 on the CPU with prefkit's C++ operators loaded (:mod:`prefkit.models.native`) and no
    gradient asked for, the sum is ``prefkit_native::shared_prefix_attention`` (two fused passes,
    ``csrc/shared_prefix_attention.cpp``); otherwise :func:`shared_prefix_attention_reference`,
    which computes it with library products (the same values up to float rounding: tested)."""
    if not isinstance(key, SharedPrefixLayer):
        raise TypeError(f"shared-prefix attention runs only over a SharedPrefixCache (got "
                        f"{type(key).__name__}); it is for prefkit's decode steps")
    if softcap is not None or dropout:
        raise ValueError("shared-prefix attention has no soft-capping or dropout")
    if _native_applies(query, key):
        d = query.shape[-1]
        out = torch.ops.prefkit_native.shared_prefix_attention(
            query, key.prefix_keys, key.prefix_values, key.prefix_bias, key.keys, key.values,
            key.own_bias, key.group, key.view, d ** -0.5 if scaling is None else scaling)
        return out, None
    return shared_prefix_attention_reference(query, key, scaling)


NATIVE_MAX_HEAD_DIM = 1024
"""The largest head size the C++ operator takes (its per-thread query buffer)."""


def _native_applies(query: torch.Tensor, key: SharedPrefixLayer) -> bool:
    tensors = (query, key.prefix_keys, key.prefix_values, key.keys, key.values)
    return (native.is_loaded() and query.shape[-1] <= NATIVE_MAX_HEAD_DIM
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
            and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors))


def shared_prefix_attention_reference(query: torch.Tensor, key: SharedPrefixLayer,
                                      scaling: float | None = None
                                      ) -> tuple[torch.Tensor, None]:
    """:func:`shared_prefix_attention` through library products and a softmax over the
    concatenated scores (any dtype and device; autograd works through it)."""
    b, hq, q_len, d = query.shape
    kp, vp = key.prefix_keys, key.prefix_values
    p, hkv, width, _ = kp.shape
    g, rep, t = key.group, hq // hkv, key.view
    scale = d ** -0.5 if scaling is None else scaling
    q = query.reshape(p, g, hkv, rep, d) * scale
    q_prefix = q.transpose(1, 2).reshape(p, hkv, g * rep, d)
    s_prefix = torch.matmul(q_prefix, kp.transpose(-1, -2)).float().add_(key.prefix_bias)
    own_k, own_v = key.keys[:, :, :t], key.values[:, :, :t]
    # a row's own part is a product of rep query rows (one, without grouped-query attention):
    # baddbmm, which torch.compile keeps one library call, where it would turn a one-row
    # matmul into a loop that recomputes the query's rotary embedding for every key slot
    s_own = torch.baddbmm(key.own_bias[0, :, :, :t].to(q.dtype), q.reshape(b * hkv, rep, d),
                          own_k.reshape(b * hkv, t, d).transpose(1, 2)).float()
    s_own = s_own.reshape(p, g, hkv, rep, t).transpose(1, 2).reshape(p, hkv, g * rep, t)
    probs = torch.softmax(torch.cat([s_prefix, s_own], -1), -1).to(vp.dtype)
    out_prefix = torch.matmul(probs[..., :width], vp)  # [P, H_kv, G*rep, D]
    a_own = probs[..., width:].reshape(p, hkv, g, rep, t).transpose(1, 2)
    out = out_prefix.reshape(p, hkv, g, rep, -1).transpose(1, 2).reshape(b * hkv, rep, -1)
    out = torch.baddbmm(out, a_own.reshape(b * hkv, rep, t), own_v.reshape(b * hkv, t, -1))
    return out.reshape(b, 1, hq, -1).to(query.dtype), None


_SDPA = AttentionInterface._global_mapping["sdpa"]
if getattr(_SDPA, "__wrapped_sdpa__", None) is not None:  # this module imported again
    _SDPA = _SDPA.__wrapped_sdpa__


def sdpa_or_shared_prefix(module: nn.Module, query: torch.Tensor, key: Any, value: Any,
                          *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """The function transformers calls for ``"sdpa"`` attention once this module is imported:
    :func:`shared_prefix_attention` for a decode step over a :class:`SharedPrefixCache`,
    :func:`prefkit.models.segment_attention.segment_attention` for a packed training batch
    whose mask carries its segment layout, transformers' own sdpa attention for every other
    call (the same function, the same arguments)."""
    if isinstance(key, SharedPrefixLayer):
        return shared_prefix_attention(module, query, key, value, *args, **kwargs)
    mask = args[0] if args else kwargs.get("attention_mask")
    if segments_usable(query, mask, kwargs.get("dropout", 0.0), kwargs):
        return segment_attention(module, query, key, value, mask, kwargs.get("scaling"))
    return _SDPA(module, query, key, value, *args, **kwargs)


sdpa_or_shared_prefix.__wrapped_sdpa__ = _SDPA  # type: ignore[attr-defined]
AttentionInterface.register("sdpa", sdpa_or_shared_prefix)


def shared_prefix_unsupported(model: nn.Module) -> str | None:
    """Why the decode steps of ``model`` cannot use :func:`shared_prefix_attention` (None: they
    can): it is reached through sdpa attention only (module docs), and attention logit
    soft-capping (Gemma 2) is not implemented here. The model must also pass the static decode
    loop's own checks (full attention, sdpa/eager)."""
    impl = model.config._attn_implementation
    if impl != "sdpa":
        return f"attention implementation {impl!r} (the shared prefix goes through sdpa)"
    if AttentionInterface._global_mapping.get("sdpa") is not sdpa_or_shared_prefix:
        return "transformers' 'sdpa' attention was registered again after prefkit's dispatcher"
    text = model.config.get_text_config(decoder=True)
    if getattr(text, "attn_logit_softcapping", None) is not None:
        return "attention logit soft-capping"
    return None


def equal_groups(inverse: list[int]) -> tuple[list[int], int] | None:
    """``(order, G)``: rows ordered prompt-major (a stable sort by distinct prompt) when every
    distinct prompt has the same number ``G`` of rows; None when the counts differ (a batch
    that splits a prompt's samples)."""
    counts: dict[int, int] = {}
    for i in inverse:
        counts[i] = counts.get(i, 0) + 1
    if len(set(counts.values())) != 1:
        return None
    return sorted(range(len(inverse)), key=inverse.__getitem__), next(iter(counts.values()))
