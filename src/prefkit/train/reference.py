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

Under FSDP2 (``sharding="fsdp2"``, several processes) no process holds a full reference model on
its accelerator: the pass runs on a SHARDED model (:func:`prefkit.train.sharding.shard_model`,
the units the trainer uses, no optimizer, no mixed-precision cast so the numbers are the
unsharded pass's): a separate checkpoint is loaded on the CPU and sharded in place; ``"auto"``
is a sharded copy of the policy as loaded (with LoRA, that copy with its adapters disabled).
A sharded forward is a collective, so :func:`compute_logps_sharded` gives every process the
same number of forwards and each computes its share of the batches; the rows are then summed
over processes, so every process holds the one-process tensor. The main process writes the
cache.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..cache_dir import cache_root
from ..models.attention import uses_flex
from ..models.logprobs import sequence_logps
from ..models.packing import PromptGroup, pack_groups
from .fingerprint import cache_key, hash_groups, hash_weights

__all__ = ["ReferenceLogps", "compute_logps", "compute_logps_sharded", "default_cache_dir",
           "reference_logps"]

LAYOUT_VERSION = "packed-v1"
"""Bumped whenever the way log-probs are computed changes (invalidates old caches)."""


def default_cache_dir() -> Path:
    """``$PREFKIT_CACHE/reference`` or ``~/.cache/prefkit/reference``."""
    return cache_root() / "reference"


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
            sums = _batch_logps(model, chunk, pad_id=pad_id, chunk_size=chunk_size,
                                device=device, mask_dtype=mask_dtype)
            out[start:start + len(chunk), : sums.shape[1]] = sums
    finally:
        model.train(was_training)
    return out


def _batch_logps(model: torch.nn.Module, chunk: list[PromptGroup], *, pad_id: int,
                 chunk_size: int, device: torch.device | str,
                 mask_dtype: torch.dtype | None) -> torch.Tensor:
    """``[len(chunk), K]`` summed log-probs of one batch of groups (one packed forward)."""
    capacity = max(g.packed_length for g in chunk)
    batch = pack_groups(chunk, max_length=capacity, pad_id=pad_id,
                        mask_dtype=mask_dtype).to(device)
    return sequence_logps(model, batch, chunk_size=chunk_size).sum.float().cpu()


@torch.no_grad()
def compute_logps_sharded(model: torch.nn.Module, groups: Sequence[PromptGroup], *,
                          pad_id: int, rank: int, world_size: int, batch_groups: int = 16,
                          chunk_size: int = 1024,
                          device: torch.device | str | None = None) -> torch.Tensor:
    """:func:`compute_logps` for an FSDP2-sharded ``model`` (a collective: every process of the
    default process group calls it with the same ``groups``).

    The batches are :func:`compute_logps`'s (groups ``[b*B, (b+1)*B)``); batch ``b`` runs on
    process ``b % W``. A sharded forward all-gathers every unit's parameters, so every process
    runs ``ceil(n_batches / W)`` forwards: one that owns fewer batches repeats its first one
    (or batch 0) and discards the result. Each process fills only its own rows, zeros
    elsewhere; an ``all_reduce(SUM)`` then gives every process the full tensor, exactly: each
    entry is non-zero on at most one process and ``x + 0 = x`` in floating point. Each row is
    computed in the same batch, of the same shape, as in the one-process pass.
    """
    import torch.distributed as dist

    k_max = max(g.k for g in groups)
    out = torch.zeros(len(groups), k_max)
    device = device or next(model.parameters()).device
    starts = list(range(0, len(groups), batch_groups))
    mine = starts[rank::world_size]
    rounds = -(-len(starts) // world_size)
    was_training = model.training
    mask_dtype = None if uses_flex(model) else torch.float32
    model.eval()
    try:
        for i in range(rounds):
            start = mine[i] if i < len(mine) else (mine[0] if mine else 0)
            chunk = list(groups[start:start + batch_groups])
            sums = _batch_logps(model, chunk, pad_id=pad_id, chunk_size=chunk_size,
                                device=device, mask_dtype=mask_dtype)
            if i < len(mine):  # a padding forward's result is discarded
                out[start:start + len(chunk), : sums.shape[1]] = sums
    finally:
        model.train(was_training)
    total = out.to(device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.cpu()


def reference_logps(model: torch.nn.Module, groups: Sequence[PromptGroup], *,
                    reference: str = "auto", cache_dir: str | None = None, pad_id: int = 0,
                    chunk_size: int = 1024, accelerator: Any = None, dtype: str = "float32",
                    batch_groups: int = 16, sharding: str = "ddp") -> ReferenceLogps:
    """Reference log-probs of ``groups`` (module docstring), from the cache when present.
    ``sharding="fsdp2"`` with several processes: the pass runs on a sharded reference
    (:func:`_sharded_pass`)."""
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
    if sharding == "fsdp2" and accelerator is not None and accelerator.num_processes > 1:
        sums = _sharded_pass(model, ref_model, groups, accelerator=accelerator, pad_id=pad_id,
                             chunk_size=chunk_size, batch_groups=batch_groups)
        # a sharded module and its FSDP state refer to each other (hooks): only the cycle
        # collector frees the shards, so collect now, before training allocates its own
        del ref_model
        gc.collect()
        if use_cache and is_main:
            _write_cache(sums, path)
        return ReferenceLogps(sums, key, str(path) if use_cache else None, False,
                              time.perf_counter() - start)
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
            _write_cache(sums, path)
    del ref_model
    if accelerator is not None and accelerator.num_processes > 1 and use_cache:
        accelerator.wait_for_everyone()
        if sums is None:
            sums = torch.load(path, map_location="cpu", weights_only=True)
    return ReferenceLogps(sums, key, str(path) if use_cache else None, False,
                          time.perf_counter() - start)


def _write_cache(sums: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(sums, tmp)
    os.replace(tmp, path)  # atomic: a reader never sees a half-written file


def _sharded_pass(model: torch.nn.Module, ref_model: torch.nn.Module | None,
                  groups: Sequence[PromptGroup], *, accelerator: Any, pad_id: int,
                  chunk_size: int, batch_groups: int) -> torch.Tensor:
    """Reference log-probs on a sharded reference (module docstring): ``ref_model`` (loaded
    on the CPU) sharded in place, else a sharded copy of the policy ``model`` (adapters
    disabled); the sharded model is freed when the pass returns."""
    from ..models.load import reference_context
    from .sharding import shard_model, sharded_copy

    shard = {"device": accelerator.device, "world_size": accelerator.num_processes,
             "mixed_precision": "no", "reshard_after_forward": True}
    if ref_model is not None:
        target = shard_model(ref_model.to("cpu"), **shard)
        ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
    else:
        target = sharded_copy(model, **shard)
        ctx = reference_context(target)
    with ctx:
        sums = compute_logps_sharded(target, groups, pad_id=pad_id,
                                     rank=accelerator.process_index,
                                     world_size=accelerator.num_processes,
                                     batch_groups=batch_groups, chunk_size=chunk_size,
                                     device=accelerator.device)
    return sums
