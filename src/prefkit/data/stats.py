"""Statistics of a feedback stream: what ``prefkit data stats`` prints.

:func:`feedback_stats` reads the records once. Its memory is constant in the length of the
stream except for the annotator-agreement grouping, which has to remember, for every item
(same prompt and pair of responses, same battle, same rated response), who annotated it and
how -- a few bytes per annotation.

Length quantiles: count, min, mean and max are exact running statistics; p50 and p90 come from
a uniform reservoir sample of at most :data:`RESERVOIR_SIZE` values per field (Vitter's
Algorithm R, seeded, so results are reproducible). They are therefore exact for fields with up
to 10,000 values and estimates beyond (``"quantiles_exact"`` says which). Quantiles use linear
interpolation between closest ranks: for sorted ``x_0..x_{n-1}``, ``q`` is
``x_lo + (x_hi - x_lo) * frac`` with ``h = q (n - 1)``, ``lo = floor(h)``, ``hi = ceil(h)``,
``frac = h - lo`` (numpy's default ``"linear"`` method).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import random
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .krippendorff import krippendorff_alpha_interval, krippendorff_alpha_nominal
from .records import (
    Battle,
    Binary,
    Comparison,
    Critique,
    Outcome,
    Ranking,
    Rating,
    Record,
    Text,
    text_content,
    text_length,
)

RESERVOIR_SIZE = 10_000
QUANTILE_METHOD = (
    f"exact min/mean/max; p50/p90 by linear interpolation over all values up to {RESERVOIR_SIZE}"
    f" per field, beyond that over a uniform reservoir sample of {RESERVOIR_SIZE} (Algorithm R)"
)


# ---------------------------------------------------------------------------------------------
# Running distributions
# ---------------------------------------------------------------------------------------------


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile of an ascending list (numpy's default method)."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    h = q * (len(sorted_values) - 1)
    lo, hi = math.floor(h), math.ceil(h)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (h - lo)


@dataclass
class Distribution:
    """Exact count/min/mean/max plus a bounded reservoir sample for quantiles."""

    size: int = RESERVOIR_SIZE
    seed: int = 0
    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    sample: list[float] = field(default_factory=list)
    _rng: random.Random | None = field(default=None, repr=False)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        if len(self.sample) < self.size:
            self.sample.append(value)
            return
        if self._rng is None:
            self._rng = random.Random(self.seed)
        j = self._rng.randrange(self.count)  # Algorithm R: keep with probability size/count
        if j < self.size:
            self.sample[j] = value

    def summary(self) -> dict[str, Any]:
        if not self.count:
            return {"count": 0, "min": None, "mean": None, "p50": None, "p90": None, "max": None,
                    "quantiles_exact": True}
        ordered = sorted(self.sample)
        return {
            "count": self.count,
            "min": _num(self.low),
            "mean": self.total / self.count,
            "p50": quantile(ordered, 0.5),
            "p90": quantile(ordered, 0.9),
            "max": _num(self.high),
            "quantiles_exact": self.count <= self.size,
        }


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def _rate(num: float, den: int) -> float | None:
    return num / den if den else None


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------


class TokenCounter:
    """Counts tokens with any tokenizer whose ``encode(str)`` returns an object with ``.ids``
    (``tokenizers.Tokenizer``) or a list of ids (a ``transformers`` tokenizer). Special tokens
    are not counted when the tokenizer accepts ``add_special_tokens=False``."""

    def __init__(self, tokenizer: Any) -> None:
        if not callable(getattr(tokenizer, "encode", None)):
            raise TypeError("tokenizer must have an encode(str) method")
        self.tokenizer = tokenizer
        self._kwargs: dict[str, Any] | None = None

    def __call__(self, text: str) -> int:
        if self._kwargs is None:
            try:
                encoded = self.tokenizer.encode(text, add_special_tokens=False)
                self._kwargs = {"add_special_tokens": False}
            except TypeError:
                self._kwargs = {}
                encoded = self.tokenizer.encode(text)
        else:
            encoded = self.tokenizer.encode(text, **self._kwargs)
        ids = getattr(encoded, "ids", encoded)
        return len(ids)


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """Load a tokenizer for token-length statistics.

    - a file (``tokenizer.json``): ``tokenizers.Tokenizer.from_file``;
    - a directory: ``transformers.AutoTokenizer.from_pretrained(path)`` when ``transformers`` is
      installed, else (or if that fails) the directory's ``tokenizer.json``.

    Raises :class:`FileNotFoundError` (nothing usable at ``path``) or :class:`ValueError` (a
    file that is not a tokenizers JSON file), naming the path and what was expected.
    """
    from tokenizers import Tokenizer

    p = Path(path)
    if p.is_file():
        try:
            return Tokenizer.from_file(str(p))
        except Exception as exc:  # tokenizers raises its own Exception subclass
            raise ValueError(f"{p}: not a tokenizers 'tokenizer.json' file ({exc})") from exc
    if p.is_dir():
        problems: list[str] = []
        if importlib.util.find_spec("transformers") is not None:
            try:
                from transformers import AutoTokenizer

                return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
            except Exception as exc:  # noqa: BLE001 - fall back to tokenizer.json below
                problems.append(f"transformers AutoTokenizer failed: {exc}")
        else:
            problems.append("transformers is not installed")
        inner = p / "tokenizer.json"
        if inner.is_file():
            return load_tokenizer(inner)
        problems.append("no tokenizer.json in the directory")
        raise FileNotFoundError(f"{p}: no tokenizer found ({'; '.join(problems)})")
    raise FileNotFoundError(
        f"{p}: no such file or directory (expected a tokenizer.json file or a tokenizer "
        "directory)"
    )


# ---------------------------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------------------------


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _key(*parts: Any) -> bytes:
    """16-byte digest of an item's identity (bytes parts are hashed as they are)."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part if isinstance(part, bytes) else _canonical(part))
        h.update(b"\x00")
    return h.digest()


