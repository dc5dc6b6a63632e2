"""Simulated annotators with a known gold preference, and pools of differently biased ones.

A :class:`SimulatedAnnotator` judges responses by a **gold reward** ``g(prompt, response)`` (the
lab's known truth) distorted by the biases real annotators show. For a pair shown as
``(a, b)`` -- ``a`` first -- it works with the *biased utility difference*::

    x = (g_a - g_b) + position_bias + length_bias * (len_a - len_b) / max(len_a, len_b)

where lengths are word counts (``max(..)`` is at least 1). The biases are in the same units as
the gold reward, so they keep their weight against the gold when the temperature changes. The
judgement is drawn in three steps:

1. **tie** -- if ``tie_margin > 0`` and ``|g_a - g_b| < tie_margin``, the annotator says "tie"
   with probability ``p_tie = tie_prob * (1 - |g_a - g_b| / tie_margin)`` (certain-ish for
   equal gold, fading linearly to 0 at the margin). Ties never happen at or beyond the margin.
2. **Bradley-Terry decision** -- otherwise ``a`` wins with probability
   ``p = sigmoid(x / temperature)``; at ``temperature == 0`` the decision is the sign of ``x``
   (a fair coin when ``x == 0``), i.e. the deterministic gold order when there are no biases.
3. **label flip** -- the decisive label is then flipped with probability ``flip_rate``
   (AlpacaFarm adds 25% such flips to its simulated *training* labels).

So ``P(A) = (1 - p_tie) * ((1 - f) p + f (1 - p))``, ``P(B) = (1 - p_tie) - P(A)``,
``P(tie) = p_tie`` (:meth:`SimulatedAnnotator.outcome_probs`).

Rankings (:meth:`SimulatedAnnotator.rank`) use the same utilities on K responses,
``u_i = g_i + position_bias * [i == 0] + length_bias * len_i / max_j len_j`` (for K = 2 the
difference ``u_0 - u_1`` is exactly ``x`` above), and sample a Plackett-Luce order with weights
``exp(u_i / temperature)`` (Gumbel-max trick: sort ``u_i / T + Gumbel``; at T = 0 sort ``u``).
With probability ``flip_rate`` one uniformly chosen adjacent pair of the order is swapped (for
K = 2 this is exactly the pairwise flip). Ties: walking the order best first, a response joins
the current tier when the tier's gold spread including it stays below ``tie_margin`` and a
draw with the pairwise tie probability ``p_tie`` against the previous response succeeds.

Ratings (:meth:`SimulatedAnnotator.rate`) are true attribute values plus Gaussian noise,
clipped to the scale.

Every random draw comes from a ``numpy.random.Generator``: the annotator's own (seeded with
``seed``) or one passed in -- an :class:`AnnotatorPool` passes its own, so a pool's output is
reproducible from the pool's seed alone. Each record's ``metadata`` stores the gold rewards and
bias terms that produced it, so experiments can audit every label.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..data.records import (
    Annotator,
    AnnotatorKind,
    Comparison,
    Outcome,
    Ranking,
    Rating,
    Record,
    Text,
    text_content,
)
from ..data.stats import feedback_stats

__all__ = [
    "PERSONAS",
    "AnnotatorPool",
    "GoldFn",
    "SimulatedAnnotator",
    "agreement",
    "alpacafarm_pool",
    "word_length",
]

GoldFn = Callable[[Text, Text], float]
"""Gold reward ``g(prompt, response)``: the lab's known truth (higher is better)."""
AttributesFn = Callable[[Text, Text], Mapping[str, float]]
"""True attribute scores of ``(prompt, response)``, e.g. ``{"helpfulness": 3.2}``."""


def word_length(text: Text) -> int:
    """Length in words (whitespace-split) of a text or a conversation's contents."""
    return len(text_content(text).split())


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


