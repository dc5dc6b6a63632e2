"""Run the LAST transformer layer only where its output is read.

A training step reads the final hidden states at a few positions: the completion-predicting
positions (log-probs) or one position per response (reward models). The last layer's keys and
values are needed at every position (the selected queries attend to them), but its queries,
attention output, output projection and MLP are only needed at the selected positions. For a
reward model at prompt 256 that is ~85% of one of the model's layers skipped; for DPO the
prompt positions' share of it.

:func:`hidden_at` runs a decoder with its last layer replaced, for the call, by
:class:`_LastLayerAt`, which computes that layer at the unique selected positions only (every
other position of the returned tensor keeps the layer's INPUT and must not be read), and
returns the final hidden states ``[N, H]`` at ``(rows, cols)``. Exact: the same operations on
the same numbers as the full layer (per-token norms and projections commute with selecting
tokens; attention rows are independent given all keys and values), so results agree to float
rounding.

Layer families (:data:`FAMILIES`, by decoder-layer class; each checked against the full layer
in tests/test_architectures.py):

* ``pre_norm`` -- ``h + attn(norm(h))`` then ``h + mlp(norm(h))``: Llama, Mistral, Qwen2,
  Qwen3 (per-head q/k RMSNorm), Phi-3 (fused ``qkv_proj``);
* ``post_norm`` -- OLMo 2: ``h + norm(attn(h))`` then ``h + norm(mlp(h))``, q/k RMSNorm over
  the whole projection;
* ``sandwich`` -- Gemma 2 / Gemma 3: input, post-attention, pre- and post-feed-forward norms;
  Gemma 2's attention logit soft-capping ``c * tanh(s / c)`` (computed as eager attention
  does), Gemma 3's per-head q/k norms;
* ``parallel`` -- GPT-NeoX: fused per-head ``query_key_value``, partial rotary (the model's own
  ``apply_rotary_pos_emb``), parallel residual ``h + attn(ln1(h)) + mlp(ln2(h))`` (or the
  sequential form when ``use_parallel_residual`` is off).

Sliding-window layers need nothing extra: the layer is given the (windowed) mask the model
built, or the one :func:`prefkit.models.arch.decoder_attention_mask` built. With flex attention
(:mod:`prefkit.models.attention`) the layer gets a ``BlockMask``: its ``mask_mod`` (the exact
per-pair rule) is evaluated for the selected query rows only, ``[N, L]``, and the selected
queries run through sdpa with that dense slice -- no ``L x L`` tensor. Anything else falls back
to the full forward (same results, no saving) and :func:`prune_fallback_reason` says why --
another layer class, a layer sharded by FSDP2, gradient checkpointing, dropout active in
training, FlashAttention (no mask to read), bidirectional attention; the reason is logged once
per decoder class (logger ``prefkit.models.prune``, INFO).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prefkit.models.attention import FLEX_IMPLEMENTATION

__all__ = ["FAMILIES", "full_hidden_at", "gather_positions", "hidden_at",
           "last_layer_supported", "prune_fallback_reason"]

logger = logging.getLogger(__name__)

FLEX_PRUNE_MAX_FRACTION_INV = 4
"""Under flex attention the last layer is pruned only when at most 1/4 of a row's positions are
read (reward models: one per response), since its selected queries take a dense ``[N, L]`` mask
slice; DPO-like reads (the completions) run the full layer under flex."""


@dataclass(frozen=True)
class _Family:
    """How one decoder-layer class computes: ``residual`` form, ``qkv`` projection layout,
    ``qk_norm`` (``""``, ``"head"``: per head before rotary, ``"full"``: on the projection)
    and whether the attention logits are soft-capped (``attn_logit_softcapping``)."""

    residual: str  # pre_norm | post_norm | sandwich | parallel
    qkv: str = "separate"  # separate | fused (Phi-3) | per_head (GPT-NeoX)
    qk_norm: str = ""
    softcap: bool = False


FAMILIES: dict[str, _Family] = {
    "LlamaDecoderLayer": _Family("pre_norm"),
    "MistralDecoderLayer": _Family("pre_norm"),
    "Qwen2DecoderLayer": _Family("pre_norm"),
    "Qwen3DecoderLayer": _Family("pre_norm", qk_norm="head"),
    "Phi3DecoderLayer": _Family("pre_norm", qkv="fused"),
    "Olmo2DecoderLayer": _Family("post_norm", qk_norm="full"),
    "Gemma2DecoderLayer": _Family("sandwich", softcap=True),
    "Gemma3DecoderLayer": _Family("sandwich", qk_norm="head"),
    "GPTNeoXLayer": _Family("parallel", qkv="per_head"),
}
"""Decoder-layer classes whose last layer :func:`hidden_at` computes at selected positions."""

_logged: set[tuple[str, str]] = set()


def _base(decoder: nn.Module) -> nn.Module:
    return decoder.get_base_model() if hasattr(decoder, "get_base_model") else decoder


def _layers(decoder: nn.Module) -> nn.ModuleList | None:
    layers = getattr(_base(decoder), "layers", None)
    return layers if isinstance(layers, nn.ModuleList) and len(layers) else None


def _attention(layer: nn.Module) -> nn.Module | None:
    return getattr(layer, "self_attn", None) or getattr(layer, "attention", None)


def prune_fallback_reason(decoder: nn.Module) -> str | None:
    """Why :func:`hidden_at` must run ``decoder``'s last layer whole, or None if it can prune."""
    name = type(_base(decoder)).__name__
    layers = _layers(decoder)
    if layers is None:
        return f"{name} has no `layers` list"
    layer = _real_layer(layers[-1])  # another thread's pruned forward may be running
    kind = type(layer).__name__
    if kind.startswith("FSDP"):
        return (f"{kind} is sharded by FSDP (its parameters are gathered only inside its own "
                "forward)")
    if kind not in FAMILIES:
        return f"{kind} is not a layer family prefkit prunes ({', '.join(FAMILIES)})"
    attn = _attention(layer)
    config = getattr(attn, "config", None) or getattr(_base(decoder), "config", None)
    if attn is None or config is None:
        return f"{kind} has no attention module with a config"
    if getattr(layer, "gradient_checkpointing", False) or getattr(
            _base(decoder), "gradient_checkpointing", False):
        return "gradient checkpointing is on"
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    if implementation not in ("sdpa", "eager", FLEX_IMPLEMENTATION):
        return (f"attention implementation {implementation!r} (the pruned layer reads a dense "
                "mask or a flex BlockMask; FlashAttention has neither)")
    if getattr(config, "use_bidirectional_attention", False):
        return "bidirectional attention"
    if layer.training:
        dropout = getattr(attn, "attention_dropout", 0.0) or 0.0
        if dropout or any(isinstance(m, nn.Dropout) and m.p > 0 for m in layer.modules()):
            return "dropout is active in training"
    return None