def _nominal(outcome: Outcome, swapped: bool) -> str:
    if outcome.is_tie:
        return "tie"
    if swapped:
        outcome = outcome.swapped()
    return outcome.value


class _Votes:
    """Item -> annotations by distinct annotators. An item annotated once (most of them) is
    kept as one ``(annotator, value)`` tuple; only items with a second annotator get a dict."""

    def __init__(self) -> None:
        self.items: dict[bytes, tuple[str, Any] | dict[str, Any]] = {}
        self.without_annotator = 0
        self.repeated = 0

    def add(self, key: bytes, annotator: str | None, value: Any) -> None:
        if annotator is None:
            self.without_annotator += 1
            return
        annotator = sys.intern(annotator)
        votes = self.items.get(key)
        if votes is None:
            self.items[key] = (annotator, value)
        elif isinstance(votes, tuple):
            if votes[0] == annotator:
                self.repeated += 1
            else:
                self.items[key] = {votes[0]: votes[1], annotator: value}
        elif annotator in votes:
            self.repeated += 1
        else:
            votes[annotator] = value

    def groups(self) -> Iterator[dict[str, Any]]:
        """Items annotated by at least two different annotators: ``{annotator: value}``."""
        for votes in self.items.values():
            if isinstance(votes, dict):
                yield votes