@dataclass
class SimulatedAnnotator:
    """An annotator that prefers by a gold reward, with Bradley-Terry noise and biases.

    Attributes (formulas in the module docstring):
        id: annotator id written to every record (``AnnotatorKind.SIMULATED``).
        gold: gold reward ``g(prompt, response)``.
        temperature: Bradley-Terry temperature ``T >= 0``; ``P(a > b) = sigmoid(x / T)``,
            0 = deterministic.
        flip_rate: probability of flipping a decisive label after the decision.
        position_bias: utility bonus of the first-shown response (``response_a``; index 0
            of a ranking).
        length_bias: utility bonus per relative word-length difference
            ``(len_a - len_b) / max(len_a, len_b)``; negative = prefers short.
        tie_margin: gold differences ``|g_a - g_b|`` below it may be judged a tie.
        tie_prob: tie probability at equal gold; it falls linearly to 0 at ``tie_margin``.
        rating_noise_sd: default standard deviation of rating noise (:meth:`rate`).
        seed: seed of the annotator's own generator (used when no ``rng`` is passed).
    """

    id: str
    gold: GoldFn
    temperature: float = 1.0
    flip_rate: float = 0.0
    position_bias: float = 0.0
    length_bias: float = 0.0
    tie_margin: float = 0.0
    tie_prob: float = 1.0
    rating_noise_sd: float = 0.5
    seed: int = 0
    rng: np.random.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"annotator {self.id!r}: temperature must be >= 0")
        if not 0.0 <= self.flip_rate <= 1.0:
            raise ValueError(f"annotator {self.id!r}: flip_rate must be in [0, 1]")
        if self.tie_margin < 0:
            raise ValueError(f"annotator {self.id!r}: tie_margin must be >= 0")
        if not 0.0 <= self.tie_prob <= 1.0:
            raise ValueError(f"annotator {self.id!r}: tie_prob must be in [0, 1]")
        if self.rating_noise_sd < 0:
            raise ValueError(f"annotator {self.id!r}: rating_noise_sd must be >= 0")
        self.rng = np.random.default_rng(self.seed)

    def reset(self, seed: int | None = None) -> None:
        """Restart the annotator's own generator (from ``seed``, default the annotator's)."""
        if seed is not None:
            self.seed = seed
        self.rng = np.random.default_rng(self.seed)

    @property
    def annotator(self) -> Annotator:
        """The :class:`Annotator` written to records."""
        return Annotator(self.id, AnnotatorKind.SIMULATED)

    # -- pairwise -------------------------------------------------------------------------------

    def _tie_probability(self, gold_diff: float) -> float:
        """``tie_prob * (1 - |dg| / tie_margin)`` inside the margin, else 0."""
        d = abs(gold_diff)
        if self.tie_margin <= 0 or d >= self.tie_margin:
            return 0.0
        return self.tie_prob * (1.0 - d / self.tie_margin)

    def _decision_probability(self, x: float) -> float:
        """``sigmoid(x / T)``; for ``T == 0`` the step function (1/2 at ``x == 0``)."""
        if self.temperature == 0:
            return 1.0 if x > 0 else 0.0 if x < 0 else 0.5
        return _sigmoid(x / self.temperature)

    def _pair_terms(self, prompt: Text, response_a: Text, response_b: Text) -> dict[str, Any]:
        gold_a = float(self.gold(prompt, response_a))
        gold_b = float(self.gold(prompt, response_b))
        len_a, len_b = word_length(response_a), word_length(response_b)
        length_term = self.length_bias * (len_a - len_b) / max(len_a, len_b, 1)
        x = gold_a - gold_b + self.position_bias + length_term
        p_decision = self._decision_probability(x)
        p_tie = self._tie_probability(gold_a - gold_b)
        f = self.flip_rate
        p_a = (1.0 - p_tie) * ((1.0 - f) * p_decision + f * (1.0 - p_decision))
        return {
            "gold_a": gold_a,
            "gold_b": gold_b,
            "len_a": len_a,
            "len_b": len_b,
            "position_term": self.position_bias,
            "length_term": length_term,
            "utility_diff": x,
            "temperature": self.temperature,
            "p_decision_a": p_decision,
            "p_tie": p_tie,
            "flip_rate": f,
            "p_a": p_a,
        }

    def outcome_probs(self, prompt: Text, response_a: Text, response_b: Text
                      ) -> dict[str, float]:
        """``{"a": P(A), "b": P(B), "tie": P(tie)}`` for the pair shown as ``(a, b)``."""
        t = self._pair_terms(prompt, response_a, response_b)
        return {"a": t["p_a"], "b": 1.0 - t["p_tie"] - t["p_a"], "tie": t["p_tie"]}

    def prob_first_wins(self, prompt: Text, response_a: Text, response_b: Text) -> float:
        """The model's ``P(outcome == A)`` for ``a`` shown first: ties and flips included,
        ``(1 - p_tie) * ((1 - f) sigmoid(x / T) + f (1 - sigmoid(x / T)))``."""
        return self._pair_terms(prompt, response_a, response_b)["p_a"]

    def compare(self, prompt: Text, response_a: Text, response_b: Text, *,
                rng: np.random.Generator | None = None) -> Comparison:
        """Judge the pair shown as ``(response_a, response_b)``: tie, BT decision, flip.

        ``metadata`` holds the gold rewards, word lengths, bias terms, the probabilities and
        whether the label was flipped (``flipped``).
        """
        rng = self.rng if rng is None else rng
        t = self._pair_terms(prompt, response_a, response_b)
        u_tie, u_decision, u_flip = rng.random(3)  # always three draws: coupled streams
        flipped = False
        if u_tie < t["p_tie"]:
            outcome = Outcome.TIE
        else:
            outcome = Outcome.A if u_decision < t["p_decision_a"] else Outcome.B
            if u_flip < self.flip_rate:
                outcome, flipped = outcome.swapped(), True
        return Comparison(prompt=prompt, response_a=response_a, response_b=response_b,
                          outcome=outcome, annotator=self.annotator,
                          metadata={**t, "flipped": flipped})

    # -- rankings -------------------------------------------------------------------------------

    def utilities(self, prompt: Text, responses: Sequence[Text]) -> dict[str, list[float]]:
        """Gold rewards, word lengths and biased utilities
        ``u_i = g_i + position_bias [i == 0] + length_bias len_i / max_j len_j``."""
        golds = [float(self.gold(prompt, r)) for r in responses]
        lengths = [word_length(r) for r in responses]
        longest = max(max(lengths, default=0), 1)
        utils = [g + self.length_bias * n / longest + (self.position_bias if i == 0 else 0.0)
                 for i, (g, n) in enumerate(zip(golds, lengths, strict=True))]
        return {"gold": golds, "lengths": [float(n) for n in lengths], "utility": utils}

    def rank(self, prompt: Text, responses: Sequence[Text], *,
             rng: np.random.Generator | None = None) -> Ranking:
        """A Plackett-Luce ranking of ``responses`` (weights ``exp(u_i / T)``), one adjacent
        swap with probability ``flip_rate``, ties grouped within ``tie_margin`` (module
        docstring). ``metadata`` holds gold rewards, lengths, utilities and ``swapped_at``
        (position of the flipped adjacent pair in the order, or None)."""
        if len(responses) < 2:
            raise ValueError("rank() needs at least 2 responses")
        rng = self.rng if rng is None else rng
        terms = self.utilities(prompt, responses)
        u = np.asarray(terms["utility"])
        k = len(u)
        gumbel = rng.gumbel(size=k)
        if self.temperature == 0:
            # sort by utility; exact utility ties broken uniformly at random
            order = np.lexsort((gumbel, -u))
        else:
            order = np.argsort(-(u / self.temperature + gumbel), kind="stable")
        order = [int(i) for i in order]
        u_flip, position = rng.random(), int(rng.integers(k - 1))
        swapped_at = None
        if u_flip < self.flip_rate:
            order[position], order[position + 1] = order[position + 1], order[position]
            swapped_at = position
        golds = terms["gold"]
        tie_draws = rng.random(k)
        tiers: list[list[int]] = [[order[0]]]
        for j in range(1, k):
            idx, prev = order[j], order[j - 1]
            tier_golds = [golds[i] for i in tiers[-1]] + [golds[idx]]
            joins = (max(tier_golds) - min(tier_golds) < self.tie_margin
                     and tie_draws[j] < self._tie_probability(golds[idx] - golds[prev]))
            if joins:
                tiers[-1].append(idx)
            else:
                tiers.append([idx])
        return Ranking(prompt=prompt, responses=list(responses), tiers=tiers,
                       annotator=self.annotator,
                       metadata={**terms, "temperature": self.temperature,
                                 "position_bias": self.position_bias,
                                 "length_bias": self.length_bias,
                                 "tie_margin": self.tie_margin, "swapped_at": swapped_at})

    # -- ratings --------------------------------------------------------------------------------

    def rate(self, prompt: Text, response: Text, attributes: AttributesFn | None = None, *,
             scale: tuple[float, float] = (0.0, 4.0), noise_sd: float | None = None,
             discrete: bool = False, rng: np.random.Generator | None = None) -> Rating:
        """Rate one response: ``score_k = clip(t_k + noise_sd * N(0, 1), lo, hi)`` for the true
        values ``t_k = attributes(prompt, response)[k]`` (default ``{"gold": g(prompt,
        response)}``); ``discrete`` rounds to the nearest integer (Likert) before clipping.
        ``noise_sd`` defaults to the annotator's ``rating_noise_sd``. ``metadata`` holds the
        true values and the noise added."""
        rng = self.rng if rng is None else rng
        lo, hi = float(scale[0]), float(scale[1])
        if lo > hi:
            raise ValueError(f"rating scale {scale}: low end above high end")
        sd = self.rating_noise_sd if noise_sd is None else float(noise_sd)
        if sd < 0:
            raise ValueError("noise_sd must be >= 0")
        true = (dict(attributes(prompt, response)) if attributes is not None
                else {"gold": float(self.gold(prompt, response))})
        noise = rng.normal(0.0, 1.0, size=len(true)) * sd
        scores: dict[str, float] = {}
        for (name, value), eps in zip(true.items(), noise, strict=True):
            s = float(value) + float(eps)
            if discrete:
                s = float(round(s))
            scores[name] = min(hi, max(lo, s))
        return Rating(prompt=prompt, response=response, scores=scores,
                      scales={name: (lo, hi) for name in scores}, annotator=self.annotator,
                      metadata={"true_scores": {k: float(v) for k, v in true.items()},
                                "noise": {k: float(e) for k, e in zip(true, noise, strict=True)},
                                "noise_sd": sd})


