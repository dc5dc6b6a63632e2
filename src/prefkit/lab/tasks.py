"""Lab tasks: prompts, known gold rewards and demonstrations of adjustable quality.

A :class:`Task` is a tiny world in which the best answer is known exactly:

* ``sample_prompt(rng)`` draws a prompt (a short string of words);
* ``gold_reward(prompt, response)`` scores a response -- deterministic, documented, the truth
  that simulated annotators, reward models and policies are measured against;
* ``demonstration(prompt, rng, quality)`` writes an answer: ``quality=1.0`` gives a
  gold-optimal answer, lower qualities noisier ones, so a model fine-tuned on
  ``quality < 1`` demonstrations imitates their mistakes and leaves headroom for preference
  learning;
* ``vocabulary()`` lists every word prompts and responses use (one word = one token with
  :func:`prefkit.models.tokenizer.word_level_tokenizer`);
* ``attributes(prompt, response)`` (optional) gives named sub-scores.

Tasks are frozen dataclasses: their fields are their settings (``config()``), which
:mod:`prefkit.lab.base_model` hashes into the cache key of a fine-tuned base model.

Registry: ``TASKS = {"sort": SortTask, "review": ReviewTask, "attributes": AttributeTask}``
and :func:`get_task`; :mod:`prefkit.lab.verifiable_tasks` adds the tasks with checkable answers
(``arith``, ``sort_exact``, ``count``) when this module is imported.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "TASKS",
    "AttributeTask",
    "ReviewTask",
    "SortTask",
    "Task",
    "get_task",
    "mean_gold_reward",
]


class Task:
    """Base class of the lab tasks (subclasses are frozen dataclasses)."""

    name: ClassVar[str] = "task"

    def sample_prompt(self, rng: random.Random) -> str:
        """A random prompt drawn with ``rng``."""
        raise NotImplementedError

    def gold_reward(self, prompt: str, response: str) -> float:
        """The known true reward of ``response`` to ``prompt`` (deterministic)."""
        raise NotImplementedError

    def demonstration(self, prompt: str, rng: random.Random, quality: float = 1.0) -> str:
        """An answer to ``prompt``: gold-optimal at ``quality=1``, noisier as it decreases."""
        raise NotImplementedError

    def vocabulary(self) -> list[str]:
        """Every word a prompt or a response of this task can contain (no duplicates)."""
        raise NotImplementedError

    def attributes(self, prompt: str, response: str) -> dict[str, float]:
        """Named sub-scores of a response (empty unless the task defines some)."""
        return {}

    def optimum(self, prompt: str) -> float:
        """The best achievable gold reward for ``prompt`` (that of the quality-1 answer)."""
        return self.gold_reward(prompt, self.demonstration(prompt, random.Random(0), 1.0))

    def config(self) -> dict[str, Any]:
        """The task's settings (its dataclass fields) as a JSON-able dict."""
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}


def _check_quality(quality: float) -> float:
    if not 0.0 <= quality <= 1.0:
        raise ValueError(f"quality must be in [0, 1], got {quality}")
    return float(quality)


def _unique(words: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(words))


# ---------------------------------------------------------------------------------------------
# sort


SORT_FILLERS: tuple[str, ...] = ("ok", "so", "well", "done")


