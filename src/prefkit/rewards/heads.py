"""Reward heads on the backbone's final hidden state ``h [..., H]``.

Every head computes in float32 (the hidden state and the head weights are cast up, so a
bfloat16 backbone still gets float32 rewards) and returns a dict of tensors whose keys are
fields of :class:`prefkit.rewards.RewardOutput`; ``"rewards"`` (shape ``[...]``) is always
there. Heads are initialised like the reward head of Ziegler et al. 2019 ("Fine-Tuning
Language Models from Human Preferences", arXiv 1909.08593): weights ~ N(0, 1 / (H + 1)),
bias 0.

* :class:`ScalarHead` -- the Bradley-Terry reward model: ``r = w . h + b``.
* :class:`MultiHead` -- per-attribute regression (HelpSteer2, Wang et al. 2024, arXiv
  2406.08673): ``attr = W h + b`` (``[..., A]``) and ``r = sum_a w_a attr_a``.
* :class:`GPMHead` -- General Preference Model (Zhang et al. 2024, arXiv 2410.02197): a
  preference embedding per response; preferences come from :func:`gpm_logit`, there is no
  scalar reward.
* :class:`OdinHead` -- ODIN (Chen et al. 2024, arXiv 2402.07319): a quality reward and a
  length reward on shared features; the quality head is the reward.
* :class:`EnsembleHead` -- E independent linear heads; mean, min and std over members
  (Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization", arXiv
  2310.02743).

:func:`build_head` makes a head from its ``kind`` and the options its :meth:`config` returns,
which is how :class:`~prefkit.rewards.RewardModel` saves and restores heads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..losses.reward import gpm_logit

__all__ = [
    "HEADS",
    "HELPSTEER2_ATTRIBUTES",
    "EnsembleHead",
    "GPMHead",
    "MultiHead",
    "OdinHead",
    "RewardHead",
    "ScalarHead",
    "build_head",
    "gpm_logit",
]

#: The five HelpSteer2 attributes (the default of :class:`MultiHead` in ``from_spec``).
HELPSTEER2_ATTRIBUTES: tuple[str, ...] = (
    "helpfulness", "correctness", "coherence", "complexity", "verbosity",
)  # fmt: skip


def _linear(hidden_size: int, out: int) -> nn.Linear:
    """``Linear(H, out)`` with weights ~ N(0, 1/(H+1)) and zero bias (float32)."""
    layer = nn.Linear(hidden_size, out, dtype=torch.float32)
    nn.init.normal_(layer.weight, std=1.0 / math.sqrt(hidden_size + 1))
    nn.init.zeros_(layer.bias)
    return layer


def _apply32(layer: nn.Linear, h: torch.Tensor) -> torch.Tensor:
    """``layer(h)`` computed in float32 whatever the dtypes of ``h`` and the layer."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(h.float(), layer.weight.float(), bias)


class RewardHead(nn.Module):
    """Base class: ``forward(h [..., H]) -> {"rewards": [...], ...}``; ``config()`` holds the
    constructor options (JSON-serialisable) other than ``hidden_size``."""

    kind: str = ""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = int(hidden_size)

    def config(self) -> dict[str, Any]:
        """Constructor options, so ``build_head(kind, hidden_size, **config())`` rebuilds it."""
        return {}


class ScalarHead(RewardHead):
    """``r = w . h + b``: the scalar (Bradley-Terry) reward head."""

    kind = "scalar"

    def __init__(self, hidden_size: int) -> None:
        super().__init__(hidden_size)
        self.score = _linear(hidden_size, 1)

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"rewards": _apply32(self.score, h).squeeze(-1)}


class MultiHead(RewardHead):
    """Attribute regression (HelpSteer2 style, arXiv 2406.08673).

    ``attributes = W h + b`` (``[..., A]``, one prediction per named attribute) and the
    combined reward ``r = sum_a w_a * attributes_a`` with fixed weights ``w`` (a buffer, not
    trained; default uniform ``1/A``; negative weights are allowed, e.g. for verbosity).
    """

    kind = "multi"

    def __init__(
        self, hidden_size: int, names: Sequence[str], weights: Sequence[float] | None = None
    ) -> None:
        super().__init__(hidden_size)
        names = [str(n) for n in names]
        if not names:
            raise ValueError("MultiHead needs at least one attribute name")
        if len(set(names)) != len(names):
            raise ValueError(f"MultiHead attribute names must be distinct, got {names}")
        if weights is None:
            weights = [1.0 / len(names)] * len(names)
        if len(weights) != len(names):
            raise ValueError(f"{len(weights)} weights for {len(names)} attributes {names}")
        self.names = names
        self.attributes = _linear(hidden_size, len(names))
        self.register_buffer("weights", torch.tensor([float(w) for w in weights]))

    def config(self) -> dict[str, Any]:
        return {"names": list(self.names), "weights": [float(w) for w in self.weights]}

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        attributes = _apply32(self.attributes, h)
        rewards = (attributes * self.weights.float()).sum(-1)
        return {"rewards": rewards, "attributes": attributes}


