"""Scoring prompt groups: each prompt computed once for its K responses.

:meth:`RewardModel.score` scores (prompt, response) pairs one response per group. Pairs,
RewardBench trios and best-of-K sets share a prompt between responses; :func:`score_groups`
packs each prompt with all its responses into one row (:func:`prefkit.models.packing.pack_groups`)
so the prompt is encoded once, and returns ``[N, Kmax]`` rewards in input order (NaN where a
set has fewer responses). Results do not depend on ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..models.packing import PromptGroup, pack_groups

__all__ = ["packed_outputs", "score_groups", "score_pairs"]


def packed_outputs(model: Any, groups: Sequence[PromptGroup], *, pad_id: int,
                   batch_size: int = 16):
    """Run ``model`` (anything whose forward takes a :class:`PackedBatch` and returns a
    :class:`~prefkit.rewards.RewardOutput`) over ``groups`` without grad, in eval mode (the
    previous mode is restored): longest groups first, ``batch_size`` groups per batch, each
    batch as long as its longest group. Yields ``(indices, output)`` per batch, ``indices`` the
    positions in ``groups`` of the batch's rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(groups)), key=lambda i: -groups[i].packed_length)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                chunk = [groups[i] for i in idx]
                batch = pack_groups(chunk, max_length=max(g.packed_length for g in chunk),
                                    pad_id=pad_id, mask_dtype=torch.bool)
                yield idx, model(batch.to(device))
    finally:
        model.train(was_training)


def score_groups(model: Any, prompts: Sequence[Any], responses: Sequence[Sequence[Any]], *,
                 tokenizer: Any = None, batch_size: int = 16,
                 with_lengths: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``[N, Kmax]`` float32 rewards of ``responses[i]`` to ``prompts[i]`` (NaN where absent);
    with ``with_lengths`` also the ``[N, Kmax]`` completion token counts."""
    from ..train.preference_data import tokenize_example

    tokenizer = tokenizer or model.tokenizer
    if tokenizer is None:
        raise ValueError("score_groups needs a tokenizer (none given, none saved with the model)")
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} response lists")
    groups = []
    for i, (prompt, resp) in enumerate(zip(prompts, responses, strict=True)):
        ex = tokenize_example(tokenizer, prompt, list(resp), index=i)
        fixed = [r if r else [tokenizer.eos_token_id] for r in ex.response_ids]
        groups.append(PromptGroup(ex.prompt_ids or [fixed[0][0]], fixed))
    k_max = max(g.k for g in groups)
    rewards = torch.full((len(groups), k_max), float("nan"))
    lengths = torch.zeros(len(groups), k_max, dtype=torch.long)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for idx, out in packed_outputs(model, groups, pad_id=pad, batch_size=batch_size):
        for row, i in enumerate(idx):
            k = groups[i].k
            rewards[i, :k] = out.rewards[row, :k].float().cpu()
            lengths[i, :k] = torch.tensor([len(r) for r in groups[i].response_ids])
    return (rewards, lengths) if with_lengths else rewards


def score_pairs(model: Any, prompts: Sequence[Any], chosen: Sequence[Any],
                rejected: Sequence[Any], **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of chosen and rejected responses, ``([N], [N])``, one forward per prompt."""
    rewards = score_groups(model, prompts, [[c, r] for c, r in zip(chosen, rejected,
                                                                   strict=True)], **kwargs)
    return rewards[:, 0], rewards[:, 1]