@dataclass(frozen=True)
class SortTask(Task):
    """``"sort: 7 3 9 1"`` -> ``"1 3 7 9"``.

    Prompts hold ``min_len..max_len`` distinct numbers from ``0..max_value``.

    Gold reward: ``correct - verbosity_penalty * extra`` where ``correct`` is the fraction of
    the ``n`` positions whose token equals the sorted list's (positionally; missing tokens
    count as wrong) and ``extra = max(0, len(tokens) - n)``. The optimum is 1.0 (the sorted
    list, nothing else). E.g. for ``7 3 9 1``: ``1 3 7 9`` = 1.0, ``1 3 7 9 ok`` = 0.85,
    ``1 7 3 9`` = 0.5.

    Demonstrations of quality ``q`` start from the sorted list, swap each adjacent pair with
    probability ``(1 - q) / 2`` (left to right) and then append filler words while a coin with
    probability ``1 - q`` comes up (at most ``max_fillers``).
    """

    name: ClassVar[str] = "sort"
    min_len: int = 3
    max_len: int = 5
    max_value: int = 9
    verbosity_penalty: float = 0.15
    max_fillers: int = 4

    def __post_init__(self) -> None:
        if not 1 <= self.min_len <= self.max_len <= self.max_value + 1:
            raise ValueError("need 1 <= min_len <= max_len <= max_value + 1")

    def _numbers(self, prompt: str) -> list[int]:
        words = prompt.split()
        if not words or words[0] != "sort:":
            raise ValueError(f"not a sort prompt: {prompt!r}")
        return [int(w) for w in words[1:]]

    def sample_prompt(self, rng: random.Random) -> str:
        n = rng.randint(self.min_len, self.max_len)
        return "sort: " + " ".join(str(x) for x in rng.sample(range(self.max_value + 1), n))

    def gold_reward(self, prompt: str, response: str) -> float:
        target = [str(x) for x in sorted(self._numbers(prompt))]
        tokens = response.split()
        right = sum(a == b for a, b in zip(tokens, target, strict=False))
        extra = max(0, len(tokens) - len(target))
        return right / len(target) - self.verbosity_penalty * extra

    def demonstration(self, prompt: str, rng: random.Random, quality: float = 1.0) -> str:
        noise = 1.0 - _check_quality(quality)
        out = [str(x) for x in sorted(self._numbers(prompt))]
        for i in range(len(out) - 1):
            if rng.random() < noise / 2:
                out[i], out[i + 1] = out[i + 1], out[i]
        n_fill = 0
        while n_fill < self.max_fillers and rng.random() < noise:
            out.append(rng.choice(SORT_FILLERS))
            n_fill += 1
        return " ".join(out)

    def vocabulary(self) -> list[str]:
        return ["sort:", *(str(i) for i in range(self.max_value + 1)), *SORT_FILLERS]


# ---------------------------------------------------------------------------------------------
# review


REVIEW_ITEMS: tuple[str, ...] = (
    "phone", "movie", "book", "hotel", "cafe", "game", "laptop", "song",
)

#: The hidden lexicon: word -> score. Unlisted words (items) score 0.
REVIEW_LEXICON: dict[str, float] = {
    "superb": 1.0, "excellent": 1.0, "great": 0.8, "lovely": 0.8, "good": 0.6, "nice": 0.5,
    "fine": 0.3,
    "the": 0.0, "it": 0.0, "was": 0.0, "is": 0.0, "very": 0.0, "really": 0.0, "and": 0.0,
    "this": 0.0, "overall": 0.0,
    "meh": -0.2, "slow": -0.4, "boring": -0.6, "bad": -0.7, "terrible": -1.0, "awful": -1.0,
}
_REVIEW_TOP = tuple(w for w, s in REVIEW_LEXICON.items() if s == 1.0)
_REVIEW_POS_NEUTRAL = tuple(w for w, s in REVIEW_LEXICON.items() if 0.0 <= s < 1.0)
_REVIEW_NEG = tuple(w for w, s in REVIEW_LEXICON.items() if s < 0.0)