def last_layer_supported(decoder: nn.Module) -> bool:
    """Whether :func:`hidden_at` can prune ``decoder``'s last layer (else it runs it whole)."""
    return prune_fallback_reason(decoder) is None


def _log_fallback(decoder: nn.Module, reason: str) -> None:
    key = (type(_base(decoder)).__name__, reason)
    if key not in _logged:
        _logged.add(key)
        logger.info("last-layer pruning off for %s: %s; the full last layer runs (same "
                    "results, no saving)", key[0], reason)


def gather_positions(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``x[rows, cols]`` of a ``[B, L, ...]`` tensor (positions may repeat), as one
    ``index_select`` over the flattened ``B * L`` positions: the same values, and a backward
    that is an ``index_add`` -- advanced indexing's backward is an accumulating ``index_put``,
    ~5x slower on the CPU for the online bench's 2,000 positions x 256 features."""
    b, length = x.shape[:2]
    return x.reshape(b * length, *x.shape[2:]).index_select(0, rows * length + cols)


def _heads(t: torch.Tensor, d: int) -> torch.Tensor:
    """``[..., H * d] -> [..., H, d]``."""
    return t.unflatten(-1, (-1, d))


def _qkv(layer: nn.Module, family: _Family, x: torch.Tensor, rows: torch.Tensor,
         cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries at the selected positions ``[N, Hq, D]`` and keys, values at every position
    ``[B, L, Hk, D]`` of the attention input ``x``, before rotary, as the family's attention
    computes them (q/k norms included)."""
    attn = _attention(layer)
    d = getattr(attn, "head_dim", None) or attn.head_size
    if family.qkv == "fused":  # Phi-3: [q | k | v] along the features
        n_q = attn.config.num_attention_heads * d
        n_kv = attn.config.num_key_value_heads * d
        qkv = attn.qkv_proj(x)
        q = _heads(gather_positions(qkv, rows, cols)[..., :n_q], d)
        k, v = _heads(qkv[..., n_q:n_q + n_kv], d), _heads(qkv[..., n_q + n_kv:], d)
        return q, k, v
    if family.qkv == "per_head":  # GPT-NeoX: [q | k | v] inside each head
        q, k, v = _heads(attn.query_key_value(x), 3 * d).chunk(3, dim=-1)
        return gather_positions(q, rows, cols), k, v
    q, k, v = attn.q_proj(gather_positions(x, rows, cols)), attn.k_proj(x), attn.v_proj(x)
    if family.qk_norm == "full":
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k, v = _heads(q, d), _heads(k, d), _heads(v, d)
    if family.qk_norm == "head":
        q, k = attn.q_norm(q), attn.k_norm(k)
    return q, k, v


def _finish(layer: nn.Module, family: _Family, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The layer's output at the selected positions from its input ``h`` and the projected
    attention output ``a`` there."""
    if family.residual == "pre_norm":
        h = h + a
        return h + layer.mlp(layer.post_attention_layernorm(h))
    if family.residual == "post_norm":
        h = h + layer.post_attention_layernorm(a)
        return h + layer.post_feedforward_layernorm(layer.mlp(h))
    if family.residual == "sandwich":
        h = h + layer.post_attention_layernorm(a)
        return h + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))
    if layer.use_parallel_residual:  # GPT-NeoX
        return layer.mlp(layer.post_attention_layernorm(h)) + a + h
    a = a + h
    return layer.mlp(layer.post_attention_layernorm(a)) + a


