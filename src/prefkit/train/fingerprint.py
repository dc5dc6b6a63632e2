"""Content hashes that key the on-disk caches (reference log-probs): the same weights, the same
tokens and the same settings give the same key on any machine; anything else a new one.

What a reference computes is fixed by its weights (as the reference uses them), its architecture
settings (``config``: rotary frequencies, norm epsilons, activations live there, not in the
weights) and the token ids; the folder a model was loaded from, its train/eval mode or wrappers
such as DDP's ``.module`` do not enter. Every field is length-prefixed, so no two different
inputs share a byte stream.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import orjson
import torch

__all__ = ["cache_key", "hash_groups", "hash_weights"]

CONFIG_METADATA = frozenset({
    "_name_or_path", "name_or_path", "transformers_version", "architectures", "dtype",
    "torch_dtype", "use_cache", "output_attentions", "output_hidden_states", "return_dict",
    "id2label", "label2id", "problem_type", "initializer_range", "_commit_hash",
    "_attn_implementation_autoset", "tokenizer_class",
})
"""Config fields that never change a forward pass (paths, versions, bookkeeping, init scales);
dtype enters through the weights themselves."""


def _update(digest: Any, data: bytes) -> None:
    digest.update(struct.pack("<q", len(data)))
    digest.update(data)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Look through DDP / accelerate (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def _reference_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of what the model computes with as a reference, in name order.

    A peft ``PeftModel`` serves as its own reference with its adapters disabled
    (:func:`prefkit.models.load.reference_context`): its adapter weights are left out and the
    names of the wrapped base weights are the plain model's (so a LoRA run and a full run on one
    base share a cache entry). Any other model computes with everything it holds, adapters
    loaded into it included.
    """
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    state = model.state_dict()
    if not isinstance(model, PeftModel):
        for name in sorted(state):
            yield name, state[name]
        return
    adapters = tuple(
        f"{prefix}.{attr}."
        for prefix, module in model.named_modules()
        if isinstance(module, BaseTunerLayer)
        for attr in module.adapter_layer_names
    )
    renamed = {}
    for name, tensor in state.items():
        if name.startswith(adapters) or ".modules_to_save." in name:
            continue
        plain = name.removeprefix("base_model.model.")
        plain = plain.replace(".base_layer.", ".").replace(".original_module.", ".")
        renamed[plain] = tensor
    for name in sorted(renamed):
        yield name, renamed[name]


def _config_bytes(model: torch.nn.Module) -> bytes:
    """Sorted JSON of the model's config without :data:`CONFIG_METADATA` (b"" without one)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return b""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): strip(v) for k, v in value.items() if k not in CONFIG_METADATA}
        return value

    return json.dumps(strip(config.to_dict()), sort_keys=True, default=str).encode()


def hash_weights(model: torch.nn.Module) -> str:
    """SHA-256 of a model as a reference: its architecture config (without metadata) and every
    parameter and buffer it computes with (name, dtype, shape, bytes) in name order (see
    :func:`_reference_tensors` for LoRA)."""
    model = _unwrap(model)
    digest = hashlib.sha256()
    _update(digest, _config_bytes(model))
    for name, tensor in _reference_tensors(model):
        tensor = tensor.detach()
        _update(digest, name.encode())
        _update(digest, str(tensor.dtype).encode())
        _update(digest, str(tuple(tensor.shape)).encode())
        raw = tensor.reshape(-1).contiguous().view(torch.uint8)  # any dtype, bf16 / fp8 too
        _update(digest, raw.cpu().numpy().tobytes())
    return digest.hexdigest()


def hash_groups(groups: Iterable[Any]) -> str:
    """SHA-256 of the token ids of prompt groups: per group its prompt ids and each response's,
    every list length-prefixed (``.prompt_ids``, ``.response_ids``)."""
    digest = hashlib.sha256()
    for group in groups:
        digest.update(struct.pack("<q", len(group.response_ids)))
        _update(digest, np.asarray(group.prompt_ids, dtype="<i8").tobytes())
        for response in group.response_ids:
            _update(digest, np.asarray(response, dtype="<i8").tobytes())
    return digest.hexdigest()


def cache_key(*parts: str, settings: dict[str, Any] | None = None) -> str:
    """One short key from several hashes (each length-prefixed, in order) and a settings dict
    (sorted JSON)."""
    digest = hashlib.sha256()
    for part in parts:
        _update(digest, part.encode())
    _update(digest, orjson.dumps(settings or {}, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()[:32]
