"""Scoring prompt groups: each prompt computed once for its K responses.

:meth:`RewardModel.score` scores (prompt, response) pairs one response per group. Pairs,
RewardBench trios and best-of-K sets share a prompt between responses; :func:`score_groups`
packs each prompt with all its responses into one row (:func:`prefkit.models.packing.pack_groups`)
so the prompt is encoded once, and returns ``[N, Kmax]`` rewards in input order (NaN where a
set has fewer responses). Results do not depend on ``batch_size``.

Length budget (``max_length``, ``max_prompt_length``; :func:`fit_group`): every sequence
``prompt + response`` is at most ``max_length`` tokens. The prompt keeps its LAST tokens -- at
most ``max_prompt_length`` of them, or by default as many as leave room for the group's longest
response but never more than ``max_length - min(longest, max_length // 2)`` -- and each response
keeps its first tokens. Text is tokenized through a character window proportional to the budget
(:func:`prefkit.models.bounded.bound_text`), so memory is bounded by the budget whatever the
input's size. :func:`tokenize_groups` counts what was cut (:class:`Truncation`). The commands
default ``max_length`` to the model's ``max_position_embeddings``, at most
:data:`DEFAULT_MAX_LENGTH` (:func:`default_max_length`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..models.bounded import bound_text, model_max_length
from ..models.encoding import tokenize_example
from ..models.packing import PromptGroup, pack_groups

__all__ = ["DEFAULT_MAX_LENGTH", "Truncation", "default_max_length", "fit_group",
           "packed_outputs", "score_groups", "score_pairs", "score_prompt_groups",
           "tokenize_groups"]

DEFAULT_MAX_LENGTH = 4096
"""The largest default token budget of a scored sequence (prompt + one response)."""


@dataclass
class Truncation:
    """What fitting prompt groups to a token budget cut: ``prompts`` cut (from the left),
    ``responses`` cut (from the right), out of ``groups`` groups."""

    max_length: int | None
    max_prompt_length: int | None = None
    groups: int = 0
    prompts: int = 0
    responses: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for a human: what was cut, and the budget."""
        return (f"{self.prompts} of {self.groups} prompts and {self.responses} responses were "
                f"longer than the budget (max_length {self.max_length}"
                + (f", max_prompt_length {self.max_prompt_length}"
                   if self.max_prompt_length is not None else "")
                + "): prompts keep their last tokens, responses their first")


def default_max_length(model: Any, cap: int = DEFAULT_MAX_LENGTH) -> int:
    """The model's ``max_position_embeddings`` (of its first sub-module with a config), at most
    ``cap``: the token budget of a scored sequence when none is given."""
    return model_max_length(model, cap=cap)


