"""Content hashes that key the on-disk caches (reference log-probs): the same weights, the same
tokens and the same settings give the same key on any machine; anything else a new one."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson
import torch

__all__ = ["cache_key", "hash_groups", "hash_weights"]


def hash_weights(model: torch.nn.Module, *, skip: tuple[str, ...] = ("lora_",)) -> str:
    """SHA-256 of every parameter and buffer (name, dtype, shape, bytes) in name order. Names
    containing a ``skip`` fragment are left out: a LoRA model's reference is its base weights."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        if any(fragment in name for fragment in skip):
            continue
        tensor = state[name].detach()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.view(torch.int16)
        digest.update(np.ascontiguousarray(tensor.cpu().numpy()).tobytes())
    return digest.hexdigest()


def hash_groups(groups: Iterable[Any]) -> str:
    """SHA-256 of the token ids of prompt groups (prompt ids, then each response's)."""
    digest = hashlib.sha256()
    for group in groups:
        digest.update(np.asarray(group.prompt_ids, dtype=np.int64).tobytes())
        for response in group.response_ids:
            digest.update(b"|")
            digest.update(np.asarray(response, dtype=np.int64).tobytes())
        digest.update(b"\n")
    return digest.hexdigest()


def cache_key(*parts: str, settings: dict[str, Any] | None = None) -> str:
    """One short key from several hashes and a settings dict (sorted JSON)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
    digest.update(orjson.dumps(settings or {}, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()[:32]