# ---------------------------------------------------------------------------------------------
# Pools
# ---------------------------------------------------------------------------------------------

PairItem = tuple[Text, Text, Text] | Mapping[str, Any]
RankItem = tuple[Text, Sequence[Text]] | Mapping[str, Any]
RateItem = tuple[Text, Text] | Mapping[str, Any]


def _pair(item: PairItem) -> tuple[Text, Text, Text]:
    if isinstance(item, Mapping):
        return item["prompt"], item["response_a"], item["response_b"]
    prompt, a, b = item
    return prompt, a, b


class AnnotatorPool:
    """Several simulated annotators; each request goes to one of them.

    ``assignment="random"`` picks an annotator uniformly at random per request,
    ``"round_robin"`` cycles through them in order. The pool owns one generator (from ``seed``)
    and passes it to the annotators, so the pool's output depends only on its seed and the
    sequence of requests -- not on the annotators' own generator states.
    """

    def __init__(self, annotators: Sequence[SimulatedAnnotator],
                 assignment: Literal["random", "round_robin"] = "random", seed: int = 0) -> None:
        if not annotators:
            raise ValueError("an annotator pool needs at least one annotator")
        ids = [a.id for a in annotators]
        if len(set(ids)) != len(ids):
            raise ValueError(f"annotator ids must be unique, got {ids}")
        if assignment not in ("random", "round_robin"):
            raise ValueError(f"assignment must be 'random' or 'round_robin', not {assignment!r}")
        self.annotators = list(annotators)
        self.assignment = assignment
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._next = 0

    def __len__(self) -> int:
        return len(self.annotators)

    def __iter__(self):
        return iter(self.annotators)

    def reset(self, seed: int | None = None) -> None:
        """Restart the pool's generator and round-robin position."""
        if seed is not None:
            self.seed = seed
        self.rng = np.random.default_rng(self.seed)
        self._next = 0

    def choose(self) -> SimulatedAnnotator:
        """The annotator for the next request."""
        if self.assignment == "round_robin":
            annotator = self.annotators[self._next % len(self.annotators)]
            self._next += 1
            return annotator
        return self.annotators[int(self.rng.integers(len(self.annotators)))]

    def compare(self, prompt: Text, response_a: Text, response_b: Text) -> Comparison:
        return self.choose().compare(prompt, response_a, response_b, rng=self.rng)

    def rank(self, prompt: Text, responses: Sequence[Text]) -> Ranking:
        return self.choose().rank(prompt, responses, rng=self.rng)

    def rate(self, prompt: Text, response: Text, attributes: AttributesFn | None = None, *,
             scale: tuple[float, float] = (0.0, 4.0), noise_sd: float | None = None,
             discrete: bool = False) -> Rating:
        return self.choose().rate(prompt, response, attributes, scale=scale, noise_sd=noise_sd,
                                  discrete=discrete, rng=self.rng)

    def annotate_pairs(self, items: Iterable[PairItem]) -> list[Comparison]:
        """One comparison per item: ``(prompt, response_a, response_b)`` tuples or mappings
        with those keys."""
        return [self.compare(*_pair(item)) for item in items]

    def annotate_rankings(self, items: Iterable[RankItem]) -> list[Ranking]:
        """One ranking per item: ``(prompt, responses)`` or ``{"prompt", "responses"}``."""
        out = []
        for item in items:
            if isinstance(item, Mapping):
                out.append(self.rank(item["prompt"], item["responses"]))
            else:
                out.append(self.rank(item[0], item[1]))
        return out

    def annotate_ratings(self, items: Iterable[RateItem], attributes: AttributesFn | None = None,
                         *, scale: tuple[float, float] = (0.0, 4.0),
                         noise_sd: float | None = None, discrete: bool = False) -> list[Rating]:
        """One rating per item: ``(prompt, response)`` or ``{"prompt", "response"}``."""
        out = []
        for item in items:
            prompt, response = ((item["prompt"], item["response"]) if isinstance(item, Mapping)
                                else (item[0], item[1]))
            out.append(self.rate(prompt, response, attributes, scale=scale, noise_sd=noise_sd,
                                 discrete=discrete))
        return out


