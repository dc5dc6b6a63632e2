"""Simulated LLM judges for the lab: known gold, known biases, so corrections can be measured.

A :class:`SimulatedJudge` decides like the lab's :class:`~prefkit.lab.annotators.SimulatedAnnotator`
(Bradley-Terry noise around a gold reward, optional ties and label flips) with the biases LLM
judges are documented to have:

- **noise**: Bradley-Terry sampling at ``temperature`` ``T`` (a sampling judge), and/or a fixed
  per-pair misperception ``e ~ N(0, perception_sd^2)`` of the utility difference -- the same
  whichever response is shown first, drawn from the pair's content -- which is how a greedy
  (temperature-0) LLM judge errs: the same mistake every time it sees the pair;
- **position**: ``first_preference`` is P(the first response wins) when the two are equal in
  gold and length (0.5 = none). It is a utility bonus ``b`` for the first response, set so a
  gold tie gives exactly that probability: ``b = T logit(first_preference)`` with sampling
  noise only, ``b = perception_sd Phi^-1(first_preference)`` for a greedy judge (``T = 0``),
  and the root of ``E_e[sigmoid((e + b) / T)] = first_preference`` with both;
- **length**: ``length_bias`` per relative word-length difference (as the annotators');
- **self-preference**: ``self_bias`` added to the utility of a response written by a model of
  the judge's ``family`` (``JudgeRequest.models``; a model belongs to a family when its name
  starts with it, case-insensitive);
- **unparsable output**: with probability ``unparsed_rate`` the judgment is ``unparsed`` (as
  if the model's text held no verdict);

and grades ``score = clip(round(center + slope * utility + noise_sd * N(0, 1)), scale)``.

Every random draw comes from a generator seeded by the judge's seed and the request's content
(:func:`prefkit.judges.base.cache_key`), so a judgment does not depend on how many requests run
at once or in which order, and a cached re-run equals a fresh one.

:func:`lab_judge_pool` builds a pool of differently biased judges on a lab gold reward. (They are
part of the lab, built on its annotators, so they live here rather than in ``prefkit.judges``,
which the lab imports; this module was ``prefkit.judges.simulated``.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..judges.base import JudgeRequest, Judgment, cache_key
from .annotators import GoldFn, SimulatedAnnotator

__all__ = ["LAB_JUDGE_TEMPERATURE", "SimulatedJudge", "lab_judge_pool"]

LAB_JUDGE_TEMPERATURE = 0.1
"""Noise of the ``lab:TASK:NAME`` judges (:func:`prefkit.specs.judge_from_spec`): the lab
annotators' (``LabConfig.pool_scale / 3``; lab gold rewards span about 0-1)."""


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _position_bonus(q: float, temperature: float, perception_sd: float) -> float:
    """The first response's utility bonus ``b`` that makes a gold tie go first with
    probability ``q`` (module docstring)."""
    from scipy.special import expit, ndtri

    if perception_sd == 0:
        return temperature * _logit(q)
    if temperature == 0:
        return perception_sd * float(ndtri(q))
    nodes, weights = np.polynomial.hermite_e.hermegauss(64)  # E over e ~ N(0, sd^2)
    weights = weights / weights.sum()

    def p_first(b: float) -> float:
        return float(weights @ expit((perception_sd * nodes + b) / temperature))

    low, high = -50.0 * (temperature + perception_sd), 50.0 * (temperature + perception_sd)
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if p_first(mid) < q else (low, mid)
    return 0.5 * (low + high)


