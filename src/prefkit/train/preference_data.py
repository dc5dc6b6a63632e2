"""Feedback records -> tokenized prompt groups for direct preference training.

One :class:`PreferenceExample` per usable record: the prompt's token ids once, and the token ids
of its ``K`` responses (``K = 2`` for a comparison, ``K`` for a ranking, ``1`` for a binary
KTO-style record), with a score per response (higher = better) or a desirable label.

Tokenization follows the rule that keeps training and generation consistent: the prompt is
rendered (chat template for conversations, with the generation prompt), ``prompt + response`` is
tokenized as one string, and the completion is whatever follows the longest prefix the prompt's
own tokenization shares with every ``prompt + response`` (so BPE merges across the boundary
cannot put prompt text into a completion). EOS is appended to every completion.

Records that cannot train are skipped and counted in :class:`DataReport` (ties and "both bad"
comparisons, rankings with fewer than two ranked responses, empty completions) -- never silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..data.records import Binary, Comparison, Outcome, Ranking

__all__ = ["DataReport", "PreferenceExample", "records_to_examples", "tokenize_example"]


@dataclass(slots=True)
class PreferenceExample:
    """A tokenized prompt group. ``scores[k]`` ranks response ``k`` (higher is better; equal =
    tie); ``label`` is set for unpaired (binary) records."""

    index: int
    record_id: str | None
    prompt_ids: list[int]
    response_ids: list[list[int]]
    scores: list[float]
    label: bool | None = None

    @property
    def k(self) -> int:
        return len(self.response_ids)

    @property
    def n_tokens(self) -> int:
        """Tokens in the prefix-shared layout: the prompt once plus every response."""
        return len(self.prompt_ids) + sum(len(r) for r in self.response_ids)


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


def _render(tokenizer, prompt, response) -> tuple[str, str, bool]:
    """(prompt text, response text, conversational) with the chat template for messages."""
    if isinstance(prompt, str) and isinstance(response, str):
        return prompt, response, False
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    reply = ([{"role": "assistant", "content": response}] if isinstance(response, str)
             else list(response))
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False,
                                                add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages + reply, tokenize=False)
    if not full.startswith(prompt_text):
        # the template renders the prompt differently once a reply follows: take the reply's
        # rendering on its own
        full = prompt_text + tokenizer.apply_chat_template(reply, tokenize=False)
    return prompt_text, full[len(prompt_text):], True


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def tokenize_example(tokenizer, prompt, responses: list, *, index: int = 0,
                     record_id: str | None = None, scores: list[float] | None = None,
                     label: bool | None = None) -> PreferenceExample:
    """Tokenize one prompt group (module docstring). Completions may come out empty (e.g. an
    empty response): callers skip those."""
    rendered = [_render(tokenizer, prompt, r) for r in responses]
    prompt_text, conversational = rendered[0][0], rendered[0][2]
    special = not conversational  # chat templates already carry their special tokens
    prompt_ids = tokenizer(prompt_text, add_special_tokens=special)["input_ids"]
    full_ids = [tokenizer(prompt_text + text, add_special_tokens=special)["input_ids"]
                for _, text, _ in rendered]
    shared = min(_common_prefix(prompt_ids, f) for f in full_ids)
    eos = tokenizer.eos_token_id
    response_ids = []
    for f in full_ids:
        completion = list(f[shared:])
        if completion and eos is not None and completion[-1] != eos:
            completion.append(eos)
        response_ids.append(completion)
    return PreferenceExample(index=index, record_id=record_id, prompt_ids=list(prompt_ids[:shared]),
                             response_ids=response_ids,
                             scores=list(scores) if scores is not None else [0.0] * len(responses),
                             label=label)


def records_to_examples(records: Iterable, tokenizer, report: DataReport | None = None
                        ) -> list[PreferenceExample]:
    """Tokenize every usable record (module docstring); the rest are counted in ``report``."""
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
                                   label=label)
        eos = tokenizer.eos_token_id
        if any(not r or r == [eos] for r in example.response_ids):
            report.skip("empty_completion", index)
            continue
        out.append(example)
        report.used += 1
    return out