class _PairwiseAgreement(_Votes):
    """Categories a / b / tie, in a canonical order of the two sides."""

    def summary(self) -> dict[str, Any]:
        units = []
        agree = pairs = annotations = 0
        for votes in self.groups():
            counts: dict[str, int] = {}
            for category in votes.values():
                counts[category] = counts.get(category, 0) + 1
            units.append(counts)
            m = len(votes)
            annotations += m
            pairs += m * (m - 1) // 2
            agree += sum(c * (c - 1) // 2 for c in counts.values())
        return {
            "items": len(units),
            "annotations": annotations,
            "pairwise_agreement": _rate(agree, pairs),
            "krippendorff_alpha": krippendorff_alpha_nominal(units),
            "annotations_without_annotator": self.without_annotator,
            "repeated_annotations": self.repeated,
        }


class _RatingAgreement(_Votes):
    """Values: a rating's scores as ``((attribute, score), ...)``."""

    def add_rating(self, record: Rating) -> None:
        self.add(_key("rating", record.prompt, record.response),
                 record.annotator.id if record.annotator is not None else None,
                 tuple(record.scores.items()))

    def summary(self) -> dict[str, Any]:
        per_attribute: dict[str, list[list[float]]] = {}
        items = 0
        for votes in self.groups():
            items += 1
            attributes: dict[str, list[float]] = {}
            for scores in votes.values():
                for name, value in scores:
                    attributes.setdefault(name, []).append(float(value))
            for name, values in attributes.items():
                if len(values) >= 2:
                    per_attribute.setdefault(name, []).append(values)
        out: dict[str, Any] = {}
        total_diff = 0.0
        total_pairs = 0
        for name in sorted(per_attribute):
            units = per_attribute[name]
            diff, pairs, exact = 0.0, 0, 0
            for values in units:
                for i in range(len(values)):
                    for j in range(i + 1, len(values)):
                        d = abs(values[i] - values[j])
                        diff += d
                        pairs += 1
                        exact += d == 0
            total_diff += diff
            total_pairs += pairs
            out[name] = {
                "items": len(units),
                "pairs": pairs,
                "mean_abs_diff": diff / pairs,
                "exact_agreement": exact / pairs,
                "krippendorff_alpha_interval": krippendorff_alpha_interval(units),
            }
        return {
            "items": items,
            "mean_abs_diff": _rate(total_diff, total_pairs),
            "attributes": out,
            "annotations_without_annotator": self.without_annotator,
            "repeated_annotations": self.repeated,
        }


# ---------------------------------------------------------------------------------------------
# The one-pass summary
# ---------------------------------------------------------------------------------------------


def _outcome_counts() -> dict[str, int]:
    return {o.value: 0 for o in Outcome}


def _outcome_summary(counts: dict[str, int]) -> dict[str, Any]:
    n = sum(counts.values())
    return {
        "count": n,
        "outcomes": dict(counts),
        "tie_rate": _rate(counts["tie"], n),
        "both_bad_rate": _rate(counts["both_bad"], n),
        "decisive_rate": _rate(counts["a"] + counts["b"], n),
    }


def feedback_stats(records: Iterable[Record], tokenizer: Any = None) -> dict[str, Any]:
    """Summary statistics of a feedback stream, in one pass; a JSON-serializable dict.

    - ``records``, ``kinds``: counts;
    - ``lengths.chars`` (and ``lengths.tokens`` with a ``tokenizer``, see
      :class:`TokenCounter`): per text field, ``{count, min, mean, p50, p90, max,
      quantiles_exact}`` (method in the module docstring). Fields: ``prompt`` (every record
      with one, counted per record), ``chosen`` / ``rejected`` (decisive comparisons),
      ``response`` (ratings, binaries, every ranking response, both sides of tied/both-bad
      comparisons), ``critique``. Conversations count their message contents;
    - ``outcomes``: per ``comparison`` / ``battle`` and ``pairwise`` (both together): outcome
      counts, ``tie_rate = #tie / n``, ``both_bad_rate = #both_bad / n``,
      ``decisive_rate``;
    - ``length_bias``: over decisive comparisons, how often the chosen response is longer in
      characters: ``chosen_longer_rate = #(len(chosen) > len(rejected)) / #decisive``, plus the
      shorter / equal counts;
    - ``binary``: desirable count and rate; ``ranking``: responses per ranking, strict share;
      ``rating``: per attribute count/mean/min/max;
    - ``agreement``: items annotated by at least two different annotators. For comparisons an
      item is (prompt, unordered pair of responses); for battles (``prompt_id``, unordered pair
      of models; battles without ``prompt_id`` are not grouped). Outcomes are nominal
      categories ``a`` / ``b`` / ``tie`` (``both_bad`` counts as ``tie``), with ``a`` / ``b``
      re-oriented to a canonical order of the two sides so presentation order does not matter.
      Reported: ``items``, ``annotations``, ``pairwise_agreement`` (agreeing annotation pairs /
      all annotation pairs, pooled over items: ``sum_u sum_c C(n_uc, 2) / sum_u C(m_u, 2)``)
      and ``krippendorff_alpha`` (nominal; formula in :func:`krippendorff_alpha_nominal`).
      For ratings an item is (prompt, response): ``mean_abs_diff`` over all pairs of
      annotators and attributes, and per attribute ``mean_abs_diff``, ``exact_agreement`` and
      ``krippendorff_alpha_interval`` (:func:`krippendorff_alpha_interval`). Annotations
      without an annotator are not grouped (they cannot be told apart from duplicates); a
      second annotation of an item by the same annotator is ignored; both are counted.
    """
    count_tokens = TokenCounter(tokenizer) if tokenizer is not None else None
    kinds: dict[str, int] = {}
    chars: dict[str, Distribution] = {}
    tokens: dict[str, Distribution] = {}
    outcomes = {"comparison": _outcome_counts(), "battle": _outcome_counts()}
    longer = shorter = equal = 0
    desirable = binaries = 0
    ranking_sizes = Distribution()
    strict_rankings = 0
    attributes: dict[str, Distribution] = {}
    pairwise = {"comparison": _PairwiseAgreement(), "battle": _PairwiseAgreement()}
    ratings = _RatingAgreement()
    n = 0

    def measure(name: str, text: Text) -> int:
        length = text_length(text)
        chars.setdefault(name, Distribution()).add(length)
        if count_tokens is not None:
            tokens.setdefault(name, Distribution()).add(count_tokens(text_content(text)))
        return length

    for record in records:
        n += 1
        kinds[record.kind] = kinds.get(record.kind, 0) + 1
        annotator = record.annotator.id if record.annotator is not None else None
        if isinstance(record, Critique):
            measure("critique", record.text)
            continue
        if isinstance(record, Battle):
            outcomes["battle"][record.outcome.value] += 1
            if record.prompt_id is not None:
                swapped = record.model_a > record.model_b
                models = sorted((record.model_a, record.model_b))
                pairwise["battle"].add(_key("battle", record.prompt_id, models), annotator,
                                       _nominal(record.outcome, swapped))
            continue
        measure("prompt", record.prompt)
        if isinstance(record, Comparison):
            outcomes["comparison"][record.outcome.value] += 1
            if record.outcome.is_tie:
                measure("response", record.response_a)
                measure("response", record.response_b)
            else:
                chosen = measure("chosen", record.chosen)
                rejected = measure("rejected", record.rejected)
                longer += chosen > rejected
                shorter += chosen < rejected
                equal += chosen == rejected
            a, b = _canonical(record.response_a), _canonical(record.response_b)
            swapped = a > b
            first, second = (b, a) if swapped else (a, b)
            pairwise["comparison"].add(_key("comparison", record.prompt, first, second), annotator,
                                       _nominal(record.outcome, swapped))
        elif isinstance(record, Ranking):
            for response in record.responses:
                measure("response", response)
            ranking_sizes.add(len(record.responses))
            strict_rankings += record.is_strict
        elif isinstance(record, Rating):
            measure("response", record.response)
            for name, value in record.scores.items():
                attributes.setdefault(name, Distribution()).add(float(value))
            ratings.add_rating(record)
        elif isinstance(record, Binary):
            measure("response", record.response)
            binaries += 1
            desirable += record.desirable

    both = {k: outcomes["comparison"][k] + outcomes["battle"][k] for k in outcomes["battle"]}
    decisive = longer + shorter + equal
    lengths: dict[str, Any] = {
        "chars": {name: chars[name].summary() for name in sorted(chars)},
        "quantile_method": QUANTILE_METHOD,
    }
    if count_tokens is not None:
        lengths["tokens"] = {name: tokens[name].summary() for name in sorted(tokens)}
    n_rankings = ranking_sizes.count
    return {
        "records": n,
        "kinds": dict(sorted(kinds.items())),
        "lengths": lengths,
        "outcomes": {
            "comparison": _outcome_summary(outcomes["comparison"]),
            "battle": _outcome_summary(outcomes["battle"]),
            "pairwise": _outcome_summary(both),
        },
        "length_bias": {
            "decisive": decisive,
            "chosen_longer": longer,
            "chosen_shorter": shorter,
            "equal_length": equal,
            "chosen_longer_rate": _rate(longer, decisive),
        },
        "binary": {"count": binaries, "desirable": desirable,
                   "desirable_rate": _rate(desirable, binaries)},
        "ranking": {
            "count": n_rankings,
            "mean_responses": ranking_sizes.total / n_rankings if n_rankings else None,
            "max_responses": _num(ranking_sizes.high) if n_rankings else None,
            "strict_rate": _rate(strict_rankings, n_rankings),
        },
        "rating": {
            "attributes": {
                name: {k: v for k, v in attributes[name].summary().items()
                       if k in ("count", "min", "mean", "max")}
                for name in sorted(attributes)
            },
        },
        "agreement": {
            "comparison": pairwise["comparison"].summary(),
            "battle": pairwise["battle"].summary(),
            "rating": ratings.summary(),
        },
    }


__all__ = [
    "QUANTILE_METHOD",
    "RESERVOIR_SIZE",
    "Distribution",
    "TokenCounter",
    "feedback_stats",
    "krippendorff_alpha_interval",
    "krippendorff_alpha_nominal",
    "load_tokenizer",
    "quantile",
]
