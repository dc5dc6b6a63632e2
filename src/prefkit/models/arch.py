"""What the packed prefix-shared forward needs to know about an architecture.

A 4D ``[R, 1, L, L]`` mask given as ``attention_mask`` is used by transformers AS IS: the model
builds no mask of its own, so anything the model would have added to its own mask must be in
ours. The one such thing among the common decoder-only families is the **sliding window**
(Mistral, Qwen2 with ``use_sliding_window``, Gemma 2 / Gemma 3 local layers, Phi-3 with
``sliding_window``): a query at position ``p`` sees keys at positions ``p' > p - W`` only.

:func:`decoder_attention_mask` adds it. In a packed row the positions of a group restart
(``position_ids``: prompt ``0..P-1``, each response ``P..``), and a query only ever sees its own
group's prompt and its own response, so ``position_q - position_k`` is exactly the distance the
two tokens have in the response's own unpacked sequence: the window rule on ``position_ids``
is the window of the unpacked forward. Models with per-layer attention types
(``config.layer_types``: Gemma 2/3, Qwen2/3) take a mapping ``{"full_attention": mask,
"sliding_attention": windowed mask}`` (transformers' ``causal_mask_mapping``); models whose
layers all slide (Mistral, Phi-3) take the windowed mask. Nothing changes when no row is longer
than the window (the window then never binds).

Everything else that differs between the families -- Gemma's scaled embeddings and
``(1 + w)`` norms, post-norms (OLMo 2, Gemma), fused qkv (Phi-3, GPT-NeoX), GPT-NeoX's parallel
residual and partial rotary, attention logit soft-capping (Gemma 2) -- happens inside the
model's own layers, which run unchanged on the packed rows; final logit soft-capping is applied
by :mod:`prefkit.models.logprobs`, and the last-layer pruning knows each layer family
(:mod:`prefkit.models.prune`).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["attention_window", "decoder_attention_mask", "sliding_layer_types"]

SLIDING = "sliding_attention"
FULL = "full_attention"


def _config(model: Any) -> Any:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(inner, "module", inner)
    return getattr(inner, "config", None)


def attention_window(config: Any) -> int | None:
    """The sliding window ``W`` of a config (None: no layer slides)."""
    window = getattr(config, "sliding_window", None)
    if not isinstance(window, int) or window <= 0:
        return None
    types = getattr(config, "layer_types", None)
    if types is not None and SLIDING not in types:
        return None
    return window


def sliding_layer_types(config: Any) -> str:
    """``"none"`` (no sliding layer), ``"all"`` (every layer slides: one windowed mask) or
    ``"mixed"`` (per-layer types: a ``{full_attention, sliding_attention}`` mapping)."""
    if attention_window(config) is None:
        return "none"
    types = getattr(config, "layer_types", None)
    if types is None or all(t == SLIDING for t in types):
        return "all"
    return "mixed"


def _windowed(mask: torch.Tensor, position_ids: torch.Tensor, window: int) -> torch.Tensor:
    """``mask`` with keys at ``position_q - position_k >= window`` blocked (bool: False;
    additive: dtype-min). The diagonal (distance 0) always stays, so no row is emptied."""
    positions = position_ids.to(torch.int32)
    distance = positions[:, :, None] - positions[:, None, :]  # [R, Lq, Lk]
    inside = (distance < window)[:, None]
    if mask.dtype == torch.bool:
        return mask & inside
    blocked = torch.finfo(mask.dtype).min
    return mask.masked_fill(~inside, blocked)


def decoder_attention_mask(model: Any, mask: torch.Tensor, position_ids: torch.Tensor | None
                           ) -> torch.Tensor | dict[str, torch.Tensor]:
    """The ``attention_mask`` argument for ``model`` of a packed batch's 4D ``mask`` (module
    docstring): the mask itself, the mask with the sliding window applied, or a mapping per
    layer attention type. 2D masks are returned unchanged (the model builds its own 4D mask
    and window from them)."""
    if mask.dim() != 4 or position_ids is None:
        return mask
    config = _config(model)
    kind = sliding_layer_types(config)
    if kind == "none":
        return mask
    window = attention_window(config)
    if int(position_ids.max()) < window:  # no query is W or more positions past a key
        return mask
    windowed = _windowed(mask, position_ids.to(mask.device), window)
    if kind == "all":
        return windowed
    return {FULL: mask, SLIDING: windowed}