@dataclass(frozen=True)
class ReviewTask(Task):
    """``"review: phone"`` -> a short review, scored by a hidden word lexicon.

    Gold reward of a response with ``L`` words::

        mean(lexicon score of each word)              (0 for an empty response)
        + length_bonus * min(L, opt_length)           (saying more helps ...)
        - length_penalty * max(0, L - opt_length)     (... up to a point)
        + mention_bonus * [the item word appears]

    With the defaults the optimum is 1.475: the item plus 7 top words (score 1.0), 8 words.
    Demonstrations of quality ``q`` have a length drawn around the optimal one with standard
    deviation ``4 (1 - q)``, mention the item with probability ``q``, and fill each other
    slot with a top word (probability ``q``), a positive/neutral word (``(1 - q) / 2``) or a
    negative word (``(1 - q) / 2``). ``attributes`` gives ``sentiment`` (the lexicon mean)
    and ``length``.
    """

    name: ClassVar[str] = "review"
    opt_length: int = 8
    length_bonus: float = 0.05
    length_penalty: float = 0.1
    mention_bonus: float = 0.2

    def _item(self, prompt: str) -> str:
        words = prompt.split()
        if len(words) != 2 or words[0] != "review:":
            raise ValueError(f"not a review prompt: {prompt!r}")
        return words[1]

    def sample_prompt(self, rng: random.Random) -> str:
        return f"review: {rng.choice(REVIEW_ITEMS)}"

    def _gold(self, sentiment: float, length: int, mentions: bool) -> float:
        return (
            sentiment
            + self.length_bonus * min(length, self.opt_length)
            - self.length_penalty * max(0, length - self.opt_length)
            + self.mention_bonus * mentions
        )

    def attributes(self, prompt: str, response: str) -> dict[str, float]:
        words = response.split()
        sentiment = sum(REVIEW_LEXICON.get(w, 0.0) for w in words) / max(1, len(words))
        return {"sentiment": sentiment, "length": float(len(words))}

    def gold_reward(self, prompt: str, response: str) -> float:
        item = self._item(prompt)
        a = self.attributes(prompt, response)
        return self._gold(a["sentiment"], int(a["length"]), item in response.split())

    def _best_shape(self) -> tuple[int, bool]:
        """(length, mention) of the optimal answer: top words plus maybe the item."""
        shapes = [(n, m) for n in range(1, 3 * self.opt_length + 2) for m in (True, False)]
        return max(shapes, key=lambda s: self._gold((s[0] - s[1]) / s[0], s[0], s[1]))

    def demonstration(self, prompt: str, rng: random.Random, quality: float = 1.0) -> str:
        item = self._item(prompt)
        q = _check_quality(quality)
        best_len, best_mention = self._best_shape()
        length = best_len + round(rng.gauss(0.0, 4.0 * (1.0 - q))) if q < 1 else best_len
        length = min(max(length, 1), 3 * self.opt_length)
        mention = best_mention if q == 1 else rng.random() < q
        words = []
        for _ in range(length - mention):
            r = rng.random()
            pool = _REVIEW_TOP if r < q else _REVIEW_POS_NEUTRAL if r < (1 + q) / 2 else _REVIEW_NEG
            words.append(rng.choice(pool))
        if mention:
            words.insert(rng.randrange(len(words) + 1), item)
        return " ".join(words)

    def vocabulary(self) -> list[str]:
        return _unique(["review:", *REVIEW_ITEMS, *REVIEW_LEXICON])


# ---------------------------------------------------------------------------------------------
# attributes


#: topic -> its three correct facts (a fact of another topic is a wrong fact).
ATTRIBUTE_FACTS: dict[str, tuple[str, str, str]] = {
    "cooking": ("salt", "heat", "knife"),
    "travel": ("ticket", "map", "passport"),
    "music": ("melody", "rhythm", "chord"),
    "garden": ("soil", "seed", "water"),
    "coding": ("test", "loop", "debug"),
    "sport": ("team", "ball", "coach"),
}
ATTRIBUTE_MARKERS: tuple[str, ...] = ("because", "first")
ATTRIBUTE_FILLERS: tuple[str, ...] = ("well", "basically", "really", "also", "indeed", "um")