class GPMHead(RewardHead):
    """General Preference Model head (Zhang et al. 2024, arXiv 2410.02197).

    ``e = normalize(W h + b)`` is a ``dim = 2k`` preference embedding of one response (one
    forward per response, however many comparisons follow). ``normalize`` is ``"none"``
    (default: the raw linear embedding), ``"block"`` (each 2-dim block L2-normalised to the unit
    circle, so block ``i`` contributes ``sin(theta_2 - theta_1)`` and the logit is bounded by
    ``k * scale``) or ``"vector"`` (unit L2 norm; logit bounded by ``scale``). Why "none" is the
    default: to order a cycle (rock < paper < scissors < rock) the three embeddings must wind
    once around the origin of a block; on the unit circle gradient descent cannot change the
    winding number, and in our runs (tests/test_train_reward.py) block-normalised heads stalled
    at 1/3 or 2/3 accuracy from 3 of 4 initialisations, while unnormalised ones reached 100%.
    :meth:`logit` gives ``scale * <R e1, e2>`` (:func:`gpm_logit`) with a learnable positive
    ``scale = exp(log_scale)`` (the paper's ``1 / beta``), initialised to ``init_scale``.

    There is no scalar reward: ``rewards`` is 0 (kept only so every head fills the same
    field); train and evaluate with :meth:`logit` on ``embeddings``.
    """

    kind = "gpm"

    def __init__(
        self,
        hidden_size: int,
        dim: int = 8,
        normalize: str = "none",
        init_scale: float = 1.0,
    ) -> None:
        super().__init__(hidden_size)
        if dim < 2 or dim % 2:
            raise ValueError(f"GPMHead dim must be a positive even number, got {dim}")
        if normalize not in ("block", "vector", "none"):
            raise ValueError("GPMHead normalize must be 'block', 'vector' or 'none', got "
                             f"{normalize!r}")
        if init_scale <= 0:
            raise ValueError(f"GPMHead init_scale must be > 0, got {init_scale}")
        self.dim = int(dim)
        self.normalize = normalize
        self.init_scale = float(init_scale)
        self.embed = _linear(hidden_size, self.dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "normalize": self.normalize, "init_scale": self.init_scale}

    @property
    def scale(self) -> torch.Tensor:
        """The positive logit scale ``exp(log_scale)``."""
        return self.log_scale.float().exp()

    def logit(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        """``scale * <R e1, e2>``: the log-odds that the response of ``e1`` beats ``e2``'s."""
        return gpm_logit(e1.float(), e2.float(), self.scale)

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        e = _apply32(self.embed, h)
        if self.normalize == "block":
            e = F.normalize(e.unflatten(-1, (-1, 2)), dim=-1).flatten(-2)
        elif self.normalize == "vector":
            e = F.normalize(e, dim=-1)
        return {"rewards": e.new_zeros(e.shape[:-1]), "embeddings": e}


class OdinHead(RewardHead):
    """ODIN disentangled reward (Chen et al. 2024, arXiv 2402.07319).

    Two linear heads on the same features: ``quality = w_q . h + b_q`` (the reward used for
    RL, ``rewards``) and ``length = w_l . h + b_l`` (``length_rewards``). Training
    (:mod:`prefkit.losses`) fits ``quality + length`` to the preferences while decorrelating
    ``quality`` from response length and correlating ``length`` with it, and keeps the two
    weight vectors orthogonal; :meth:`orthogonality` returns ``|w_q . w_l|`` for that term.
    """

    kind = "odin"

    def __init__(self, hidden_size: int) -> None:
        super().__init__(hidden_size)
        self.quality = _linear(hidden_size, 1)
        self.length = _linear(hidden_size, 1)

    def orthogonality(self) -> torch.Tensor:
        """``|w_q . w_l|``, the ODIN orthogonality penalty on the two heads' weights."""
        return (self.quality.weight.float() * self.length.weight.float()).sum().abs()

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        quality = _apply32(self.quality, h).squeeze(-1)
        length = _apply32(self.length, h).squeeze(-1)
        return {"rewards": quality, "length_rewards": length}


class EnsembleHead(RewardHead):
    """``n`` independent linear heads on shared features (each initialised from its own seed
    ``seed + i``) for conservative reward optimisation (Coste et al. 2023, arXiv 2310.02743).

    Outputs ``members [..., n]``, ``rewards`` = mean over members, ``rewards_min`` = the
    worst-case member (WCO) and ``rewards_std`` = the sample standard deviation over members
    (``torch.std``, correction 1; 0 when ``n == 1``), an uncertainty estimate for
    ``mean - lambda * std`` (UWO).
    """

    kind = "ensemble"

    def __init__(self, hidden_size: int, n: int = 4, seed: int = 0) -> None:
        super().__init__(hidden_size)
        if n < 1:
            raise ValueError(f"EnsembleHead needs n >= 1 members, got {n}")
        self.seed = int(seed)
        members = []
        for i in range(n):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + i)
                members.append(_linear(hidden_size, 1))
        self.members = nn.ModuleList(members)

    @property
    def n(self) -> int:
        """Number of members."""
        return len(self.members)

    def config(self) -> dict[str, Any]:
        return {"n": self.n, "seed": self.seed}

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        members = torch.cat([_apply32(m, h) for m in self.members], dim=-1)
        std = members.std(-1) if self.n > 1 else torch.zeros_like(members[..., 0])
        return {
            "rewards": members.mean(-1),
            "members": members,
            "rewards_min": members.min(-1).values,
            "rewards_std": std,
        }


HEADS: dict[str, type[RewardHead]] = {
    cls.kind: cls for cls in (ScalarHead, MultiHead, GPMHead, OdinHead, EnsembleHead)
}


def build_head(kind: str, hidden_size: int, **options: Any) -> RewardHead:
    """Make a head by kind (``scalar``, ``multi``, ``gpm``, ``odin``, ``ensemble``)."""
    if kind not in HEADS:
        raise ValueError(f"unknown reward head {kind!r}; choose from {sorted(HEADS)}")
    return HEADS[kind](hidden_size, **options)