@dataclass
class SimulatedJudge:
    """A lab judge (module docstring). ``temperature > 0``; ``flip_rate``, ``tie_margin`` and
    ``tie_prob`` as the annotators'."""

    name: str
    gold: GoldFn
    temperature: float = 1.0
    first_preference: float = 0.5
    length_bias: float = 0.0
    self_bias: float = 0.0
    family: str | None = None
    flip_rate: float = 0.0
    tie_margin: float = 0.0
    tie_prob: float = 1.0
    unparsed_rate: float = 0.0
    perception_sd: float = 0.0
    scale: tuple[float, float] = (1.0, 10.0)
    center: float = 5.5
    slope: float = 1.0
    noise_sd: float = 1.0
    seed: int = 0
    _annotator: SimulatedAnnotator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.perception_sd < 0:
            raise ValueError(f"judge {self.name!r}: temperature and perception_sd must be >= 0")
        if self.temperature == 0 and self.perception_sd == 0 and self.first_preference != 0.5:
            raise ValueError(f"judge {self.name!r}: a judge without noise (temperature 0, "
                             "perception_sd 0) cannot prefer the first position with a "
                             "probability: give it noise")
        if not 0.0 < self.first_preference < 1.0:
            raise ValueError(f"judge {self.name!r}: first_preference must be in (0, 1)")
        if not 0.0 <= self.unparsed_rate <= 1.0:
            raise ValueError(f"judge {self.name!r}: unparsed_rate must be in [0, 1]")
        self._annotator = SimulatedAnnotator(
            id=self.name, gold=self.gold, temperature=self.temperature,
            flip_rate=self.flip_rate,
            position_bias=_position_bonus(self.first_preference, self.temperature,
                                          self.perception_sd),
            length_bias=self.length_bias, tie_margin=self.tie_margin, tie_prob=self.tie_prob,
            seed=self.seed)

    def config(self) -> dict[str, Any]:
        return {"backend": "simulated", "name": self.name, "seed": self.seed,
                "temperature": self.temperature, "first_preference": self.first_preference,
                "length_bias": self.length_bias, "self_bias": self.self_bias,
                "family": self.family, "flip_rate": self.flip_rate,
                "tie_margin": self.tie_margin, "tie_prob": self.tie_prob,
                "unparsed_rate": self.unparsed_rate, "perception_sd": self.perception_sd,
                "scale": list(self.scale),
                "center": self.center, "slope": self.slope, "noise_sd": self.noise_sd}

    def is_own(self, model: str | None) -> bool:
        """Whether ``model`` belongs to the judge's family."""
        return bool(self.family and model and model.lower().startswith(self.family.lower()))

    def _rng(self, request: JudgeRequest) -> np.random.Generator:
        digest = cache_key({"seed": self.seed, "name": self.name}, request)
        return np.random.default_rng(int(digest[:16], 16))

    def _misperception(self, request: JudgeRequest) -> dict[str, float]:
        """Per response, half the pair's fixed misperception (opposite signs), drawn from the
        content in a canonical order: the same whichever response is shown first."""
        if not self.perception_sd or request.task != "compare":
            return {}
        low, high = sorted(request.responses)
        digest = cache_key({"seed": self.seed, "name": self.name, "misperception": True},
                           JudgeRequest("compare", request.prompt, (low, high)))
        e = self.perception_sd * np.random.default_rng(int(digest[:16], 16)).normal()
        return {low: e / 2, high: -e / 2} if low != high else {}

    def _with_biases(self, request: JudgeRequest) -> SimulatedAnnotator:
        bonus = self._misperception(request)
        if self.self_bias and request.models is not None:
            for r, m in zip(request.responses, request.models, strict=True):
                if self.is_own(m):
                    bonus[r] = bonus.get(r, 0.0) + self.self_bias
        if not bonus:
            return self._annotator
        base = self.gold
        return replace(self._annotator, gold=lambda p, r: base(p, r) + bonus.get(r, 0.0))

    async def judge(self, request: JudgeRequest) -> Judgment:
        return self.judge_sync(request)

    def judge_sync(self, request: JudgeRequest) -> Judgment:
        rng = self._rng(request)
        if rng.random() < self.unparsed_rate:
            return Judgment.unparsed(request.task, "unparsed: no verdict found (simulated)",
                                     raw="(simulated output without a verdict)")
        annotator = self._with_biases(request)
        if request.task == "compare":
            record = annotator.compare(request.prompt, *request.responses, rng=rng)
            verdict = {"a": "first", "b": "second"}.get(record.outcome.value, "tie")
            return Judgment(task="compare", verdict=verdict,
                            extra={"p_first_model": record.metadata["p_a"]})
        if request.task == "grade":
            utility = annotator.utilities(request.prompt, request.responses)["utility"][0]
            low, high = self.scale
            score = self.center + self.slope * utility + self.noise_sd * rng.normal()
            return Judgment(task="grade", score=float(min(max(round(score), low), high)),
                            extra={"scale": [low, high]})
        ranking = annotator.rank(request.prompt, request.responses, rng=rng)
        return Judgment(task="rank", ranking=[list(tier) for tier in ranking.tiers])


def lab_judge_pool(gold: GoldFn, *, temperature: float = 1.0, seed: int = 0,
                   family: str = "lab-policy") -> list[SimulatedJudge]:
    """Four simulated LLM judges on one gold reward, with the biases the literature reports:
    ``fair`` (noise only), ``positional`` (first response preferred 65% of the time on gold
    ties), ``verbose`` (prefers longer responses) and ``self_preferring`` (prefers responses
    of ``family`` models, e.g. the policy it is judging for RLAIF)."""
    return [
        SimulatedJudge("fair", gold, temperature=temperature, seed=seed),
        SimulatedJudge("positional", gold, temperature=temperature, first_preference=0.65,
                       seed=seed + 1),
        SimulatedJudge("verbose", gold, temperature=temperature, length_bias=1.0 * temperature,
                       seed=seed + 2),
        SimulatedJudge("self_preferring", gold, temperature=temperature,
                       self_bias=1.0 * temperature, family=family, seed=seed + 3),
    ]