PERSONAS: dict[str, dict[str, float]] = {
    "careful": {"temperature": 0.05},
    "verbose_lover": {"temperature": 0.2, "length_bias": 0.5},
    "position_biased": {"temperature": 0.2, "position_bias": 0.3},
    "noisy": {"temperature": 1.0},
    "terse": {"temperature": 0.2, "length_bias": -0.3},
    "tie_prone": {"temperature": 0.2, "tie_margin": 0.2, "tie_prob": 0.8},
}
"""Annotator personas of :func:`alpacafarm_pool`. ``temperature``, ``position_bias``,
``length_bias`` and ``tie_margin`` are multiples of the pool's ``scale`` (the typical spread of
the gold reward):

- ``careful`` -- nearly deterministic gold preferences (T = 0.05);
- ``verbose_lover`` -- prefers longer responses (+0.5 per relative length difference);
- ``position_biased`` -- prefers whichever response is shown first (+0.3);
- ``noisy`` -- unbiased but inattentive (T = 1: a gold gap of one ``scale`` wins 73%);
- ``terse`` -- prefers shorter responses (-0.3 per relative length difference);
- ``tie_prone`` -- calls close pairs (gold gap < 0.2) a tie, with probability up to 0.8.
"""

_SCALED = ("temperature", "position_bias", "length_bias", "tie_margin")


