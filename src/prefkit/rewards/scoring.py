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

__all__ = ["score_groups", "score_pairs"]


@torch.no_grad()
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
    order = sorted(range(len(groups)), key=lambda i: groups[i].packed_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            chunk = [groups[i] for i in idx]
            batch = pack_groups(chunk, max_length=max(g.packed_length for g in chunk),
                                pad_id=pad).to(device)
            out = model(batch)
            for row, i in enumerate(idx):
                k = groups[i].k
                rewards[i, :k] = out.rewards[row, :k].float().cpu()
                lengths[i, :k] = batch.completion_lengths[row, :k].cpu()
    finally:
        model.train(was_training)
    return (rewards, lengths) if with_lengths else rewards


def score_pairs(model: Any, prompts: Sequence[Any], chosen: Sequence[Any],
                rejected: Sequence[Any], **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of chosen and rejected responses, ``([N], [N])``, one forward per prompt."""
    rewards = score_groups(model, prompts, [[c, r] for c, r in zip(chosen, rejected,
                                                                   strict=True)], **kwargs)
    return rewards[:, 0], rewards[:, 1]