@dataclass(frozen=True)
class AttributeTask(Task):
    """``"ask: cooking"`` -> an answer judged on three attributes (each 0-4).

    With ``c`` the number of distinct correct facts of the topic in the response (0-3), ``w``
    the number of distinct facts of OTHER topics, and ``L`` the number of words:

    * ``correctness = 4 c / (c + w)`` (2.0 when the response states no fact at all);
    * ``helpfulness = c + [an explanation marker ("because"/"first") appears and c > 0]``;
    * ``verbosity = min(4, L / 3)``.

    Gold reward: ``w_help * helpfulness / 4 + w_corr * correctness / 4
    - w_verb * max(0, verbosity - verbosity_target) / (4 - verbosity_target)``; the optimum
    (three correct facts and a marker, 4 words) is ``w_help + w_corr`` = 1.0 by default.

    Demonstrations of quality ``q``: each correct fact with probability ``q``, the marker with
    probability ``q``, wrong facts and filler words while coins with probabilities
    ``(1 - q) / 2`` and ``0.8 (1 - q)`` come up; words shuffled (except at ``q = 1``).
    """

    name: ClassVar[str] = "attributes"
    w_help: float = 0.5
    w_corr: float = 0.5
    w_verb: float = 0.5
    verbosity_target: float = 2.0

    def _topic(self, prompt: str) -> str:
        words = prompt.split()
        if len(words) != 2 or words[0] != "ask:" or words[1] not in ATTRIBUTE_FACTS:
            raise ValueError(f"not an attribute-task prompt: {prompt!r}")
        return words[1]

    def sample_prompt(self, rng: random.Random) -> str:
        return f"ask: {rng.choice(list(ATTRIBUTE_FACTS))}"

    def attributes(self, prompt: str, response: str) -> dict[str, float]:
        topic = self._topic(prompt)
        words = response.split()
        present = set(words)
        right = set(ATTRIBUTE_FACTS[topic])
        wrong = {f for t, fs in ATTRIBUTE_FACTS.items() if t != topic for f in fs}
        c, w = len(present & right), len(present & wrong)
        correctness = 4.0 * c / (c + w) if c + w else 2.0
        explains = c > 0 and any(m in present for m in ATTRIBUTE_MARKERS)
        return {
            "helpfulness": float(c + explains),
            "correctness": correctness,
            "verbosity": min(4.0, len(words) / 3.0),
        }

    def gold_reward(self, prompt: str, response: str) -> float:
        a = self.attributes(prompt, response)
        over = max(0.0, a["verbosity"] - self.verbosity_target) / (4.0 - self.verbosity_target)
        return (
            self.w_help * a["helpfulness"] / 4.0
            + self.w_corr * a["correctness"] / 4.0
            - self.w_verb * over
        )

    def demonstration(self, prompt: str, rng: random.Random, quality: float = 1.0) -> str:
        topic = self._topic(prompt)
        q = _check_quality(quality)
        if q == 1.0:
            return " ".join([*ATTRIBUTE_FACTS[topic], "because"])
        words = [f for f in ATTRIBUTE_FACTS[topic] if rng.random() < q]
        if rng.random() < q:
            words.append(rng.choice(ATTRIBUTE_MARKERS))
        others = [f for t, fs in ATTRIBUTE_FACTS.items() if t != topic for f in fs]
        while rng.random() < (1 - q) / 2:
            words.append(rng.choice(others))
        n_fill = 0
        while n_fill < 8 and rng.random() < 0.8 * (1 - q):
            words.append(rng.choice(ATTRIBUTE_FILLERS))
            n_fill += 1
        rng.shuffle(words)
        return " ".join(words) if words else rng.choice(ATTRIBUTE_FILLERS)

    def vocabulary(self) -> list[str]:
        facts = [f for fs in ATTRIBUTE_FACTS.values() for f in fs]
        return _unique(["ask:", *ATTRIBUTE_FACTS, *facts, *ATTRIBUTE_MARKERS, *ATTRIBUTE_FILLERS])


# ---------------------------------------------------------------------------------------------
# registry


TASKS: dict[str, type[Task]] = {"sort": SortTask, "review": ReviewTask, "attributes": AttributeTask}


def get_task(name: str, **kwargs: Any) -> Task:
    """Build the task registered as ``name`` with its settings ``kwargs``."""
    try:
        cls = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None
    return cls(**kwargs)


def mean_gold_reward(
    task: Task, prompts: Sequence[str], responses: Sequence[Sequence[str]]
) -> float:
    """Mean gold reward over every response of every prompt (``responses[i]`` answers
    ``prompts[i]``; e.g. the output of :func:`prefkit.models.generate.sample`)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} response lists")
    scores = [task.gold_reward(p, r) for p, rs in zip(prompts, responses, strict=True) for r in rs]
    if not scores:
        raise ValueError("no responses to score")
    return sum(scores) / len(scores)


from . import verifiable_tasks as _verifiable_tasks  # noqa: E402,F401 - registers its tasks