def alpacafarm_pool(gold: GoldFn, n: int = 12, *, personas: Sequence[str] | None = None,
                    scale: float = 1.0, training: bool = False, training_flip_rate: float = 0.25,
                    assignment: Literal["random", "round_robin"] = "random",
                    seed: int = 0) -> AnnotatorPool:
    """A pool of ``n`` differently biased annotators, in the spirit of AlpacaFarm's simulated
    annotator pool: the :data:`PERSONAS` (or the named subset ``personas``) in turn, with ids
    ``"<persona>-<i>"`` and seeds ``seed + i``.

    ``scale`` sets the units of the persona parameters (use roughly the standard deviation of
    the gold reward over the responses being compared). ``training=True`` adds AlpacaFarm's
    label noise for *training* labels: each label is additionally flipped with probability
    ``training_flip_rate`` (default 0.25), independently of a persona's own flips, so the total
    flip rate is ``f + t - 2 f t``. Evaluation labels (``training=False``) have no added flips.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    if scale <= 0:
        raise ValueError("scale must be > 0")
    if not 0.0 <= training_flip_rate <= 1.0:
        raise ValueError("training_flip_rate must be in [0, 1]")
    names = list(PERSONAS) if personas is None else list(personas)
    unknown = [p for p in names if p not in PERSONAS]
    if unknown or not names:
        raise ValueError(f"unknown personas {unknown}; known: {sorted(PERSONAS)}")
    annotators = []
    for i in range(n):
        persona = names[i % len(names)]
        params = {k: (v * scale if k in _SCALED else v) for k, v in PERSONAS[persona].items()}
        own_flip = float(params.pop("flip_rate", 0.0))
        t = training_flip_rate if training else 0.0
        annotators.append(SimulatedAnnotator(id=f"{persona}-{i}", gold=gold, seed=seed + i,
                                             flip_rate=own_flip + t - 2 * own_flip * t,
                                             **params))
    return AnnotatorPool(annotators, assignment=assignment, seed=seed)


# ---------------------------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------------------------


def _gold_agreement(records: Sequence[Record]) -> tuple[float | None, int]:
    """Share of decisive comparisons (with audit metadata and unequal gold) won by the
    higher-gold response."""
    agree = total = 0
    for r in records:
        if not isinstance(r, Comparison) or r.outcome.is_tie:
            continue
        ga, gb = r.metadata.get("gold_a"), r.metadata.get("gold_b")
        if ga is None or gb is None or ga == gb:
            continue
        total += 1
        agree += (r.outcome is Outcome.A) == (ga > gb)
    return (agree / total if total else None), total


def agreement(pool_or_records: AnnotatorPool | Sequence[SimulatedAnnotator] | Iterable[Record],
              items: Iterable[PairItem] | None = None, n_repeats: int = 3, *,
              seed: int = 0) -> dict[str, Any]:
    """Inter-annotator agreement on pairwise labels.

    Given a pool (or a list of annotators, pooled with ``seed``) and ``items`` (pairs as in
    :meth:`AnnotatorPool.annotate_pairs`), each item is labelled by ``min(n_repeats, pool
    size)`` *distinct* annotators drawn at random; given records, those are used as they are.
    The statistics are :func:`prefkit.data.stats.feedback_stats`' agreement section (an item is
    a prompt and an unordered pair of responses; categories a / b / tie re-oriented so
    presentation order does not matter):

    - ``pairwise_agreement`` = ``sum_u sum_c C(n_uc, 2) / sum_u C(m_u, 2)``;
    - ``krippendorff_alpha`` (nominal) = ``1 - D_o / D_e``;
    - ``items``, ``annotations``, plus ``gold_agreement`` (share of decisive labels that pick
      the higher-gold response, from the records' audit metadata) and ``gold_labels``.

    Records that include ratings add ``rating`` (mean absolute difference and interval alpha
    per attribute). Returns a JSON-serializable dict.
    """
    if isinstance(pool_or_records, AnnotatorPool) or (
            isinstance(pool_or_records, Sequence) and pool_or_records
            and all(isinstance(a, SimulatedAnnotator) for a in pool_or_records)):
        pool = (pool_or_records if isinstance(pool_or_records, AnnotatorPool)
                else AnnotatorPool(list(pool_or_records), seed=seed))  # type: ignore[arg-type]
        if items is None:
            raise ValueError("agreement() with annotators needs items to label")
        if len(pool) < 2:
            raise ValueError("agreement needs at least 2 annotators")
        if n_repeats < 2:
            raise ValueError("n_repeats must be >= 2")
        k = min(n_repeats, len(pool))
        records: list[Record] = []
        for item in items:
            prompt, a, b = _pair(item)
            for j in pool.rng.choice(len(pool), size=k, replace=False):
                records.append(pool.annotators[int(j)].compare(prompt, a, b, rng=pool.rng))
    else:
        records = list(pool_or_records)  # type: ignore[arg-type]
    stats = feedback_stats(records)["agreement"]
    gold_rate, gold_n = _gold_agreement(records)
    out: dict[str, Any] = {**stats["comparison"], "gold_agreement": gold_rate,
                           "gold_labels": gold_n}
    if any(isinstance(r, Rating) for r in records):
        out["rating"] = stats["rating"]
    return out

