"""Synthetic feedback with a known truth, for training and checking reward models.

Every generator returns plain row dicts in prefkit-readable formats (TRL pairs, ratings,
rankings) over the word world's vocabulary (:mod:`.wordworld`), together with what a perfect
model could achieve, so tests and benchmarks can assert on the numbers that matter:

- :func:`noisy_pairs` -- pairs labelled by a Bradley-Terry annotator on the gold reward
  (share of good words) with temperature ``T``: ``P(a preferred) = sigmoid((r_a - r_b) / T)``;
  the noise ceiling (the accuracy of the Bayes-optimal rule, i.e. of the gold reward itself,
  against these labels) is ``mean(max(p, 1 - p))``.
- :func:`attribute_ratings` -- HelpSteer2-style ratings: helpfulness = 4 * good share,
  verbosity = 4 * (length - min) / (max - min), plus Gaussian rating noise; both are functions
  of the text, so a regression head can recover them.
- :func:`cyclic_pairs` -- rock-paper-scissors preferences between responses made of rock,
  paper or scissors words: paper > rock, scissors > paper, rock > scissors. No scalar reward
  orders them (its best accuracy is 2/3, and the maximum-likelihood BT fit on balanced data
  gives all three kinds the same reward).
- :func:`length_biased_pairs` -- the annotator prefers by gold reward PLUS a length bonus
  ``lam * (len_a - len_b) / max_len``: a plain reward model learns length; a length-debiased
  (ODIN) head should not.
"""

from __future__ import annotations

import random
from typing import Any

from scipy.special import expit

from .wordworld import gold_reward, word_pools

__all__ = ["attribute_ratings", "cyclic_pairs", "length_biased_pairs", "noisy_pairs"]

CYCLE = {"paper": "rock", "scissors": "paper", "rock": "scissors"}
"""winner -> loser of the cyclic preference."""


def _sigmoid(x: float) -> float:
    """The logistic function for any x (scipy's expit: no overflow at x = -1000)."""
    return float(expit(x))


def _prompt(rng: random.Random, words: dict[str, list[str]], n: int = 3) -> str:
    return " ".join(rng.choice(words["topic"]) for _ in range(n))


def _response(rng: random.Random, words: dict[str, list[str]], good_share: float,
              length: int) -> str:
    return " " + " ".join(rng.choice(words["good"] if rng.random() < good_share
                                     else words["bad"]) for _ in range(length))


def noisy_pairs(n: int, *, temperature: float = 0.1, length: int = 6, n_words: int = 16,
                seed: int = 0) -> tuple[list[dict[str, Any]], float]:
    """``n`` labelled pairs and their noise ceiling (module docstring)."""
    rng = random.Random(seed)
    words = word_pools(n_words)
    rows, ceiling = [], 0.0
    for _ in range(n):
        a = _response(rng, words, rng.random(), length)
        b = _response(rng, words, rng.random(), length)
        p = _sigmoid((gold_reward(a) - gold_reward(b)) / temperature)
        ceiling += max(p, 1.0 - p)
        chosen, rejected = (a, b) if rng.random() < p else (b, a)
        rows.append({"prompt": _prompt(rng, words), "chosen": chosen, "rejected": rejected})
    return rows, ceiling / max(1, n)


ATTRIBUTES = ("helpfulness", "verbosity")


def attribute_ratings(n: int, *, noise: float = 0.2, min_len: int = 2, max_len: int = 10,
                      n_words: int = 16, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rating records (prefkit ``rating`` rows with ``scores`` on 0-4 scales); the noise-free
    values are in ``metadata.true_scores``."""
    rng = random.Random(seed)
    words = word_pools(n_words)
    rows = []
    for _ in range(n):
        length = rng.randint(min_len, max_len)
        response = _response(rng, words, rng.random(), length)
        true = {"helpfulness": 4.0 * gold_reward(response),
                "verbosity": 4.0 * (length - min_len) / (max_len - min_len)}
        scores = {k: min(4.0, max(0.0, v + rng.gauss(0.0, noise))) for k, v in true.items()}
        rows.append({"kind": "rating", "prompt": _prompt(rng, words), "response": response,
                     "scores": scores, "scales": {k: [0, 4] for k in ATTRIBUTES},
                     "metadata": {"true_scores": true}})
    return rows


def cyclic_pairs(n: int, *, length: int = 4, words_per_kind: int = 4, n_words: int = 16,
                 seed: int = 0) -> list[dict[str, Any]]:
    """``n`` pairs with rock-paper-scissors preferences, the three relations equally often;
    responses are ``length`` words from the first ``words_per_kind`` words of their kind's pool."""
    rng = random.Random(seed)
    words = {k: v[:words_per_kind] for k, v in word_pools(n_words).items()}
    winners = list(CYCLE)
    rows = []
    for i in range(n):
        winner = winners[i % 3]
        loser = CYCLE[winner]

        def text(kind: str) -> str:
            return " " + " ".join(rng.choice(words[kind]) for _ in range(length))

        rows.append({"prompt": _prompt(rng, words), "chosen": text(winner),
                     "rejected": text(loser)})
    rng.shuffle(rows)
    return rows


def length_biased_pairs(n: int, *, lam: float = 3.0, temperature: float = 0.1,
                        min_len: int = 2, max_len: int = 12, n_words: int = 16, seed: int = 0
                        ) -> list[dict[str, Any]]:
    """``n`` pairs labelled on gold reward plus a length bonus (module docstring)."""
    rng = random.Random(seed)
    words = word_pools(n_words)
    rows = []
    for _ in range(n):
        la, lb = rng.randint(min_len, max_len), rng.randint(min_len, max_len)
        a = _response(rng, words, rng.random(), la)
        b = _response(rng, words, rng.random(), lb)
        z = (gold_reward(a) - gold_reward(b)) / temperature + lam * (la - lb) / max_len
        chosen, rejected = (a, b) if rng.random() < _sigmoid(z) else (b, a)
        rows.append({"prompt": _prompt(rng, words), "chosen": chosen, "rejected": rejected})
    return rows
