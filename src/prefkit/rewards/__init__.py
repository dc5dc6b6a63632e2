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

Public names are imported on first use (PEP 562): ``prefkit.rewards.verifiable`` and the reward
executor's workers do not load torch and transformers through this package.
"""

from __future__ import annotations

from prefkit.importing import lazy_exports

_WHERE = {
    **dict.fromkeys(("HEADS", "HELPSTEER2_ATTRIBUTES", "EnsembleHead", "GPMHead", "MultiHead",
                     "OdinHead", "RewardHead", "ScalarHead", "build_head", "gpm_logit"), "heads"),
    "ImplicitReward": "implicit",
    "RewardModel": "model",
    "RewardOutput": "model",
    "score_groups": "scoring",
    "score_pairs": "scoring",
}
"""Public name -> the submodule defining it."""

__all__ = sorted(_WHERE)


__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
