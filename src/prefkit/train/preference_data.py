"""Feedback records -> tokenized prompt groups for direct preference training.

One :class:`PreferenceExample` per usable record: the prompt's token ids once, and the token ids
of its ``K`` responses (``K = 2`` for a comparison, ``K`` for a ranking, ``1`` for a binary
KTO-style record), with a score per response (higher = better) or a desirable label.

Tokenization is :func:`prefkit.models.encoding.tokenize_example` -- the one prompt-encoding
rule of training, rollouts, reward scoring and judges: the prompt is rendered (the chat template
with the generation prompt for conversations, and for plain text when the tokenizer has one,
unless ``chat_template="never"``), ``prompt + response`` is tokenized as one string, and the
completion is whatever follows the longest prefix the prompt's own tokenization shares with
every ``prompt + response``. EOS is appended to every completion. (``tokenize_example`` and
``PreferenceExample`` are re-exported here.)

Records that cannot train are skipped and counted in :class:`DataReport` (ties and "both bad"
comparisons, rankings with fewer than two ranked responses, empty completions) -- never silently.

Memory is bounded by the length budget, not by the size of a record: given the budgets of
:func:`length_budgets`, a prompt is tokenized through a window of its last characters and each
response through a window of its first (:func:`prefkit.models.bounded.bound_text`), so a 10 MB
prompt costs what a few thousand characters do. The truncation that follows
(:func:`prefkit.models.packing.truncate_groups`: prompt from the left, responses from the
right) keeps the same tokens as it would from the whole texts.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..data.records import Binary, Comparison, Outcome, Ranking
from ..models.encoding import PreferenceExample, check_chat_template, tokenize_example

__all__ = ["DataReport", "PreferenceExample", "length_budgets", "records_to_examples",
           "tokenize_example", "truncation_dict", "truncation_note"]


def length_budgets(max_length: int | None, max_prompt_length: int | None
                   ) -> tuple[int | None, int | None]:
    """``(prompt tokens, response tokens)`` that :func:`~prefkit.models.packing.truncate_groups`
    can keep under ``max_length`` (prompt + one response) and ``max_prompt_length``: the prompt
    keeps at most ``max_prompt_length`` tokens, or -- when that is None -- fewer than
    ``max_length`` (a longer prompt leaves no room and its record is skipped either way); a
    response keeps fewer than ``max_length``. None: no limit."""
    prompt = max_prompt_length if max_prompt_length is not None else max_length
    return prompt, max_length


@dataclass
class DataReport:
    """What was read, used and skipped (with the record numbers of the first few skipped)."""

    read: int = 0
    used: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[int]] = field(default_factory=dict)

    def skip(self, reason: str, index: int) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 10:
            self.examples[reason].append(index)

    def to_dict(self) -> dict[str, Any]:
        return {"read": self.read, "used": self.used, "skipped": dict(self.skipped),
                "skipped_records": self.examples}


def _texts(record) -> tuple[Any, list[Any], list[float], bool | None] | str:
    """(prompt, responses, scores, label) of a record, or the reason it cannot train."""
    if isinstance(record, Comparison):
        if record.outcome in (Outcome.TIE, Outcome.BOTH_BAD):
            return f"comparison_{record.outcome.name.lower()}"
        return record.prompt, [record.chosen, record.rejected], [1.0, 0.0], None
    if isinstance(record, Ranking):
        ranked = record.ranked
        if len(ranked) < 2:
            return "ranking_fewer_than_2_ranked"
        score = record.tier_scores
        return (record.prompt, [record.responses[i] for i in ranked],
                [score[i] for i in ranked], None)
    if isinstance(record, Binary):
        return record.prompt, [record.response], [1.0 if record.desirable else 0.0], \
            record.desirable
    return f"unsupported_{getattr(record, 'kind', type(record).__name__)}"


def records_to_examples(records: Iterable, tokenizer, report: DataReport | None = None, *,
                        max_length: int | None = None, max_prompt_length: int | None = None,
                        chat_template: str = "auto") -> list[PreferenceExample]:
    """Tokenize every usable record (module docstring); the rest are counted in ``report``.
    ``max_length`` / ``max_prompt_length``: the truncation that will follow (bounds the text
    tokenized, :func:`length_budgets`). ``chat_template``: ``"auto"`` or ``"never"``
    (:data:`prefkit.models.encoding.CHAT_TEMPLATE_MODES`)."""
    check_chat_template(chat_template)
    prompt_budget, response_budget = length_budgets(max_length, max_prompt_length)
    report = report if report is not None else DataReport()
    out = []
    for index, record in enumerate(records):
        report.read += 1
        texts = _texts(record)
        if isinstance(texts, str):
            report.skip(texts, index)
            continue
        prompt, responses, scores, label = texts
        if any((r if isinstance(r, str) else "x") == "" for r in responses):
            report.skip("empty_response", index)
            continue
        example = tokenize_example(tokenizer, prompt, responses, index=index,
                                   record_id=getattr(record, "id", None), scores=scores,
                                   label=label, max_prompt_tokens=prompt_budget,
                                   max_response_tokens=response_budget,
                                   chat_template=chat_template)
        eos = tokenizer.eos_token_id
        if any(not r or r == [eos] for r in example.response_ids):
            report.skip("empty_completion", index)
            continue
        out.append(example)
        report.used += 1
    return out


def truncation_dict(report: Any) -> dict[str, Any]:
    """What :func:`~prefkit.models.packing.truncate_groups` did (its ``TruncationReport``), as a
    training result reports it: groups kept and skipped, prompts and responses cut, the first
    20 skipped records with their reasons."""
    return {"kept": report.n_kept, "skipped": report.n_skipped,
            "prompts_truncated": report.n_prompt_truncated,
            "responses_truncated": report.n_response_truncated,
            "skipped_records": [dataclasses.asdict(s) for s in report.skipped[:20]]}


def truncation_note(truncation: dict[str, Any]) -> str | None:
    """One line for a person about a :func:`truncation_dict` (None when nothing was cut or
    skipped)."""
    parts = []
    if truncation.get("prompts_truncated"):
        parts.append(f"{truncation['prompts_truncated']} prompts kept their last "
                     "max_prompt_length tokens")
    if truncation.get("responses_truncated"):
        parts.append(f"{truncation['responses_truncated']} records had responses cut to fit "
                     "max_length")
    if truncation.get("skipped"):
        parts.append(f"{truncation['skipped']} records did not fit and were skipped")
    return "truncation: " + "; ".join(parts) if parts else None
