"""The implicit reward of a DPO-trained policy, behind the reward-model interface.

DPO's policy defines a reward (Rafailov et al. 2023, "Direct Preference Optimization: Your
Language Model is Secretly a Reward Model", arXiv 2305.18290)::

    r(x, y) = beta * (log pi(y | x) - log pi_ref(y | x))

:class:`ImplicitReward` wraps a policy (and optionally its reference) so that everything that
takes a reward model -- :func:`~prefkit.rewards.scoring.score_groups`, ``prefkit rm eval``,
best-of-N -- takes a DPO policy too. ``normalize``: ``"sum"`` (the formula), ``"mean"`` (divided
by the number of completion tokens, SimPO's length-normalised form) . Without a reference the
reward is ``beta * log pi(y | x)`` (reference-free, as SimPO/ORPO policies are scored).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.logprobs import sequence_logps
from ..models.packing import PackedBatch
from .model import RewardOutput

__all__ = ["ImplicitReward"]


class ImplicitReward(nn.Module):
    """``beta * (log pi - log pi_ref)`` of completions, as a reward model (module docstring)."""

    head_kind = "implicit"

    def __init__(self, policy: nn.Module, reference: nn.Module | None = None, *,
                 beta: float = 0.1, normalize: str = "sum", tokenizer: Any = None) -> None:
        super().__init__()
        if normalize not in ("sum", "mean"):
            raise ValueError(f"normalize must be 'sum' or 'mean', got {normalize!r}")
        self.policy = policy
        self.reference = reference
        self.beta = beta
        self.normalize = normalize
        self.tokenizer = tokenizer

    @classmethod
    def from_paths(cls, policy: str, reference: str | None = None, **kwargs: Any
                   ) -> ImplicitReward:
        """Load the policy (and reference) checkpoints with :func:`prefkit.models.load_model`."""
        from ..models.load import load_model

        model, tokenizer = load_model(policy)
        ref = load_model(reference)[0] if reference else None
        return cls(model, ref, tokenizer=tokenizer, **kwargs)

    def _logps(self, model: nn.Module, batch: PackedBatch) -> torch.Tensor:
        lp = sequence_logps(model, batch)
        return lp.mean if self.normalize == "mean" else lp.sum

    def forward(self, batch: PackedBatch) -> RewardOutput:
        logps = self._logps(self.policy, batch)
        if self.reference is not None:
            logps = logps - self._logps(self.reference, batch)
        mask = batch.response_mask
        rewards = (self.beta * logps.float()).masked_fill(~mask, 0.0)
        return RewardOutput(rewards=rewards, mask=mask)