def _eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                     scale: float, softcap: float | None) -> torch.Tensor:
    """Eager attention as transformers computes it: scaled scores, optional soft-cap
    ``c * tanh(s / c)``, additive mask, float32 softmax cast back."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask.dtype == torch.bool:
        zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
        mask = torch.where(mask, zero, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores + mask, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, v)


class _LastLayerAt(nn.Module):
    """The wrapped decoder layer computed at positions ``(rows, cols)`` only (module doc), for
    the thread that installed it: a forward of the same model in any other thread meanwhile
    runs the whole layer (see :func:`_pruned`)."""

    def __init__(self, layer: nn.Module, rows: torch.Tensor, cols: torch.Tensor) -> None:
        super().__init__()
        self.layer = layer
        self.rows = rows
        self.cols = cols
        self.owner = threading.get_ident()

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                **kwargs: Any) -> torch.Tensor:
        if threading.get_ident() != self.owner:  # another thread's forward: the whole layer
            return self.layer(hidden_states, attention_mask=attention_mask,
                              position_embeddings=position_embeddings, **kwargs)
        layer, rows, cols = self.layer, self.rows, self.cols
        family = FAMILIES[type(layer).__name__]
        attn = _attention(layer)
        rotary = sys.modules[type(layer).__module__].apply_rotary_pos_emb
        b, length, _ = hidden_states.shape
        x = hidden_states if family.residual == "post_norm" else layer.input_layernorm(
            hidden_states)
        q, k, v = _qkv(layer, family, x, rows, cols)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, Hk, L, D]
        cos, sin = position_embeddings
        k, _ = rotary(k, k, cos, sin)
        cos, sin = cos.expand(b, -1, -1), sin.expand(b, -1, -1)  # position ids may broadcast
        # the selected queries, grouped by row and padded to the largest count per row
        n = rows.numel()
        counts = torch.bincount(rows, minlength=b)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(n, device=rows.device) - starts[rows]  # rows are sorted
        width = int(counts.max())
        q = q[:, :, None]  # [N, Hq, 1, D]
        q, _ = rotary(q, q, cos[rows, cols][:, None], sin[rows, cols][:, None])
        heads, d = q.shape[1], q.shape[-1]
        queries = q.new_zeros(b, width, heads, d)
        queries = queries.index_put((rows, slot), q[:, :, 0]).transpose(1, 2)
        mask = self._mask(attention_mask, rows, cols, slot, b, width, length)
        softcap = getattr(attn, "attn_logit_softcapping", None) if family.softcap else None
        implementation = getattr(attn.config, "_attn_implementation", None) or "eager"
        if softcap is not None or implementation == "eager":
            out = _eager_attention(queries, k, v, mask, attn.scaling, softcap)
        else:
            out = F.scaled_dot_product_attention(queries, k, v, attn_mask=mask,
                                                 scale=attn.scaling,
                                                 enable_gqa=heads != k.shape[1])
        out = gather_positions(out.transpose(1, 2), rows, slot).reshape(n, heads * d)
        output = attn.o_proj if hasattr(attn, "o_proj") else attn.dense
        h = _finish(layer, family, gather_positions(hidden_states, rows, cols), output(out))
        return hidden_states.index_put((rows, cols), h)

    @staticmethod
    def _mask(mask: torch.Tensor | None, rows, cols, slot, b: int, width: int, length: int
              ) -> torch.Tensor:
        """``[B, 1, width, L]`` bool (True = attend) or additive rows of the layer's mask for
        the selected queries; padded query slots attend to position 0 (never read)."""
        keys = torch.arange(length, device=rows.device)
        if mask is None:  # plain causal
            picked = keys[None, :] <= cols[:, None]
        elif _is_block_mask(mask):  # flex: its rule evaluated on the selected rows only
            picked = mask.mask_mod(rows[:, None], 0, cols[:, None], keys[None, :])
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
    """``layers[-1]`` pruned to ``(rows, cols)`` for this thread's forward inside the block.

    Safe when other threads use the same model meanwhile: the wrapper prunes only for the
    thread that installed it (any other thread's forward runs the whole layer, the same values
    at every position), a wrapper installed over another thread's wraps the real layer, and
    leaving always puts the real layer back -- a thread whose forward had not yet reached the
    last layer then runs it whole, which :func:`hidden_at` reads at its positions just the
    same."""
    real = _real_layer(layers[-1])
    layers[-1] = _LastLayerAt(real, rows, cols)
    try:
        yield
    finally:
        layers[-1] = real


def _real_layer(layer: nn.Module) -> nn.Module:
    """The decoder layer itself, also while another thread's :class:`_LastLayerAt` wraps it."""
    return layer.layer if isinstance(layer, _LastLayerAt) else layer


