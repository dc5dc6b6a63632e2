"""Run the LAST transformer layer only where its output is read.

A training step reads the final hidden states at a few positions: the completion-predicting
positions (log-probs) or one position per response (reward models). The last layer's keys and
values are needed at every position (the selected queries attend to them), but its queries,
attention output, output projection and MLP are only needed at the selected positions. For a
reward model at prompt 256 that is ~85% of one of the model's layers skipped; for DPO the
prompt positions' share of it.

:func:`hidden_at` runs a decoder (a ``LlamaModel``-style body) with its last layer replaced,
for the call, by :class:`_LastLayerAt`, which computes that layer at the unique selected
positions only (every other position of the returned tensor keeps the layer's INPUT and must
not be read), and returns the final hidden states ``[N, H]`` at ``(rows, cols)``. Exact: the
same operations on the same numbers as the full layer, so results agree to float rounding.

Supported layers: Llama-style decoder layers (``input_layernorm``, ``self_attn`` with
``q/k/v/o_proj``, ``head_dim``, ``scaling``, rotary ``position_embeddings``,
``post_attention_layernorm``, ``mlp``) without sliding windows, logit soft-capping or
attention dropout during training, and no gradient checkpointing; anything else falls back to
the full forward (same results, no saving).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["hidden_at", "last_layer_supported"]

_SUPPORTED = {"LlamaDecoderLayer"}


def _layers(decoder: nn.Module) -> nn.ModuleList | None:
    base = decoder
    if hasattr(base, "get_base_model"):  # peft
        base = base.get_base_model()
    layers = getattr(base, "layers", None)
    return layers if isinstance(layers, nn.ModuleList) and len(layers) else None


def last_layer_supported(decoder: nn.Module) -> bool:
    """Whether :func:`hidden_at` can prune ``decoder``'s last layer (else it runs it whole)."""
    layers = _layers(decoder)
    if layers is None:
        return False
    layer = layers[-1]
    if type(layer).__name__ not in _SUPPORTED or getattr(layer, "gradient_checkpointing", False):
        return False
    attn = getattr(layer, "self_attn", None)
    config = getattr(attn, "config", None)
    if attn is None or config is None:
        return False
    if getattr(config, "sliding_window", None) or getattr(config, "attn_logit_softcapping", None):
        return False
    if attn.training and getattr(attn, "attention_dropout", 0.0):
        return False
    base = decoder.get_base_model() if hasattr(decoder, "get_base_model") else decoder
    return not getattr(base, "gradient_checkpointing", False)


class _LastLayerAt(nn.Module):
    """The wrapped decoder layer computed at positions ``(rows, cols)`` only (module doc)."""

    def __init__(self, layer: nn.Module, rows: torch.Tensor, cols: torch.Tensor) -> None:
        super().__init__()
        self.layer = layer
        self.rows = rows
        self.cols = cols

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                **kwargs: Any) -> torch.Tensor:
        layer, rows, cols = self.layer, self.rows, self.cols
        attn = layer.self_attn
        rotary = sys.modules[type(layer).__module__].apply_rotary_pos_emb
        b, length, _ = hidden_states.shape
        d = attn.head_dim
        x = layer.input_layernorm(hidden_states)
        k = attn.k_proj(x).view(b, length, -1, d).transpose(1, 2)
        v = attn.v_proj(x).view(b, length, -1, d).transpose(1, 2)
        cos, sin = position_embeddings
        k, _ = rotary(k, k, cos, sin)
        cos, sin = cos.expand(b, -1, -1), sin.expand(b, -1, -1)  # position ids may broadcast
        # the selected queries, grouped by row and padded to the largest count per row
        n = rows.numel()
        counts = torch.bincount(rows, minlength=b)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(n, device=rows.device) - starts[rows]  # rows are sorted
        width = int(counts.max())
        q = attn.q_proj(x[rows, cols]).view(n, -1, d)[:, :, None]  # [N, Hq, 1, D]
        q, _ = rotary(q, q, cos[rows, cols][:, None], sin[rows, cols][:, None])
        heads = q.shape[1]
        queries = q.new_zeros(b, width, heads, d)
        queries = queries.index_put((rows, slot), q[:, :, 0])
        mask = self._mask(attention_mask, rows, cols, slot, b, width, length, q.dtype)
        out = F.scaled_dot_product_attention(
            queries.transpose(1, 2), k, v, attn_mask=mask, scale=attn.scaling,
            enable_gqa=heads != k.shape[1])
        out = out.transpose(1, 2)[rows, slot].reshape(n, heads * d)
        h = hidden_states[rows, cols] + attn.o_proj(out)
        h = h + layer.mlp(layer.post_attention_layernorm(h))
        return hidden_states.index_put((rows, cols), h)

    @staticmethod
    def _mask(mask: torch.Tensor | None, rows, cols, slot, b: int, width: int, length: int,
              dtype: torch.dtype) -> torch.Tensor:
        """``[B, 1, width, L]`` bool (True = attend) or additive rows of the layer's mask for
        the selected queries; padded query slots attend to position 0 (never read)."""
        keys = torch.arange(length, device=rows.device)
        if mask is None:  # plain causal
            picked = keys[None, :] <= cols[:, None]
        elif mask.dim() == 4:
            picked = mask[rows, 0, cols] if mask.shape[0] == b else mask[0, 0, cols]
        else:
            raise ValueError(f"unexpected attention mask of shape {tuple(mask.shape)}")
        if picked.dtype == torch.bool:
            full = torch.zeros(b, width, length, dtype=torch.bool, device=rows.device)
            full[:, :, 0] = True
        else:
            full = torch.zeros(b, width, length, dtype=picked.dtype, device=rows.device)
        full = full.index_put((rows, slot), picked)
        return full[:, None]


@contextlib.contextmanager
def _pruned(layers: nn.ModuleList, rows: torch.Tensor, cols: torch.Tensor) -> Iterator[None]:
    original = layers[-1]
    layers[-1] = _LastLayerAt(original, rows, cols)
    try:
        yield
    finally:
        layers[-1] = original


def hidden_at(decoder: nn.Module, rows: torch.Tensor, cols: torch.Tensor, **inputs: Any
              ) -> torch.Tensor:
    """``decoder(**inputs)``'s final hidden states at ``(rows, cols)`` (``[N, H]``; positions
    may repeat), with the last layer computed only at those positions when supported."""
    if not last_layer_supported(decoder):
        out = decoder(**inputs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return hidden[rows, cols]
    width = inputs["input_ids"].shape[1]
    flat, inverse = torch.unique(rows * width + cols, sorted=True, return_inverse=True)
    u_rows, u_cols = flat // width, flat % width
    with _pruned(_layers(decoder), u_rows, u_cols):
        out = decoder(**inputs)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden[u_rows, u_cols][inverse]
