"""Reference log-probs: computed once before training, cached on disk by content hash.

Direct preference losses compare the policy with a frozen reference. Its log-probs never change,
so prefkit computes them in one no-grad pass over the data before the first step and stores them
in ``{cache_dir}/ref-{key}.pt``, ``key`` = SHA-256 of (the reference's weights, every token id
of the data, the settings that change the numbers: dtype and the log-prob layout version). A
second run on the same model and data -- another loss, another beta, a resumed run -- reads them
back instead of recomputing.

The reference is:

- ``"auto"``: the policy as loaded, before any update; for a LoRA model, the same model with its
  adapters disabled (:func:`prefkit.models.load.reference_context`) -- no second copy in memory;
- a checkpoint directory: a separate model, loaded for the pass and freed afterwards.

Under data parallelism the main process computes and writes the cache; the others wait and read
it (so every process trains against bit-identical reference values).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..models.attention import uses_flex
from ..models.logprobs import sequence_logps
from ..models.packing import PromptGroup, pack_groups
from .fingerprint import cache_key, hash_groups, hash_weights

__all__ = ["ReferenceLogps", "compute_logps", "default_cache_dir", "reference_logps"]

LAYOUT_VERSION = "packed-v1"
"""Bumped whenever the way log-probs are computed changes (invalidates old caches)."""


def default_cache_dir() -> Path:
    """``$PREFKIT_CACHE/reference`` or ``~/.cache/prefkit/reference``."""
    root = os.environ.get("PREFKIT_CACHE") or Path.home() / ".cache" / "prefkit"
    return Path(root) / "reference"


@dataclass
class ReferenceLogps:
    """Summed reference log-probs ``sums [N, Kmax]`` of N groups (0 where a group has fewer
    responses), where they came from and what they cost."""

    sums: torch.Tensor
    key: str | None  # None when the cache is off (no content hash computed)
    path: str | None
    cached: bool
    seconds: float

    def info(self) -> dict[str, Any]:
        return {"key": self.key, "cache": self.path, "from_cache": self.cached,
                "seconds": round(self.seconds, 3), "groups": int(self.sums.shape[0])}


@torch.no_grad()
def compute_logps(model: torch.nn.Module, groups: Sequence[PromptGroup], *, pad_id: int,
                  batch_groups: int = 16, chunk_size: int = 1024,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """``[N, Kmax]`` summed completion log-probs of ``groups`` under ``model`` (no grad, eval
    mode for the pass; the model's train/eval mode is restored)."""
    k_max = max(g.k for g in groups)
    out = torch.zeros(len(groups), k_max)
    device = device or next(model.parameters()).device
    was_training = model.training
    # a flex model builds its block mask from the segment ids: no dense mask to pack
    mask_dtype = None if uses_flex(model) else torch.float32
    model.eval()
    try:
        for start in range(0, len(groups), batch_groups):
            chunk = list(groups[start:start + batch_groups])
            capacity = max(g.packed_length for g in chunk)
            batch = pack_groups(chunk, max_length=capacity, pad_id=pad_id,
                                mask_dtype=mask_dtype).to(device)
            lp = sequence_logps(model, batch, chunk_size=chunk_size)
            out[start:start + len(chunk), : lp.sum.shape[1]] = lp.sum.float().cpu()
    finally:
        model.train(was_training)
    return out


def reference_logps(model: torch.nn.Module, groups: Sequence[PromptGroup], *,
                    reference: str = "auto", cache_dir: str | None = None, pad_id: int = 0,
                    chunk_size: int = 1024, accelerator: Any = None, dtype: str = "float32",
                    batch_groups: int = 16) -> ReferenceLogps:
    """Reference log-probs of ``groups`` (module docstring), from the cache when present."""
    from ..models.load import load_model, reference_context

    start = time.perf_counter()
    separate = None
    if reference not in ("auto", "policy"):
        if not Path(reference).exists():
            raise FileNotFoundError(f"reference model path does not exist: {reference}")
        separate = reference
    ref_model = load_model(separate, dtype=dtype)[0] if separate is not None else None
    use_cache = cache_dir != "none"
    key = path = None
    if use_cache:  # the content hash reads every weight: only worth it when it keys a cache
        weights = hash_weights(ref_model if ref_model is not None else model)
        key = cache_key(weights, hash_groups(groups),
                        settings={"dtype": dtype, "layout": LAYOUT_VERSION})
        path = (Path(cache_dir) if cache_dir else default_cache_dir()) / f"ref-{key}.pt"
    is_main = accelerator is None or accelerator.is_main_process
    cached = use_cache and path.exists()
    if use_cache and accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        # every process follows the main process's finding: one that saw the file only after
        # the main process wrote it must not skip the barrier below
        cached = broadcast_object_list([cached])[0]
    if cached:
        sums = torch.load(path, map_location="cpu", weights_only=True)
        return ReferenceLogps(sums, key, str(path), True, time.perf_counter() - start)
    sums = None
    if is_main or not use_cache:
        target = ref_model if ref_model is not None else model
        device = accelerator.device if accelerator is not None else None
        if ref_model is not None:
            ref_model.to(device or "cpu")
        ctx = reference_context(model) if ref_model is None else contextlib.nullcontext()
        with ctx:
            sums = compute_logps(target, groups, pad_id=pad_id, batch_groups=batch_groups,
                                 chunk_size=chunk_size, device=device)
        if use_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(sums, tmp)
            os.replace(tmp, path)  # atomic: a reader never sees a half-written file
    del ref_model
    if accelerator is not None and accelerator.num_processes > 1 and use_cache:
        accelerator.wait_for_everyone()
        if sums is None:
            sums = torch.load(path, map_location="cpu", weights_only=True)
    return ReferenceLogps(sums, key, str(path) if use_cache else None, False,
                          time.perf_counter() - start)
