"""Reward models: a transformer body plus a reward head, scored in prompt-shared packed batches.

* :mod:`~prefkit.rewards.heads` -- ``ScalarHead``, ``MultiHead`` (HelpSteer2 attributes),
  ``GPMHead`` + ``gpm_logit`` (general preference embeddings), ``OdinHead`` (quality/length),
  ``EnsembleHead`` (mean/min/std), ``build_head``.
* :mod:`~prefkit.rewards.model` -- ``RewardModel`` (``from_spec``, ``forward_packed``,
  ``forward_padded``, ``score``, ``save_pretrained``/``from_pretrained``) and ``RewardOutput``.
* :mod:`~prefkit.rewards.scoring` -- ``score_groups`` / ``score_pairs``: each prompt once;
  ``tokenize_groups`` / ``fit_group``: the token budget of a scored sequence (truncation counted).
* :mod:`~prefkit.rewards.inputs` -- ``read_score_input``: the rows ``prefkit rm score`` / ``rm
  eval`` read (any reader, checked field by field).
* :mod:`~prefkit.rewards.sources` -- reward sources for online training.
* :mod:`~prefkit.rewards.implicit` -- ``ImplicitReward``: a DPO policy as a reward model.
"""

from prefkit.rewards.heads import (
    HEADS,
    HELPSTEER2_ATTRIBUTES,
    EnsembleHead,
    GPMHead,
    MultiHead,
    OdinHead,
    RewardHead,
    ScalarHead,
    build_head,
    gpm_logit,
)
from prefkit.rewards.implicit import ImplicitReward
from prefkit.rewards.model import RewardModel, RewardOutput
from prefkit.rewards.scoring import score_groups, score_pairs

__all__ = [
    "HEADS",
    "HELPSTEER2_ATTRIBUTES",
    "EnsembleHead",
    "ImplicitReward",
    "GPMHead",
    "MultiHead",
    "OdinHead",
    "RewardHead",
    "RewardModel",
    "RewardOutput",
    "ScalarHead",
    "build_head",
    "gpm_logit",
    "score_groups",
    "score_pairs",
]