def fit_group(group: PromptGroup, max_length: int, max_prompt_length: int | None = None
              ) -> tuple[PromptGroup, bool, int]:
    """Fit ``prompt + each response`` into ``max_length`` tokens (module docstring): returns
    ``(group, prompt was cut, number of responses cut)``. The prompt keeps its last
    ``b`` tokens with ``b = max_prompt_length`` or, by default,
    ``b = max_length - min(longest response, max_length // 2)`` (``1 <= b <= max_length - 1``);
    each response keeps its first ``max_length - len(prompt)`` tokens."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (a prompt and a response token), got "
                         f"{max_length}")
    longest = max(len(r) for r in group.response_ids)
    budget = (max_prompt_length if max_prompt_length is not None
              else max_length - min(longest, max_length // 2))
    budget = max(1, min(budget, max_length - 1))
    prompt = list(group.prompt_ids)
    prompt_cut = len(prompt) > budget
    if prompt_cut:
        prompt = prompt[len(prompt) - budget:]
    room = max_length - len(prompt)
    n_cut = sum(len(r) > room for r in group.response_ids)
    if not prompt_cut and not n_cut:
        return group, False, 0
    return PromptGroup(prompt, [list(r[:room]) for r in group.response_ids]), prompt_cut, n_cut


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


def tokenize_groups(tokenizer: Any, prompts: Sequence[Any], responses: Sequence[Sequence[Any]],
                    *, max_length: int | None = None, max_prompt_length: int | None = None,
                    chat_template: str = "auto") -> tuple[list[PromptGroup], Truncation]:
    """One :class:`PromptGroup` per prompt (its responses as completions, tokenized like training
    data: :func:`~prefkit.models.encoding.tokenize_example`, ``chat_template`` ``"auto"`` or
    ``"never"``; an empty completion is EOS), fitted to the budget (module docstring);
    ``max_length=None``: no budget."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} response lists")
    report = Truncation(max_length, max_prompt_length, groups=len(prompts))
    prompt_chars = (None if max_length is None
                    else min(max_length, max_prompt_length or max_length))
    groups = []
    for i, (prompt, resp) in enumerate(zip(prompts, responses, strict=True)):
        prompt = bound_text(tokenizer, prompt, prompt_chars, keep="tail")[0]
        resp = [bound_text(tokenizer, r, max_length, keep="head")[0] for r in resp]
        ex = tokenize_example(tokenizer, prompt, resp, index=i, chat_template=chat_template)
        fixed = [r if r else [tokenizer.eos_token_id] for r in ex.response_ids]
        group = PromptGroup(ex.prompt_ids or [fixed[0][0]], fixed)
        if max_length is not None:
            group, prompt_cut, n_cut = fit_group(group, max_length, max_prompt_length)
            report.prompts += prompt_cut
            report.responses += n_cut
        groups.append(group)
    return groups, report


def score_prompt_groups(model: Any, groups: Sequence[PromptGroup], *, pad_id: int,
                        batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``([N, Kmax] float32 rewards, NaN where absent; [N, Kmax] completion token counts)`` of
    tokenized groups, in input order."""
    if not groups:
        return torch.zeros(0, 0), torch.zeros(0, 0, dtype=torch.long)
    k_max = max(g.k for g in groups)
    rewards = torch.full((len(groups), k_max), float("nan"))
    lengths = torch.zeros(len(groups), k_max, dtype=torch.long)
    for idx, out in packed_outputs(model, groups, pad_id=pad_id, batch_size=batch_size):
        for row, i in enumerate(idx):
            k = groups[i].k
            rewards[i, :k] = out.rewards[row, :k].float().cpu()
            lengths[i, :k] = torch.tensor([len(r) for r in groups[i].response_ids])
    return rewards, lengths


def score_groups(model: Any, prompts: Sequence[Any], responses: Sequence[Sequence[Any]], *,
                 tokenizer: Any = None, batch_size: int = 16, with_lengths: bool = False,
                 max_length: int | None = None, max_prompt_length: int | None = None,
                 chat_template: str = "auto"
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``[N, Kmax]`` float32 rewards of ``responses[i]`` to ``prompts[i]`` (NaN where absent);
    with ``with_lengths`` also the ``[N, Kmax]`` completion token counts. ``max_length`` /
    ``max_prompt_length``: the token budget (module docstring; None: no budget).
    ``chat_template``: the prompt-encoding mode (:mod:`prefkit.models.encoding`)."""
    tokenizer = tokenizer or model.tokenizer
    if tokenizer is None:
        raise ValueError("score_groups needs a tokenizer (none given, none saved with the model)")
    groups, _ = tokenize_groups(tokenizer, prompts, responses, max_length=max_length,
                                max_prompt_length=max_prompt_length, chat_template=chat_template)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rewards, lengths = score_prompt_groups(model, groups, pad_id=pad, batch_size=batch_size)
    return (rewards, lengths) if with_lengths else rewards


def score_pairs(model: Any, prompts: Sequence[Any], chosen: Sequence[Any],
                rejected: Sequence[Any], **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of chosen and rejected responses, ``([N], [N])``, one forward per prompt."""
    rewards = score_groups(model, prompts, [[c, r] for c, r in zip(chosen, rejected,
                                                                   strict=True)], **kwargs)
    return rewards[:, 0], rewards[:, 1]