def _is_block_mask(mask: Any) -> bool:
    return type(mask).__name__ == "BlockMask" and callable(getattr(mask, "mask_mod", None))


def _has_block_mask(mask: Any) -> bool:
    masks = mask.values() if isinstance(mask, dict) else [mask]
    return any(_is_block_mask(m) for m in masks)


def _readable_mask(mask: Any) -> bool:
    """Whether an ``attention_mask`` argument is one the pruned layer can read (None, a
    tensor, a flex ``BlockMask``, or a mapping of those per layer type)."""
    masks = mask.values() if isinstance(mask, dict) else [mask]
    return all(m is None or isinstance(m, torch.Tensor) or _is_block_mask(m) for m in masks)


def hidden_at(decoder: nn.Module, rows: torch.Tensor, cols: torch.Tensor, **inputs: Any
              ) -> torch.Tensor:
    """``decoder(**inputs)``'s final hidden states at ``(rows, cols)`` (``[N, H]``; positions
    may repeat), with the last layer computed only at those positions when supported (else the
    reason is logged once: :func:`prune_fallback_reason`)."""
    reason = prune_fallback_reason(decoder)
    mask = inputs.get("attention_mask")
    if reason is None and not _readable_mask(mask):
        reason = f"attention mask of type {type(mask).__name__}"
    width = inputs["input_ids"].shape[1]
    if reason is None and _has_block_mask(mask) and rows.numel():
        # under flex the pruned layer reads a dense [N_row, L] slice of the mask: worth it
        # when few positions are read (reward models), not when N_row nears L (the point of
        # flex is no L x L tensor); the full layer costs only the saving
        most = int(torch.bincount(rows).max())
        if most * FLEX_PRUNE_MAX_FRACTION_INV > width:
            reason = (f"flex attention reading more than 1/{FLEX_PRUNE_MAX_FRACTION_INV} of a "
                      "row's positions: the pruned layer's dense mask slice would be near L x L")
    if reason is not None:
        _log_fallback(decoder, reason)
        return full_hidden_at(decoder, rows, cols, **inputs)
    flat = torch.unique(rows * width + cols, sorted=True)
    u_rows, u_cols = flat // width, flat % width
    with _pruned(_layers(decoder), u_rows, u_cols):
        return full_hidden_at(decoder, rows, cols, **inputs)


def full_hidden_at(decoder: nn.Module, rows: torch.Tensor, cols: torch.Tensor, **inputs: Any
                   ) -> torch.Tensor:
    """``decoder(**inputs)``'s final hidden states at ``(rows, cols)`` (``[N, H]``), every layer
    run as it is (inside :func:`_pruned`, this thread's last layer is the pruned one)."""
    out = decoder(**inputs)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return gather_positions(hidden, rows, cols)
